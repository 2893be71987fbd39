"""The FastAPI app around a :class:`medpipe.serve.model.ServedModel`.

Endpoints:

* ``POST /predict`` (multipart form, field ``file``; PNG, JPEG or DICOM; query ``preview=true`` adds the image as
  a PNG for display, ``explain=true`` a classifier's Grad-CAM heatmap over it, ``explanation_png``) -> JSON prediction (see :meth:`ServedModel.predict`); for a segmenter and a DICOM upload,
  ``dicom_seg=true`` adds ``dicom_seg_b64`` (a DICOM SEG referencing the upload, base64) to the JSON and
  ``format=dicom-seg`` answers the DICOM SEG file itself (``application/dicom``); asked of another upload or model:
  422;
* ``GET /health`` -> ``{"status": "ok", ...}``;
* ``GET /model`` -> pipeline name, task, classes, the run's metrics and the input spec;
* ``GET /`` -> the web page (``static/index.html``, plain HTML/CSS/JS); OpenAPI docs at ``/docs``.

A DICOM upload whose Modality / Body Part Examined is not among the pipeline's ``data.modality`` / ``data.body_part``
is refused with 422 (:mod:`medpipe.serve.checks`), or answered with ``warnings`` under
``ServeSettings.allow_mismatch`` (``--allow-mismatch``).

Bad input never stops the server: a wrong file type is answered 415, a file over ``max_upload_bytes`` or
``max_pixels`` 413, a corrupt file or one that does not fit the model (channels, dimensions, bit depth) 422, each
with ``{"detail": message}``.

Work per request is bounded (see :class:`ServeSettings`): the pixel limit (by default sized to the model,
:func:`medpipe.serve.limits.default_max_pixels`) is checked from the image header before decoding; every request has
a time limit from its admission (reading the upload, 408 when too slow; waiting for and running the prediction, 503),
checked before every forward pass of the network; at most ``1 + max_queue`` requests are admitted at once, others
are answered 503 with ``Retry-After`` without their upload being read. Decoding and predicting run in a thread pool
of that size, never on the event loop, so ``/health`` and ``/model`` answer while a prediction runs.
Uploads are read into memory (never spooled to disk by the multipart parser) and handed to the pipeline through
a scratch file in ``/dev/shm`` that is deleted after the prediction, unless ``keep_uploads`` is set.

Needs the ``serve`` extra: ``pip install 'medpipe[serve]'`` (fastapi, uvicorn, python-multipart).
"""

import asyncio
import base64
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from medpipe import __version__
from medpipe.serve.images import InputError, decode_upload
from medpipe.serve.limits import Deadline, Gate, check_intensity, default_max_pixels, intensity_window

logger = logging.getLogger(__name__)

__all__ = ["ServeSettings", "create_app", "read_upload", "STATIC_DIR"]

STATIC_DIR = Path(__file__).parent / "static"
_GRACE_S = 2.0  # seconds past the time limit that the answer waits for a forward pass in progress to finish
_HINT = "medpipe.serve needs the web server extra: pip install 'medpipe[serve]' (fastapi, uvicorn, python-multipart)"


