"""Serve a trained medpipe pipeline over HTTP: ``python -m medpipe.serve MODEL``.

``MODEL`` is an MLflow model URI (``runs:/<id>/model``, ``models:/<name>/<version>``) or a run's artifact folder
(``artifacts/<run>/``). The network is rebuilt with the pipeline's own inference transforms from the run's
``config.resolved.yaml``, so a served prediction equals ``medpipe.run``'s on the same file.

Modules: :mod:`medpipe.serve.images` (decoding uploads: PNG, JPEG, DICOM), :mod:`medpipe.serve.model` (a loaded
model predicting one image; needs torch and MONAI, not the web server), :mod:`medpipe.serve.previews` (PNGs sent
back: masks, previews), :mod:`medpipe.serve.app` (the FastAPI app; needs the ``serve`` extra:
``pip install 'medpipe[serve]'``).

Layering: a run is loaded through :func:`medpipe.runs.load_trained`; besides ``runs`` this package uses ``config``
and ``inference``. It never imports ``medpipe.engine``, ``medpipe.workflow`` or ``medpipe.run``.
"""

from __future__ import annotations

__all__ = ["load_model", "create_app", "ServedModel", "ServeSettings", "InputError"]


def __getattr__(name):  # lazy: importing medpipe.serve pulls in neither torch nor fastapi
    if name in ("load_model", "ServedModel"):
        from medpipe.serve import model

        return getattr(model, name)
    if name in ("create_app", "ServeSettings"):
        from medpipe.serve import app

        return getattr(app, name)
    if name == "InputError":
        from medpipe.serve.images import InputError

        return InputError
    raise AttributeError(f"module 'medpipe.serve' has no attribute {name!r}")
