"""The ``pil`` backend: plain PNG/JPEG/BMP images through Pillow, checked from the header before decoding.

These formats have no tiles (Pillow cannot decode part of a PNG), so the image is decoded once, whole, and kept
in Pillow's own pixel format; windows are cropped and converted as they are read. Before decoding, the header
gives the size, mode and bit depth:

- memory: Pillow stores RGB, RGBA, LA and CMYK pixels in 4 bytes, 16-bit grey in 2, grey and palette in 1
  (:data:`NATIVE_BYTES`); with what is read from it during patch extraction (:data:`WINDOW_BYTES`) that is the
  estimate compared with the limit (:func:`medpipe.data.wsi.memory.check_memory`; default half of the available
  memory). Measured peak RSS of opening + tissue mask (``VmHWM``, tests/data/test_wsi_hostile.py): 12000 x 12000
  RGB PNG 697 MiB (estimate 741), grey 300 MiB (estimate 329). Decoding into one numpy array through
  ``np.asarray`` (as before) peaked at 10-12 bytes/pixel: 9.7 GB for the 30000 x 30000 PNG of issue 15, whose
  estimate is now 3.5 GiB. Larger images: convert them to a tiled pyramidal TIFF (e.g.
  ``vips tiffsave in.png out.tif --tile --pyramid --compression jpeg``) and read them with ``tifffile``.
- bit depth: 16-bit grey PNGs are kept as ``uint16`` (windows ``(3, h, w)`` ``uint16``; Pillow's own RGB
  conversion would clip them to white); 16-bit colour PNGs, which Pillow can only decode to their top 8 bits,
  are refused unless ``convert_16bit`` accepts that. 32-bit integer and float images are refused.
- damage: a truncated or corrupt file raises :class:`~medpipe.data.wsi.base.SlideError` naming the file
  (Pillow's ``LOAD_TRUNCATED_IMAGES`` is kept off while decoding, so a cut file never becomes grey padding).
"""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path

import numpy as np

from medpipe.data.wsi.base import Slide, SlideError, describe_size
from medpipe.data.wsi.memory import check_memory, resolve_memory_limit

logger = logging.getLogger(__name__)

__all__ = ["open_pil", "read_pil", "pil_memory_estimate", "header_estimate", "check_pixel_format", "NATIVE_BYTES",
           "WINDOW_BYTES"]

#: Bytes per pixel of Pillow's decoded storage by mode (every other 8-bit mode takes 4: RGB is stored as RGBX).
NATIVE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
#: Memory of what is read from a decoded image: 2048 x 2048 thumbnail tiles, the tissue mask, patch bands
#: (145-160 MiB measured on 12000 x 12000 PNGs).
WINDOW_BYTES = 192 * 2**20
_EIGHT_BIT = {"1", "L", "P", "RGB", "RGBA", "LA", "PA", "La", "RGBa", "RGBX", "CMYK", "YCbCr"}
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, zlib.error, struct.error)
_CONVERT_HINT = "convert it to 8-bit (or to a tiled TIFF read with tifffile)"


def _bit_depth(im) -> int:
    """Bits per sample from the header: 16 for ``I;16*`` modes and 16-bit PNG raw modes, 32 for ``I``/``F``."""
    if im.mode.startswith("I;16"):
        return 16
    if im.mode in ("I", "F"):
        return 32
    for tile in getattr(im, "tile", None) or ():
        args = tile[3] if len(tile) > 3 else None
        raw = args[0] if isinstance(args, tuple) and args else args
        if isinstance(raw, str) and ";16" in raw:
            return 16
    return 8


def pil_memory_estimate(path) -> tuple[int, str]:
    """Bytes the ``pil`` backend needs to open ``path`` and read it in windows, from the header alone.

    Args:
        path: an image file Pillow identifies.

    Returns:
        ``(bytes, description)``: ``width * height * NATIVE_BYTES[mode] + WINDOW_BYTES`` and e.g.
        ``"30000x30000 RGB PNG decoded whole (4 bytes/pixel)"``.

    Raises:
        PIL.UnidentifiedImageError, OSError: Pillow cannot read the header.
    """
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(path) as im:
            return header_estimate(im)
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def header_estimate(im) -> tuple[int, str]:
    """:func:`pil_memory_estimate` of an opened (not yet decoded) Pillow image: ``(bytes, description)``."""
    bpp = NATIVE_BYTES.get(im.mode, 4)
    return im.width * im.height * bpp + WINDOW_BYTES, (
        f"{im.width}x{im.height} {im.mode} {im.format or 'image'} decoded whole ({bpp} bytes/pixel)"
    )


