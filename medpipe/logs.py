"""Logging set-up shared by the command-line entry points (``medpipe.run``, ``.serve``, ``.export``, patches).

Library modules only create loggers (``logging.getLogger(__name__)``); handlers and levels are the business of
the program that runs them, which calls :func:`configure_cli_logging` once.
"""

from __future__ import annotations

import logging

__all__ = ["configure_cli_logging"]

_QUIET = ("alembic", "mlflow", "urllib3", "matplotlib", "PIL", "multipart")


def configure_cli_logging(verbose: bool = False) -> None:
    """Log to stderr with time, level and logger name; DEBUG with ``verbose``, else INFO.

    The chatty third-party loggers (alembic, mlflow, urllib3, matplotlib, PIL, multipart) are raised to WARNING.
    Without ``verbose``, ignite's "Engine run is terminating due to exception" line is dropped: the command line
    prints the exception itself (one line for the errors a user fixes, a traceback for the others).
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    if not verbose:
        logging.getLogger("ignite.engine.engine").setLevel(logging.CRITICAL)
