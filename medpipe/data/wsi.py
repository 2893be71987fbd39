"""Whole-slide image (WSI) access, windowed: nothing here decodes a whole slide level into memory.

A thin layer over MONAI :class:`monai.data.WSIReader` that gives every backend the same small interface:

- :func:`open_slide` opens a file and returns a :class:`Slide` (the MONAI reader object where one applies, the
  opened backend object, the pyramid geometry and the resolution in micrometres per pixel where known);
- :func:`resolve_level` picks a pyramid level by index or by micrometres per pixel;
- :func:`read_region` reads a ``(C, h, w)`` ``uint8`` window, level-0 location ``(y, x)``, size at the level.

Backends (``backend=``):

- ``"openslide"``: MONAI ``WSIReader(backend="openslide")`` (``openslide-python`` + ``openslide-bin``) for
  windows and resolution; Aperio SVS (JPEG and JPEG 2000 tiles), NDPI, MRXS, DICOM WSI with complete WSI
  attributes, ... (not plain, non-pyramidal TIFF such as ``kidney-48-5.tif``: ``"auto"`` uses tifffile there).
- ``"cucim"``: MONAI ``WSIReader(backend="cucim")`` (GPU toolkit ``cucim``, when installed).
- ``"tifffile"``: ``tifffile`` (+ ``imagecodecs`` for JPEG 2000) through its Zarr store, so that only the tiles
  (or strips) under a window are decoded. Our own code, because MONAI 1.6's ``TiffFileWSIReader`` does not do
  the job on these files: its ``_get_patch`` calls ``wsi.asarray(level=level)``, decoding the whole level for
  every patch (a 60k x 60k level is 10 GiB decoded per patch; measured throughput in ``docs/wsi.md``); its levels are TIFF pages, so ``level=1`` of ``CMU-1-Small-Region.svs`` is the 768 x 574
  thumbnail; and its ``get_mpp`` reads only the TIFF resolution tags, not the Aperio ``MPP`` that SVS files
  carry, so it finds no resolution for ``CMU-1-Small-Region.svs`` (0.499 um/px). The ``reader`` attribute
  still holds a MONAI ``WSIReader(backend="tifffile")`` for code that wants it.
- ``"dicom"``: our own code, because MONAI 1.6's ``WSIReader`` has no DICOM backend (``supported_backends`` is
  cucim, openslide, tifffile) and OpenSlide 4 refuses ``small_dicom_wsi.dcm``. Single-file DICOM VL Whole
  Slide Microscopy images with encapsulated (JPEG, JPEG 2000) frames
  through ``pydicom`` + ``Pillow``, decoding only the frames under a window; one file is one pyramid level.
  Frame layout: TILED_SPARSE per-frame positions, or TILED_FULL row-major (DICOM PS3.3 C.8.12.4); when the
  file declares neither, the order is inferred from tile seams (see ``_infer_frame_order``). ``"auto"`` uses
  it when OpenSlide cannot read the file: OpenSlide 4 needs e.g. the ``ImageType`` attribute, which
  ``small_dicom_wsi.dcm`` lacks ("Couldn't get image flavor"); that file also stores its frames column-major.
- ``"pil"``: plain PNG/JPEG/BMP via Pillow. These formats have no tiles, so the image is decoded once, whole,
  and kept as one ``(H, W, C)`` ``uint8`` array (3 bytes per pixel; a warning is logged above 1 GiB, and
  Pillow's decompression-bomb limit is lifted for the file asked for). For images that do not fit in memory,
  convert them to a tiled pyramidal TIFF (e.g. ``vips tiffsave --tile --pyramid``) and use ``tifffile``.
- ``"array"``: an in-memory ``(C, H, W)`` array (see :func:`slide_from_array`), for tests and small crops.

Levels: level ``i`` is the ``i``-th resolution of the baseline pyramid for every backend. tifffile lists the
thumbnail, label and macro images of an SVS as extra *pages* (MONAI's ``TiffFileWSIReader.get_level_count``
counts them, so its ``level=1`` may be a thumbnail); here tifffile levels are ``tif.series[0].levels``, which
agree with OpenSlide's ``level_count`` (e.g. 1 for ``CMU-1-Small-Region.svs``, 2 for
``tcga-cr-7395-01a-01-ts1.svs``).

Coordinates follow MONAI: ``location`` is ``(y, x)`` = (row, column) of the top-left pixel in the level-0
frame, ``size`` is ``(h, w)`` in pixels of the requested level; level dimensions are ``(height, width)``.
"""

