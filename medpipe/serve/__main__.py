"""Command line: ``python -m medpipe.serve MODEL [--host 127.0.0.1] [--port 8000] ...``.

``MODEL``: ``runs:/<id>/model``, ``models:/<name>/<version>``, ``models:/<name>@<alias>`` or a run's artifact
folder. Then open ``http://HOST:PORT/`` (page) or ``/docs`` (OpenAPI).
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from medpipe.logs import configure_cli_logging
from medpipe.runs import DEFAULT_TRACKING_URI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m medpipe.serve", description=__doc__.split("\n")[0])
    p.add_argument("model", help="MLflow model URI (runs:/<id>/model, models:/<name>/<version>) or run folder")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI for runs:/ and models:/ (default $MLFLOW_TRACKING_URI or "
                        f"{DEFAULT_TRACKING_URI})")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted upload in MB (default 20)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="largest accepted width x height, checked before decoding (default: sized to the model, "
                        "256 network inputs, at least 4096 x 4096 and at most 100 000 000; GET /model shows it); "
                        "applies instead of Pillow's own limit")
    p.add_argument("--timeout-s", type=float, default=30.0,
                   help="time limit of one request in seconds, from its arrival: upload (408), waiting and "
                        "predicting (503) (default 30)")
    p.add_argument("--max-queue", type=int, default=4,
                   help="requests that may wait while one predicts; more get 503 with Retry-After (default 4)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow weights that exist only as a pickled MLflow model: unpickling runs code from the run "
                        "folder, so use it only for run folders you made yourself (default: tensors only)")
    p.add_argument("--allow-mismatch", action="store_true",
                   help="answer a DICOM whose Modality / Body Part Examined is not the training data's "
                        "(data.modality / data.body_part), with warnings, instead of refusing it with 422")
    p.add_argument("--keep-uploads", default=None, metavar="DIR",
                   help="keep a copy of every upload in DIR (default: nothing is kept on disk)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Load the model and serve it with uvicorn; returns the exit code (2: the model cannot be loaded)."""
    args = _parser().parse_args(argv)
    configure_cli_logging(args.verbose)
    try:
        import uvicorn

        from medpipe.serve.app import ServeSettings, create_app
        from medpipe.serve.model import load_model
    except ImportError as exc:
        print(f"error: {exc}\n  install the server: pip install 'medpipe[serve]'", file=sys.stderr)
        return 2
    try:
        model = load_model(args.model, args.tracking_uri, args.device, args.keep_uploads,
                           trust_pickle=args.trust_pickle)
    except Exception as exc:  # FileNotFoundError, ConfigError, MlflowException, RuntimeError: report and exit
        print(f"error: cannot load model {args.model!r}: {exc}", file=sys.stderr)
        return 2
    settings = ServeSettings(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels,
                             timeout_s=args.timeout_s, max_queue=args.max_queue,
                             allow_mismatch=args.allow_mismatch)
    app = create_app(model, settings)
    print(f"serving {model.cfg.name} ({model.task}) on http://{args.host}:{args.port}/  (API docs: /docs)",
          file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
