"""Reading an image file once, fully, for the integrity check: its pixels and what the file says about them.

:func:`read_image` is the one read the integrity check makes of every file (:mod:`medpipe.data.integrity`): it
detects truncated, empty and unreadable files, and keeps the pixel array so that the checks against the
pipeline's transforms (:mod:`medpipe.data.expectations`) need no second read. :class:`ImageFile` computes the
value statistics those checks ask for lazily and at most once (range, non-finite values, label values).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import numpy as np

from medpipe.data.cases import DataError

__all__ = ["ImageFile", "read_image", "PIL_MODES"]

#: Pillow modes -> (bits per sample, words for messages). ``I;16*`` are 16-bit grey PNG / TIFF / PGM files.
PIL_MODES: Dict[str, Tuple[int, str]] = {
    "1": (1, "1-bit black and white"), "L": (8, "8-bit grey"), "P": (8, "8-bit palette"),
    "LA": (8, "8-bit grey + alpha"), "RGB": (8, "8-bit RGB"), "RGBA": (8, "8-bit RGBA"), "CMYK": (8, "8-bit CMYK"),
    "YCbCr": (8, "8-bit YCbCr"), "I;16": (16, "16-bit grey"), "I;16B": (16, "16-bit grey"),
    "I;16L": (16, "16-bit grey"), "I": (32, "32-bit integer grey"), "F": (32, "32-bit float grey"),
}


#: Pillow modes whose extrema and (single band, 8 bits) histograms Pillow computes without a NumPy copy
_PIL_EXTREMA = ("L", "P", "LA", "RGB", "RGBA", "CMYK", "YCbCr", "I;16", "I;16B", "I;16L", "I")


@dataclass
class ImageFile:
    """One image file as read by :func:`read_image`.

    Attributes:
        path: the file.
        shape: spatial shape in pixels (voxels): ``(H, W)`` for Pillow files, NIfTI's array shape without a 4th
            axis, DICOM ``(Rows, Columns)`` or ``(Frames, Rows, Columns)``, ``.npy``'s shape; NRRD / MetaImage files and DICOM
            series folders ``(I, J, K)`` as MONAI loads them (:mod:`medpipe.data.volumes`).
        array: the pixel values as the loaders see them (DICOM with ``RescaleSlope`` / ``RescaleIntercept``
            applied, NIfTI with its scaling), or ``None`` for a Pillow file (then :meth:`pixels`
            makes it from ``pil`` when a check needs it).
        channels: samples per pixel (1 grey, 3 RGB, 4 RGBA, ...) where the format says so (Pillow, DICOM), else
            ``None``.
        bits: bits per sample stored in the file (8 for an 8-bit PNG, 16 for ``I;16``), or ``None``.
        kind: the format and pixel type in words for messages, e.g. ``"PNG, 16-bit grey (mode I;16)"``.
        via_pillow: read with Pillow (PNG, JPEG, TIFF, BMP, Netpbm): a 2-D image format with a bit depth.
        nonfinite_scaling: DICOM ``RescaleSlope`` / ``RescaleIntercept`` that is NaN or infinite (as text).
        pil: the loaded ``PIL.Image`` of a Pillow file, else ``None``.
        affine: ``(4, 4)`` float64 RAS affine of a volume (NIfTI, NRRD / MetaImage, DICOM series: mm), as MONAI's
            readers give it, else ``None``.
        file_shape: the array's full shape in the file (a NIfTI's 4th axis included), ``()`` when unknown.
    """

    path: str
    shape: Tuple[int, ...]
    array: Optional[np.ndarray] = None
    channels: Optional[int] = None
    bits: Optional[int] = None
    kind: str = ""
    via_pillow: bool = False
    nonfinite_scaling: str = ""
    pil: Any = None
    affine: Optional[np.ndarray] = None
    file_shape: Tuple[int, ...] = ()
    _cache: Dict[object, object] = field(default_factory=dict, repr=False)

    def _get(self, key, compute):
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def pixels(self) -> Optional[np.ndarray]:
        """The pixel array (made once from ``pil`` for a Pillow file, as ``numpy.asarray`` and MONAI's
        ``PILReader`` do)."""
        if self.array is None and self.pil is not None:
            self.array = np.asarray(self.pil)
        return self.array

    @property
    def size(self) -> int:
        """Number of values (pixels x channels)."""
        if self.pil is not None:
            return self.pil.width * self.pil.height * len(self.pil.getbands())
        return 0 if self.array is None else int(self.array.size)

    @property
    def is_float(self) -> bool:
        """The values are floating point (they may hold NaN / inf)."""
        if self.pil is not None:
            return self.pil.mode == "F"
        return self.array is not None and np.issubdtype(self.array.dtype, np.floating)

    def type_range(self) -> Optional[Tuple[float, float]]:
        """The range the file's integer sample type can hold (``(0, 255)`` for 8 bits per sample), known without
        looking at the pixels; ``None`` for floats and unknown types."""
        if self.pil is not None:
            if self.pil.mode == "1":
                return 0.0, 1.0
            return (0.0, float(2 ** self.bits - 1)) if self.bits in (8, 16) else None
        if self.array is not None and self.array.dtype.kind in "ui":
            info = np.iinfo(self.array.dtype)
            return float(info.min), float(info.max)
        return None

    def nonfinite(self) -> int:
        """Number of NaN / infinite values (0 for integer data; two reductions, no copy, when there is none)."""
        def count() -> int:
            if not self.is_float or not self.size:
                return 0
            a = self.pixels()
            if math.isfinite(float(a.min())) and math.isfinite(float(a.max())):  # NaN and inf propagate
                return 0
            return int(a.size - np.count_nonzero(np.isfinite(a)))
        return self._get("nonfinite", count)

    def value_range(self) -> Tuple[float, float]:
        """``(min, max)`` of the finite values (``(0, 0)`` for an empty or all-non-finite array)."""
        def compute() -> Tuple[float, float]:
            if not self.size:
                return 0.0, 0.0
            if self.pil is not None and self.pil.mode in _PIL_EXTREMA:
                ext = self.pil.getextrema()
                ext = ext if isinstance(ext[0], tuple) else (ext,)
                return float(min(e[0] for e in ext)), float(max(e[1] for e in ext))
            a = self.pixels()
            if self.nonfinite():
                a = a[np.isfinite(a)]
                if a.size == 0:
                    return 0.0, 0.0
            return float(a.min()), float(a.max())
        return self._get("range", compute)

    def fraction_above(self, threshold: float) -> float:
        """Fraction of the values greater than ``threshold`` (0 without a pass when the maximum is not)."""
        def compute() -> float:
            if not self.size or self.value_range()[1] <= threshold:
                return 0.0
            return float(np.count_nonzero(self.pixels() > threshold)) / self.size
        return self._get(("above", threshold), compute)

    def values(self, limit: int = 1000) -> Optional[np.ndarray]:
        """The distinct values (sorted), e.g. of a label mask; ``None`` when there are more than ``limit``
        (then the file is no mask of class values). Counted by Pillow's histogram for 8-bit grey and palette
        files, by ``np.bincount`` for other 8- and 16-bit integers."""
        def compute() -> Optional[np.ndarray]:
            if self.pil is not None and self.pil.mode in ("L", "P"):
                found = np.flatnonzero(np.asarray(self.pil.histogram()))
            else:
                a = self.pixels()
                if a is None:
                    return np.array([])
                if a.dtype == np.bool_ or (a.dtype.kind == "u" and a.dtype.itemsize <= 2):
                    found = np.flatnonzero(np.bincount(a.ravel()))
                else:
                    found = np.unique(a)
            return found if found.size <= limit else None
        return self._get(("values", limit), compute)


def _read_pillow(path: str) -> ImageFile:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        bits, words = PIL_MODES.get(im.mode, (None, f"mode {im.mode}"))
        return ImageFile(path, (im.height, im.width), None, len(im.getbands()), bits,
                         f"{im.format or 'image'}, {words} (mode {im.mode})", via_pillow=True, pil=im)


def _read_dicom(path: str) -> ImageFile:
    import pydicom

    ds = pydicom.dcmread(path)
    raw = ds.pixel_array
    channels = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    shape = tuple(raw.shape[:3] if frames > 1 else raw.shape[:2])
    slope, intercept = getattr(ds, "RescaleSlope", None), getattr(ds, "RescaleIntercept", None)
    bad = [f"{name} {value}" for name, value in (("RescaleSlope", slope), ("RescaleIntercept", intercept))
           if value is not None and not math.isfinite(float(value))]
    arr = raw
    if not bad and (slope not in (None, 1) or intercept not in (None, 0)):
        arr = raw.astype(np.float32) * float(slope if slope is not None else 1) + float(intercept or 0)
    bits = getattr(ds, "BitsStored", None)
    return ImageFile(path, shape, arr, channels, int(bits) if bits else None,
                     f"DICOM, {bits}-bit {ds.get('PhotometricInterpretation', '')}".strip(),
                     nonfinite_scaling=", ".join(bad))


def _read_volume(path: str, series_uid=None) -> ImageFile:
    """A DICOM series folder or an NRRD / MetaImage file, through MONAI's readers as the loaders read it."""
    from medpipe.data.volumes import load_volume, select_series

    if os.path.isdir(path):
        info = select_series(path, series_uid)  # one series, no gap: DataError naming the folder otherwise
        kind = f"DICOM series {info.uid} ({info.n_slices} slices)"
    else:
        kind = f"{os.path.splitext(path)[1].lstrip('.').upper()} volume"
    vol = load_volume(path, series_uid)  # (C, I, J, K) MetaTensor
    arr = vol.numpy()
    arr = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)
    return ImageFile(path, tuple(vol.shape[1:]), arr, int(vol.shape[0]), None, kind,
                     affine=np.asarray(vol.affine, dtype=np.float64), file_shape=tuple(arr.shape))


