"""Case discovery, splits, integrity checks and MONAI datasets/loaders.

A *case* is a dict, the input format of MONAI dictionary transforms and datasets:

* segmentation: ``{"image": path, "label": path}`` (``label`` absent for unlabelled images), plus ``"split"``
  (``train``/``val``/``test``) when a list file's ``data.split_column`` defines splits;
* classification: ``{"image": path, "label": int class index}``, plus ``"group"`` (patient id, str) when
  ``data.group_column`` is set and ``"split"`` (``train``/``val``/``test``) when the data defines splits.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from medpipe.paths import data_root
from medpipe.registry import did_you_mean

logger = logging.getLogger(__name__)

__all__ = [
    "resolve_root",
    "discover_cases",
    "discover_images",
    "split_cases",
    "split_segmentation_cases",
    "verify_cases",
    "image_shape",
    "manifest_hash",
    "build_dataset",
    "build_loader",
    "DataError",
    "discover_classification_cases",
    "split_classification_cases",
    "class_counts",
    "balanced_class_weights",
    "inverse_frequency_weights",
    "cross_validation_folds",
    "check_reader_support",
    "PIL_ONLY_SUFFIXES",
]

_EXTS = (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".pgm", ".bmp", ".npy", ".mha", ".nrrd")


class DataError(ValueError):
    """Bad or inconsistent input data; the message names the file(s) and what was expected."""


def resolve_root(root: str) -> Path:
    """``root`` if absolute, else relative to :func:`medpipe.paths.data_root`.

    Raises:
        FileNotFoundError: the folder does not exist (names it and how the data root is set).
    """
    p = Path(os.path.expanduser(root))
    if not p.is_absolute():
        p = data_root() / p
    if not p.is_dir():
        raise FileNotFoundError(
            f"data.root {root!r} resolves to {p}, which is not a folder (relative roots are resolved against "
            f"$MEDPIPE_DATA, now {data_root()})"
        )
    return p


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
    """Sorted files under ``root`` matching the glob ``pattern`` (``**`` recurses).

    Raises:
        DataError: nothing matches (names the pattern and root).
    """
    files = sorted(f for f in glob.glob(str(root / pattern), recursive=True) if os.path.isfile(f))
    if not files:
        raise DataError(f"no files match {pattern!r} under {root}")
    return files


def discover_cases(data_cfg) -> List[Dict[str, str]]:
    """Labelled cases from ``data.images``/``data.labels`` globs or ``data.list_file``.

    Images and labels are paired by their path below the glob's fixed prefix, extension removed
    (``train/image/3.png`` <-> ``train/label/3.png``). A list file names them in ``data.image_column`` and
    ``data.label_column``; with ``data.split_column`` each row's predefined split is read from that column and
    mapped through ``data.split.column_values`` exactly as for classification (rows mapped to ``drop`` are
    left out; :func:`split_segmentation_cases` then honours the splits).

    Returns:
        Cases ``{"image": abs path, "label": abs path[, "split": "train" | "val" | "test"]}`` sorted by image path.

    Raises:
        DataError: an image without a label or a label without an image (names them), an unreadable or
            malformed list file, a missing column, a split value not in ``data.split.column_values`` or a train /
            val row without a label (these name the file, line and value), or no matches.
    """
    root = resolve_root(data_cfg.root)
    if data_cfg.list_file is not None:
        return _read_list_file(root, data_cfg.list_file, data_cfg.image_column, data_cfg.label_column,
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


def _read_list_file(root: Path, list_file: str, image_column: str = "image", label_column: str = "label",
                    split_column: Optional[str] = None,
                    column_values: Optional[Dict[str, str]] = None) -> List[Dict[str, str]]:
    """Image/label-mask pairs from a CSV (``image_column``, ``label_column``) or a JSON list of objects with those
    keys; paths relative to ``root``. A row with an empty label is an unlabelled case. With ``split_column``, each
    row's split is ``column_values[value]`` (:func:`_row_split`, shared with classification); rows mapped to
    ``drop`` are left out, and a ``train`` or ``val`` row must have a label."""
    path = Path(list_file) if os.path.isabs(list_file) else root / list_file
    if not path.is_file():
        raise DataError(f"data.list_file {path} not found")
    numbered, columns = _read_rows(path)
    if split_column is not None:
        _check_columns(path, columns, {"split_column": split_column})
    cases = []
    for i, (line, row) in enumerate(numbered):
        if not isinstance(row, dict) or image_column not in row:
            raise DataError(f"{path}: row {i + 1} has no {image_column!r} column/key (data.image_column; found "
                            f"{sorted(row) if isinstance(row, dict) else row!r})")
        if i == 0 and label_column not in row and label_column != "label":
            raise DataError(f"{path}: no {label_column!r} column/key (data.label_column); columns: {sorted(row)}."
                            + did_you_mean(label_column, row))
        case = {"image": str(root / row[image_column])}
        if row.get(label_column) not in (None, ""):
            case["label"] = str(root / row[label_column])
        if split_column is not None:
            where = f"{path}, line {line}"
            split = _row_split(row, split_column, column_values or {}, where, row[image_column])
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


def split_cases(cases: Sequence[Dict[str, str]], split_cfg) -> Tuple[List[Dict], List[Dict]]:
    """Deterministic train/validation split of segmentation cases (:func:`split_segmentation_cases` without its
    test split: cases of a predefined test split are held out of both, with a warning).

    Args:
        cases: labelled cases (any order; they are sorted by image path first).
        split_cfg: :class:`medpipe.config.SplitConfig`.

    Returns:
        ``(train, val)`` lists of cases.

    Raises:
        DataError: see :func:`split_segmentation_cases`.
    """
    train, val, test = split_segmentation_cases(cases, split_cfg)
    if test:
        logger.warning("%d cases of the data's predefined test split (data.split_column) are held out: neither "
                       "trained nor validated on", len(test))
    return train, val


def split_segmentation_cases(cases: Sequence[Dict[str, str]], split_cfg
                             ) -> Tuple[List[Dict], List[Dict], List[Dict]]:
    """Deterministic train / validation / test split of segmentation cases.

    Cases carrying a predefined ``split`` (a list file's ``data.split_column``, mapped by
    ``data.split.column_values``; see :func:`discover_cases`) go to that split, as for classification
    (:func:`split_classification_cases` shares the code). A predefined validation split replaces ``val`` /
    ``val_fraction`` / ``kfold`` (a warning names the unused setting); without one, the validation split of the
    training pool comes from ``val`` (file names), ``kfold``/``fold`` or ``val_fraction``, shuffled with
    ``numpy.random.default_rng(seed)`` after sorting by image path (so the input order does not matter).

    Args:
        cases: segmentation cases ``{"image", "label"[, "split"]}`` from :func:`discover_cases`.
        split_cfg: :class:`medpipe.config.SplitConfig`.

    Returns:
        ``(train, val, test)`` case lists sorted by image path; ``test`` is the predefined test split (empty if
        the data has none; unlabelled ``data.test_images`` are not among the cases).

    Raises:
        DataError: an explicit validation file is not among the cases, ``kfold`` has more folds than cases or no
            ``fold``, or a split leaves training or validation empty.
    """
    cases = sorted(cases, key=lambda c: c["image"])
    pool, val, test = _predefined_partition(cases)
    if val:
        _warn_unused_split_settings(val, split_cfg)
        if not pool:
            raise DataError(f"split of {len(cases)} cases leaves 0 for training and {len(val)} for validation "
                            "(data.split_column marks no row as train)")
        return pool, val, test
    train, val = _split_pool(pool, split_cfg)
    return train, val, test


def _predefined_partition(cases: Sequence[Dict], test_groups=frozenset()) -> Tuple[List[Dict], List[Dict], List[Dict]]:
    """``(pool, val, test)`` by each case's predefined ``split`` (``train`` when it has none); cases of a group in
    ``test_groups`` go to test whatever their split. Both tasks use it."""
    pre: Dict[str, List[Dict]] = {"train": [], "val": [], "test": []}
    for c in cases:
        pre["test" if c.get("group") in test_groups else c.get("split", "train")].append(c)
    return pre["train"], pre["val"], pre["test"]


def _warn_unused_split_settings(val: Sequence[Dict], split_cfg) -> None:
    """Log that a predefined validation split makes the user's ``val`` / ``val_fraction`` / ``kfold`` unused."""
    explicit = {"val", "val_fraction", "kfold"} & set(split_cfg.model_fields_set)
    if explicit:
        logger.warning("the data defines a validation split (%d cases); data.split.%s is not used",
                       len(val), ", ".join(sorted(explicit)))


