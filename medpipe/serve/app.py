"""The FastAPI app around a :class:`medpipe.serve.model.ServedModel`.

Endpoints:

* ``POST /predict`` (multipart form, field ``file``; PNG, JPEG or DICOM; query ``preview=true`` adds the image as
  a PNG for display) -> JSON prediction (see :meth:`ServedModel.predict`);
* ``GET /health`` -> ``{"status": "ok", ...}``;
* ``GET /model`` -> pipeline name, task, classes, the run's metrics and the input spec;
* ``GET /`` -> the web page (``static/index.html``, plain HTML/CSS/JS); OpenAPI docs at ``/docs``.

Bad input never stops the server: a wrong file type is answered 415, a file over ``max_upload_bytes`` 413, a
corrupt file or one that does not fit the model (channels, dimensions) 422, each with ``{"detail": message}``.
Uploads are read into memory (never spooled to disk by the multipart parser) and handed to the pipeline through
a scratch file in ``/dev/shm`` that is deleted after the prediction, unless ``keep_uploads`` is set.

Needs the ``serve`` extra: ``pip install 'medpipe[serve]'`` (fastapi, uvicorn, python-multipart).
"""

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from medpipe import __version__
from medpipe.serve.images import InputError, decode_upload

logger = logging.getLogger(__name__)

__all__ = ["ServeSettings", "create_app", "read_upload", "STATIC_DIR"]

STATIC_DIR = Path(__file__).parent / "static"
_HINT = "medpipe.serve needs the web server extra: pip install 'medpipe[serve]' (fastapi, uvicorn, python-multipart)"


@dataclass
class ServeSettings:
    """Limits of the server.

    Attributes:
        max_upload_bytes: largest accepted upload (default 20 MB = 20 * 1024 * 1024 bytes); larger: 413.
        max_pixels: largest accepted width x height of an image (decompression-bomb guard); larger: 413.
    """

    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 100_000_000


def _import_fastapi():
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401  (form uploads)
    except ImportError as exc:
        raise ImportError(f"{_HINT} ({exc})") from None
    return fastapi


async def read_upload(request, limit: int) -> bytes:
    """The bytes of the ``file`` field of a ``multipart/form-data`` request, read into memory.

    Starlette's own ``request.form(max_part_size=...)`` is not used: in Starlette 1.10 ``max_part_size`` bounds
    only the parts without a file name, so a 21 MB upload with ``max_part_size`` = 20 MB was accepted (no 413)
    and, past ``MultiPartParser.spool_max_size`` (1 MB), written to a temporary file on disk (measured); and a
    malformed form becomes a 400 there (``Request._get_form``), not our 422. Here the body is bounded while it streams in and parsed
    from memory.

    Args:
        request: the ``starlette.requests.Request``.
        limit: largest accepted file in bytes (the body may exceed it by 64 KiB of form overhead).

    Raises:
        InputError: 413 larger than ``limit``; 415 not a multipart form; 422 malformed form, no ``file`` field, or
            an empty file.
    """
    from starlette.formparsers import MultiPartParser

    ctype = request.headers.get("content-type", "")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit + 64 * 1024:
        raise InputError(413, f"upload of {int(length)} bytes is larger than the limit of {limit} bytes "
                         "(--max-upload-mb)")
    if ctype.startswith("multipart/form-data"):
        # Parse from memory: the body is bounded above, and no part is spooled to a temporary file.
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit + 64 * 1024:
                raise InputError(413, f"upload larger than the limit of {limit} bytes (--max-upload-mb)")

        async def _replay():
            yield bytes(body)

        parser = MultiPartParser(request.headers, _replay(), max_files=1, max_fields=10,
                                 max_part_size=1024 * 1024)
        parser.spool_max_size = limit + 1
        try:
            form = await parser.parse()
        except Exception as exc:
            raise InputError(422, f"malformed multipart form: {exc}") from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise InputError(422, "no file: send the image as multipart form field 'file' "
                             "(curl -F file=@image.png .../predict)")
        data = await upload.read()
        await upload.close()
    else:
        raise InputError(415, f"expected a multipart/form-data upload with field 'file', got content type "
                         f"{ctype or 'none'!r} (curl -F file=@image.png .../predict)")
    if len(data) > limit:
        raise InputError(413, f"file of {len(data)} bytes is larger than the limit of {limit} bytes "
                         "(--max-upload-mb)")
    if not data:
        raise InputError(422, "the uploaded file is empty")
    return data


