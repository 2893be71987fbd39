"""Decode an uploaded image (PNG, JPEG or DICOM) into a file the pipeline's own transforms can load.

The served network must see exactly what ``medpipe.run`` fed it, so the pipeline's inference transforms (which
start with ``LoadImaged``) are applied unchanged. PNG and JPEG uploads are therefore passed on byte for byte;
a DICOM is turned into the grey-level picture a viewer would show, written as an 8-bit PNG:

1. the stored values, through the modality LUT / rescale (``pydicom.pixels.apply_rescale``);
2. the VOI LUT or window (``pydicom.pixels.apply_voi_lut``: a *VOI LUT Sequence* is preferred, else *Window
   Center / Width* as ``apply_windowing`` computes it), mapped linearly from the VOI output range to 0..255
   (without a VOI LUT or window: the image's min..max);
3. ``MONOCHROME1`` (0 = white) inverted, so that bright means dense as in ``MONOCHROME2`` and the JPEG
   exports of radiographs;
4. pixel spacing read from *Pixel Spacing* (0028,0030), else *Imager Pixel Spacing* (0018,1164) (projection
   radiographs: at the detector, not corrected for magnification); zero or missing spacing is reported unknown.

Only single-frame 2D DICOM images are accepted (grey, or RGB for colour photometric interpretations). The numbers
that steps 1 and 2 use (*Rescale Slope / Intercept*, *Window Center / Width*) must be finite, and the slope non-zero:
a NaN or infinite value would otherwise give a black (or constant) picture that the model still predicts on.

Decompression bombs: the image size is read from the file's header and checked against the server's own pixel limit
before anything is decoded. PNG and JPEG files are opened with Pillow's format plugins directly, so Pillow's
process-wide ``Image.MAX_IMAGE_PIXELS`` neither refuses an image the server allows nor lets through one it refuses;
only while the pipeline's own ``LoadImaged`` reads an allowed image above Pillow's limit is that limit raised to the
image's size (:func:`pillow_allows`), and restored afterwards.

Sources: DICOM PS3.3 C.11.1 (modality LUT), C.11.2 (VOI LUT and windowing), C.7.6.3.1.2 (photometric
interpretation), C.7.6.2.1.1 / C.8.11.7 (Pixel Spacing / Imager Pixel Spacing).
"""

from __future__ import annotations

import io
import logging
import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["InputError", "DecodedImage", "sniff_format", "open_image", "pillow_allows", "decode_upload",
           "dicom_to_uint8"]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


