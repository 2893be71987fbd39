"""Case discovery, splits, integrity checks and MONAI datasets/loaders.

A *case* is a dict ``{"image": path, "label": path}`` (``label`` absent for unlabelled images), the input
format of MONAI dictionary transforms and datasets.
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

logger = logging.getLogger(__name__)

__all__ = [
    "resolve_root",
    "discover_cases",
    "discover_images",
    "split_cases",
    "verify_cases",
    "image_shape",
    "manifest_hash",
    "build_dataset",
    "build_loader",
    "DataError",
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
    (``train/image/3.png`` <-> ``train/label/3.png``).

    Returns:
        Cases ``{"image": abs path, "label": abs path}`` sorted by image path.

    Raises:
        DataError: an image without a label or a label without an image (names them), an unreadable or
            malformed list file, or no matches.
    """
    root = resolve_root(data_cfg.root)
    if data_cfg.list_file is not None:
        return _read_list_file(root, data_cfg.list_file)
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


def _read_list_file(root: Path, list_file: str) -> List[Dict[str, str]]:
    path = Path(list_file) if os.path.isabs(list_file) else root / list_file
    if not path.is_file():
        raise DataError(f"data.list_file {path} not found")
    if path.suffix.lower() == ".json":
        rows = json.loads(path.read_text())
    else:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    cases = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "image" not in row:
            raise DataError(f"{path}: row {i + 1} has no 'image' column/key (found {row!r})")
        case = {"image": str(root / row["image"])}
        if row.get("label") not in (None, ""):
            case["label"] = str(root / row["label"])
        cases.append(case)
    if not cases:
        raise DataError(f"{path}: no rows")
    return sorted(cases, key=lambda c: c["image"])


def split_cases(cases: Sequence[Dict[str, str]], split_cfg) -> Tuple[List[Dict], List[Dict]]:
    """Deterministic train/validation split.

    Args:
        cases: labelled cases (any order; they are sorted by image path first).
        split_cfg: :class:`medpipe.config.SplitConfig`.

    Returns:
        ``(train, val)`` lists of cases.

    Raises:
        DataError: an explicit validation file is not among the cases, or a split leaves a side empty.
    """
    cases = sorted(cases, key=lambda c: c["image"])
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
            val_set = set(folds[split_cfg.fold].tolist())
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


def verify_cases(cases: Sequence[Dict[str, str]], on_bad_image: str = "error") -> Tuple[List[Dict], List[Dict]]:
    """Read every image and label once; check readability and that image and label sizes match.

    Args:
        cases: cases to check.
        on_bad_image: ``"error"`` raises on the first bad case; ``"skip"`` logs and drops bad cases.

    Returns:
        ``(good_cases, problems)`` where each problem is ``{"file": path, "reason": text}``.

    Raises:
        DataError: with ``on_bad_image="error"``, naming the file and the reason.
    """
    good, problems = [], []
    for case in cases:
        try:
            shape = image_shape(case["image"])
            if "label" in case:
                lshape = image_shape(case["label"])
                if shape and lshape and shape != lshape:
                    raise DataError(
                        f"{case['label']}: label size {lshape} does not match image {case['image']} size {shape}"
                    )
        except DataError as exc:
            if on_bad_image == "error":
                raise DataError(f"{exc} (set data.on_bad_image: skip to report and skip such cases)") from None
            text = str(exc)
            file = text.split(": ", 1)[0]
            problems.append({"file": file, "reason": text.split(": ", 1)[-1]})
            logger.warning("skipping bad case: %s", text)
            continue
        good.append(case)
    return good, problems


def manifest_hash(cases: Sequence[Dict[str, str]]) -> str:
    """SHA-256 over the cases' relative names, sizes and contents' first/last 64 KiB (a dataset fingerprint)."""
    h = hashlib.sha256()
    for case in sorted(cases, key=lambda c: c["image"]):
        for key in sorted(case):
            path = case[key]
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


def build_loader(dataset, batch_size: int, shuffle: bool, num_workers: int = 0, seed: int = 0):
    """``monai.data.DataLoader`` (seeded worker RNG, MONAI collation of meta-tensors)."""
    import torch
    import monai.data as md

    gen = torch.Generator()
    gen.manual_seed(seed)
    return md.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, generator=gen,
                         persistent_workers=num_workers > 0)
