"""Command line: ``python -m medpipe.evaluate RUN [--set KEY=VALUE ...] [-o OUT]``.

Re-evaluates a trained run (a run folder or an MLflow run id) without training: its best checkpoint, on the
cases of its own split (checked against its ``manifest.json``), finished by the same code as the run, with
evaluation settings changed by ``--set`` (``infer.*``, ``metrics.*``, ``report.*``, ...). Examples::

    python -m medpipe.evaluate artifacts/em_unet-20261201-090000 --set infer.tta=true
    python -m medpipe.evaluate artifacts/em_unet-20261201-090000 --set infer.postprocess=auto
    python -m medpipe.evaluate 3f2a... --set "metrics.threshold={sensitivity: 0.95}"

The result is a new run folder (default ``RUN/evaluations/<time>/``) and MLflow run; compare it with the source
using ``python -m medpipe.compare RUN RUN/evaluations/<time>``. Exit codes: 0 done, 2 bad arguments, config or data.
See :func:`medpipe.workflow.evaluate.evaluate_run`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from medpipe.config import ConfigError
from medpipe.logs import configure_cli_logging
from medpipe.tracking import TrackingError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m medpipe.evaluate", description=(
        "Re-evaluate a trained run's best checkpoint on its own split with changed evaluation settings."))
    p.add_argument("run", help="run folder or MLflow run id")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="evaluation setting, e.g. --set infer.tta=true (repeatable; values are YAML)")
    p.add_argument("-o", "--output", help="new run folder (default RUN/evaluations/<time>)")
    p.add_argument("--tracking-uri", help="MLflow store holding RUN when it is a run id")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point; returns the process exit code (0 ok, 2 bad arguments, config or data)."""
    args = _parser().parse_args(argv)
    configure_cli_logging(args.verbose)
    from medpipe.data.cases import DataError  # torch, MONAI, MLflow: imported once the arguments are read
    from medpipe.workflow.evaluate import evaluate_run

    try:
        result = evaluate_run(args.run, args.overrides, Path(args.output) if args.output else None,
                              args.tracking_uri)
    except (ConfigError, DataError, FileNotFoundError, ValueError, TrackingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"evaluation: {result.output_dir}")
    for k, v in result.metrics.items():
        print(f"  {k}: {v:.4f}")
    if result.run_id:
        print(f"MLflow run {result.run_id} in {result.tracking_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