def check_pixel_format(path: Path, im, convert_16bit: bool) -> int:
    """Refuse, from the header, pixel formats whose windows would be wrong (see the module docstring).

    Args:
        path: the file (for the message).
        im: the opened (not yet decoded) Pillow image.
        convert_16bit: accept 16-bit colour, which Pillow decodes to its top 8 bits.

    Returns:
        The bit depth per sample (8, 16 or 32).

    Raises:
        SlideError: 16-bit colour without ``convert_16bit``; 32-bit integer or float pixels; an unknown mode.
    """
    bits = _bit_depth(im)
    if im.mode.startswith("I;16"):
        return bits  # kept as uint16; open_slide maps it to 8 bits when convert_16bit
    if bits == 16 and not convert_16bit:
        raise SlideError(
            f"{path}: 16-bit {im.mode} {im.format or 'image'}: Pillow decodes 16-bit colour only to its top 8 bits; "
            "8-bit RGB or grey is expected. Pass convert_16bit=True (--convert-16bit) to accept that mapping "
            f"(v >> 8), or {_CONVERT_HINT}"
        )
    if bits == 32 or im.mode not in _EIGHT_BIT:
        raise SlideError(
            f"{path}: {bits}-bit {im.mode} pixels ({im.format or 'image'}): 8-bit RGB or grey (or 16-bit grey) "
            f"is expected; {_CONVERT_HINT}"
        )
    return bits


def open_pil(path: Path, max_memory: int | float | str | None = None, convert_16bit: bool = False) -> Slide:
    """Decode a plain image with Pillow into a one-level :class:`Slide`, after checking its header.

    Args:
        path: the image file.
        max_memory: bytes the decoded image may take (``None``: half of the available memory; a string such
            as ``"8G"``; ``math.inf`` or ``"none"``: no limit). Checked from the header, before decoding.
        convert_16bit: accept 16-bit colour images, which Pillow decodes to their top 8 bits.

    Returns:
        A :class:`Slide` with backend ``"pil"``: ``wsi`` the decoded Pillow image, ``channels`` 3 (RGB; 4 for
        images with alpha), ``dtype`` ``uint8`` (``uint16`` for 16-bit grey), ``mpp`` ``None`` (PNG/JPEG dpi
        tags are not a microscope resolution).

    Raises:
        SlideError: not an image, truncated or corrupt, a pixel format windows cannot be made of (names the
            file, its bit depth and mode, and what is expected).
        SlideMemoryError: the decoded image would exceed ``max_memory`` (raised before decoding).
    """
    from PIL import Image, ImageFile

    limit = resolve_memory_limit(max_memory)
    saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    # a large plain image is what we were asked to open, not a decompression bomb: the memory limit guards it
    Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = None, False
    try:
        try:
            im = Image.open(path)
        except _DECODE_ERRORS as e:
            raise SlideError(
                f"{path}: not an image Pillow can read ({describe_size(path)}): {e}; the file is truncated, "
                "corrupt or of another format"
            ) from None
        try:
            bits = check_pixel_format(path, im, convert_16bit)
            need, what = header_estimate(im)
            check_memory(path, need, limit, what, "PNG/JPEG cannot be read in tiles: convert the file to a tiled "
                         "pyramidal TIFF (e.g. `vips tiffsave in.png out.tif --tile --pyramid`) and read that")
            im.load()
        except SlideError:
            im.close()
            raise
        except _DECODE_ERRORS as e:
            im.close()
            raise SlideError(
                f"{path}: truncated or corrupt {im.format or 'image'} file ({describe_size(path)}, "
                f"{im.width}x{im.height} in its header): Pillow stopped decoding with: {e}"
            ) from None
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved
    grey16 = im.mode.startswith("I;16")
    target = "I;16" if grey16 else "RGBA" if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") else "RGB"
    slide = Slide(path, "pil", None, im, ((im.height, im.width),), (1.0,), None,
                  4 if target == "RGBA" else 3, np.dtype(np.uint16 if grey16 else np.uint8))
    slide.backend_state.update(mode=target, bits=bits)
    return slide


def read_pil(slide: Slide, y: int, x: int, h: int, w: int) -> np.ndarray:
    """A window of the decoded image: ``(C, h, w)`` of the slide's dtype, ``(y, x)`` its top-left pixel (inside)."""
    crop = slide.wsi.crop((x, y, x + w, y + h))
    target = slide.backend_state["mode"]
    if target == "I;16":  # grey, 16 bits: replicated to the three channels every pil window has
        grey = np.asarray(crop).astype(np.uint16, copy=False)
        return np.ascontiguousarray(np.broadcast_to(grey, (3, h, w)))
    if crop.mode != target:
        crop = crop.convert(target)
    return np.ascontiguousarray(np.moveaxis(np.asarray(crop), -1, 0))