@dataclass
class ServeSettings:
    """Limits of the server.

    Attributes:
        max_upload_bytes: largest accepted upload (default 20 MB = 20 * 1024 * 1024 bytes); larger: 413.
        max_pixels: largest accepted width x height of an image, checked from the header before decoding
            (decompression bombs, work per request); larger: 413. ``None`` (default): sized to the model by
            :func:`medpipe.serve.limits.default_max_pixels`. Applies instead of Pillow's ``MAX_IMAGE_PIXELS``,
            above or below it.
        timeout_s: time limit of one request in seconds, from its admission (default 30): reading the upload
            (then 408), waiting for the predictions ahead of it and predicting (then 503). Checked before every
            forward pass of the network; one forward pass is not interrupted.
        max_queue: requests that may wait while one is predicting (default 4); more at once: 503 with
            ``Retry-After``.
        allow_mismatch: answer a DICOM upload whose Modality / Body Part Examined is not among the pipeline's
            ``data.modality`` / ``data.body_part`` (with ``warnings`` in the answer) instead of refusing it with 422
            (default ``False``; :mod:`medpipe.serve.checks`).
    """

    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: Optional[int] = None
    timeout_s: float = 30.0
    max_queue: int = 4
    allow_mismatch: bool = False


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
        settings: :class:`ServeSettings` (defaults: 20 MB uploads, pixels sized to the model, 30 s, 4 waiting).

    Returns:
        ``fastapi.FastAPI``.

    Raises:
        ImportError: fastapi or python-multipart is not installed (with the install command).
    """
    _import_fastapi()
    from fastapi import FastAPI

    settings = settings or ServeSettings()
    pixels, rule = default_max_pixels(model.cfg)
    limits = {"max_upload_bytes": settings.max_upload_bytes,
              "max_pixels": settings.max_pixels or pixels,
              "max_pixels_rule": "--max-pixels" if settings.max_pixels else rule,
              "timeout_s": settings.timeout_s, "max_queue": settings.max_queue,
              "allow_mismatch": settings.allow_mismatch}
    desc = model.describe()
    app = FastAPI(
        title=f"medpipe: {desc['pipeline']}",
        version=__version__,
        description=(f"{desc['task']} model `{desc['net']}` of pipeline `{desc['pipeline']}` from `{desc['source']}`."
                     "\n\nResearch software: **not a medical device**; not for diagnosis or treatment."),
    )
    counts = {"predictions": 0, "rejected": 0, "busy": 0}
    gate = Gate(1 + max(0, settings.max_queue), settings.timeout_s)
    _add_info_routes(app, desc, limits, counts, gate)
    _add_predict_route(app, model, limits, counts, gate)
    _add_page_routes(app)
    return app


def _add_info_routes(app, desc: Dict[str, Any], limits: Dict[str, Any], counts: Dict[str, int], gate: Gate
                     ) -> None:
    """The ``InputError`` handler (counts rejections and busy answers), ``GET /health`` and ``GET /model`` (both
    ``async``: answered on the event loop, never waiting for a worker thread)."""
    from fastapi import Request
    from fastapi.responses import JSONResponse

    started = time.time()

    @app.exception_handler(InputError)
    async def _input_error(request: Request, exc: InputError):
        counts["busy" if exc.status == 503 else "rejected"] += 1
        logger.info("rejected upload: %s %s", exc.status, exc.message)
        return JSONResponse(status_code=exc.status, content={"detail": exc.message}, headers=exc.headers)

    @app.get("/health", summary="Liveness and model identity")
    async def health() -> Dict[str, Any]:
        """``{"status": "ok", pipeline, task, uptime_seconds, predictions, rejected, busy, in_flight}``."""
        return {"status": "ok", "pipeline": desc["pipeline"], "task": desc["task"],
                "uptime_seconds": round(time.time() - started, 1), **counts, "in_flight": gate.in_flight}

    @app.get("/model", summary="The served pipeline: name, task, classes, metrics of its run, input spec")
    async def model_info() -> Dict[str, Any]:
        """:meth:`ServedModel.describe` with the limits (upload bytes, pixels and their rule, time, queue)."""
        return {**desc, "limits": limits}


def _add_predict_route(app, model, limits: Dict[str, Any], counts: Dict[str, int], gate: Gate) -> None:
    """``POST /predict``: admission (:class:`Gate`) -> upload -> decode, checks and :meth:`ServedModel.predict` in
    a worker thread, all within the request's :class:`Deadline`."""
    from fastapi import Query, Request, Response

    executor = ThreadPoolExecutor(max_workers=gate.capacity, thread_name_prefix="medpipe-predict")
    window = intensity_window(model.cfg)

    def work(job: Deadline, data: bytes, preview: bool, dicom_seg: bool, explain: bool) -> Dict[str, Any]:
        try:
            decoded = decode_upload(data, limits["max_pixels"])
            if dicom_seg:
                model.check_dicom_seg(decoded)  # before the network runs
            check_intensity(decoded, window, model.cfg.name)
            return model.predict(decoded, preview, deadline=job, dicom_seg=dicom_seg, explain=explain,
                                 allow_mismatch=limits["allow_mismatch"])
        finally:
            gate.leave(job)  # the place is freed when the work has really stopped

    predict_doc = ("Predict one image. Send it as multipart form field `file` (PNG, JPEG or DICOM Part 10). "
                   "Classifier: `label`, `probabilities`; segmenter: `mask_png` (base64) and `area`. Errors: 413 too "
                   "large, 415 not an image type, 422 corrupt or not fitting the model, 408 upload too slow, 503 "
                   "busy (with Retry-After) or over the time limit. DICOM SEG (segmenter, DICOM upload): "
                   "`dicom_seg=true` adds `dicom_seg_b64` (base64 of the SEG file) to the JSON; `format=dicom-seg` "
                   "answers the SEG file itself (`application/dicom`, `segmentation.seg.dcm`); for a PNG/JPEG upload "
                   "or a classifier both are answered 422. Classifier: `explain=true` adds `explanation_png` (base64 "
                   "PNG of the Grad-CAM heatmap over the upload, at its size; 422 for a segmenter). A DICOM whose "
                   "Modality (0008,0060) or Body Part Examined (0018,0015) is not the training data's is answered "
                   "422, or with `warnings` when the server runs with --allow-mismatch.")

    @app.post("/predict", summary="Predict one uploaded image", description=predict_doc,
              openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                  "type": "object", "required": ["file"],
                  "properties": {"file": {"type": "string", "format": "binary"}}}}}}})
    async def predict(request: Request, preview: bool = Query(False, description="add the image as preview_png"),
                      dicom_seg: bool = Query(False, description="add dicom_seg_b64: a DICOM SEG of the mask "
                                              "(segmenter, DICOM upload)"),
                      fmt: str = Query("json", alias="format", pattern="^(json|dicom-seg)$",
                                       description="json (default) or dicom-seg: the DICOM SEG file itself"),
                      explain: bool = Query(False, description="classifier: add explanation_png, the class-"
                                            "activation heatmap over the upload")):
        """:meth:`ServedModel.predict` of the uploaded file (run in a worker thread)."""
        as_seg = fmt == "dicom-seg"
        job = gate.enter()
        future = None
        try:
            data = await asyncio.wait_for(read_upload(request, limits["max_upload_bytes"]), job.remaining())
            future = asyncio.get_running_loop().run_in_executor(executor, work, job, data, preview,
                                                                dicom_seg or as_seg, explain)
        except asyncio.TimeoutError:
            raise InputError(408, f"the upload was not received within the limit of {job.limit_s:g} s "
                             "(--timeout-s)") from None
        finally:
            if future is None:
                gate.leave(job)
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved even if nobody waits
        try:  # the worker stops itself at the limit; the grace covers a forward pass in progress
            result = await asyncio.wait_for(asyncio.shield(future), job.remaining() + _GRACE_S)
        except asyncio.TimeoutError:
            job.cancel()
            raise job.error("while the network was running") from None
        counts["predictions"] += 1
        if as_seg:
            return Response(base64.b64decode(result["dicom_seg_b64"]), media_type="application/dicom",
                            headers={"Content-Disposition": 'attachment; filename="segmentation.seg.dcm"'})
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