def _split_pool(cases: List[Dict], split_cfg) -> Tuple[List[Dict], List[Dict]]:
    """Train / validation split of a segmentation training pool (sorted by image path) by ``val``, ``kfold`` or
    ``val_fraction``."""
    n = len(cases)
    if split_cfg.val is not None:
        wanted = list(split_cfg.val)
        val_idx = []
        for name in wanted:
            hits = [i for i, c in enumerate(cases) if c["image"].endswith(os.sep + name) or c["image"] == name]
            if not hits:
                raise DataError(f"data.split.val: {name!r} is not among the {n} discovered images")
            val_idx.extend(hits)
        val_set = set(val_idx)
    else:
        order = np.random.default_rng(split_cfg.seed).permutation(n)
        if split_cfg.kfold is not None:
            if n < split_cfg.kfold:
                raise DataError(f"data.split.kfold={split_cfg.kfold} needs at least that many cases, found {n}")
            folds = np.array_split(order, split_cfg.kfold)
            val_set = set(folds[_fold_index(split_cfg)].tolist())
        else:
            n_val = max(1, int(round(n * split_cfg.val_fraction)))
            val_set = set(order[:n_val].tolist())
    train = [c for i, c in enumerate(cases) if i not in val_set]
    val = [c for i, c in enumerate(cases) if i in val_set]
    if not train or not val:
        raise DataError(f"split of {n} cases leaves {len(train)} for training and {len(val)} for validation")
    return train, val


