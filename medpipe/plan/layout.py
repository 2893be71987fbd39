"""Where the data is and how it is split: the ``data`` section of a planned pipeline, detected from ``DATA``.

``DATA`` (the argument of ``python -m medpipe.plan``) is one of:

* a Medical Segmentation Decathlon folder or its ``dataset.json`` (segmentation, ``list_file: dataset.json``);
* a folder with an image folder and a label folder of the same file names at depth one or two
  (``images/`` + ``labels/``, ``train/image/`` + ``train/label/``, ``imagesTr/`` + ``labelsTr/``; the names in
  :data:`IMAGE_DIRS` / :data:`LABEL_DIRS`), with an optional unlabelled test folder (:data:`TEST_DIRS`);
* a folder of class folders (``NORMAL/``, ``PNEUMONIA/``, optionally below ``train/`` and ``test/``): classification;
* a CSV or JSON list file: the image column is the first column whose values are image files (names in
  :data:`IMAGE_COLUMN_NAMES` first); a second path column makes it segmentation (mask names first), else the label
  column is a non-path column with 2 to 50 values (:data:`LABEL_COLUMN_NAMES` first); a ``split`` column gives the
  predefined splits (:data:`SPLIT_VALUES`), a patient / subject column the groups;
* a pipeline YAML: its ``data`` section is kept unchanged (files and split protocol are the researcher's
  decision; the plan is everything else), so a planned pipeline is scored on exactly the hand-written one's split.

Any detected column can be given instead (``columns=``). Nothing here reads pixels: :mod:`medpipe.plan.fingerprint`
does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from medpipe.paths import data_root

__all__ = ["Layout", "LayoutError", "detect_layout", "IMAGE_SUFFIXES"]

#: file name endings read as images (2D and volumes)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".pgm", ".dcm", ".nii", ".nii.gz", ".nrrd",
                  ".mha", ".mhd", ".npy")
IMAGE_DIRS = ("images", "image", "imagesTr", "imgs", "img")
LABEL_DIRS = ("labels", "label", "labelsTr", "masks", "mask", "segmentations")
TEST_DIRS = ("imagesTs", "test")
IMAGE_COLUMN_NAMES = ("image", "path", "file", "filename", "img")
MASK_COLUMN_NAMES = ("mask", "label", "seg", "segmentation")
LABEL_COLUMN_NAMES = ("label", "class", "diagnosis", "target", "finding", "category")
GROUP_COLUMN_NAMES = ("patient", "subject", "participant", "group")
#: predefined split names in a split column -> medpipe's splits
SPLIT_VALUES = {"train": "train", "training": "train", "tr": "train", "val": "val", "valid": "val",
                "validation": "val", "dev": "val", "test": "test", "testing": "test", "holdout": "test",
                "ts": "test"}


class LayoutError(ValueError):
    """``DATA`` is not a layout :func:`detect_layout` knows; the message names the path and what was looked for."""


@dataclass
class Layout:
    """The detected ``data`` section.

    Attributes:
        task: ``"segmentation"`` or ``"classification"``.
        data: the ``data`` section as plain data (``root`` relative to the data root when it lies below it).
        why: reason per ``data`` key, written as the YAML comment.
        modality: imaging modality named by the data itself (MSD ``dataset.json``), else ``None``.
        label_names: label / class names named by the data itself, else ``None``.
        source: what ``DATA`` was, in words.
        metrics: a pipeline YAML's ``metrics`` section (what is measured and how the best checkpoint is chosen is
            part of the protocol, like the split), else ``None``.
    """

    task: str
    data: Dict
    why: Dict[str, str] = field(default_factory=dict)
    modality: Optional[List[str]] = None
    label_names: Optional[List[str]] = None
    source: str = ""
    metrics: Optional[Dict] = None


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _root_str(folder: Path) -> str:
    """``folder`` relative to the data root when below it (portable YAML), else absolute."""
    folder = folder.resolve()
    try:
        return str(folder.relative_to(data_root().resolve()))
    except (ValueError, FileNotFoundError):
        return str(folder)


def _suffix_glob(folder: Path) -> str:
    """``*.<ext>`` of the most common image ending in ``folder``."""
    counts: Dict[str, int] = {}
    for f in folder.iterdir():
        for suf in IMAGE_SUFFIXES:
            if f.name.lower().endswith(suf):
                counts[suf] = counts.get(suf, 0) + 1
                break
    if not counts:
        raise LayoutError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return "*" + max(counts, key=counts.get)


def _msd(path: Path) -> Layout:
    import json

    obj = json.loads(path.read_text())
    mod = obj.get("modality") or {}
    labels = obj.get("labels") or {}
    names = [str(labels[k]) for k in sorted(labels, key=lambda k: int(k))] if labels else None
    return Layout("segmentation", {"root": _root_str(path.parent), "list_file": path.name,
                                   "split": {"val_fraction": 0.2, "seed": 0}},
                  {"list_file": f"Medical Segmentation Decathlon list: {len(obj.get('training', []))} labelled cases",
                   "split": "no predefined validation cases: 20 % held out at random (seed 0), nnU-Net's 5-fold "
                            "CV uses the same fraction per fold"},
                  modality=[str(mod[k]) for k in sorted(mod, key=lambda k: int(k))] or None, label_names=names,
                  source=f"MSD dataset.json {path}")


def _pair_folders(root: Path) -> Optional[Layout]:
    """Image + label folders at depth one or two below ``root``."""
    for base in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        subs = {p.name: p for p in base.iterdir() if p.is_dir()} if base.is_dir() else {}
        img = next((subs[n] for n in IMAGE_DIRS if n in subs), None)
        lab = next((subs[n] for n in LABEL_DIRS if n in subs), None)
        if img is None or lab is None:
            continue
        rel = lambda p: str(p.relative_to(root))  # noqa: E731
        data = {"root": _root_str(root), "images": f"{rel(img)}/{_suffix_glob(img)}",
                "labels": f"{rel(lab)}/{_suffix_glob(lab)}"}
        why = {"images": f"image folder {rel(img)}/", "labels": f"label folder {rel(lab)}/, paired by file name"}
        for cand in [*(base / n for n in TEST_DIRS), *(root / n for n in TEST_DIRS)]:
            if cand.is_dir() and cand != img and any(_is_image(f.name) for f in cand.iterdir()):
                data["test_images"] = f"{rel(cand)}/{_suffix_glob(cand)}"
                why["test_images"] = "unlabelled test images: predicted after training"
                break
        data["split"] = {"val_fraction": 0.2, "seed": 0}
        why["split"] = "no predefined validation images: 20 % held out at random (seed 0)"
        return Layout("segmentation", data, why, source=f"image/label folders below {root}")
    return None


def _class_folders(root: Path) -> Optional[Layout]:
    """Class folders (each holding images) directly below ``root`` or below its train / test folders."""
    def classes_in(folder: Path) -> List[str]:
        found = sorted(p.name for p in folder.iterdir()
                       if p.is_dir() and any(_is_image(f.name) for f in p.iterdir()))
        return [] if set(found) & set(IMAGE_DIRS + LABEL_DIRS) else found  # image + mask folders, not classes

    direct = classes_in(root)
    if len(direct) >= 2:
        data = {"root": _root_str(root), "images": "*/*", "class_from": "folder", "classes": direct}
        return Layout("classification", data, {"class_from": f"one folder per class: {', '.join(direct)}"},
                      label_names=direct, source=f"class folders below {root}")
    subs = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    train = next((subs[n] for n in ("train", "training") if n in subs), None)
    if train is None or len(classes_in(train)) < 2:
        return None
    classes = classes_in(train)
    data = {"root": _root_str(root), "images": f"{train.name}/*/*", "class_from": "folder", "classes": classes}
    why = {"class_from": f"one folder per class below {train.name}/: {', '.join(classes)}"}
    test = next((subs[n] for n in ("test", "testing") if n in subs), None)
    if test is not None:
        data["test_images"] = f"{test.name}/*/*"
        why["test_images"] = f"{test.name}/: the held-out test split"
    return Layout("classification", data, why, label_names=classes, source=f"class folders below {root}")


def _pick(columns: Sequence[str], preferred: Sequence[str], candidates: Sequence[str]) -> Optional[str]:
    """The first candidate whose lower-case name contains a preferred word (in preference order), else the first."""
    for word in preferred:
        for c in candidates:
            if word in c.lower():
                return c
    return candidates[0] if candidates else None


def _list_file(path: Path, task: Optional[str], columns: Dict[str, str]) -> Layout:
    from medpipe.data.discovery import read_list_rows

    rows, cols = read_list_rows(path)
    if not rows:
        raise LayoutError(f"{path}: no rows")
    root = path.parent
    sample = [r for _, r in rows[:20]]

    def is_path_column(c: str) -> bool:
        vals = [str(r.get(c) or "") for r in sample if r.get(c)]
        return bool(vals) and all(_is_image(v) and (root / v).exists() for v in vals[:5])

    path_cols = [c for c in cols if is_path_column(c)]
    image = columns.get("image") or _pick(cols, IMAGE_COLUMN_NAMES, path_cols)
    if image is None:
        raise LayoutError(f"{path}: no column holds image paths relative to {root} (columns: {', '.join(cols)}); "
                          "name it with --image-column")
    others = [c for c in path_cols if c != image]
    split_col = columns.get("split") or next((c for c in cols if c.lower() in ("split", "set", "subset", "fold")),
                                             None)
    group_col = columns.get("group") or next(
        (c for w in GROUP_COLUMN_NAMES for c in cols if w in c.lower() and c not in (image, split_col)), None)
    if task is None:
        task = "segmentation" if (others or columns.get("label") in others) else "classification"
    why: Dict[str, str] = {"image_column": f"column {image!r} holds the image paths"}
    data: Dict = {"root": _root_str(root), "list_file": path.name, "image_column": image}
    if task == "segmentation":
        label = columns.get("label") or _pick(cols, MASK_COLUMN_NAMES, others)
        if label is None:
            raise LayoutError(f"{path}: segmentation needs a column of mask paths besides {image!r} (columns: "
                              f"{', '.join(cols)}); name it with --label-column")
        why["label_column"] = f"column {label!r} holds the masks" + (
            f" (other path columns: {', '.join(c for c in others if c != label)}; --label-column picks one)"
            if len(others) > 1 else "")
    else:
        skip = {image, split_col, group_col, *path_cols}
        cands = [c for c in cols if c not in skip and 2 <= len({r.get(c) for _, r in rows}) <= 50]
        label = columns.get("label") or _pick(cols, LABEL_COLUMN_NAMES, cands)
        if label is None:
            raise LayoutError(f"{path}: no column with 2-50 class values (columns: {', '.join(cols)}); name it "
                              "with --label-column")
        data["classes"] = sorted({str(r.get(label)) for _, r in rows if r.get(label) not in (None, "")})
        why["label_column"] = f"column {label!r}: {len(data['classes'])} classes"
    data["label_column"] = label
    data["split"] = {"val_fraction": 0.2, "seed": 0}
    if task == "classification":
        data["split"]["stratify"] = True
    why["split"] = "20 % of the training rows held out for validation (seed 0" + (
        ", class ratios kept)" if task == "classification" else ")")
    if split_col:
        found = sorted({str(r.get(split_col)) for _, r in rows})
        mapping = {v: SPLIT_VALUES.get(v.lower(), "train") for v in found}
        data["split_column"] = split_col
        data["split"]["column_values"] = mapping
        has_val = "val" in mapping.values()
        if has_val:
            data["split"].pop("val_fraction")
            data["split"].pop("stratify", None)
        why["split_column"] = (f"column {split_col!r}: predefined splits " + ", ".join(f"{k}->{v}"
                               for k, v in mapping.items()))
        why["split"] = "the predefined splits" + ("" if has_val else "; 20 % of the training rows for validation")
    if group_col and task == "classification":
        data["group_column"] = group_col
        why["group_column"] = f"column {group_col!r}: one patient never in two splits"
    return Layout(task, data, why, source=f"list file {path}")


def detect_layout(source, task: Optional[str] = None, columns: Optional[Dict[str, str]] = None) -> Layout:
    """The ``data`` section for ``source`` (module docstring).

    Args:
        source: folder, list file (``.csv`` / ``.json``), MSD ``dataset.json`` or pipeline YAML.
        task: ``"segmentation"`` / ``"classification"`` or ``None`` (detected).
        columns: list-file columns given instead of detected: keys ``image``, ``label``, ``split``, ``group``.

    Returns:
        The :class:`Layout`.

    Raises:
        LayoutError: nothing recognisable (names the path and what was looked for), or ``task`` contradicts the data.
        FileNotFoundError: ``source`` does not exist.
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder (DATA of medpipe.plan)")
    columns = {k: v for k, v in (columns or {}).items() if v}
    if path.is_file() and path.suffix.lower() in (".yaml", ".yml"):
        from medpipe.config import load_config

        cfg = load_config(path)
        data = cfg.data.model_dump(mode="json", exclude_unset=True)
        data["root"] = cfg.data.root
        metrics = cfg.metrics.model_dump(mode="json", exclude_unset=True)
        return Layout(cfg.task, data, {"root": f"data section of {path.name}, unchanged (files and split protocol)"},
                      modality=cfg.data.modality, label_names=cfg.data.classes or cfg.metrics.class_names,
                      source=f"data section of {path}", metrics=metrics or None)
    if path.is_dir() and (path / "dataset.json").is_file():
        path = path / "dataset.json"
    if path.is_file() and path.name == "dataset.json":
        layout = _msd(path)
    elif path.is_file():
        layout = _list_file(path, task, columns)
    else:
        layout = (_pair_folders(path) if task != "classification" else None) or (
            _class_folders(path) if task != "segmentation" else None)
        if layout is None and task is not None:
            other = _pair_folders(path) if task == "classification" else _class_folders(path)
            if other is not None:
                raise LayoutError(f"{path}: --task {task}, but the data is laid out for {other.task} "
                                  f"({other.source})")
        if layout is None:
            raise LayoutError(f"{path}: found neither image + label folders ({'/'.join(IMAGE_DIRS)} with "
                              f"{'/'.join(LABEL_DIRS)}), class folders, nor dataset.json; give a list file instead")
    if task is not None and layout.task != task:
        raise LayoutError(f"{path}: --task {task}, but the data is laid out for {layout.task} ({layout.source})")
    return layout