from __future__ import annotations

import io
import logging
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["Slide", "open_slide", "slide_from_array", "resolve_level", "read_region", "read_thumbnail", "BACKENDS"]

BACKENDS = ("auto", "openslide", "tifffile", "cucim", "dicom", "pil")
_PIL_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
_MAX_MPP = 50.0  # TIFF resolutions coarser than this (< 508 dpi) are taken as document defaults, not microscopy
_TIFF_SUFFIXES = {".tif", ".tiff", ".svs", ".btf", ".tf8", ".tf2", ".ome.tif", ".ndpi", ".scn", ".bif"}


@dataclass
class Slide:
    """An opened slide: backend handles plus pyramid geometry.

    Attributes:
        path: the file (``None`` for an in-memory array).
        backend: one of ``"openslide"``, ``"tifffile"``, ``"cucim"``, ``"dicom"``, ``"pil"``, ``"array"``.
        reader: the MONAI ``WSIReader`` for the ``openslide``/``cucim``/``tifffile`` backends, else ``None``
            (for ``tifffile`` it is created on first access: windows are read through tifffile's Zarr store).
        wsi: the opened backend object (``OpenSlide``, ``CuImage``, ``TiffFile``, pydicom ``Dataset``), the
            decoded ``(H, W, C)`` array for ``pil``, or the ``(C, H, W)`` array for ``array``.
        level_dimensions: ``(height, width)`` in pixels of each pyramid level, level 0 first.
        level_downsamples: downsample factor of each level relative to level 0 (1.0 for level 0).
        mpp: level-0 resolution ``(y, x)`` in micrometres per pixel, or ``None`` when the file does not say.
        channels: number of channels returned by :func:`read_region` (3 for RGB slides).
        dtype: numpy dtype returned by :func:`read_region` (``uint8`` for slides).
    """

    path: Path | None
    backend: str
    _reader: Any
    wsi: Any
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: tuple[float, float] | None
    channels: int = 3
    dtype: Any = np.uint8
    _levels: list = field(default_factory=list, repr=False)  # backend-specific per-level handles
    _extra: dict = field(default_factory=dict, repr=False)

    @property
    def reader(self):
        """The MONAI ``WSIReader`` (``None`` for the dicom/pil/array backends)."""
        if self._reader is None and self.backend == "tifffile":
            from monai.data import WSIReader  # importing MONAI takes seconds: only when asked for

            self._reader = WSIReader(backend="tifffile")
        return self._reader

    @property
    def level_count(self) -> int:
        """Number of pyramid levels (thumbnail/label/macro images excluded)."""
        return len(self.level_dimensions)

    @property
    def name(self) -> str:
        """File name (or ``"array"``), for records and messages."""
        return self.path.name if self.path is not None else "array"

    def level_mpp(self, level: int) -> tuple[float, float] | None:
        """Resolution ``(y, x)`` in micrometres per pixel at ``level``, ``None`` when unknown."""
        _check_level(self, level)
        if self.mpp is None:
            return None
        ds = self.level_downsamples[level]
        return (self.mpp[0] * ds, self.mpp[1] * ds)

    def metadata(self) -> dict:
        """Plain-Python summary: path, backend, level_count, level_dimensions (h, w), downsamples, mpp (um/px)."""
        return {
            "path": str(self.path) if self.path is not None else None,
            "backend": self.backend,
            "level_count": self.level_count,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": list(self.level_downsamples),
            "mpp": list(self.mpp) if self.mpp is not None else None,
        }

    def close(self) -> None:
        """Release the file handle (no-op for in-memory backends)."""
        handle = self._extra.get("file") or (self.wsi if self.backend in ("openslide", "tifffile") else None)
        if handle is not None and hasattr(handle, "close"):
            handle.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------- opening