def read_image(path: str, series_uid=None) -> ImageFile:
    """Read an image file fully (to detect truncation) and keep its pixels.

    PNG/JPEG/TIFF/PGM/BMP through Pillow (the values ``numpy.asarray`` gives, as MONAI's ``PILReader`` does),
    NIfTI through nibabel (scaled values, its affine and full shape), DICOM through pydicom (``RescaleSlope`` /
    ``RescaleIntercept`` applied), ``.npy`` through numpy; NRRD / MetaImage files and DICOM series folders through
    MONAI's readers with their RAS affine (:func:`medpipe.data.volumes.load_volume`).

    Args:
        path: the image file (or DICOM series folder).
        series_uid: for a folder holding several DICOM series, the *SeriesInstanceUID* (or list of them) to read
            (``data.series_uid``; :func:`medpipe.data.volumes.select_series`).

    Returns:
        The :class:`ImageFile`.

    Raises:
        DataError: the file is missing, empty, truncated or not an image of its type; a folder without one DICOM
            series to read or with a missing slice (:func:`medpipe.data.volumes.select_series`); names the file.
    """
    from medpipe.data.volumes import ITK_SUFFIXES

    low = path.lower()
    if os.path.isdir(path) or (os.path.isfile(path) and os.path.getsize(path) and low.endswith(ITK_SUFFIXES)):
        try:
            return _read_volume(path, series_uid)
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{path}: cannot read volume ({type(exc).__name__}: {exc})") from exc
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: file is empty (0 bytes)")
    try:
        if low.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            img = nib.load(path)
            arr = np.asanyarray(img.dataobj)  # forces a full read
            shape = tuple(img.shape[:3]) if len(img.shape) > 3 else tuple(img.shape)
            stored = np.dtype(img.get_data_dtype())
            return ImageFile(path, shape, arr, None, stored.itemsize * 8, f"NIfTI, {stored.name}",
                             affine=np.asarray(img.affine, dtype=np.float64), file_shape=tuple(img.shape))
        if low.endswith(".dcm"):
            return _read_dicom(path)
        if low.endswith(".npy"):
            arr = np.load(path)
            return ImageFile(path, tuple(arr.shape), arr, None, arr.dtype.itemsize * 8, f"NumPy, {arr.dtype.name}")
        return _read_pillow(path)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc
