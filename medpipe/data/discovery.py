"""Finding the cases of a pipeline: file globs, list files (CSV/JSON), reader checks and image shapes.

Segmentation cases pair image and label-mask files (:func:`discover_cases`); classification cases carry a class
index (:func:`discover_classification_cases`). Both read list files the same way (:func:`read_list_rows`) and
map a predefined split column the same way (:func:`row_split`). See :class:`medpipe.data.cases.Case`.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from medpipe.data.cases import Case, DataError, resolve_root
from medpipe.data.imagefile import read_image
from medpipe.registry import did_you_mean

logger = logging.getLogger(__name__)

__all__ = [
    "discover_images",
    "discover_cases",
    "discover_classification_cases",
    "read_list_rows",
    "row_split",
    "image_shape",
    "check_reader_support",
    "PIL_ONLY_SUFFIXES",
]

_EXTS = (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".pgm", ".bmp", ".npy", ".mha", ".nrrd")

#: Netpbm suffixes (e.g. the mini-MIAS originals, 8-bit binary ``P5`` PGM) that among MONAI's readers only
#: ``PILReader`` reads. ``LoadImaged`` without a ``reader`` picks ``ITKReader`` for them (it claims every suffix),
#: which fails with "Could not create IO object"; without ITK no reader is found at all.
PIL_ONLY_SUFFIXES = (".pgm", ".ppm", ".pbm", ".pnm")


# ------------------------------------------------------------------------------------------------ globs
def _stem(path: str) -> str:
    name = os.path.basename(path)
    for ext in _EXTS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return os.path.splitext(name)[0]


def _glob_base(pattern: str) -> str:
    """The fixed leading folders of a glob pattern (before the first wildcard)."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if any(c in part for c in "*?["):
            break
        fixed.append(part)
    return str(Path(*fixed)) if fixed else ""


def _pair_key(path: str, base: str) -> str:
    rel = os.path.relpath(path, base) if base else path
    return os.path.join(os.path.dirname(rel), _stem(rel))


def discover_images(root: Path, pattern: str) -> List[str]:
    """Files and DICOM series folders under ``root`` matching a glob.

    Args:
        root: the data folder (:func:`medpipe.data.cases.resolve_root`).
        pattern: glob relative to ``root``; ``**`` recurses.

    Returns:
        Absolute paths of the matching files and of the matching folders that hold DICOM files (a series, read as
        one volume: :func:`medpipe.data.volumes.is_dicom_series_folder`), sorted; other folders are left out.

    Raises:
        DataError: nothing matches (names the pattern and root).
    """
    from medpipe.data.volumes import is_dicom_series_folder

    files = sorted(f for f in glob.glob(str(root / pattern), recursive=True)
                   if os.path.isfile(f) or is_dicom_series_folder(f))
    if not files:
        raise DataError(f"no files match {pattern!r} under {root}")
    return files


# ------------------------------------------------------------------------------------------------ list files
def _msd_rows(path: Path, obj: Dict) -> List[Dict]:
    """The ``training`` list of a Medical Segmentation Decathlon ``dataset.json``, its ``./imagesTr/...`` paths made
    absolute against the file's folder (MSD's convention)."""
    rows = obj["training"]
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise DataError(f"{path}: \"training\" is not a list of {{\"image\": ..., \"label\": ...}} objects (Medical "
                        "Segmentation Decathlon dataset.json)")
    return [{k: (os.path.normpath(os.path.join(path.parent, v)) if isinstance(v, str) and k in ("image", "label") else v)
             for k, v in r.items()} for r in rows]


def read_list_rows(path: Path) -> Tuple[List[Tuple[int, Dict]], List[str]]:
    """Rows of a CSV or JSON list file.

    Args:
        path: a ``.json`` file holding a list of objects, or a Medical Segmentation Decathlon ``dataset.json`` (an
            object whose ``training`` list of ``{"image", "label"}`` is read, its relative ``./imagesTr/...``
            paths made absolute against the file's folder as MSD defines them; its ``test`` list is not read), or
            a CSV file with a header row (any other suffix).

    Returns:
        ``(rows, columns)``: ``rows`` are ``(line, row dict)`` with the 1-based line of the row in the CSV file
        (for JSON: the 1-based position in the list); ``columns`` the column names found (CSV: in header order;
        JSON: every key of any object, sorted).

    Raises:
        DataError: invalid JSON, or JSON that is not a list of objects or an MSD dataset.json (names the file).
    """
    if path.suffix.lower() == ".json":
        try:
            rows = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc})") from None
        if isinstance(rows, dict) and "training" in rows:
            rows = _msd_rows(path, rows)
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise DataError(f"{path}: expected a JSON list of objects like {{\"image\": ..., \"label\": ...}} or "
                            "an MSD dataset.json with a \"training\" list")
        columns = sorted({k for r in rows for k in r})
        return [(i + 1, r) for i, r in enumerate(rows)], columns
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        rows = [(reader.line_num, dict(r)) for r in reader]
        columns = list(reader.fieldnames or [])
    return rows, columns