def open_slide(path: str | Path, backend: str = "auto") -> Slide:
    """Open a whole-slide image (or a plain image) for windowed reading.

    Args:
        path: the slide file (``.svs``, ``.tif``/``.tiff``, ``.ndpi``, ``.dcm``, ``.png``, ``.jpg``, ...).
        backend: ``"auto"`` (default), ``"openslide"``, ``"tifffile"``, ``"cucim"``, ``"dicom"`` or ``"pil"``.
            ``"auto"`` picks by suffix: PNG/JPEG -> ``pil``; ``.dcm`` -> ``openslide`` if it reads the file,
            else ``dicom``; TIFF-like -> ``openslide`` if installed and it recognises the file, else ``tifffile``.

    Returns:
        a :class:`Slide`; use it as a context manager or call :meth:`Slide.close`.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it).
        ValueError: unknown ``backend`` (the message lists the valid ones).
        ImportError: the backend's package is not installed (the message says what to ``pip install``).
        RuntimeError: no installed backend can read the file (the message names the file and the package
            that would be needed).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"slide file not found: {path}")
    backend = str(backend).lower()
    if backend not in BACKENDS:
        raise ValueError(f"unknown WSI backend {backend!r} for {path}: expected one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return _open_auto(path)
    return _OPENERS[backend](path)


def _open_auto(path: Path) -> Slide:
    suffix = path.suffix.lower()
    if suffix in _PIL_SUFFIXES:
        return _open_pil(path)
    if suffix == ".dcm":
        errors = []
        for opener in (_open_openslide, _open_dicom):
            try:
                return opener(path)
            except ImportError as e:
                errors.append(str(e))
            except Exception as e:  # noqa: BLE001 - collect every backend's reason for the final message
                errors.append(f"{opener.__name__[6:]}: {type(e).__name__}: {e}")
        raise RuntimeError(
            f"no installed backend could read DICOM WSI {path}: {'; '.join(errors)}. A full DICOM WSI reader "
            "is `pip install wsidicom` (or openslide-bin >= 4 for files with complete WSI attributes)."
        )
    openslide = _try_import("openslide")
    if openslide is not None and openslide.OpenSlide.detect_format(str(path)) is not None:
        return _open_openslide(path)
    if suffix in _TIFF_SUFFIXES or _is_tiff(path):
        return _open_tifffile(path)
    try:
        return _open_pil(path)
    except Exception as e:
        raise RuntimeError(
            f"no installed backend could read {path} (suffix {suffix!r}): Pillow says {e}. For vendor WSI formats "
            "install `openslide-python openslide-bin`."
        ) from e


def _is_tiff(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _try_import(name: str):
    try:
        return __import__(name)
    except ImportError:
        return None


def _require(name: str, hint: str):
    try:
        return __import__(name)
    except ImportError as e:
        raise ImportError(f"the {name!r} package is needed here: {hint}") from e


def _open_openslide(path: Path) -> Slide:
    openslide = _require("openslide", "pip install openslide-python openslide-bin")
    wsi = openslide.OpenSlide(str(path))  # what MONAI's reader.read does; fails fast on unreadable files
    from monai.data import WSIReader

    reader = WSIReader(backend="openslide")
    dims = tuple((int(h), int(w)) for w, h in wsi.level_dimensions)
    downs = tuple(float(d) for d in wsi.level_downsamples)
    try:  # MONAI: openslide.mpp-x/y, else the TIFF resolution tags; (y, x) in micrometres per pixel
        mpp = tuple(float(v) for v in reader.get_mpp(wsi, 0))
    except (ValueError, KeyError):
        mpp = None
    if mpp is not None and max(mpp) > _MAX_MPP:
        logger.info("%s: resolution %.1f um/px is a print/screen default (e.g. 72 dpi), not a microscope's: "
                    "resolution unknown", path, max(mpp))
        mpp = None
    return Slide(path, "openslide", reader, wsi, dims, downs, mpp)


def _open_cucim(path: Path) -> Slide:
    _require("cucim", "pip install cucim-cu12 (NVIDIA GPU and Linux only), or use backend='openslide'")
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


def _open_tifffile(path: Path) -> Slide:
    tifffile = _require("tifffile", "pip install tifffile imagecodecs")
    tif = tifffile.TiffFile(str(path))
    try:
        series = tif.series[0]
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
    slide._levels = [None] * len(levels)  # Zarr views, opened on first read of each level
    slide._extra["axes"] = axes
    return slide


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
            if max(mpp) <= _MAX_MPP:
                return mpp
            logger.info("%s: TIFF resolution %.1f um/px is a print/screen resolution (e.g. 72 dpi), not a "
                        "microscope's: resolution unknown", tif.filehandle.name, max(mpp))
    return None


def _open_pil(path: Path) -> Slide:
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


def slide_from_array(array, mpp: float | tuple[float, float] | None = None) -> Slide:
    """Wrap an in-memory ``(C, H, W)`` array (numpy or torch) as a one-level :class:`Slide`.

    Args:
        array: channel-first image, any dtype; :func:`read_region` returns that dtype.
        mpp: optional resolution in micrometres per pixel (``(y, x)`` or one value).

    Raises:
        ValueError: ``array`` is not 3-D.
    """
    arr = array.detach().cpu().numpy() if hasattr(array, "detach") else np.asarray(array)
    if arr.ndim != 3:
        raise ValueError(f"slide_from_array expects a (C, H, W) array, got shape {tuple(arr.shape)}")
    mpp_t = None if mpp is None else tuple(float(v) for v in np.broadcast_to(np.asarray(mpp, float), (2,)))
    return Slide(None, "array", None, arr, ((arr.shape[1], arr.shape[2]),), (1.0,), mpp_t, arr.shape[0], arr.dtype)


# ------------------------------------------------------------------------------------------- DICOM (pydicom)
def _open_dicom(path: Path) -> Slide:
    pydicom = _require("pydicom", "pip install pydicom (and Pillow for JPEG frames), or wsidicom")
    f = open(path, "rb")
    try:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        if "TotalPixelMatrixRows" not in ds or "NumberOfFrames" not in ds:
            raise ValueError(f"{path} is not a tiled DICOM whole-slide image (no TotalPixelMatrixRows/NumberOfFrames)")
        tsyntax = ds.file_meta.TransferSyntaxUID
        if not tsyntax.is_encapsulated:
            raise ValueError(
                f"{path}: native (uncompressed) DICOM WSI frames are not supported by the pydicom path; "
                "install wsidicom (`pip install wsidicom`)"
            )
        tag = f.read(4)  # dcmread(stop_before_pixels=True) leaves the file at the PixelData tag
        if tag != b"\xe0\x7f\x10\x00":
            raise ValueError(f"{path}: expected the PixelData element after the header, found tag bytes {tag!r}")
        f.read(8)  # VR 'OB', 2 reserved bytes, undefined length
        frames = _index_fragments(f, int(ds.NumberOfFrames), path)
        positions = _dicom_frame_positions(ds, len(frames))
    except Exception:
        f.close()
        raise
    rows, cols = int(ds.TotalPixelMatrixRows), int(ds.TotalPixelMatrixColumns)
    mpp = None
    try:
        spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing  # mm, (row, col)
        mpp = (float(spacing[0]) * 1000.0, float(spacing[1]) * 1000.0)
    except (AttributeError, IndexError, KeyError):
        pass
    slide = Slide(path, "dicom", None, ds, ((rows, cols),), (1.0,), mpp, channels=int(ds.SamplesPerPixel))
    slide._extra.update(file=f, frames=frames, positions=positions, tile=(int(ds.Rows), int(ds.Columns)))
    if positions is None:
        slide._extra["positions"] = _grid_order(ds, len(frames), _infer_frame_order(slide))
    return slide


def _index_fragments(f, n_frames: int, path: Path) -> list[tuple[int, int]]:
    """(file offset, length) of each frame of encapsulated pixel data, read from the item headers only."""
    items = []
    while True:
        head = f.read(8)
        if len(head) < 8:
            break
        group, elem, length = struct.unpack("<HHI", head)
        if (group, elem) == (0xFFFE, 0xE0DD):  # sequence delimiter
            break
        if (group, elem) != (0xFFFE, 0xE000):
            raise ValueError(f"{path}: malformed encapsulated pixel data (item tag {group:04X},{elem:04X})")
        items.append((f.tell(), length))
        f.seek(length, io.SEEK_CUR)
    bot, fragments = items[0], items[1:]
    if len(fragments) == n_frames:
        return fragments
    if bot[1]:
        f.seek(bot[0])
        offsets = list(struct.unpack(f"<{bot[1] // 4}I", f.read(bot[1])))
        base = fragments[0][0] - 8
        starts = [base + o for o in offsets] + [fragments[-1][0] + fragments[-1][1]]
        return [(s + 8, e - s - 8) for s, e in zip(starts[:-1], starts[1:])]  # one fragment per frame only
    raise ValueError(
        f"{path}: {len(fragments)} fragments for {n_frames} frames and no offset table; install wsidicom"
    )


def _dicom_frame_positions(ds, n: int) -> dict[tuple[int, int], int] | None:
    """Map (tile_row, tile_col) -> frame index.

    TILED_SPARSE: the per-frame plane positions. TILED_FULL (declared): row-major, as DICOM PS3.3 C.8.12.4
    specifies. Neither declared: ``None``; the caller infers the order from the pixels.
    """
    tr, tc = int(ds.Rows), int(ds.Columns)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and "PlanePositionSlideSequence" in per_frame[0]:
        out = {}
        for i, item in enumerate(per_frame):
            pos = item.PlanePositionSlideSequence[0]
            r = int(pos.RowPositionInTotalImagePixelMatrix) - 1
            c = int(pos.ColumnPositionInTotalImagePixelMatrix) - 1
            out[(r // tr, c // tc)] = i
        return out
    if str(ds.get("DimensionOrganizationType", "")).upper() == "TILED_FULL":
        return _grid_order(ds, n, "row")
    return None


def _grid_order(ds, n: int, order: str) -> dict[tuple[int, int], int]:
    n_rows = math.ceil(int(ds.TotalPixelMatrixRows) / int(ds.Rows))
    n_cols = math.ceil(int(ds.TotalPixelMatrixColumns) / int(ds.Columns))
    if order == "row":
        return {(i // n_cols, i % n_cols): i for i in range(min(n, n_rows * n_cols))}
    return {(i % n_rows, i // n_rows): i for i in range(min(n, n_rows * n_cols))}


def _infer_frame_order(slide: Slide) -> str:
    """Pick row- or column-major frame order by the continuity of pixels across interior tile seams.

    Used only when the file declares neither ``DimensionOrganizationType`` nor per-frame positions (e.g.
    ``small_dicom_wsi.dcm`` from pathml's test data stores its 6 x 7 frames column by column). A handful of
    interior frames is decoded, whatever the slide size.
    """
    ds, n = slide.wsi, len(slide._extra["frames"])
    n_rows = math.ceil(int(ds.TotalPixelMatrixRows) / int(ds.Rows))
    n_cols = math.ceil(int(ds.TotalPixelMatrixColumns) / int(ds.Columns))
    if n_rows < 3 or n_cols < 3:
        return "row"
    cache: dict[int, np.ndarray] = {}
    scores = {}
    for order in ("row", "column"):
        grid = _grid_order(ds, n, order)
        diffs = []
        for r in range(max(0, n_rows // 2 - 1), min(n_rows - 2, n_rows // 2 + 1) + 1):
            for c in range(max(0, n_cols // 2 - 1), min(n_cols - 2, n_cols // 2 + 1) + 1):
                a, right, down = (_decode_frame(slide, grid[k], cache) for k in ((r, c), (r, c + 1), (r + 1, c)))
                diffs += [np.abs(a[:, -1] - right[:, 0]).mean(), np.abs(a[-1] - down[0]).mean()]
        scores[order] = float(np.mean(diffs))
    order = min(scores, key=scores.get)
    logger.warning(
        "%s declares no DimensionOrganizationType: inferred %s-major frame order from tile seams "
        "(mean seam difference row %.1f, column %.1f grey levels)",
        slide.path, order, scores["row"], scores["column"],
    )
    return order


def _decode_frame(slide: Slide, idx: int, cache: dict | None = None) -> np.ndarray:
    from PIL import Image

    if cache is not None and idx in cache:
        return cache[idx]
    f = slide._extra["file"]
    off, length = slide._extra["frames"][idx]
    f.seek(off)
    tr, tc = slide._extra["tile"]
    with Image.open(io.BytesIO(f.read(length))) as im:
        tile = np.asarray(im.convert("RGB" if slide.channels == 3 else "L")).reshape(tr, tc, -1)
    if cache is not None:
        cache[idx] = tile.astype(np.float32)
        return cache[idx]
    return tile


def _read_dicom(slide: Slide, y: int, x: int, h: int, w: int) -> np.ndarray:
    tr, tc = slide._extra["tile"]
    positions = slide._extra["positions"]
    out = np.zeros((h, w, slide.channels), np.uint8)  # frames absent from a sparse slide stay 0
    for r in range(y // tr, (y + h - 1) // tr + 1):
        for c in range(x // tc, (x + w - 1) // tc + 1):
            idx = positions.get((r, c))
            if idx is None:
                continue
            tile = _decode_frame(slide, idx)
            y0, x0 = max(y, r * tr), max(x, c * tc)
            y1, x1 = min(y + h, (r + 1) * tr), min(x + w, (c + 1) * tc)
            out[y0 - y : y1 - y, x0 - x : x1 - x] = tile[y0 - r * tr : y1 - r * tr, x0 - c * tc : x1 - c * tc]
    return out


_OPENERS = {
    "openslide": _open_openslide,
    "tifffile": _open_tifffile,
    "cucim": _open_cucim,
    "dicom": _open_dicom,
    "pil": _open_pil,
}


# ---------------------------------------------------------------------------------------------- levels/mpp
def _check_level(slide: Slide, level: int) -> int:
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)):
        raise TypeError(f"level must be an int, got {level!r} ({type(level).__name__}) for {slide.name}")
    if not 0 <= level < slide.level_count:
        raise ValueError(
            f"level {level} is out of range for {slide.path or slide.name}: valid levels are "
            f"0..{slide.level_count - 1} (dimensions (h, w) {list(slide.level_dimensions)})"
        )
    return int(level)


def resolve_level(slide: Slide, level: int | None = None, mpp: float | None = None, rtol: float = 0.05) -> int:
    """Pick a pyramid level by index or by resolution.

    With ``mpp``, the chosen level is the coarsest one whose resolution is at least as fine as requested
    (largest level mpp <= ``mpp * (1 + rtol)``), so patches are never upsampled from a coarser level.

    Args:
        slide: an opened :class:`Slide`.
        level: pyramid level index (0 = full resolution).
        mpp: requested resolution in micrometres per pixel (x axis is used; slides are square-pixelled).
        rtol: relative tolerance on ``mpp`` (0.05 lets 0.5 um/px select a 0.499 um/px level).

    Returns:
        the level index; 0 when neither ``level`` nor ``mpp`` is given.

    Raises:
        ValueError: both given; ``level`` out of range (names the level and the valid range); ``mpp`` not
            positive, finer than level 0, or the slide has no resolution metadata (names the file).
    """
    if level is not None and mpp is not None:
        raise ValueError(f"give either level or mpp, not both (got level={level}, mpp={mpp}) for {slide.name}")
    if mpp is None:
        return _check_level(slide, 0 if level is None else level)
    if not mpp > 0:
        raise ValueError(f"mpp must be > 0 micrometres per pixel, got {mpp}")
    if slide.mpp is None:
        raise ValueError(
            f"{slide.path or slide.name} has no resolution metadata (micrometres per pixel); select a level by "
            f"index instead (levels 0..{slide.level_count - 1})"
        )
    mpps = [slide.level_mpp(i)[1] for i in range(slide.level_count)]
    ok = [i for i, m in enumerate(mpps) if m <= mpp * (1 + rtol)]
    if not ok:
        raise ValueError(
            f"requested {mpp} um/px is finer than level 0 ({mpps[0]:.4g} um/px) of {slide.path or slide.name}; "
            f"available: {[round(m, 4) for m in mpps]}"
        )
    return max(ok, key=lambda i: mpps[i])


# ---------------------------------------------------------------------------------------------- reading
def read_region(
    slide: Slide,
    location: Sequence[int] = (0, 0),
    size: Sequence[int] | None = None,
    level: int = 0,
    fill: int | float = 0,
) -> np.ndarray:
    """Read a window of a slide.

    Args:
        slide: an opened :class:`Slide`.
        location: ``(y, x)`` of the window's top-left pixel in the level-0 frame (MONAI's convention).
        size: ``(h, w)`` in pixels at ``level``; ``None`` reads the whole level (only sensible for small
            levels or images).
        level: pyramid level.
        fill: value of pixels of the window that fall outside the image (windows may overhang the border).

    Returns:
        ``(C, h, w)`` array, ``uint8`` for slides (the array's dtype for :func:`slide_from_array`), RGB
        channel order; the alpha channel of RGBA slides is dropped by the OpenSlide path (MONAI ``mode="RGB"``).
        At levels > 0 OpenSlide renders non-integer level positions with sub-pixel interpolation, so its
        windows can differ by a few grey levels from the tifffile backend's (identical at level 0).

    Raises:
        ValueError: ``level`` out of range, non-positive ``size``, or ``location`` outside level 0.
    """
    level = _check_level(slide, level)
    lh, lw = slide.level_dimensions[level]
    ds = slide.level_downsamples[level]
    if size is None:
        if tuple(location) != (0, 0):
            raise ValueError("size must be given when location is not (0, 0)")
        size = (lh, lw)
    y0, x0 = int(location[0]), int(location[1])
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"region size must be positive (h, w), got {tuple(size)}")
    h0, w0 = slide.level_dimensions[0]
    if not (-h * ds < y0 < h0 and -w * ds < x0 < w0):
        raise ValueError(
            f"region at level-0 location (y, x)={(y0, x0)} size {(h, w)} at level {level} lies outside "
            f"{slide.name} (level-0 size (h, w)={(h0, w0)})"
        )
    ly, lx = int(round(y0 / ds)), int(round(x0 / ds))  # top-left at the level (nearest pixel, as OpenSlide)
    cy0, cx0 = max(ly, 0), max(lx, 0)
    cy1, cx1 = min(ly + h, lh), min(lx + w, lw)
    # level-0 location of the clipped window (the caller's own location when nothing is clipped)
    loc0 = (y0 if cy0 == ly else int(round(cy0 * ds)), x0 if cx0 == lx else int(round(cx0 * ds)))
    inner = _read_inside(slide, level, cy0, cx0, cy1 - cy0, cx1 - cx0, loc0)
    if (cy0, cx0, cy1, cx1) == (ly, lx, ly + h, lx + w):
        return inner
    out = np.full((inner.shape[0], h, w), fill, dtype=inner.dtype)
    out[:, cy0 - ly : cy1 - ly, cx0 - lx : cx1 - lx] = inner
    return out


def _read_inside(slide: Slide, level: int, y: int, x: int, h: int, w: int, loc0: tuple[int, int]) -> np.ndarray:
    """Read a window inside ``level``: ``(y, x)`` in that level's pixels, ``loc0`` the same in level 0."""
    b = slide.backend
    if b == "array":
        return slide.wsi[:, y : y + h, x : x + w]
    if b == "pil":  # (H, W, C) as decoded
        return np.ascontiguousarray(np.moveaxis(slide.wsi[y : y + h, x : x + w], -1, 0))
    if b == "tifffile":
        arr = _tiff_level(slide, level)
        axes = slide._extra["axes"]
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
    if b == "dicom":
        return np.ascontiguousarray(np.moveaxis(_read_dicom(slide, y, x, h, w), -1, 0))
    # openslide / cucim through MONAI (channel_dim=0, uint8, RGB); they map level-0 locations themselves
    patch, _ = slide.reader.get_data(slide.wsi, location=loc0, size=(h, w), level=level)
    return np.asarray(patch)


def _tiff_level(slide: Slide, level: int):
    if slide._levels[level] is None:
        zarr = _require("zarr", "pip install zarr")
        store = slide.wsi.series[0].aszarr(level=level)
        slide._levels[level] = zarr.open(store, mode="r")
    return slide._levels[level]


def read_thumbnail(
    slide: Slide, max_size: int = 2048, level: int | None = None, tile: int = 4096
) -> tuple[np.ndarray, float]:
    """Read a whole level shrunk to at most ``max_size`` pixels per side, tile by tile.

    The coarsest pyramid level is used unless ``level`` is given; if it is still larger than ``max_size``
    it is read in ``tile``-sized windows, each averaged over ``f x f`` blocks (``f = ceil(side / max_size)``),
    so peak memory is one window plus the result, whatever the slide size.

    Args:
        slide: an opened :class:`Slide`.
        max_size: largest side of the result, in pixels.
        level: pyramid level to read from (default: the coarsest).
        tile: side of the windows read at ``level`` (rounded to a multiple of ``f``).

    Returns:
        ``(image, downsample)``: ``(C, h, w)`` ``uint8`` (block means, rounded) and its downsample factor
        relative to level 0 (``level_downsample * f``).
    """
    level = slide.level_count - 1 if level is None else _check_level(slide, level)
    lh, lw = slide.level_dimensions[level]
    f = max(1, math.ceil(max(lh, lw) / max_size))
    ds = slide.level_downsamples[level]
    if f == 1:
        return np.asarray(read_region(slide, (0, 0), None, level)), ds
    step = f * max(1, tile // f)
    out = np.zeros((slide.channels, math.ceil(lh / f), math.ceil(lw / f)), np.uint8)
    for ty in range(0, lh, step):
        for tx in range(0, lw, step):
            h, w = min(step, lh - ty), min(step, lw - tx)
            win = read_region(slide, (int(round(ty * ds)), int(round(tx * ds))), (h, w), level)
            ph, pw = -h % f, -w % f
            if ph or pw:  # replicate the border so partial blocks average real pixels only
                win = np.pad(win, ((0, 0), (0, ph), (0, pw)), mode="edge")
            c, hh, ww = win.shape
            blocks = win.reshape(c, hh // f, f, ww // f, f).mean(axis=(2, 4))
            out[:, ty // f : ty // f + blocks.shape[1], tx // f : tx // f + blocks.shape[2]] = np.round(blocks)
    return out, ds * f