def image_shape(path: str) -> Tuple[int, ...]:
    """Spatial shape of an image file, reading it fully to detect truncation.

    PNG/JPEG/TIFF/PGM/BMP through Pillow (shape ``(H, W)``), NIfTI through nibabel (its array shape without
    the channel axis if 4D), DICOM through pydicom (``(Rows, Columns)`` or ``(Frames, Rows, Columns)``),
    ``.npy`` through numpy. A folder is treated as a DICOM series and is not read here (returns ``()``).

    Raises:
        DataError: the file is missing, empty, truncated or not an image of its type; names the file.
    """
    if os.path.isdir(path):
        return ()
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: file is empty (0 bytes)")
    low = path.lower()
    try:
        if low.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            img = nib.load(path)
            np.asanyarray(img.dataobj)  # forces a full read
            shape = img.shape
            return tuple(shape[:3]) if len(shape) > 3 else tuple(shape)
        if low.endswith(".dcm"):
            import pydicom

            ds = pydicom.dcmread(path)
            return tuple(ds.pixel_array.shape[:3] if getattr(ds, "NumberOfFrames", 1) > 1 else ds.pixel_array.shape[:2])
        if low.endswith(".npy"):
            return tuple(np.load(path, mmap_mode="r").shape)
        from PIL import Image

        with Image.open(path) as im:
            im.load()
            return (im.height, im.width)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc


#: Netpbm suffixes (e.g. the mini-MIAS originals, 8-bit binary ``P5`` PGM) that among MONAI's readers only
#: ``PILReader`` reads. ``LoadImaged`` without a ``reader`` picks ``ITKReader`` for them (it claims every suffix),
#: which fails with "Could not create IO object"; without ITK no reader is found at all.
PIL_ONLY_SUFFIXES = (".pgm", ".ppm", ".pbm", ".pnm")


def check_reader_support(cases: Sequence[Dict], chains: Dict[str, Sequence]) -> None:
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


