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
    p.add_argument("--max-pixels", type=int, default=100_000_000, help="largest accepted width x height")
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
        model = load_model(args.model, args.tracking_uri, args.device, args.keep_uploads)
    except Exception as exc:  # FileNotFoundError, ConfigError, MlflowException, RuntimeError: report and exit
        print(f"error: cannot load model {args.model!r}: {exc}", file=sys.stderr)
        return 2
    settings = ServeSettings(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels)
    app = create_app(model, settings)
    print(f"serving {model.cfg.name} ({model.task}) on http://{args.host}:{args.port}/  (API docs: /docs)",
          file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
