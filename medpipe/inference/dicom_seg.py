"""DICOM SEG output (highdicom) for a segmentation whose input was a single-frame DICOM image or a DICOM series.

A predicted class-index mask becomes a binary DICOM Segmentation (``hd.seg.Segmentation``, *Segmentation Storage*
1.2.840.10008.5.1.4.1.1.66.4) that viewers (OHIF, 3D Slicer, a PACS) show over the source image:

* one segment per foreground class ``1 .. K-1`` (class 0 is the background), labelled with the pipeline's class
  name when it has one, else ``class <k>``; every segment is written, an empty one as an empty frame;
* segment algorithm: type ``AUTOMATIC``, identification name = the pipeline's name, source ``medpipe``, version =
  medpipe's version, family *Artificial Intelligence* (DCM 123110);
* segmented property category and type: SNOMED CT *Tissue* (SCT 85756007) for both, a generic choice because a
  pipeline does not say what it segments (override with ``property_category`` / ``property_type``, e.g.
  ``codes.SCT.Organ`` and ``codes.SCT.Lung``);
* the equipment: manufacturer ``medpipe``, model name = the pipeline's name, software version = medpipe's, device
  serial number = the MLflow run id (or ``unknown``); series description ``medpipe <pipeline> segmentation``,
  series number 900;
* the source image is referenced by its SOP Class / Instance UID within its series, and the SEG joins the source's
  study and (where it has one) Frame of Reference, with the source's plane position, orientation and *Pixel
  Spacing*. A projection radiograph (CR/DX: no Frame of Reference) gets no Pixel Measures: highdicom would copy
  its *Pixel Spacing* without the *Slice Thickness* that a Pixel Measures item needs, and then refuse to read its
  own file back.

The mask must be on the source's pixel grid, ``(Rows, Columns)``. MONAI's DICOM readers (``PydicomReader``
``swap_ij=True``, ``ITKReader`` ``reverse_indexing=True``, the defaults) load a slice as ``(Columns, Rows)``, and
``PILReader`` loads a PNG as ``(width, height)`` unless ``reverse_indexing=False``: :func:`loader_transposes` asks
the pipeline's own loader with a 2 x 3 probe file, so a square image is put the right way round too.

A **DICOM series** (a folder of single-frame slices, 3D): :func:`build_dicom_seg_series` takes the mask as
:class:`medpipe.data.volumes.DicomSeriesReader` loads the series, ``(Columns, Rows, Slices)`` with the slices
sorted along the normal, and writes one frame per slice and segment, each referencing its slice (every slice of the
series is referenced). A multi-frame file is refused.
"""

from __future__ import annotations

import copy
import io
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["DicomSegError", "is_dicom_file", "read_source", "loader_transposes", "probe_dicom", "probe_png",
           "mask_on_source_grid", "build_dicom_seg", "dicom_seg_bytes", "write_dicom_seg", "is_dicom_series",
           "build_dicom_seg_series", "write_dicom_seg_series"]

#: what a DICOM SEG needs of its source image: keyword -> (tag, name)
REQUIRED = {"SOPInstanceUID": ("(0008,0018)", "SOP Instance UID"), "SOPClassUID": ("(0008,0016)", "SOP Class UID"),
            "StudyInstanceUID": ("(0020,000D)", "Study Instance UID"),
            "SeriesInstanceUID": ("(0020,000E)", "Series Instance UID"),
            "Rows": ("(0028,0010)", "Rows"), "Columns": ("(0028,0011)", "Columns")}
SERIES_NUMBER = 900


class DicomSegError(ValueError):
    """The DICOM SEG cannot be written: the source is not a DICOM image a SEG can reference, or the mask does not
    fit its pixel grid. The message names the file and says what was found and what is expected."""


def is_dicom_file(path: Union[str, os.PathLike]) -> bool:
    """Whether ``path`` is a single DICOM file: a ``.dcm`` / ``.dicom`` name or the Part 10 preamble (128 bytes then
    ``DICM``). A folder (a DICOM series) is not."""
    path = str(path)
    if not os.path.isfile(path):
        return False
    if path.lower().endswith((".dcm", ".dicom")):
        return True
    with open(path, "rb") as fh:
        return fh.read(132)[128:132] == b"DICM"