def _check_columns(path: Path, columns: Sequence[str], wanted: Dict[str, Optional[str]]) -> None:
    """Raise a :class:`DataError` naming the list file, the config field and the columns found when a configured
    column (``{"split_column": "split", ...}``; ``None`` = not configured) is missing."""
    for field, col in wanted.items():
        if col is not None and col not in columns:
            raise DataError(f"{path}: no column {col!r} (data.{field}); columns found: {', '.join(columns)}."
                            + did_you_mean(col, columns))


def row_split(row: Dict, split_column: str, mapping: Dict[str, str], where: str, image: str) -> str:
    """The split of one list-file row, for both tasks.

    Args:
        row: the row (column -> value).
        split_column: ``data.split_column``.
        mapping: ``data.split.column_values``: column value -> ``train``, ``val``, ``test`` or ``drop``.
        where: ``"<file>, line <n>"`` for messages.
        image: the row's image, for messages.

    Returns:
        ``mapping[value]`` of the row's stripped ``split_column`` value (``""`` when empty or missing).

    Raises:
        DataError: the value is not a key of ``mapping``; names the file and line (``where``), the image and the
            value, and how to map it.
    """
    value = str(row.get(split_column) or "").strip()
    if value not in mapping:
        raise DataError(
            f"{where}: {split_column} {value!r} of {image} is not a known split; expected one "
            f"of {', '.join(mapping)}. Map it in data.split.column_values, e.g. {{{value}: test}} or "
            f"{{{value}: drop}}")
    return mapping[value]


def _list_file_path(root: Path, list_file: str) -> Path:
    path = Path(list_file) if os.path.isabs(list_file) else root / list_file
    if not path.is_file():
        raise DataError(f"data.list_file {path} not found")
    return path


