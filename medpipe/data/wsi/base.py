"""The opened-slide object shared by every backend, and the small helpers the backends share.

:class:`Slide` holds the backend handles and the pyramid geometry; the backend modules
(:mod:`.monai_backends`, :mod:`.tiff`, :mod:`.pil`, :mod:`.dicom`) build it and read windows from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.data.cases import DataError

__all__ = ["Slide", "SlideError", "BACKENDS", "MAX_MPP", "check_level", "require", "try_import", "describe_size"]

#: Values of ``backend=`` accepted by :func:`medpipe.data.wsi.open_slide`.
BACKENDS = ("auto", "openslide", "tifffile", "cucim", "dicom", "pil")

#: Coarsest resolution taken as a microscope's, micrometres per pixel: coarser TIFF resolutions (< 508 dpi) are
#: print/screen defaults (e.g. 72 dpi = 353 um/px), and the slide's resolution is then unknown.
MAX_MPP = 50.0


class SlideError(DataError):
    """A slide file that cannot be used as asked: truncated or corrupt, a pixel format the caller cannot take, or
    too large for the memory limit. A :class:`~medpipe.data.cases.DataError` (so a ``ValueError``); the message
    is one line that names the file, what was found and what was expected."""


def describe_size(path) -> str:
    """``"N bytes"`` (the file's size on disk), or ``"size unknown"``, for messages about damaged files."""
    try:
        return f"{Path(path).stat().st_size} bytes"
    except OSError:
        return "size unknown"


@dataclass
class Slide:
    """An opened slide: backend handles plus pyramid geometry.

    Attributes:
        path: the file (``None`` for an in-memory array).
        backend: one of ``"openslide"``, ``"tifffile"``, ``"cucim"``, ``"dicom"``, ``"pil"``, ``"array"``.
        reader: the MONAI ``WSIReader`` for the ``openslide``/``cucim``/``tifffile`` backends, else ``None``
            (for ``tifffile`` it is created on first access: windows are read through tifffile's Zarr store).
        wsi: the opened backend object (``OpenSlide``, ``CuImage``, ``TiffFile``, pydicom ``Dataset``), the
            decoded Pillow ``Image`` for ``pil`` (in Pillow's own pixel format; windows are converted as they are
            read), or the ``(C, H, W)`` array for ``array``.
        level_dimensions: ``(height, width)`` in pixels of each pyramid level, level 0 first.
        level_downsamples: downsample factor of each level relative to level 0 (1.0 for level 0).
        mpp: level-0 resolution ``(y, x)`` in micrometres per pixel, or ``None`` when the file does not say.
        channels: number of channels returned by :func:`medpipe.data.wsi.read_region` (3 for RGB slides).
        dtype: numpy dtype returned by :func:`medpipe.data.wsi.read_region` (``uint8`` for slides).
        level_stores: backend-specific per-level handles (tifffile: the Zarr array of each level, opened on its
            first read; ``None`` until then).
        backend_state: backend-specific state (tifffile: ``axes``; dicom: ``file``, ``frames``, ``positions``,
            ``tile``; pil: ``mode``, ``bits``; any backend: ``shift_to_uint8`` when 16-bit pixels are mapped to
            8 bits as they are read; see the backend modules).
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
    level_stores: list = field(default_factory=list, repr=False)
    backend_state: dict = field(default_factory=dict, repr=False)

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
        """Resolution ``(y, x)`` in micrometres per pixel at ``level``, ``None`` when unknown.

        Raises:
            TypeError, ValueError: see :func:`check_level`.
        """
        check_level(self, level)
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
        handle = self.backend_state.get("file") or (
            self.wsi if self.backend in ("openslide", "tifffile", "pil") else None
        )
        if handle is not None and hasattr(handle, "close"):
            handle.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_level(slide: Slide, level: int) -> int:
    """Validate a pyramid level index.

    Args:
        slide: the slide.
        level: the level index.

    Returns:
        ``level`` as a Python int.

    Raises:
        TypeError: ``level`` is not an int (bools refused).
        ValueError: ``level`` out of range (names the slide, the valid range and the level dimensions).
    """
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)):
        raise TypeError(f"level must be an int, got {level!r} ({type(level).__name__}) for {slide.name}")
    if not 0 <= level < slide.level_count:
        raise ValueError(
            f"level {level} is out of range for {slide.path or slide.name}: valid levels are "
            f"0..{slide.level_count - 1} (dimensions (h, w) {list(slide.level_dimensions)})"
        )
    return int(level)


def try_import(name: str):
    """The module ``name``, or ``None`` when it is not installed."""
    try:
        return __import__(name)
    except ImportError:
        return None


def require(name: str, hint: str):
    """The module ``name``.

    Raises:
        ImportError: it is not installed; the message names it and gives ``hint`` (what to ``pip install``).
    """
    try:
        return __import__(name)
    except ImportError as e:
        raise ImportError(f"the {name!r} package is needed here: {hint}") from e