def create_app(model, settings: Optional[ServeSettings] = None):
    """Build the FastAPI app serving ``model``.

    Args:
        model: a :class:`medpipe.serve.model.ServedModel` (from :func:`medpipe.serve.model.load_model`).
        settings: :class:`ServeSettings` (defaults: 20 MB uploads).

    Returns:
        ``fastapi.FastAPI``.

    Raises:
        ImportError: fastapi or python-multipart is not installed (with the install command).
    """
    _import_fastapi()
    from fastapi import FastAPI

    settings = settings or ServeSettings()
    desc = model.describe()
    app = FastAPI(
        title=f"medpipe: {desc['pipeline']}",
        version=__version__,
        description=(f"{desc['task']} model `{desc['net']}` of pipeline `{desc['pipeline']}` from `{desc['source']}`."
                     "\n\nResearch software: **not a medical device**; not for diagnosis or treatment."),
    )
    counts = {"predictions": 0, "rejected": 0}
    _add_info_routes(app, desc, settings, counts)
    _add_predict_route(app, model, settings, counts)
    _add_page_routes(app)
    return app


def _add_info_routes(app, desc: Dict[str, Any], settings: ServeSettings, counts: Dict[str, int]) -> None:
    """The ``InputError`` handler (counts rejections), ``GET /health`` and ``GET /model``."""
    from fastapi import Request
    from fastapi.responses import JSONResponse

    started = time.time()

    @app.exception_handler(InputError)
    async def _input_error(request: Request, exc: InputError):
        counts["rejected"] += 1
        logger.info("rejected upload: %s %s", exc.status, exc.message)
        return JSONResponse(status_code=exc.status, content={"detail": exc.message})

    @app.get("/health", summary="Liveness and model identity")
    def health() -> Dict[str, Any]:
        """``{"status": "ok", pipeline, task, uptime_seconds, predictions, rejected}``."""
        return {"status": "ok", "pipeline": desc["pipeline"], "task": desc["task"],
                "uptime_seconds": round(time.time() - started, 1), **counts}

    @app.get("/model", summary="The served pipeline: name, task, classes, metrics of its run, input spec")
    def model_info() -> Dict[str, Any]:
        """:meth:`ServedModel.describe` with the upload limits."""
        return {**desc, "limits": {"max_upload_bytes": settings.max_upload_bytes,
                                   "max_pixels": settings.max_pixels}}


def _add_predict_route(app, model, settings: ServeSettings, counts: Dict[str, int]) -> None:
    """``POST /predict``: upload -> decode -> :meth:`ServedModel.predict` in a worker thread."""
    from fastapi import Query, Request

    predict_doc = ("Predict one image. Send it as multipart form field `file` (PNG, JPEG or DICOM Part 10). "
                   "Classifier: `label`, `probabilities`; segmenter: `mask_png` (base64) and `area`. Errors: 413 too "
                   "large, 415 not an image type, 422 corrupt or not fitting the model.")

    @app.post("/predict", summary="Predict one uploaded image", description=predict_doc,
              openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                  "type": "object", "required": ["file"],
                  "properties": {"file": {"type": "string", "format": "binary"}}}}}}})
    async def predict(request: Request, preview: bool = Query(False, description="add the image as preview_png")):
        """:meth:`ServedModel.predict` of the uploaded file (run in a worker thread)."""
        data = await read_upload(request, settings.max_upload_bytes)
        decoded = decode_upload(data, settings.max_pixels)
        from starlette.concurrency import run_in_threadpool

        result = await run_in_threadpool(model.predict, decoded, preview)
        counts["predictions"] += 1
        return result


def _add_page_routes(app) -> None:
    """``GET /`` (the web page) and the ``/static`` files."""
    from fastapi.responses import FileResponse
    from fastapi.staticfiles import StaticFiles

    @app.get("/", include_in_schema=False)
    def index():
        """The web page."""
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