# ------------------------------------------------------------------------------------------------ segmentation
def discover_cases(data_cfg) -> List[Case]:
    """Labelled segmentation cases from ``data.images``/``data.labels`` globs or ``data.list_file``.

    Images and labels are paired by their path below the glob's fixed prefix, extension removed
    (``train/image/3.png`` <-> ``train/label/3.png``). A list file names them in ``data.image_column`` and
    ``data.label_column``; with ``data.split_column`` each row's predefined split is read from that column and
    mapped through ``data.split.column_values`` exactly as for classification (rows mapped to ``drop`` are
    left out; :func:`medpipe.data.splits.split_segmentation_cases` then honours the splits).

    Args:
        data_cfg: the pipeline's ``data`` section (:class:`medpipe.config.DataConfig`).

    Returns:
        Cases ``{"image": abs path, "label": abs path[, "split": "train" | "val" | "test"]}`` sorted by image path
        (``label`` absent without ``data.labels`` or for a list-file row with an empty label).

    Raises:
        DataError: an image without a label or a label without an image (names them), an unreadable or
            malformed list file, a missing column, a split value not in ``data.split.column_values`` or a train /
            val row without a label (these name the file, line and value), or no matches.
        FileNotFoundError: ``data.root`` is not a folder.
    """
    root = resolve_root(data_cfg.root)
    if data_cfg.list_file is not None:
        return _read_segmentation_list(root, data_cfg.list_file, data_cfg.image_column, data_cfg.label_column,
                                       getattr(data_cfg, "split_column", None), data_cfg.split.column_values)
    images = discover_images(root, data_cfg.images)
    if data_cfg.labels is None:
        return [{"image": f} for f in images]
    labels = discover_images(root, data_cfg.labels)
    ibase, lbase = str(root / _glob_base(data_cfg.images)), str(root / _glob_base(data_cfg.labels))
    lab_by_key = {_pair_key(f, lbase): f for f in labels}
    img_by_key = {_pair_key(f, ibase): f for f in images}
    no_label = sorted(set(img_by_key) - set(lab_by_key))
    no_image = sorted(set(lab_by_key) - set(img_by_key))
    if no_label or no_image:
        msg = []
        if no_label:
            msg.append(f"{len(no_label)} image(s) without a label, e.g. {img_by_key[no_label[0]]}")
        if no_image:
            msg.append(f"{len(no_image)} label(s) without an image, e.g. {lab_by_key[no_image[0]]}")
        raise DataError(
            f"data.images {data_cfg.images!r} and data.labels {data_cfg.labels!r} do not pair up: "
            + "; ".join(msg)
        )
    return [{"image": img_by_key[k], "label": lab_by_key[k]} for k in sorted(img_by_key, key=img_by_key.get)]


def _read_segmentation_list(root: Path, list_file: str, image_column: str = "image", label_column: str = "label",
                            split_column: Optional[str] = None,
                            column_values: Optional[Dict[str, str]] = None) -> List[Case]:
    """Image/label-mask pairs from a CSV (``image_column``, ``label_column``) or a JSON list of objects with those
    keys; paths relative to ``root``. A row with an empty label is an unlabelled case. With ``split_column``, each
    row's split is ``column_values[value]`` (:func:`row_split`, shared with classification); rows mapped to
    ``drop`` are left out, and a ``train`` or ``val`` row must have a label."""
    path = _list_file_path(root, list_file)
    numbered, columns = read_list_rows(path)
    if split_column is not None:
        _check_columns(path, columns, {"split_column": split_column})
    cases: List[Case] = []
    for i, (line, row) in enumerate(numbered):
        if not isinstance(row, dict) or image_column not in row:
            raise DataError(f"{path}: row {i + 1} has no {image_column!r} column/key (data.image_column; found "
                            f"{sorted(row) if isinstance(row, dict) else row!r})")
        if i == 0 and label_column not in row and label_column != "label":
            raise DataError(f"{path}: no {label_column!r} column/key (data.label_column); columns: {sorted(row)}."
                            + did_you_mean(label_column, row))
        case: Case = {"image": str(root / row[image_column])}
        if row.get(label_column) not in (None, ""):
            case["label"] = str(root / row[label_column])
        if split_column is not None:
            where = f"{path}, line {line}"
            split = row_split(row, split_column, column_values or {}, where, row[image_column])
            if split == "drop":
                continue
            if split in ("train", "val") and "label" not in case:
                raise DataError(f"{where}: image {row[image_column]} is in the {split} split ({split_column} "
                                f"{row.get(split_column)!r}) but has an empty {label_column!r} (data.label_column): "
                                "training and validation cases need a mask")
            case["split"] = split
        cases.append(case)
    if not cases:
        raise DataError(f"{path}: no rows" + (" (all dropped by data.split.column_values)" if numbered else ""))
    return sorted(cases, key=lambda c: c["image"])