def _source_name(source: Any) -> str:
    """A path as it is; a dataset by the file it was read from, else ``the DICOM upload``."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return str(getattr(source, "filename", None) or "the DICOM upload")


def read_source(source: Any, name: Optional[str] = None):
    """The source image's dataset, checked for what a DICOM SEG must reference.

    Args:
        source: a DICOM file path or a ``pydicom.Dataset``.
        name: how to name the source in messages (default: the path, or ``the DICOM upload``).

    Returns:
        ``pydicom.Dataset`` (the whole file: highdicom reads the source's attributes, not its pixels).

    Raises:
        DicomSegError: not a DICOM file; no SOP Instance UID, SOP Class UID, Study / Series Instance UID, Rows or
            Columns (e.g. pixels saved as ``.dcm`` without the identifiers a scanner writes); several frames.
    """
    import pydicom

    name = name or _source_name(source)
    if isinstance(source, pydicom.Dataset):
        ds = source
    else:
        try:
            ds = pydicom.dcmread(str(source))
        except Exception as exc:  # InvalidDicomError, EOFError, OSError, ...
            raise DicomSegError(f"{name}: not a readable DICOM file ({type(exc).__name__}: {exc}); expected a DICOM "
                                "Part 10 image (a CT/MR slice, a CR/DX radiograph)") from None
    missing = [f"{label} {tag}" for key, (tag, label) in REQUIRED.items() if not ds.get(key)]
    if missing:
        raise DicomSegError(f"{name}: cannot be referenced by a DICOM SEG: missing {', '.join(missing)}; expected a "
                            "DICOM image with the identifiers a scanner or PACS writes (a picture converted to .dcm "
                            "without them is not a DICOM image a viewer can match)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DicomSegError(f"{name}: has {frames} frames; DICOM SEG output is written for single-frame 2D images "
                            "only (a CT/MR slice, a CR/DX radiograph)")
    return ds


# ----------------------------------------------------------------------------------------------- the mask's layout
def probe_png(path: Union[str, os.PathLike]) -> None:
    """Write a grey 8-bit PNG of 2 rows x 3 columns (for :func:`loader_transposes`)."""
    from PIL import Image

    Image.fromarray(np.arange(6, dtype=np.uint8).reshape(2, 3)).save(str(path))


def probe_dicom(template, path: Union[str, os.PathLike]) -> None:
    """Write a DICOM of 2 rows x 3 columns with ``template``'s header (16-bit grey, uncompressed), for
    :func:`loader_transposes`: the loader sees the same kind of file, orientation and spacing as the real one."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian

    ds = pydicom.Dataset()
    for elem in template:  # copies: the template (the real image's dataset) is left as it is
        if elem.tag.group != 0x7FE0 and elem.keyword != "NumberOfFrames":
            ds.add(copy.deepcopy(elem))
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = template.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = template.SOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 2, 3, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.arange(6, dtype="<u2").tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def _find_loader(transform) -> Optional[Callable]:
    """The ``LoadImaged`` / ``LoadImage`` of a MONAI ``Compose`` (or the transform itself), as a function of a path
    returning the loaded array, or ``None``."""
    from monai.transforms import LoadImage, LoadImaged

    chain = getattr(transform, "transforms", None) or [transform]
    for t in chain:
        if isinstance(t, LoadImaged):
            return lambda path, t=t: t({k: str(path) for k in t.keys})[t.keys[0]]
        if isinstance(t, LoadImage):
            return lambda path, t=t: t(str(path))
    return None


def loader_transposes(transform, write_probe: Callable[[str], None], suffix: str) -> Optional[bool]:
    """Whether the pipeline's loader returns a 2D image as ``(columns, rows)``.

    A 2 x 3 probe file (written by ``write_probe(path)``, e.g. :func:`probe_png` or a :func:`probe_dicom` partial)
    goes through the loader of ``transform``; singleton axes are dropped.

    Args:
        transform: the pipeline's inference ``Compose`` (its ``LoadImaged`` is used) or a loader.
        write_probe: writes the probe file to the path it is given.
        suffix: the probe file's suffix (``.png``, ``.dcm``).

    Returns:
        ``True`` (loaded as ``(3, 2)``: columns first), ``False`` (``(2, 3)``: rows first), or ``None`` when there
        is no loader or it fails on the probe (then only the mask's shape can tell, see
        :func:`mask_on_source_grid`).
    """
    load = _find_loader(transform)
    if load is None:
        return None
    with tempfile.TemporaryDirectory(prefix="medpipe-probe-") as tmp:
        path = os.path.join(tmp, "probe" + suffix)
        try:
            write_probe(path)
            shape = tuple(s for s in np.shape(np.asarray(load(path))) if s != 1)
        except Exception as exc:  # a reader that cannot read the probe: fall back on the shape
            logger.info("the pipeline's loader could not read a %s probe (%s); the mask's layout is taken from its "
                        "shape", suffix, exc)
            return None
    return {(3, 2): True, (2, 3): False}.get(shape)


def mask_on_source_grid(mask: np.ndarray, rows: int, columns: int, transposed: Optional[bool] = None,
                        name: str = "the source") -> np.ndarray:
    """A predicted mask as ``(Rows, Columns)``.

    Args:
        mask: integer class indices, ``(Rows, Columns)`` or ``(Columns, Rows)``, singleton axes allowed (e.g. the
            ``(W, H, 1)`` of ``ITKReader``).
        rows, columns: the source image's *Rows* and *Columns*.
        transposed: the loader's layout (:func:`loader_transposes`); ``None``: from the shape alone, a square mask
            taken as ``(Rows, Columns)``.
        name: the source, for messages.

    Returns:
        ``(rows, columns)`` view of ``mask``.

    Raises:
        DicomSegError: the shape fits neither layout (or not the one ``transposed`` says).
    """
    squeezed = np.squeeze(np.asarray(mask))
    if squeezed.ndim != 2:
        raise DicomSegError(f"{name}: the mask has shape {np.shape(mask)}; expected a 2D mask of Rows x Columns = "
                            f"{rows} x {columns}")
    if transposed is None:
        transposed = squeezed.shape == (columns, rows) and rows != columns
    want = (columns, rows) if transposed else (rows, columns)
    if squeezed.shape != want:
        raise DicomSegError(f"{name}: the mask has shape {squeezed.shape}; expected {want} (the image is Rows x "
                            f"Columns = {rows} x {columns}{', loaded columns first' if transposed else ''})")
    return squeezed.T if transposed else squeezed


# ----------------------------------------------------------------------------------------------- the SEG
def _segment_descriptions(num_classes: int, class_names: Optional[Sequence[str]], pipeline: str,
                          category, prop_type):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from medpipe import __version__

    algorithm = hd.AlgorithmIdentificationSequence(name=pipeline[:64], family=codes.cid7162.ArtificialIntelligence,
                                                   version=__version__, source="medpipe")
    names = list(class_names) if class_names and len(class_names) == num_classes else None
    return [hd.seg.SegmentDescription(
        segment_number=k, segment_label=(names[k] if names else f"class {k}")[:64],
        segmented_property_category=category or codes.SCT.Tissue, segmented_property_type=prop_type or codes.SCT.Tissue,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
    ) for k in range(1, num_classes)]


def build_dicom_seg(mask: np.ndarray, source: Any, class_names: Optional[Sequence[str]] = None,
                    num_classes: Optional[int] = None, pipeline: str = "medpipe", run_id: Optional[str] = None,
                    transposed: Optional[bool] = None, property_category=None, property_type=None, name=None):
    """A binary DICOM SEG of ``mask`` over its source image.

    Args:
        mask: integer class indices ``0 .. K-1`` on the source's grid, ``(Rows, Columns)`` (or as the pipeline's
            loader laid it out, see ``transposed``).
        source: the source DICOM file path or ``pydicom.Dataset`` (:func:`read_source` checks it).
        class_names: ``K`` names in class-index order (index 0, the background, is not a segment); other lengths
            or ``None``: segments are labelled ``class <k>``.
        num_classes: ``K`` (default ``max(mask) + 1``, at least 2): segments ``1 .. K-1``.
        pipeline: the pipeline's name (algorithm name, model name, series description).
        run_id: the MLflow run id (device serial number), or ``None``.
        transposed: see :func:`mask_on_source_grid`.
        property_category, property_type: ``pydicom`` / highdicom codes (default SCT *Tissue* for both).
        name: how to name the source in messages.

    Returns:
        ``highdicom.seg.Segmentation``.

    Raises:
        DicomSegError: see :func:`read_source` and :func:`mask_on_source_grid`; class indices outside ``0 .. K-1``;
            highdicom refusing the source (its message, with the file's name).
    """
    name = name or _source_name(source)
    ds = read_source(source, name)
    grid = mask_on_source_grid(mask, int(ds.Rows), int(ds.Columns), transposed, name)
    k = int(num_classes) if num_classes else max(2, int(grid.max()) + 1)
    if grid.min() < 0 or grid.max() >= k:
        raise DicomSegError(f"{name}: the mask holds class indices {int(grid.min())} .. {int(grid.max())}; expected "
                            f"0 .. {k - 1} for {k} classes")
    reference = ds
    if not ds.get("FrameOfReferenceUID") and "PixelSpacing" in ds:
        reference = ds.copy()  # a projection radiograph: no Pixel Measures (see the module's docstring)
        del reference.PixelSpacing
    return _segmentation([reference], grid, k, name, class_names=class_names, pipeline=pipeline, run_id=run_id,
                         property_category=property_category, property_type=property_type)


def _segmentation(sources: list, pixels: np.ndarray, k: int, name: str, class_names=None, pipeline="medpipe",
                  run_id=None, property_category=None, property_type=None):
    """``hd.seg.Segmentation`` of ``pixels`` (``(Rows, Columns)`` or one frame per source, ``(N, Rows, Columns)``)
    over ``sources``; highdicom's refusal as a :class:`DicomSegError` naming ``name``."""
    import highdicom as hd

    from medpipe import __version__

    try:
        return hd.seg.Segmentation(
            source_images=sources, pixel_array=pixels.astype(np.uint16 if k > 255 else np.uint8),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=_segment_descriptions(k, class_names, pipeline, property_category, property_type),
            series_instance_uid=hd.UID(), series_number=SERIES_NUMBER, sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer="medpipe", manufacturer_model_name=pipeline[:64], software_versions=__version__,
            device_serial_number=run_id or "unknown", omit_empty_frames=False,
            series_description=f"medpipe {pipeline} segmentation"[:64])
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise DicomSegError(f"{name}: highdicom cannot build a DICOM SEG over this image: {exc}") from None


def dicom_seg_bytes(mask: np.ndarray, source: Any, **kwargs) -> bytes:
    """:func:`build_dicom_seg` as the bytes of a DICOM Part 10 file (``application/dicom``).

    Raises:
        DicomSegError: see :func:`build_dicom_seg`.
    """
    buf = io.BytesIO()
    build_dicom_seg(mask, source, **kwargs).save_as(buf)
    return buf.getvalue()


def write_dicom_seg(mask: np.ndarray, source: Any, out_path: Union[str, os.PathLike],
                    class_names: Optional[Sequence[str]] = None, **kwargs) -> Path:
    """Write :func:`build_dicom_seg` to ``out_path`` (e.g. ``<stem>.seg.dcm``; the folder is created).

    Args:
        mask: ``(Rows, Columns)`` integer class indices on the source's grid.
        source: the source DICOM file path or ``pydicom.Dataset``.
        out_path: the SEG file.
        class_names: ``K`` class names (index 0 = background), or ``None``.
        **kwargs: ``num_classes``, ``pipeline``, ``run_id``, ``transposed``, ``property_category``,
            ``property_type``, ``name`` (see :func:`build_dicom_seg`).

    Returns:
        ``out_path`` as a ``Path``.

    Raises:
        DicomSegError: see :func:`build_dicom_seg`.
    """
    data = dicom_seg_bytes(mask, source, class_names=class_names, **kwargs)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(data)
    return out_path


# ----------------------------------------------------------------------------------------------- series (3D)
def is_dicom_series(path: Union[str, os.PathLike]) -> bool:
    """Whether ``path`` is a folder of DICOM slices (:func:`medpipe.data.volumes.is_dicom_series_folder`)."""
    from medpipe.data.volumes import is_dicom_series_folder

    return is_dicom_series_folder(path)


def build_dicom_seg_series(mask: np.ndarray, folder: Union[str, os.PathLike], series_uid=None,
                           class_names: Optional[Sequence[str]] = None, num_classes: Optional[int] = None,
                           pipeline: str = "medpipe", run_id: Optional[str] = None, property_category=None,
                           property_type=None):
    """A binary DICOM SEG of a 3D mask over the DICOM series it was predicted from, referencing every slice.

    Args:
        mask: integer class indices ``(Columns, Rows, Slices)`` on the series' grid as
            :class:`medpipe.data.volumes.DicomSeriesReader` loads it (slices sorted along the normal, ascending);
            singleton axes beyond the third are dropped.
        folder: the series folder.
        series_uid: the *SeriesInstanceUID* (s) to use in a folder holding several series (``data.series_uid``).
        class_names, num_classes, pipeline, run_id, property_category, property_type: see
            :func:`build_dicom_seg`.

    Returns:
        ``highdicom.seg.Segmentation`` with one frame per slice and segment (``Rows x Columns``), each referencing
        its source slice.

    Raises:
        DicomSegError: the folder holds no single readable series (several series, a gap: the message of
            :func:`medpipe.data.volumes.select_series`), a slice a SEG cannot reference (:func:`read_source`),
            a mask of another shape, class indices outside ``0 .. K-1``, or highdicom refusing the sources.
    """
    from medpipe.data.cases import DataError
    from medpipe.data.volumes import select_series

    name = str(folder)
    try:
        info = select_series(folder, series_uid)
    except DataError as exc:
        raise DicomSegError(str(exc)) from None
    arr = np.asarray(mask)
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    want = (info.columns, info.rows, info.n_slices)
    if arr.shape != want:
        raise DicomSegError(f"{name}: the mask has shape {np.shape(mask)}; expected (Columns, Rows, Slices) = {want}, "
                            "the series as medpipe loads it")
    k = int(num_classes) if num_classes else max(2, int(arr.max()) + 1)
    if arr.min() < 0 or arr.max() >= k:
        raise DicomSegError(f"{name}: the mask holds class indices {int(arr.min())} .. {int(arr.max())}; expected "
                            f"0 .. {k - 1} for {k} classes")
    sources = [read_source(f) for f in info.files]
    return _segmentation(sources, np.ascontiguousarray(arr.transpose(2, 1, 0)), k, name, class_names=class_names,
                         pipeline=pipeline, run_id=run_id, property_category=property_category,
                         property_type=property_type)


def write_dicom_seg_series(mask: np.ndarray, folder: Union[str, os.PathLike], out_path: Union[str, os.PathLike],
                           **kwargs) -> Path:
    """Write :func:`build_dicom_seg_series` to ``out_path`` (the folder is created).

    Args:
        mask: ``(Columns, Rows, Slices)`` class indices (see :func:`build_dicom_seg_series`).
        folder: the series folder.
        out_path: the SEG file, e.g. ``<stem>.seg.dcm``.
        **kwargs: ``series_uid``, ``class_names``, ``num_classes``, ``pipeline``, ``run_id``,
            ``property_category``, ``property_type``.

    Returns:
        ``out_path`` as a ``Path``.

    Raises:
        DicomSegError: see :func:`build_dicom_seg_series`.
    """
    buf = io.BytesIO()
    build_dicom_seg_series(mask, folder, **kwargs).save_as(buf)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(buf.getvalue())
    return out_path
