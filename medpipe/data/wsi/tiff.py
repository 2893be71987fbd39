"""The ``tifffile`` backend: windowed reads of (pyramidal) TIFF and SVS through tifffile's Zarr store.

Our own code, because MONAI 1.6's ``TiffFileWSIReader`` does not do the job on these files: its ``_get_patch``
calls ``wsi.asarray(level=level)``, decoding the whole level for every patch (a 60k x 60k level is 10 GiB decoded
per patch; measured throughput in ``docs/wsi.md``); its levels are TIFF pages, so ``level=1`` of
``CMU-1-Small-Region.svs`` is the 768 x 574 thumbnail; and its ``get_mpp`` reads only the TIFF resolution tags,
not the Aperio ``MPP`` that SVS files carry, so it finds no resolution for ``CMU-1-Small-Region.svs``
(0.499 um/px). Here levels are ``tif.series[0].levels`` (which agree with OpenSlide's ``level_count``) and only
the tiles (or strips) under a window are decoded (``imagecodecs`` for JPEG 2000).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from medpipe.data.wsi.base import MAX_MPP, Slide, SlideError, require

logger = logging.getLogger(__name__)

__all__ = ["open_tifffile", "read_tifffile", "check_tiff_complete"]


def open_tifffile(path: Path) -> Slide:
    """Open a TIFF-like file with tifffile.

    Args:
        path: the file (``.tif``, ``.svs``, ...).

    Returns:
        A :class:`Slide` with backend ``"tifffile"``: one level per ``series[0].levels`` entry, channels from the
        ``S`` or ``C`` axis, the series' dtype, ``mpp`` from the Aperio ``MPP`` or the TIFF resolution tags.

    Raises:
        ImportError: tifffile is not installed. ValueError: the series has no Y/X image plane.
        tifffile.TiffFileError: not a TIFF file. SlideError: no image in the file (truncated or corrupt).
    """
    tifffile = require("tifffile", "pip install tifffile imagecodecs")
    tif = tifffile.TiffFile(str(path))
    try:
        series = _first_series(tif, path)
        levels = list(series.levels)
        dims, axes = [], series.axes
        if "Y" not in axes or "X" not in axes:
            raise ValueError(f"{path}: tifffile series axes {axes!r} have no Y/X image plane")
        for lvl in levels:
            shape = dict(zip(axes, lvl.shape))
            dims.append((int(shape["Y"]), int(shape["X"])))
        channels = int(dict(zip(axes, series.shape)).get("S", dict(zip(axes, series.shape)).get("C", 1)))
        downs = tuple(0.5 * (dims[0][0] / d[0] + dims[0][1] / d[1]) for d in dims)
        mpp = _tiff_mpp(tif, series)
    except Exception:
        tif.close()
        raise
    slide = Slide(path, "tifffile", None, tif, tuple(dims), downs, mpp, channels=channels, dtype=series.dtype)
    slide.level_stores = [None] * len(levels)  # Zarr views, opened on first read of each level
    slide.backend_state["axes"] = axes
    return slide


def _first_series(tif, path):
    """``tif.series[0]``, or a :class:`SlideError` when the file holds no image (its IFDs are cut off)."""
    if not tif.series:
        raise SlideError(
            f"{path}: no image found in this TIFF ({os.path.getsize(path)} bytes): the file is truncated or corrupt"
        )
    return tif.series[0]


def check_tiff_complete(path: Path) -> None:
    """Check that every tile (or strip) of the first image series lies inside the file, reading headers only.

    A TIFF cut short keeps its header, and its image directories when they come first, so readers open it
    and then fail on the first missing tile (OpenSlide) or in the middle of a window. This reads the tile
    offset and byte-count tables of each pyramid level (no pixel data). Nothing is checked when tifffile is
    not installed.

    Args:
        path: a TIFF-like file (``.tif``, ``.svs``, ...).

    Raises:
        SlideError: no image in the file, or a level whose data ends past the end of the file (names the
            file, the level, the bytes needed and the file size).
        tifffile.TiffFileError: not a TIFF file.
    """
    try:
        import tifffile
    except ImportError:
        return
    size = os.path.getsize(path)
    tif_log = logging.getLogger("tifffile")
    level_before = tif_log.level
    tif_log.setLevel(logging.ERROR)  # its warnings about cut-off IFDs would precede our one-line message
    try:
        _check_levels(tifffile, path, size)
    finally:
        tif_log.setLevel(level_before)


def _check_levels(tifffile, path: Path, size: int) -> None:
    """The body of :func:`check_tiff_complete`."""
    with tifffile.TiffFile(str(path)) as tif:
        series = _first_series(tif, path)
        for i, level in enumerate(series.levels):
            for page in level.pages:
                if page is None:
                    raise SlideError(f"{path}: level {i} has a missing image page ({size} bytes): the file is "
                                     "truncated or corrupt")
                ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts) if n]
                if ends and max(ends) > size:
                    raise SlideError(
                        f"{path}: truncated: level {i} ({'x'.join(map(str, level.shape))}) has data up to byte "
                        f"{max(ends)} but the file has {size} bytes; get a complete copy of the file"
                    )


def _tiff_mpp(tif, series) -> tuple[float, float] | None:
    """Level-0 micrometres per pixel from Aperio ``MPP`` or the TIFF resolution tags (cm or inch units)."""
    page = series.levels[0].pages[0] if hasattr(series.levels[0], "pages") else tif.pages[0]
    desc = page.description or ""
    if tif.is_svs and "MPP" in desc:
        for part in desc.split("|"):
            key, _, val = part.partition("=")
            if key.strip() == "MPP":
                try:
                    v = float(val)
                    return (v, v)
                except ValueError:
                    break
    tags = page.tags
    if "XResolution" in tags and "YResolution" in tags and "ResolutionUnit" in tags:
        unit = int(tags["ResolutionUnit"].value)
        um_per_unit = {2: 25400.0, 3: 10000.0}.get(unit)  # 2 = inch, 3 = centimetre, 1 = none
        (xn, xd), (yn, yd) = tags["XResolution"].value, tags["YResolution"].value
        if um_per_unit and xn and yn:
            mpp = (um_per_unit * yd / yn, um_per_unit * xd / xn)
            if max(mpp) <= MAX_MPP:
                return mpp
            logger.info("%s: TIFF resolution %.1f um/px is a print/screen resolution (e.g. 72 dpi), not a "
                        "microscope's: resolution unknown", tif.filehandle.name, max(mpp))
    return None


def _tiff_level(slide: Slide, level: int):
    if slide.level_stores[level] is None:
        zarr = require("zarr", "pip install zarr")
        store = slide.wsi.series[0].aszarr(level=level)
        slide.level_stores[level] = zarr.open(store, mode="r")
    return slide.level_stores[level]


def read_tifffile(slide: Slide, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
    """A window inside ``level``, decoding only the tiles (or strips) under it.

    Args:
        slide: a ``tifffile`` slide.
        level: pyramid level.
        y, x: top-left pixel of the window in that level's pixels (inside the level).
        h, w: window size in pixels (the window lies inside the level).

    Returns:
        ``(C, h, w)`` array of the slide's dtype (``C`` = 1 for a grey image).

    Raises:
        ImportError: zarr is not installed.
    """
    arr = _tiff_level(slide, level)
    axes = slide.backend_state["axes"]
    index = tuple(
        slice(y, y + h) if a == "Y" else slice(x, x + w) if a == "X" else slice(None) if a in "SC" else 0
        for a in axes
    )
    patch = np.asarray(arr[index])
    kept = [a for a in axes if a in "YXSC"]
    if len(kept) == 2:
        patch = patch[..., None]
    elif kept.index("Y") == 0:
        patch = np.moveaxis(patch, -1, 0)
    return np.ascontiguousarray(patch)