# ------------------------------------------------------------------------------------------------ classification
def _classification_rows_from_list(data_cfg, root: Path) -> List[Dict]:
    """Raw rows ``{"image", "class", "where"[, "group"][, "split"]}`` of a classification list file."""
    path = _list_file_path(root, data_cfg.list_file)
    rows, columns = read_list_rows(path)
    _check_columns(path, columns, {"image_column": data_cfg.image_column, "label_column": data_cfg.label_column,
                                   "split_column": data_cfg.split_column, "group_column": data_cfg.group_column})
    mapping = data_cfg.split.column_values
    raw: List[Dict] = []
    for line, row in rows:
        where = f"{path}, line {line}"
        image, label = str(row.get(data_cfg.image_column) or "").strip(), row.get(data_cfg.label_column)
        if not image:
            raise DataError(f"{where}: empty {data_cfg.image_column!r}")
        if label is None or str(label).strip() == "":
            raise DataError(f"{where}: image {image} has an empty {data_cfg.label_column!r}")
        case = {"image": str(root / image), "class": str(label).strip(), "where": where}
        if data_cfg.group_column is not None:
            case["group"] = str(row.get(data_cfg.group_column) or "").strip()
            if not case["group"]:
                raise DataError(f"{where}: image {image} has an empty {data_cfg.group_column!r}")
        if data_cfg.split_column is not None:
            split = row_split(row, data_cfg.split_column, mapping, where, image)
            if split == "drop":
                continue
            case["split"] = split
        raw.append(case)
    return raw


def _classification_rows_from_globs(data_cfg, root: Path) -> List[Dict]:
    """Raw rows ``{"image", "class", "where"[, "split"]}`` of ``data.images`` (class = parent folder name) and
    ``data.test_images`` (split ``test``; the others are ``train`` then)."""
    raw: List[Dict] = []
    for pattern, split in ((data_cfg.images, None), (data_cfg.test_images, "test")):
        if pattern is None:
            continue
        for f in discover_images(root, pattern):
            case = {"image": f, "class": Path(f).parent.name, "where": f}
            if data_cfg.test_images is not None:
                case["split"] = split or "train"
            raw.append(case)
    seen: Dict[str, Optional[str]] = {}
    for c in raw:
        if c["image"] in seen and seen[c["image"]] != c.get("split"):
            raise DataError(f"{c['image']} matches both data.images and data.test_images")
        seen[c["image"]] = c.get("split")
    return raw


def discover_classification_cases(data_cfg) -> Tuple[List[Case], List[str]]:
    """Labelled classification cases from ``data.list_file`` (CSV/JSON) or an ``data.images`` glob.

    * ``list_file``: paths in ``data.image_column`` (relative to ``data.root``), class names in
      ``data.label_column``, optional predefined split names in ``data.split_column`` (mapped through
      ``data.split.column_values``; rows mapped to ``drop`` are left out) and patient ids in
      ``data.group_column``.
    * ``images`` with ``class_from: folder``: the class is each file's parent folder name
      (``train/NORMAL/x.jpeg`` -> ``NORMAL``); files matching ``data.test_images`` form the test split.

    Class indices follow ``data.classes`` when given (index = position), else the sorted class names found.

    Args:
        data_cfg: the pipeline's ``data`` section (:class:`medpipe.config.DataConfig`).

    Returns:
        ``(cases, class_names)``: cases ``{"image": abs path, "label": int[, "group": str][, "split": str]}``
        sorted by image path, and the class names in index order.

    Raises:
        DataError: a missing list file or column (names the columns found), an empty image or label cell, a class
            not in ``data.classes`` or a split value not in ``split.column_values`` (both name the file, line,
            image and value), fewer than two classes, or no files matching a glob.
        FileNotFoundError: ``data.root`` is not a folder.
    """
    root = resolve_root(data_cfg.root)
    if data_cfg.list_file is not None:
        raw = _classification_rows_from_list(data_cfg, root)
    else:
        raw = _classification_rows_from_globs(data_cfg, root)
    if not raw:
        raise DataError(f"no cases found under {root} (all rows dropped by data.split.column_values?)")

    found = sorted({c["class"] for c in raw})
    classes = list(data_cfg.classes) if data_cfg.classes is not None else found
    index = {name: i for i, name in enumerate(classes)}
    for c in raw:
        if c["class"] not in index:
            raise DataError(f"{c['where']}: class {c['class']!r} of {c['image']} is not in data.classes "
                            f"{classes}." + did_you_mean(c["class"], classes))
    if len(classes) < 2:
        raise DataError(f"only one class {classes} found under {root}; classification needs at least two "
                        "(check data.label_column / class_from)")
    missing = [name for name in classes if name not in found]
    if missing:
        logger.warning("data.classes %s have no image in the data", missing)
    cases: List[Case] = []
    for c in sorted(raw, key=lambda c: c["image"]):
        case: Case = {"image": c["image"], "label": index[c["class"]]}
        for key in ("group", "split"):
            if key in c:
                case[key] = c[key]  # type: ignore[literal-required]
        cases.append(case)
    return cases, classes