class InputError(ValueError):
    """An upload the server cannot predict on; carries the HTTP status to answer with.

    Attributes:
        status: 408 (upload too slow), 413 (too large), 415 (not PNG/JPEG/DICOM), 422 (corrupt, or does not fit
            the model), 503 (server busy, or the prediction ran past the time limit).
        message: what was wrong and what is expected.
        headers: extra response headers (``Retry-After`` for a busy server), or ``None``.
    """

    def __init__(self, status: int, message: str, headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


@dataclass
class DecodedImage:
    """An upload, checked and ready for the pipeline's transforms.

    Attributes:
        format: ``"png"``, ``"jpeg"`` or ``"dicom"``.
        data: bytes of a PNG/JPEG file to hand to the pipeline's ``LoadImaged`` (for DICOM, the 8-bit PNG
            rendering described in the module docstring).
        suffix: file name suffix for ``data`` (``.png`` / ``.jpeg``).
        width, height: size in pixels.
        mode: PIL mode of ``data`` (``L``, ``RGB``, ``I;16``, ...).
        bits: bits per sample of the decoded values (8 for ``L``/``RGB``/``P``..., 16 for ``I;16*``, 32 for ``I``
            and ``F``).
        value_range: ``(min, max)`` of the decoded values when ``bits`` > 8, else ``None`` (0..255).
        pixel_spacing_mm: ``(row spacing, column spacing)`` in mm, or ``None`` when unknown.
        info: extra facts for the response (DICOM modality, photometric interpretation, VOI applied, ...).
        dataset: the ``pydicom.Dataset`` of a DICOM upload (the source a DICOM SEG references), else ``None``.
    """

    format: str
    data: bytes
    suffix: str
    width: int
    height: int
    mode: str
    pixel_spacing_mm: Optional[Tuple[float, float]] = None
    info: Dict[str, Any] = field(default_factory=dict)
    bits: int = 8
    value_range: Optional[Tuple[float, float]] = None
    dataset: Any = field(default=None, repr=False)

    @property
    def pixels(self) -> int:
        """``width * height``."""
        return self.width * self.height


def sniff_format(data: bytes) -> Optional[str]:
    """``"png"``, ``"jpeg"`` or ``"dicom"`` from the file's first bytes (not its name or content type), or
    ``None``. DICOM needs the Part 10 preamble: 128 bytes then ``DICM``."""
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    return None


def open_image(data: bytes, kind: Optional[str] = None):
    """A lazily decoding ``PIL.Image`` of PNG or JPEG bytes, opened with Pillow's format plugin directly.

    Unlike ``PIL.Image.open`` this does not apply Pillow's process-wide ``MAX_IMAGE_PIXELS`` check (warning above
    it, ``DecompressionBombError`` above twice it): only the header is read here, and the caller checks the size
    against its own limit before calling ``load()``.

    Args:
        data: the file's bytes.
        kind: ``"png"`` or ``"jpeg"`` (default: :func:`sniff_format`).

    Raises:
        ValueError: neither PNG nor JPEG. Pillow's errors (``SyntaxError``, ``OSError``) for a corrupt header.
    """
    from PIL import JpegImagePlugin, PngImagePlugin

    kind = kind or sniff_format(data)
    plugins = {"png": PngImagePlugin.PngImageFile, "jpeg": JpegImagePlugin.JpegImageFile}
    if kind not in plugins:
        raise ValueError(f"not a PNG or JPEG file (found {kind or 'unknown'})")
    return plugins[kind](io.BytesIO(data))


_PIL_LIMIT_LOCK = threading.Lock()


@contextmanager
def pillow_allows(pixels: int) -> Iterator[None]:
    """Let ``PIL.Image.open`` (the pipeline's ``LoadImaged``) open an image of ``pixels`` pixels that the server has
    already allowed, without a ``DecompressionBombWarning`` or ``DecompressionBombError``.

    Pillow's ``Image.MAX_IMAGE_PIXELS`` is left alone when ``pixels`` is within it (the usual case); otherwise it
    is raised to ``pixels`` for the duration of the block (one such block at a time) and restored afterwards.
    """
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is None or pixels <= Image.MAX_IMAGE_PIXELS:
        yield
        return
    with _PIL_LIMIT_LOCK:
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max(pixels, previous or 0)
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def _check_pixels(width: int, height: int, max_pixels: int, what: str) -> None:
    if width * height > max_pixels:
        raise InputError(413, f"{what} is {width} x {height} = {width * height} pixels; the limit is {max_pixels} "
                         "pixels (--max-pixels; GET /model says how the default is sized to the model): send a "
                         "smaller image")


_BITS = {"I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}


def decode_upload(data: bytes, max_pixels: int = 100_000_000) -> DecodedImage:
    """Check an upload and prepare it for the pipeline.

    The size is checked from the header, before any pixel is decoded, against ``max_pixels`` only (not Pillow's
    own ``Image.MAX_IMAGE_PIXELS``).

    Args:
        data: the uploaded file's bytes.
        max_pixels: largest accepted width x height (guards against decompression bombs and bounds the work).

    Returns:
        :class:`DecodedImage`.

    Raises:
        InputError: 415 when the bytes are not PNG, JPEG or DICOM; 422 when the file is corrupt or truncated, or a
            DICOM has no pixel data, several frames or a layout other than 2D; 413 above ``max_pixels``.
    """
    kind = sniff_format(data)
    if kind is None:
        head = data[:8].hex(" ") if data else "nothing (empty file)"
        raise InputError(415, f"unsupported file type: expected a PNG, JPEG or DICOM (Part 10, with the 'DICM' "
                         f"preamble) file; the upload starts with {head}")
    if kind == "dicom":
        return _decode_dicom(data, max_pixels)
    what = kind.upper()
    value_range = None
    try:
        with open_image(data, kind) as img:
            _check_pixels(img.width, img.height, max_pixels, f"the {what} image")
            img.load()  # decodes everything: a truncated or corrupt file fails here
            width, height, mode = img.width, img.height, img.mode
            bits = _BITS.get(mode, 8)
            if bits > 8:
                values = np.asarray(img)
                value_range = (float(values.min()), float(values.max()))
    except InputError:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ...
        raise InputError(422, f"corrupt or truncated {what} file: {exc}") from None
    return DecodedImage(kind, data, ".png" if kind == "png" else ".jpeg", width, height, mode, bits=bits,
                        value_range=value_range)


def _spacing(ds) -> Tuple[Optional[Tuple[float, float]], Optional[str]]:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is None:
            continue
        try:
            row, col = float(value[0]), float(value[1])
        except (TypeError, ValueError, IndexError):
            continue
        if row > 0 and col > 0 and math.isfinite(row) and math.isfinite(col):
            return (row, col), keyword
    return None, None


def _voi_range(ds, voi: np.ndarray) -> Tuple[float, float, str]:
    """Output range of ``apply_voi_lut`` for ``ds``: the VOI LUT's data range, the window's ``y_min..y_max``
    (as ``pydicom.pixels.apply_windowing`` defines it), or the data's own range."""
    if ds.get("VOILUTSequence"):
        lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
        return float(lut.min()), float(lut.max()), "VOI LUT"
    if "WindowCenter" in ds and "WindowWidth" in ds:
        if ds.get("ModalityLUTSequence"):
            y_min, y_max = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
        elif ds.PixelRepresentation == 0:
            y_min, y_max = 0.0, float(2 ** int(ds.BitsStored) - 1)
        else:
            y_min, y_max = float(-(2 ** (int(ds.BitsStored) - 1))), float(2 ** (int(ds.BitsStored) - 1) - 1)
        slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
        if slope is not None and intercept is not None:
            y_min, y_max = y_min * float(slope) + float(intercept), y_max * float(slope) + float(intercept)
        center, width = ds.WindowCenter, ds.WindowWidth
        center = center[0] if getattr(ds["WindowCenter"], "VM", 1) > 1 else center
        width = width[0] if getattr(ds["WindowWidth"], "VM", 1) > 1 else width
        return y_min, y_max, f"window center {float(center):g} / width {float(width):g}"
    return float(voi.min()), float(voi.max()), "none (min..max of the image)"


_RENDER_FIELDS = ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth")


def _check_render_fields(ds) -> None:
    """422 when a number the rendering uses is not a finite number (or the rescale slope is 0), naming the field."""
    for keyword in _RENDER_FIELDS:
        if keyword not in ds:
            continue
        elem = ds.data_element(keyword)
        where = f"DICOM field {keyword} ({elem.tag.group:04X},{elem.tag.element:04X})"
        try:
            raw = elem.value
        except Exception as exc:  # pydicom converts the stored text on access: ValueError, OverflowError, ...
            raise InputError(422, f"{where} cannot be read ({exc}): expected a number") from None
        if raw is None or raw == "":
            continue
        values = list(raw) if elem.VM > 1 else [raw]
        for value in values:
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise InputError(422, f"{where} is {str(value)!r}: expected a number") from None
            if not math.isfinite(number):
                raise InputError(422, f"{where} is {number}: expected a finite number; the image cannot be "
                                 "rendered (it would come out black or constant)")
            if keyword == "RescaleSlope" and number == 0:
                raise InputError(422, f"{where} is 0: every pixel would get the same value; expected a non-zero "
                                 "slope (1 when the stored values are the modality values)")


def dicom_to_uint8(ds) -> Tuple[np.ndarray, Dict[str, Any]]:
    """The displayed grey levels (or RGB) of a single-frame DICOM image as uint8.

    Args:
        ds: a ``pydicom.Dataset`` with pixel data.

    Returns:
        ``(array, info)``: ``(H, W)`` uint8 for grey images (modality LUT, VOI LUT / window, ``MONOCHROME1``
        inverted) or ``(H, W, 3)`` uint8 RGB; ``info`` says what was applied.

    Raises:
        InputError: 422 for missing pixel data, several frames or an unsupported layout; a non-numeric, NaN or
            infinite *Rescale Slope / Intercept* or *Window Center / Width* (or a slope of 0), naming the field;
            rendered values that are not finite.
    """
    from pydicom.pixels import apply_rescale, apply_voi_lut

    if "PixelData" not in ds:
        raise InputError(422, "the DICOM file has no pixel data (0x7FE0,0010): it is not an image")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise InputError(422, f"the DICOM file has {frames} frames; only single-frame 2D images are served")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # missing decoder plugin, inconsistent header, truncated pixel data
        raise InputError(422, f"cannot decode the DICOM pixel data ({ds.file_meta.get('TransferSyntaxUID', '?')}):"
                         f" {exc}") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    info: Dict[str, Any] = {"modality": str(ds.get("Modality", "")), "photometric_interpretation": photometric}
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        if arr.ndim != 3:
            raise InputError(422, f"unexpected DICOM colour pixel array shape {arr.shape}")
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
        arr = arr.astype(np.float64)
        lo, hi = (0.0, 255.0) if int(ds.get("BitsStored", 8)) <= 8 else (float(arr.min()), float(arr.max()))
        info["voi"] = "none (colour)"
    else:
        if arr.ndim != 2:
            raise InputError(422, f"unexpected DICOM pixel array shape {arr.shape}; expected one 2D frame")
        _check_render_fields(ds)
        values = apply_rescale(arr, ds)
        voi = apply_voi_lut(values, ds, prefer_lut=True)
        lo, hi, info["voi"] = _voi_range(ds, voi)
        arr = np.asarray(voi, dtype=np.float64)
        if not (math.isfinite(lo) and math.isfinite(hi) and np.isfinite(arr).all()):
            raise InputError(422, f"the DICOM image renders to non-finite values (VOI {info['voi']}, range {lo:g} .."
                             f" {hi:g}); check its {', '.join(_RENDER_FIELDS)} and VOI LUT")
    scaled = np.clip((arr - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(arr)
    out = np.round(scaled * 255.0).astype(np.uint8)
    if photometric == "MONOCHROME1":
        out = 255 - out
        info["inverted"] = True
    return out, info


def _decode_dicom(data: bytes, max_pixels: int) -> DecodedImage:
    import pydicom
    from PIL import Image

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    except Exception as exc:  # pydicom raises InvalidDicomError, EOFError, struct.error, ...
        raise InputError(422, f"corrupt DICOM file: {exc}") from None
    _check_pixels(cols, rows, max_pixels, "the DICOM image")
    try:
        pixels, info = dicom_to_uint8(ds)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(422, f"cannot render the DICOM image: {type(exc).__name__}: {exc}") from None
    spacing, source = _spacing(ds)
    if source:
        info["pixel_spacing_source"] = source
    buf = io.BytesIO()
    img = Image.fromarray(pixels)
    img.save(buf, format="PNG")
    return DecodedImage("dicom", buf.getvalue(), ".png", img.width, img.height, img.mode, spacing, info, dataset=ds)