def verify_cases(cases: Sequence[Dict[str, str]], on_bad_image: str = "error") -> Tuple[List[Dict], List[Dict]]:
    """Read every image and label image once; check readability and that image and label sizes match.

    Classification cases (``label`` an int class index) have only their image read.

    Every case is checked before anything is decided, so one run reports all bad files at once.

    Args:
        cases: cases to check.
        on_bad_image: ``"error"`` raises after the check if any case is bad; ``"skip"`` logs and drops bad cases.

    Returns:
        ``(good_cases, problems)`` where each problem is ``{"file": path, "reason": text}``.

    Raises:
        DataError: with ``on_bad_image="error"`` and bad cases: how many, and each file with its reason (the
            first 20).
    """
    good, problems = [], []
    for case in cases:
        try:
            shape = image_shape(case["image"])
            if isinstance(case.get("label"), str):  # a label image (segmentation); class indices need no check
                lshape = image_shape(case["label"])
                if shape and lshape and shape != lshape:
                    raise DataError(
                        f"{case['label']}: label size {lshape} does not match image {case['image']} size {shape}"
                    )
        except DataError as exc:
            text = str(exc)
            problems.append({"file": text.split(": ", 1)[0], "reason": text.split(": ", 1)[-1]})
            if on_bad_image == "skip":
                logger.warning("skipping bad case: %s", text)
            continue
        good.append(case)
    if problems and on_bad_image == "error":
        listed = "; ".join(f"{p['file']}: {p['reason']}" for p in problems[:20])
        more = f"; and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DataError(f"{len(problems)} of {len(cases)} cases are bad: {listed}{more} (set data.on_bad_image: "
                        "skip to report and skip such cases)")
    return good, problems


def manifest_hash(cases: Sequence[Dict[str, str]]) -> str:
    """SHA-256 over the cases' relative names, sizes and contents' first/last 64 KiB (a dataset fingerprint);
    class indices, groups and split names enter as their values."""
    h = hashlib.sha256()
    for case in sorted(cases, key=lambda c: c["image"]):
        for key in sorted(case):
            path = case[key]
            if not isinstance(path, str) or key in ("group", "split"):  # class index, patient id, split name
                h.update(f"{key}={path}".encode())
                continue
            h.update(f"{key}={os.path.basename(path)}:{os.path.getsize(path) if os.path.isfile(path) else 0}".encode())
            if os.path.isfile(path):
                with open(path, "rb") as fh:
                    h.update(fh.read(65536))
                    if os.path.getsize(path) > 65536:
                        fh.seek(-65536, os.SEEK_END)
                        h.update(fh.read())
    return h.hexdigest()


def build_dataset(cases: Sequence[Dict], transform, data_cfg, cache_dir: Optional[Path] = None, progress=False):
    """A MONAI dataset over ``cases`` with the caching chosen in ``data.cache``.

    ``memory``: ``monai.data.CacheDataset`` (deterministic transforms up to the first random one are cached);
    ``disk``: ``monai.data.PersistentDataset`` under ``cache_dir``; ``none``: ``monai.data.Dataset``.
    """
    import monai.data as md

    if data_cfg.cache == "memory":
        return md.CacheDataset(list(cases), transform, cache_rate=data_cfg.cache_rate, num_workers=None,
                               progress=progress)
    if data_cfg.cache == "disk":
        if cache_dir is None:
            raise ValueError("data.cache: disk needs a cache_dir")
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        return md.PersistentDataset(list(cases), transform, cache_dir=cache_dir)
    return md.Dataset(list(cases), transform)