# ------------------------------------------------------------------------------------------------ readers
def image_shape(path: str) -> Tuple[int, ...]:
    """Spatial shape of an image file, reading it fully to detect truncation
    (:func:`medpipe.data.imagefile.read_image`, which the integrity check uses to read each file once).

    PNG/JPEG/TIFF/PGM/BMP through Pillow (shape ``(H, W)``), NIfTI through nibabel (its array shape without
    the channel axis if 4D), DICOM through pydicom (``(Rows, Columns)`` or ``(Frames, Rows, Columns)``),
    ``.npy`` through numpy, NRRD / MetaImage files and DICOM series folders through MONAI's readers.

    Args:
        path: the image file (or DICOM series folder).

    Returns:
        The spatial shape in pixels (voxels).

    Raises:
        DataError: the file is missing, empty, truncated or not an image of its type; names the file.
    """
    return read_image(path).shape


def check_reader_support(cases: Sequence[Case], chains: Dict[str, Sequence]) -> None:
    """Fail before any loading when a ``LoadImaged`` would be given files its reader cannot read.

    Today this covers Netpbm files (:data:`PIL_ONLY_SUFFIXES`, e.g. ``.pgm``): they need
    ``reader: PILReader``; :func:`image_shape` (the integrity check) reads them with Pillow either way.

    Args:
        cases: the cases to be loaded (``{"image": path, ...}``; keys of ``LoadImaged`` holding a path are checked).
        chains: config path -> transform specs (``name`` and ``kwargs``), e.g. ``{"transforms.train": [...]}``.

    Raises:
        DataError: naming the transform (``transforms.train[0] LoadImaged``), the reader it would use, an example
            file, and the fix (``reader: PILReader, reverse_indexing: false``).
    """
    for where, specs in chains.items():
        for i, spec in enumerate(specs or []):
            if spec.name != "LoadImaged":
                continue
            kw = spec.kwargs
            reader = kw.get("reader")
            if reader == "PILReader":
                continue
            keys = kw.get("keys", [])
            keys = [keys] if isinstance(keys, str) else list(keys)
            for case in cases:
                for key in keys:
                    path = case.get(key)
                    if isinstance(path, str) and path.lower().endswith(PIL_ONLY_SUFFIXES):
                        used = (f"reader {reader}" if reader else "no reader, so MONAI picks one by suffix "
                                "(ITKReader, which cannot read Netpbm files)")
                        raise DataError(
                            f"{where}[{i}] LoadImaged has {used}, but {key} files such as {path} are "
                            f"{os.path.splitext(path)[1]} (Netpbm) images that only MONAI's PILReader reads; add "
                            "`reader: PILReader, reverse_indexing: false` to that LoadImaged (reverse_indexing: "
                            "false keeps numpy's (H, W) axis order)")
