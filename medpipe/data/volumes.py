"""3D volumes: DICOM series folders (listing, series selection, slice order and gaps), volume geometry, loading.

A volume loads as MONAI does it, ``(C, H, W, D)`` with its RAS affine (``LoadImaged`` + ``EnsureChannelFirstd``):
NIfTI through ``NibabelReader``, NRRD / MHA through ``ITKReader``, and a **DICOM series** (a folder of slices)
through :class:`DicomSeriesReader`, MONAI's ``ITKReader`` given the slice files this module chose:

* the folder's DICOM files are grouped by *SeriesInstanceUID* (0020,000E) (:func:`list_series`); a folder holding
  several series needs the one to load named (``data.series_uid``), else :func:`select_series` raises an error
  listing each series with its description and slice count. MONAI's ``ITKReader`` would take the first GDCM series
  silently, and ``PydicomReader`` stacks every file of the folder by *InstanceNumber*;
* slices are sorted by *ImagePositionPatient* projected on the slice normal (the cross product of the two
  *ImageOrientationPatient* directions), ascending, as GDCM's ``IPPSorter`` and nibabel's DICOM affine
  (https://nipy.org/nibabel/dicom/dicom_orientation.html) do;
* a step between neighbouring slices larger than 1.5 x the median step is a missing slice, and two slices at the
  same position a duplicate: both are errors naming the folder and the position (:func:`check_slice_gaps`);
  ITK would read such a series with a wrong, uniform spacing;
* pixel decoding (rescale slope / intercept, compressed transfer syntaxes), spacing, direction and origin are
  ITK's (``itk.imread`` of the sorted files), the affine MONAI's (``ITKReader.get_data``, LPS -> RAS): the array
  is ``(columns, rows, slices)``, like the ``(i, j, k)`` of a NIfTI file.

:func:`add_series_reader` gives every ``LoadImage(d)`` of a chain a :class:`DicomSeriesReader` for folders (medpipe's
``build_transforms`` does it), so a folder is read this way whatever the chain's ``reader``; files go to the
chain's own readers. :func:`volume_geometry` reads a file's shape and affine from its header only (the mask
writer uses it to write a mask on its input's grid).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from monai.data import ITKReader
from monai.transforms import LoadImage

from medpipe.data.cases import DataError

logger = logging.getLogger(__name__)

__all__ = ["SeriesInfo", "is_dicom_series_folder", "list_series", "select_series", "check_slice_gaps",
           "DicomSeriesReader", "SeriesAwareLoadImage", "add_series_reader", "volume_geometry", "load_volume", "ITK_SUFFIXES",
           "GAP_FACTOR"]

#: suffixes read through ITK (header and pixels): NRRD, MetaImage
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
#: a step between slices above this many median steps is a missing slice
GAP_FACTOR = 1.5
_PROBE_FILES = 16  # files looked at to decide whether a folder is a DICOM series

SeriesUid = Union[None, str, Sequence[str]]


def _is_dicom_part10(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def is_dicom_series_folder(path: Union[str, os.PathLike]) -> bool:
    """Whether ``path`` is a folder holding DICOM files (a ``.dcm`` / ``.dicom`` name or the Part 10 preamble, among
    its first 16 files; sub-folders are not looked into)."""
    path = str(path)
    if not os.path.isdir(path):
        return False
    names = sorted(os.listdir(path))[:_PROBE_FILES]
    return any(os.path.isfile(os.path.join(path, n)) and (n.lower().endswith((".dcm", ".dicom"))
                                                         or _is_dicom_part10(os.path.join(path, n))) for n in names)


@dataclass
class SeriesInfo:
    """One DICOM series of a folder, its slices in order.

    Attributes:
        folder: the folder.
        uid: *SeriesInstanceUID*.
        description: *SeriesDescription* (``""`` if absent).
        files: slice files sorted by position along the slice normal, ascending.
        positions: ``(N,)`` float64, each slice's *ImagePositionPatient* projected on the normal, mm, ascending.
        normal: ``(3,)`` unit slice normal (LPS), the cross product of the *ImageOrientationPatient* directions.
        orientation: ``(6,)`` *ImageOrientationPatient* of the first slice.
        pixel_spacing: ``(2,)`` *PixelSpacing* (row spacing, column spacing), mm.
        origin: ``(3,)`` *ImagePositionPatient* of the first slice (LPS), mm.
        rows, columns: *Rows*, *Columns*.
    """

    folder: str
    uid: str
    description: str = ""
    files: List[str] = field(default_factory=list)
    positions: np.ndarray = field(default_factory=lambda: np.zeros(0))
    normal: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 1.0]))
    orientation: np.ndarray = field(default_factory=lambda: np.array([1.0, 0, 0, 0, 1, 0]))
    pixel_spacing: np.ndarray = field(default_factory=lambda: np.ones(2))
    origin: np.ndarray = field(default_factory=lambda: np.zeros(3))
    rows: int = 0
    columns: int = 0

    @property
    def n_slices(self) -> int:
        """Number of slices."""
        return len(self.files)

    def slice_step(self) -> float:
        """The median distance between neighbouring slices along the normal, mm (1.0 for one slice)."""
        return float(np.median(np.diff(self.positions))) if len(self.positions) > 1 else 1.0

    def affine(self) -> np.ndarray:
        """``(4, 4)`` RAS affine of the ``(columns, rows, slices)`` array (nibabel's DICOM affine, LPS -> RAS).

        Column ``i`` (array axis 0) runs along the first *ImageOrientationPatient* direction with the column
        spacing *PixelSpacing[1]*, row ``j`` along the second with *PixelSpacing[0]*, slice ``k`` along the
        normal with :meth:`slice_step`.
        """
        lps = np.eye(4)
        lps[:3, 0] = self.orientation[:3] * self.pixel_spacing[1]
        lps[:3, 1] = self.orientation[3:] * self.pixel_spacing[0]
        lps[:3, 2] = self.normal * self.slice_step()
        lps[:3, 3] = self.origin
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps

    def summary(self) -> str:
        """``<uid> ("<description>", <n> slices)`` for messages."""
        return f"{self.uid} ({self.description!r}, {self.n_slices} slices)"


def _headers(folder: str) -> List[Tuple[str, object]]:
    import pydicom

    out = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        if not (name.lower().endswith((".dcm", ".dicom")) or _is_dicom_part10(path)):
            continue
        try:
            out.append((path, pydicom.dcmread(path, stop_before_pixels=True)))
        except Exception as exc:  # InvalidDicomError, EOFError, OSError
            raise DataError(f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc}); expected the slices "
                            f"of a DICOM series in {folder}") from None
    return out


def _series_from(folder: str, uid: str, items: List[Tuple[str, object]]) -> SeriesInfo:
    first = items[0][1]
    missing = [k for k in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing")
               if any(ds.get(k) is None for _, ds in items)]
    if missing:
        raise DataError(f"{folder}: series {uid} has slices without {', '.join(missing)}; expected the position, "
                        "orientation and pixel spacing of every slice of a 3D series")
    iop = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    normal /= np.linalg.norm(normal) or 1.0
    pos = np.array([float(np.dot(np.asarray(ds.ImagePositionPatient, dtype=np.float64), normal)) for _, ds in items])
    order = np.argsort(pos, kind="stable")
    first_sorted = items[order[0]][1]
    return SeriesInfo(folder, uid, str(first.get("SeriesDescription", "") or ""), [items[i][0] for i in order],
                      pos[order], normal, iop, np.asarray(first.PixelSpacing, dtype=np.float64),
                      np.asarray(first_sorted.ImagePositionPatient, dtype=np.float64), int(first.Rows),
                      int(first.Columns))


def list_series(folder: Union[str, os.PathLike]) -> List[SeriesInfo]:
    """The DICOM series of a folder (its files only, not sub-folders), read from the headers (no pixels).

    Args:
        folder: a folder of DICOM slices.

    Returns:
        One :class:`SeriesInfo` per *SeriesInstanceUID*, slices sorted along the normal; sorted by UID.

    Raises:
        DataError: not a folder, no DICOM file in it, an unreadable DICOM file, or slices without position,
            orientation or pixel spacing (names the folder or file).
    """
    folder = str(folder)
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: not a folder; expected a folder of DICOM slices (a series)")
    groups: dict = {}
    for path, ds in _headers(folder):
        groups.setdefault(str(ds.get("SeriesInstanceUID", "") or ""), []).append((path, ds))
    if not groups:
        raise DataError(f"{folder}: no DICOM files; expected a folder of DICOM slices (a series)")
    return [_series_from(folder, uid, items) for uid, items in sorted(groups.items())]


def check_slice_gaps(info: SeriesInfo, factor: float = GAP_FACTOR) -> None:
    """Refuse a series with a missing or duplicated slice.

    Args:
        info: the series (:func:`list_series`).
        factor: a step between neighbouring slices above ``factor`` x the median step is a gap.

    Raises:
        DataError: a gap (names the folder, the positions in mm along the normal on either side, the slice files
            and the median step) or two slices at one position (within 1e-3 of the median step).
    """
    if info.n_slices < 2:
        return
    steps = np.diff(info.positions)
    median = float(np.median(steps))
    for k, step in enumerate(steps):
        if step > factor * median:
            raise DataError(
                f"{info.folder}: series {info.uid} has a gap of {step:g} mm between slices at {info.positions[k]:g} "
                f"and {info.positions[k + 1]:g} mm along the slice normal ({os.path.basename(info.files[k])} and "
                f"{os.path.basename(info.files[k + 1])}, slices {k} and {k + 1} of {info.n_slices}); expected a step "
                f"of {median:g} mm (the median): a slice is missing")
        if step <= 1e-3 * max(median, 1e-6):
            raise DataError(f"{info.folder}: series {info.uid} has two slices at {info.positions[k]:g} mm along the "
                            f"slice normal ({os.path.basename(info.files[k])} and "
                            f"{os.path.basename(info.files[k + 1])}); expected one slice per position")


def _uid_list(series_uid: SeriesUid) -> List[str]:
    if series_uid is None:
        return []
    return [series_uid] if isinstance(series_uid, str) else [str(u) for u in series_uid]


def select_series(folder: Union[str, os.PathLike], series_uid: SeriesUid = None, check: bool = True) -> SeriesInfo:
    """The series of a folder to load, checked for gaps.

    Args:
        folder: a folder of DICOM slices.
        series_uid: *SeriesInstanceUID* (or a list of them, e.g. ``data.series_uid`` naming one series of each of
            several folders) to pick in a folder holding several series; ``None``: the folder must hold one series.
        check: also :func:`check_slice_gaps`.

    Returns:
        The :class:`SeriesInfo`.

    Raises:
        DataError: several series and none (or more than one) of them in ``series_uid`` (lists every series with its
            description and slice count, and the config field); a series named but absent from a folder holding
            one series; a gap (:func:`check_slice_gaps`); see :func:`list_series`.
    """
    found = list_series(folder)
    wanted = _uid_list(series_uid)
    chosen = [s for s in found if s.uid in wanted] if wanted else found
    listing = "; ".join(s.summary() for s in found)
    if len(chosen) != 1:
        if len(found) == 1 and not chosen:
            raise DataError(f"{folder}: holds series {listing}, not the series {', '.join(wanted)} of "
                            "data.series_uid")
        why = ("none of them is in data.series_uid" if wanted and not chosen
               else "several of them are in data.series_uid" if wanted else "expected one")
        raise DataError(f"{folder}: {len(found)} DICOM series found, {why}: {listing}; name the one to load by its "
                        "SeriesInstanceUID in data.series_uid")
    if check:
        check_slice_gaps(chosen[0])
    return chosen[0]


class DicomSeriesReader(ITKReader):
    """MONAI's ``ITKReader`` for DICOM series folders, reading the slice files :func:`select_series` chose.

    A folder: the series named by ``series_uid`` (or the only one), gap-checked, its slices sorted along the normal
    and read by ``itk.imread`` in that order; ``ITKReader.get_data`` gives the ``(columns, rows, slices)`` array
    and the RAS affine. Anything else (a file) is refused, so that ``LoadImage`` passes it to its other readers.

    Args:
        series_uid: *SeriesInstanceUID* or list of them (see :func:`select_series`).
        **kwargs: ``ITKReader``'s (``channel_dim``, ``reverse_indexing``, ``affine_lps_to_ras``, ...).
    """

    def __init__(self, series_uid: SeriesUid = None, **kwargs):
        super().__init__(**kwargs)
        self.series_uid = _uid_list(series_uid)

    def verify_suffix(self, filename) -> bool:
        """Whether ``filename`` is one DICOM series folder (``LoadImage`` auto-selection)."""
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        return len(names) == 1 and is_dicom_series_folder(names[0])

    def read(self, data, **kwargs):
        """Read a DICOM series folder as one ITK image.

        Args:
            data: the folder (a one-item sequence of it is accepted).
            kwargs: passed to ``itk.imread``.

        Returns:
            ``itk.Image`` of the sorted slices.

        Raises:
            DataError: ``data`` is not one DICOM series folder, or see :func:`select_series`.
        """
        import itk

        names = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        if len(names) != 1 or not os.path.isdir(str(names[0])):
            raise DataError(f"{data}: DicomSeriesReader reads one folder of DICOM slices")
        info = select_series(str(names[0]), self.series_uid or None)
        files = info.files if info.n_slices > 1 else info.files[0]
        return itk.imread(files, **{**self.kwargs, **kwargs})


class SeriesAwareLoadImage(LoadImage):
    """MONAI's ``LoadImage`` that reads a DICOM series folder with its ``series_reader`` (a
    :class:`DicomSeriesReader`) and anything else as before (see :func:`add_series_reader`)."""

    series_reader: DicomSeriesReader

    def __call__(self, filename, reader=None):
        """Load ``filename``; a DICOM series folder with ``series_reader`` unless ``reader`` is given."""
        if reader is None and isinstance(filename, (str, os.PathLike)) and is_dicom_series_folder(filename):
            reader = getattr(self, "series_reader", None) or DicomSeriesReader()
        return super().__call__(filename, reader)


def add_series_reader(transform, series_uid: SeriesUid = None):
    """Make every ``LoadImage`` / ``LoadImaged`` of a chain read DICOM series folders with a
    :class:`DicomSeriesReader` (whatever its ``reader``); files load as before.

    The loader becomes a :class:`SeriesAwareLoadImage` (a ``LoadImage`` subclass), which hands a folder to the
    reader as MONAI's runtime ``reader`` argument: the reader's errors (several series, a gap) are raised, not
    swallowed by ``LoadImage``'s trial of its other readers (one of which, ``ITKReader``, would read the folder's
    first series).

    Args:
        transform: a MONAI ``Compose`` (or one transform).
        series_uid: see :func:`select_series`.

    Returns:
        ``transform`` (changed in place).
    """
    from monai.transforms import LoadImaged

    for t in getattr(transform, "transforms", None) or [transform]:
        loader = t._loader if isinstance(t, LoadImaged) else t if isinstance(t, LoadImage) else None
        if loader is not None:
            loader.__class__ = SeriesAwareLoadImage
            loader.series_reader = DicomSeriesReader(series_uid)
    return transform


def _itk_geometry(path: str) -> Tuple[Tuple[int, ...], np.ndarray]:
    """Shape and RAS affine of an ITK-readable file, from its header (``ImageIO.ReadImageInformation``)."""
    import itk
    from monai.data.utils import orientation_ras_lps

    io = itk.ImageIOFactory.CreateImageIO(path, itk.CommonEnums.IOFileMode_ReadMode)
    if io is None:
        raise DataError(f"{path}: ITK has no reader for this file; expected NRRD (.nrrd) or MetaImage (.mha, .mhd)")
    io.SetFileName(path)
    io.ReadImageInformation()
    n = io.GetNumberOfDimensions()
    r = min(n, 3)
    affine = np.eye(r + 1)
    direction = np.array([[io.GetDirection(j)[i] for j in range(r)] for i in range(r)])
    affine[:r, :r] = direction @ np.diag([io.GetSpacing(i) for i in range(r)])
    affine[:r, -1] = [io.GetOrigin(i) for i in range(r)]
    return tuple(int(io.GetDimensions(i)) for i in range(n)), orientation_ras_lps(affine)


def volume_geometry(path: Union[str, os.PathLike], series_uid: SeriesUid = None
                    ) -> Optional[Tuple[Tuple[int, ...], np.ndarray]]:
    """Spatial shape and RAS affine of a volume as MONAI's readers load it, from the header only.

    Args:
        path: a NIfTI file (nibabel: its shape without the 4th axis, its affine), an NRRD / MetaImage file
            (ITK), or a DICOM series folder (:meth:`SeriesInfo.affine`, shape ``(columns, rows, slices)``).
        series_uid: for a folder, see :func:`select_series`.

    Returns:
        ``(shape, (4, 4) float64 affine)``, or ``None`` for another kind of file (PNG, a single DICOM, ...).

    Raises:
        DataError: an unreadable header, or see :func:`select_series`.
    """
    path = str(path)
    low = path.lower()
    try:
        if os.path.isdir(path):
            info = select_series(path, series_uid)
            return (info.columns, info.rows, info.n_slices), info.affine()
        if low.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            img = nib.load(path)
            return tuple(int(s) for s in img.shape[:3]), np.asarray(img.affine, dtype=np.float64)
        if low.endswith(ITK_SUFFIXES):
            return _itk_geometry(path)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: cannot read the volume's header ({type(exc).__name__}: {exc})") from exc
    return None


def load_volume(path: Union[str, os.PathLike], series_uid: SeriesUid = None):
    """Load a volume as MONAI's ``LoadImage`` does (:func:`add_series_reader` added), channel first.

    Args:
        path: NIfTI, NRRD / MetaImage file or DICOM series folder.
        series_uid: for a folder, see :func:`select_series`.

    Returns:
        ``monai.data.MetaTensor`` ``(C, H, W, D)`` float32 (``C`` = 1 for a grey volume) with ``.affine`` (RAS).

    Raises:
        DataError: see :func:`select_series`. RuntimeError: no MONAI reader can read the file.
    """
    loader = add_series_reader(LoadImage(image_only=True, ensure_channel_first=True), series_uid)
    return loader(str(path))
