"""The ``pil`` backend: plain PNG/JPEG/BMP images through Pillow.

These formats have no tiles, so the image is decoded once, whole, and kept as one ``(H, W, C)`` ``uint8`` array
(3 bytes per pixel; a warning is logged above 1 GiB, and Pillow's decompression-bomb limit is lifted for the
file asked for). For images that do not fit in memory, convert them to a tiled pyramidal TIFF (e.g.
``vips tiffsave --tile --pyramid``) and use ``tifffile``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from medpipe.data.wsi.base import Slide

logger = logging.getLogger(__name__)

__all__ = ["open_pil", "read_pil"]


def open_pil(path: Path) -> Slide:
    """Decode a plain image with Pillow into a one-level :class:`Slide`.

    Args:
        path: the image file.

    Returns:
        A :class:`Slide` with backend ``"pil"``: ``wsi`` the decoded ``(H, W, C)`` array, RGB (RGBA for images
        with alpha), ``mpp`` ``None`` (PNG/JPEG dpi tags are not a microscope resolution).

    Raises:
        PIL.UnidentifiedImageError: Pillow cannot read the file. OSError: truncated or unreadable file.
    """
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # a large plain image is what we were asked to open, not a decompression bomb
    try:
        with Image.open(path) as im:
            mode = "RGBA" if im.mode in ("RGBA", "LA", "PA") else "RGB"
            n_bytes = im.width * im.height * len(mode)
            if n_bytes > 2**30:
                logger.warning(
                    "%s: PNG/JPEG have no tiles, so the whole %dx%d image is decoded into memory (%.1f GiB); "
                    "convert it to a tiled pyramidal TIFF for windowed reading", path, im.width, im.height,
                    n_bytes / 2**30,
                )
            arr = np.asarray(im if im.mode == mode else im.convert(mode))  # (H, W, C), one decoded copy
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    # kept (H, W, C) as decoded; windows are transposed to (C, h, w) when read
    # (PNG/JPEG dpi tags are not a microscope resolution: mpp stays unknown)
    return Slide(path, "pil", None, arr, ((arr.shape[0], arr.shape[1]),), (1.0,), None, arr.shape[2], arr.dtype)


def read_pil(slide: Slide, y: int, x: int, h: int, w: int) -> np.ndarray:
    """A window of the decoded image: ``(C, h, w)`` ``uint8``, ``(y, x)`` its top-left pixel (inside the image)."""
    return np.ascontiguousarray(np.moveaxis(slide.wsi[y : y + h, x : x + w], -1, 0))