def build_loader(dataset, batch_size: int, shuffle: bool, num_workers: int = 0, seed: int = 0,
                 sample_weights: Optional[Sequence[float]] = None, drop_last: bool = False,
                 loader: str = "dataloader"):
    """``monai.data.DataLoader`` or ``monai.data.ThreadDataLoader`` (seeded worker RNG, MONAI collation of
    meta-tensors).

    Args:
        dataset: a MONAI/torch dataset.
        batch_size: samples per batch.
        shuffle: reshuffle every epoch (ignored with ``sample_weights``).
        num_workers: worker processes.
        seed: seed of the loader's generator (shuffling, sampling, workers' seeds).
        sample_weights: one weight per sample: draw ``len(dataset)`` samples per epoch with replacement with
            these probabilities (``torch.utils.data.WeightedRandomSampler``), e.g. from
            :func:`inverse_frequency_weights`.
        drop_last: drop a last incomplete batch (a batch of one breaks batch norm in training).
        loader: ``dataloader`` (``monai.data.DataLoader``) or ``thread`` (``monai.data.ThreadDataLoader``: batches
            are prepared in a background thread while the network computes; with ``num_workers`` 0 the thread
            runs the random transforms itself; MONAI's choice with ``CacheDataset`` and for tensors cached on the
            GPU).
    """
    import torch
    import monai.data as md

    gen = torch.Generator()
    gen.manual_seed(seed)
    sampler = None
    if sample_weights is not None:
        sampler = torch.utils.data.WeightedRandomSampler(torch.as_tensor(sample_weights, dtype=torch.double),
                                                         num_samples=len(dataset), replacement=True,
                                                         generator=gen)
        shuffle = False
    # workers are re-created every epoch (not persistent) so that re-seeding the generator at an epoch's start
    # (medpipe.engine.resume.EpochReseed) also re-seeds their random transforms
    cls = md.ThreadDataLoader if loader == "thread" else md.DataLoader
    return cls(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, num_workers=num_workers,
               generator=gen, persistent_workers=False, drop_last=drop_last)


# ------------------------------------------------------------------------------------------- classification
def _read_rows(path: Path) -> Tuple[List[Tuple[int, Dict]], List[str]]:
    """Rows of a CSV (with their 1-based file line) or JSON list file, and the column names found."""
    if path.suffix.lower() == ".json":
        try:
            rows = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise DataError(f"{path}: expected a JSON list of objects like {{\"image\": ..., \"label\": ...}}")
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


