"""The ``openslide`` and ``cucim`` backends: MONAI ``WSIReader`` for geometry, resolution and windows.

- ``"openslide"``: ``openslide-python`` + ``openslide-bin``; Aperio SVS (JPEG and JPEG 2000 tiles), NDPI, MRXS,
  DICOM WSI with complete WSI attributes, ... (not plain, non-pyramidal TIFF such as ``kidney-48-5.tif``).
- ``"cucim"``: the GPU toolkit ``cucim``, when installed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from medpipe.data.wsi.base import MAX_MPP, Slide, require

logger = logging.getLogger(__name__)

__all__ = ["open_openslide", "open_cucim", "read_monai"]


def open_openslide(path: Path) -> Slide:
    """Open ``path`` with OpenSlide (through MONAI's ``WSIReader(backend="openslide")``).

    Args:
        path: the slide file.

    Returns:
        A :class:`Slide` with backend ``"openslide"``; ``mpp`` from ``openslide.mpp-x/y`` or the TIFF resolution
        tags (MONAI ``get_mpp``), ``None`` when absent or coarser than :data:`~.base.MAX_MPP`.

    Raises:
        ImportError: openslide is not installed (says what to install).
        openslide.OpenSlideError: OpenSlide cannot read the file.
    """
    openslide = require("openslide", "pip install openslide-python openslide-bin")
    wsi = openslide.OpenSlide(str(path))  # what MONAI's reader.read does; fails fast on unreadable files
    from monai.data import WSIReader

    reader = WSIReader(backend="openslide")
    dims = tuple((int(h), int(w)) for w, h in wsi.level_dimensions)
    downs = tuple(float(d) for d in wsi.level_downsamples)
    try:  # MONAI: openslide.mpp-x/y, else the TIFF resolution tags; (y, x) in micrometres per pixel
        mpp = tuple(float(v) for v in reader.get_mpp(wsi, 0))
    except (ValueError, KeyError):
        mpp = None
    if mpp is not None and max(mpp) > MAX_MPP:
        logger.info("%s: resolution %.1f um/px is a print/screen default (e.g. 72 dpi), not a microscope's: "
                    "resolution unknown", path, max(mpp))
        mpp = None
    return Slide(path, "openslide", reader, wsi, dims, downs, mpp)


def open_cucim(path: Path) -> Slide:
    """Open ``path`` with cuCIM (through MONAI's ``WSIReader(backend="cucim")``).

    Args:
        path: the slide file.

    Returns:
        A :class:`Slide` with backend ``"cucim"``.

    Raises:
        ImportError: cucim is not installed (says what to install).
    """
    require("cucim", "pip install cucim-cu12 (NVIDIA GPU and Linux only), or use backend='openslide'")
    from monai.data import WSIReader

    reader = WSIReader(backend="cucim")
    wsi = reader.read(str(path))
    n = reader.get_level_count(wsi)
    dims = tuple(tuple(int(v) for v in reader.get_size(wsi, i)) for i in range(n))
    downs = tuple(float(reader.get_downsample_ratio(wsi, i)) for i in range(n))
    try:
        mpp = tuple(float(v) for v in reader.get_mpp(wsi, 0))
    except (ValueError, KeyError):
        mpp = None
    return Slide(path, "cucim", reader, wsi, dims, downs, mpp)


def read_monai(slide: Slide, level: int, h: int, w: int, loc0: tuple[int, int]) -> np.ndarray:
    """A window inside ``level`` through MONAI ``WSIReader.get_data`` (it maps level-0 locations itself).

    Args:
        slide: an ``openslide`` or ``cucim`` slide.
        level: pyramid level.
        h, w: window size in pixels of ``level``.
        loc0: ``(y, x)`` of the window's top-left pixel, level-0 frame.

    Returns:
        ``(C, h, w)`` ``uint8`` RGB (MONAI ``mode="RGB"``: the alpha channel is dropped).
    """
    patch, _ = slide.reader.get_data(slide.wsi, location=loc0, size=(h, w), level=level)
    return np.asarray(patch)