def _row_split(row: Dict, split_column: str, mapping: Dict[str, str], where: str, image: str) -> str:
    """The split of one list-file row: its ``split_column`` value mapped through ``data.split.column_values``
    (``train``, ``val``, ``test`` or ``drop``); used by both tasks.

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


def discover_classification_cases(data_cfg) -> Tuple[List[Dict], List[str]]:
    """Labelled classification cases from ``data.list_file`` (CSV/JSON) or an ``data.images`` glob.

    * ``list_file``: paths in ``data.image_column`` (relative to ``data.root``), class names in
      ``data.label_column``, optional predefined split names in ``data.split_column`` (mapped through
      ``data.split.column_values``; rows mapped to ``drop`` are left out) and patient ids in
      ``data.group_column``.
    * ``images`` with ``class_from: folder``: the class is each file's parent folder name
      (``train/NORMAL/x.jpeg`` -> ``NORMAL``); files matching ``data.test_images`` form the test split.

    Class indices follow ``data.classes`` when given (index = position), else the sorted class names found.

    Returns:
        ``(cases, class_names)``: cases ``{"image": abs path, "label": int[, "group": str][, "split": str]}``
        sorted by image path, and the class names in index order.

    Raises:
        DataError: a missing list file or column (names the columns found), an empty image or label cell, a class
            not in ``data.classes`` or a split value not in ``split.column_values`` (both name the file, line,
            image and value), fewer than two classes, or no files matching a glob.
    """

    root = resolve_root(data_cfg.root)
    raw: List[Dict] = []
    if data_cfg.list_file is not None:
        path = Path(data_cfg.list_file) if os.path.isabs(data_cfg.list_file) else root / data_cfg.list_file
        if not path.is_file():
            raise DataError(f"data.list_file {path} not found")
        rows, columns = _read_rows(path)
        _check_columns(path, columns, {"image_column": data_cfg.image_column, "label_column": data_cfg.label_column,
                                       "split_column": data_cfg.split_column, "group_column": data_cfg.group_column})
        mapping = data_cfg.split.column_values
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
                split = _row_split(row, data_cfg.split_column, mapping, where, image)
                if split == "drop":
                    continue
                case["split"] = split
            raw.append(case)
    else:
        for pattern, split in ((data_cfg.images, None), (data_cfg.test_images, "test")):
            if pattern is None:
                continue
            for f in discover_images(root, pattern):
                case = {"image": f, "class": Path(f).parent.name, "where": f}
                if data_cfg.test_images is not None:
                    case["split"] = split or "train"
                raw.append(case)
        seen: Dict[str, str] = {}
        for c in raw:
            if c["image"] in seen and seen[c["image"]] != c.get("split"):
                raise DataError(f"{c['image']} matches both data.images and data.test_images")
            seen[c["image"]] = c.get("split")
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
    cases = []
    for c in sorted(raw, key=lambda c: c["image"]):
        case = {"image": c["image"], "label": index[c["class"]]}
        for key in ("group", "split"):
            if key in c:
                case[key] = c[key]
        cases.append(case)
    return cases, classes


def _labels(cases: Sequence[Dict]) -> np.ndarray:
    return np.array([int(c["label"]) for c in cases], dtype=np.int64)


def _groups(cases: Sequence[Dict]) -> Optional[np.ndarray]:
    if cases and all("group" in c for c in cases):
        return np.array([c["group"] for c in cases])
    return None


def _holdout(cases: List[Dict], fraction: float, stratify: bool, seed: int, what: str) -> Tuple[List, List]:
    """Split off about ``fraction`` of ``cases`` (stratified by label, grouped by ``group`` when present)."""
    from sklearn import model_selection as ms

    y, groups = _labels(cases), _groups(cases)
    idx = np.arange(len(cases))
    try:
        if groups is not None:
            n_splits = max(2, int(round(1.0 / fraction)))
            n_groups = len(set(groups.tolist()))
            if n_groups < n_splits:
                raise DataError(f"{what}: {n_groups} groups (patients) cannot be split {fraction:g} / "
                                f"{1 - fraction:g} by group; need at least {n_splits}")
            splitter = (ms.StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed) if stratify
                        else ms.GroupKFold(n_splits, shuffle=True, random_state=seed))
            keep, held = next(splitter.split(idx, y, groups))
        else:
            splitter = (ms.StratifiedShuffleSplit(1, test_size=fraction, random_state=seed) if stratify
                        else ms.ShuffleSplit(1, test_size=fraction, random_state=seed))
            keep, held = next(splitter.split(idx, y))
    except ValueError as exc:
        raise DataError(f"{what}: cannot split {len(cases)} cases ({exc})") from None
    return [cases[i] for i in sorted(keep)], [cases[i] for i in sorted(held)]


def _kfold(cases: List[Dict], k: int, fold: int, stratify: bool, seed: int) -> Tuple[List, List]:
    from sklearn import model_selection as ms

    y, groups = _labels(cases), _groups(cases)
    idx = np.arange(len(cases))
    try:
        if groups is not None:
            splitter = (ms.StratifiedGroupKFold(k, shuffle=True, random_state=seed) if stratify
                        else ms.GroupKFold(k, shuffle=True, random_state=seed))
            folds = list(splitter.split(idx, y, groups))
        else:
            splitter = (ms.StratifiedKFold(k, shuffle=True, random_state=seed) if stratify
                        else ms.KFold(k, shuffle=True, random_state=seed))
            folds = list(splitter.split(idx, y))
    except ValueError as exc:
        raise DataError(f"data.split.kfold={k}: cannot split {len(cases)} cases ({exc})") from None
    keep, held = folds[_fold_index(split_cfg=None, k=k, fold=fold)]
    return [cases[i] for i in sorted(keep)], [cases[i] for i in sorted(held)]


def split_classification_cases(cases: Sequence[Dict], split_cfg) -> Tuple[List[Dict], List[Dict], List[Dict]]:
    """Deterministic train / validation / test split of classification cases.

    Order of decisions: cases of a group named in ``test_groups`` go to test (whatever their predefined
    split); other cases with a predefined ``split`` go there; without a predefined test split,
    ``test_fraction`` (if set) is held out of the training pool first; without a predefined val split, the
    validation split comes from ``val`` (file names), ``kfold``/``fold`` or ``val_fraction`` of what remains.
    Stratified by class (``stratify``) and grouped by ``group`` when the cases have one, via scikit-learn
    (``StratifiedShuffleSplit``, ``StratifiedKFold``, ``StratifiedGroupKFold``) seeded by ``seed``; the cases
    are sorted by image path first, so the result does not depend on their input order.

    Args:
        cases: from :func:`discover_classification_cases`.
        split_cfg: :class:`medpipe.config.SplitConfig`.

    Returns:
        ``(train, val, test)`` case lists (``test`` may be empty), each sorted by image path.

    Raises:
        DataError: a split would be empty, a class cannot be stratified (too few cases), an explicit validation
            file is unknown, a group (patient) ends up in two splits (predefined splits included; the message
            names the group and suggests mapping a split to ``drop``), or a ``test_groups`` entry is not a
            group of the data.
    """
    cases = sorted(cases, key=lambda c: c["image"])
    test_groups = set(getattr(split_cfg, "test_groups", None) or [])
    if test_groups:
        found = {c.get("group") for c in cases}
        unknown = sorted(test_groups - found)
        if unknown:
            known = sorted(g for g in found if g is not None)
            raise DataError(f"data.split.test_groups: group(s) {unknown} not found in data.group_column "
                            f"(groups: {', '.join(known[:20])}{' ...' if len(known) > 20 else ''})")
    pool, val, test = _predefined_partition(cases, test_groups)
    if not test and split_cfg.test_fraction is not None:
        pool, test = _holdout(pool, split_cfg.test_fraction, split_cfg.stratify, split_cfg.seed,
                              "data.split.test_fraction")
    if val:
        _warn_unused_split_settings(val, split_cfg)
    elif split_cfg.val is not None:
        names = list(split_cfg.val)
        unknown = [n for n in names if not any(c["image"].endswith(os.sep + n) or c["image"] == n for c in pool)]
        if unknown:
            raise DataError(f"data.split.val: {unknown[0]!r} is not among the {len(pool)} training-pool images")
        val = [c for c in pool if any(c["image"].endswith(os.sep + n) or c["image"] == n for n in names)]
        pool = [c for c in pool if c not in val]
    elif split_cfg.kfold is not None:
        pool, val = _kfold(pool, split_cfg.kfold, split_cfg.fold, split_cfg.stratify, split_cfg.seed)
    else:
        pool, val = _holdout(pool, split_cfg.val_fraction, split_cfg.stratify, split_cfg.seed,
                             "data.split.val_fraction")
    if not pool or not val:
        raise DataError(f"split of {len(cases)} cases leaves {len(pool)} for training and {len(val)} for "
                        "validation")
    groups = {name: {c["group"] for c in part if "group" in c} for name, part in
              (("train", pool), ("val", val), ("test", test))}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = sorted(groups[a] & groups[b])
        if both:
            raise DataError(
                f"group(s) {both[:5]} are in both the {a} and the {b} split (data.group_column): the same patient "
                f"must not be in two splits. If a predefined split causes this, map it to drop in "
                f"data.split.column_values")
    return pool, val, test


def _fold_index(split_cfg=None, k: Optional[int] = None, fold: Optional[int] = None) -> int:
    """The validation fold of a single k-fold run; a clear error when none is chosen (cross-validation)."""
    if split_cfg is not None:
        k, fold = split_cfg.kfold, split_cfg.fold
    if fold is None:
        raise DataError(f"data.split.kfold={k} without data.split.fold means cross-validation (all folds): run it "
                        "with medpipe.cv.run_cross_validation (medpipe.run does), or set data.split.fold to train "
                        "one fold")
    return int(fold)


def cross_validation_folds(cases: Sequence[Dict], split_cfg, task: str = "classification"
                           ) -> Tuple[List[Tuple[List[Dict], List[Dict]]], List[Dict]]:
    """All ``split_cfg.kfold`` folds of a cross-validation, and the test split held out before them.

    Fold ``k`` is exactly what a single run with ``data.split.fold: k`` trains on (the same functions,
    :func:`split_classification_cases` / :func:`split_cases`, with ``fold = k``), so the folds are stratified
    by class (and grouped by patient when the cases have a ``group``) and deterministic given ``seed``.

    Args:
        cases: from :func:`discover_classification_cases` (classification) or :func:`discover_cases`.
        split_cfg: :class:`medpipe.config.SplitConfig` with ``kfold`` set (``fold`` is ignored).
        task: ``"classification"`` or ``"segmentation"`` (its test split is only a predefined one from
            ``data.split_column``; unlabelled ``data.test_images`` are not cases).

    Returns:
        ``(folds, test)``: ``folds[k] = (train_k, val_k)``, case lists sorted by image path; ``test`` the held-out
        test cases (predefined or ``test_fraction``; empty if none), the same for every fold.

    Raises:
        DataError: ``kfold`` is not set; the data defines its own validation split (``data.split_column``), which
            leaves nothing to cross-validate; or a fold cannot be made (see :func:`split_classification_cases`).
        RuntimeError: the folds are not a partition of the training pool (a bug, not a data problem).
    """
    k = split_cfg.kfold
    if k is None:
        raise DataError("cross-validation needs data.split.kfold (the number of folds), e.g. kfold: 5")
    predefined_val = [c["image"] for c in cases if c.get("split") == "val"]
    if predefined_val:
        raise DataError(f"data.split.kfold={k}: the data defines a validation split ({len(predefined_val)} "
                        f"cases, e.g. {predefined_val[0]}) in data.split_column, so there is nothing to "
                        "cross-validate; map it to train in data.split.column_values (e.g. {val: train}) or "
                        "remove kfold")
    folds: List[Tuple[List[Dict], List[Dict]]] = []
    test: List[Dict] = []
    for fold in range(k):
        one = split_cfg.model_copy(update={"fold": fold})
        if task == "classification":
            train, val, test_k = split_classification_cases(cases, one)
        else:
            train, val, test_k = split_segmentation_cases(cases, one)
        if fold and test_k != test:
            raise RuntimeError(f"fold {fold}: the held-out test split differs from fold 0's")
        test = test_k
        folds.append((train, val))
    pool = sorted(c["image"] for c in folds[0][0] + folds[0][1])
    vals = sorted(c["image"] for _, val in folds for c in val)
    if vals != pool:
        raise RuntimeError(f"the {k} validation folds do not cover the {len(pool)} training-pool cases exactly once")
    return folds, test


def class_counts(cases: Sequence[Dict], num_classes: int) -> np.ndarray:
    """Number of cases per class index, ``(num_classes,)`` int64."""
    return np.bincount(_labels(cases), minlength=num_classes).astype(np.int64)


def balanced_class_weights(cases: Sequence[Dict], class_names: Sequence[str]) -> List[float]:
    """Loss weights ``n / (C * n_c)`` from the class counts ``n_c`` of ``cases`` (King & Zeng 2001, scikit-learn's
    ``compute_class_weight("balanced")``): every class contributes equally to the weighted loss.

    Raises:
        DataError: a class has no case (its weight would be infinite); names the class.
    """
    counts = class_counts(cases, len(class_names))
    empty = [class_names[i] for i, n in enumerate(counts) if n == 0]
    if empty:
        raise DataError(f"loss.class_weights: balanced: class(es) {empty} have no training case")
    return [float(counts.sum() / (len(counts) * n)) for n in counts]


def inverse_frequency_weights(cases: Sequence[Dict], num_classes: int) -> List[float]:
    """Per-case sampling weights ``1 / n_{y_i}`` (each class drawn equally often by a weighted sampler)."""
    counts = class_counts(cases, num_classes)
    return [1.0 / float(counts[int(c["label"])]) for c in cases]
