"""The dataset fingerprint: what the planner's rules read (nnU-Net's ``DatasetFingerprintExtractor``, extended).

nnU-Net records per case the shape and spacing after cropping to the non-zero region and 10,000 foreground
intensities, and plans from their medians and percentiles (Isensee et al., Nat. Methods 18, 2021, and
``nnunetv2/experiment_planning/dataset_fingerprint``). :func:`compute_fingerprint` records the same for medpipe's
cases plus what nnU-Net leaves out: 2D and RGB images, channel kinds, the bit depth, classification class balance
and groups, object sizes, file count and size, and the files that could not be read.

Units: shapes in pixels / voxels ``(H, W[, D])`` as MONAI loads them (channel axis removed), spacings in mm
(from the volume's affine; ``None`` for 2D files without one), object sizes in voxels and mm^3.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

__all__ = ["compute_fingerprint", "FOREGROUND_SAMPLES", "MAX_PIXELS"]

#: foreground intensities sampled per case (nnU-Net v2 spreads 10^7 samples over the cases; here a fixed number per
#: read case, the statistics being medians and percentiles of their union)
FOREGROUND_SAMPLES = 10_000
#: a 2D file with more pixels than this (from its header) is not decoded: a whole-slide image belongs to
#: ``python -m medpipe.data.patches`` first (50 Mpx: about 7000 x 7000, 150 MB as RGB uint8, 600 MB as float32)
MAX_PIXELS = 50_000_000
_SLIDE_HINT = "not decoded; cut it into patches with `python -m medpipe.data.patches` and plan from the patch list"


def _whole_slide_sized(path: str) -> Optional[str]:
    """The reason to skip ``path`` when its header gives more than :data:`MAX_PIXELS` pixels, else ``None``
    (Pillow opens lazily: only the header is read; files Pillow cannot open are left to the full read)."""
    if os.path.isdir(path):
        return None
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except Image.DecompressionBombError as exc:  # over 2x Pillow's MAX_IMAGE_PIXELS (179 Mpx): refused at open
        return f"whole-slide sized ({exc}), {_SLIDE_HINT}"
    except Exception:  # not a Pillow format (NIfTI, DICOM, ...) or unreadable: the full read reports it
        return None
    if w * h <= MAX_PIXELS:
        return None
    return f"{w}x{h} pixels ({w * h / 1e6:.0f} Mpx, more than {MAX_PIXELS / 1e6:.0f}): whole-slide sized, {_SLIDE_HINT}"


def _spacing(img) -> Optional[List[float]]:
    """Voxel spacing (mm) of a volume from its affine (MONAI's ``affine_to_spacing``), ``None`` without one."""
    if img.affine is None:
        return None
    from monai.data.utils import affine_to_spacing

    return [round(float(v), 6) for v in affine_to_spacing(np.asarray(img.affine), r=len(img.shape))]


def _channel_kind(img) -> str:
    """``grey``, ``grey-as-rgb`` (three equal channels), ``rgb``, ``rgba`` or ``<n>-channel``."""
    c = img.channels or 1
    if c == 1:
        return "grey"
    if c in (3, 4):
        a = img.pixels()
        if a is not None and a.ndim == 3 and a.shape[-1] == c:
            if np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 1], a[..., 2]):
                return "grey-as-rgb"
        return "rgb" if c == 3 else "rgba"
    return f"{c}-channel"


def _stats(values: np.ndarray) -> Dict[str, float]:
    if values.size == 0:
        return {}
    p = np.percentile(values, [0.5, 50, 99.5])
    return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
            "max": float(values.max()), "percentile_00_5": float(p[0]), "median": float(p[1]),
            "percentile_99_5": float(p[2])}


def _spread(shapes: Sequence[Sequence[float]]) -> Dict[str, List[float]]:
    a = np.asarray(shapes, dtype=float)
    return {"median": [float(v) for v in np.median(a, axis=0)], "min": [float(v) for v in a.min(axis=0)],
            "max": [float(v) for v in a.max(axis=0)], "p10": [float(v) for v in np.percentile(a, 10, axis=0)],
            "p90": [float(v) for v in np.percentile(a, 90, axis=0)]}


def _objects(label: np.ndarray, values: Sequence[int], voxel_mm3: float) -> Dict[str, Dict[str, float]]:
    """Connected components (full connectivity) per label value: count and median size."""
    from scipy import ndimage

    out = {}
    for v in values:
        if v == 0:
            continue
        comp, n = ndimage.label(label == v, structure=np.ones((3,) * label.ndim))
        sizes = np.bincount(comp.ravel())[1:] if n else np.array([])
        out[str(v)] = {"count": int(n), "median_voxels": float(np.median(sizes)) if n else 0.0,
                       "median_mm3": float(np.median(sizes) * voxel_mm3) if n else 0.0}
    return out


def _sample(cases: Sequence[dict], max_cases: int, seed: int = 0) -> List[dict]:
    if len(cases) <= max_cases:
        return list(cases)
    idx = np.sort(np.random.default_rng(seed).choice(len(cases), max_cases, replace=False))
    return [cases[i] for i in idx]


def _case_images(img, lab, task: str, rng) -> Dict:
    """Per-case record: shape, spacing, channels, bits, intensity sample, label values / counts / objects."""
    a = np.asarray(img.pixels(), dtype=np.float64)
    if img.channels and img.channels > 1 and a.ndim == len(img.shape) + 1:
        a = a.mean(axis=-1)
    rec = {"shape": list(img.shape), "spacing": _spacing(img), "channel_kind": _channel_kind(img),
           "bits": img.bits, "dtype": str(img.pixels().dtype), "type_range": img.type_range()}
    mask = None
    if lab is not None:
        lv = np.asarray(lab.pixels())
        if lv.ndim == a.ndim + 1:
            lv = lv[..., 0]
        vals, counts = np.unique(lv, return_counts=True)
        rec["label_values"] = {str(int(v)): int(c) for v, c in zip(vals, counts)}
        mask = lv != 0 if lv.shape == a.shape else None
        sp = rec["spacing"] or [1.0] * lv.ndim
        rec["objects"] = _objects(lv, [int(v) for v in vals], float(np.prod(sp)))
    fg = a[mask] if mask is not None and mask.any() else a[a != 0] if task == "segmentation" else a.ravel()
    if fg.size == 0:
        fg = a.ravel()
    rec["intensities"] = rng.choice(fg, min(FOREGROUND_SAMPLES, fg.size), replace=False)
    return rec


def _summarise(records: List[Dict], task: str) -> Dict:
    shapes = [r["shape"] for r in records]
    dims = {len(s) for s in shapes}
    out: Dict = {"dimensionality": max(dims), "shape": _spread(shapes)}
    spacings = [r["spacing"] for r in records if r["spacing"] is not None]
    if spacings:
        sp = _spread(spacings)
        out["spacing_mm"] = sp
        out["anisotropy"] = float(max(sp["median"]) / min(sp["median"]))
    kinds: Dict[str, int] = {}
    for r in records:
        kinds[r["channel_kind"]] = kinds.get(r["channel_kind"], 0) + 1
    out["channel_kinds"] = kinds
    bits = {r["bits"] for r in records}
    out["bits"] = sorted(b for b in bits if b is not None) or None
    out["dtypes"] = sorted({r["dtype"] for r in records})
    out["intensity_foreground" if task == "segmentation" else "intensity"] = _stats(
        np.concatenate([r["intensities"] for r in records]))
    if task == "segmentation":
        totals: Dict[str, int] = {}
        for r in records:
            for v, c in r.get("label_values", {}).items():
                totals[v] = totals.get(v, 0) + c
        voxels = sum(totals.values())
        out["label_values"] = sorted(int(v) for v in totals)
        out["label_fraction"] = {v: totals[v] / voxels for v in sorted(totals, key=int)} if voxels else {}
        out["foreground_fraction"] = 1.0 - out["label_fraction"].get("0", 0.0) if voxels else None
        objs: Dict[str, Dict[str, float]] = {}
        for v in out["label_values"]:
            rs = [r["objects"][str(v)] for r in records if str(v) in r.get("objects", {})]
            if rs:
                objs[str(v)] = {"objects_per_case_median": float(np.median([o["count"] for o in rs])),
                                "median_voxels": float(np.median([o["median_voxels"] for o in rs])),
                                "median_mm3": float(np.median([o["median_mm3"] for o in rs]))}
        out["objects"] = objs
    return out


def compute_fingerprint(cases: Sequence[dict], task: str, class_names: Optional[Sequence[str]] = None,
                        max_cases: int = 200, modality: Optional[Sequence[str]] = None, seed: int = 0) -> Dict:
    """Fingerprint of labelled cases (module docstring).

    Args:
        cases: medpipe cases (:class:`medpipe.data.cases.Case`): ``image`` paths, ``label`` mask paths
            (segmentation) or class indices (classification), optional ``group`` and ``split``.
        task: ``"segmentation"`` or ``"classification"``.
        class_names: classification: the class names by index.
        max_cases: images read (a seeded random subset when there are more; file count and size, class balance
            and groups always cover every case).
        modality: modality named by the data (MSD ``dataset.json``, ``--modality``), recorded as given.
        seed: of the subset and the intensity samples.

    Returns:
        A JSON-serialisable dict: ``task``, ``num_cases``, ``num_read``, ``files``, ``total_bytes``,
        ``dimensionality``, ``shape`` / ``spacing_mm`` (median, min, max, p10, p90 per axis), ``anisotropy``,
        ``channel_kinds``, ``bits``, ``dtypes``, ``modality``, intensity statistics (``intensity_foreground`` for
        segmentation, over the label's non-zero voxels as nnU-Net; ``intensity`` over whole images for
        classification: mean, std, min, max, percentiles 0.5 / 50 / 99.5), segmentation ``label_values``,
        ``label_fraction``, ``foreground_fraction``, ``objects``; classification ``class_counts``,
        ``imbalance`` (largest / smallest class), ``groups``; ``splits`` (counts of predefined splits) and
        ``bad_files`` (``{"file", "error"}``: unreadable, truncated, holding NaN / infinite values, or 2D files
        over :data:`MAX_PIXELS` from their header (not decoded); never raised, left out of the statistics).

    Raises:
        ValueError: no case could be read (the first errors are in the message).
    """
    from medpipe.data.cases import DataError
    from medpipe.data.imagefile import read_image

    rng = np.random.default_rng(seed)
    files = [c["image"] for c in cases] + [c["label"] for c in cases if isinstance(c.get("label"), str)]
    total = sum(os.path.getsize(f) for f in files if os.path.isfile(f))
    records, bad = [], []
    for c in _sample(cases, max_cases, seed):
        huge = _whole_slide_sized(c["image"])
        if huge:
            bad.append({"file": c["image"], "error": huge})
            continue
        try:
            img = read_image(c["image"])
            lab = read_image(c["label"]) if task == "segmentation" and isinstance(c.get("label"), str) else None
            if img.nonfinite():
                bad.append({"file": c["image"], "error": f"{img.nonfinite()} NaN or infinite values"})
                continue
            records.append(_case_images(img, lab, task, rng))
        except (DataError, OSError, ValueError) as exc:
            bad.append({"file": c["image"], "error": str(exc).splitlines()[0]})
    if not records:
        raise ValueError(f"no case could be read; first errors: {bad[:3]}")
    fp: Dict = {"task": task, "num_cases": len(cases), "num_read": len(records), "files": len(files),
                "total_bytes": int(total), "modality": list(modality) if modality else None}
    fp.update(_summarise(records, task))
    splits: Dict[str, int] = {}
    for c in cases:
        splits[c.get("split", "unassigned")] = splits.get(c.get("split", "unassigned"), 0) + 1
    fp["splits"] = splits
    if task == "classification":
        counts = np.bincount([int(c["label"]) for c in cases], minlength=len(class_names or []))
        names = list(class_names) if class_names else [str(i) for i in range(len(counts))]
        fp["class_counts"] = {names[i]: int(n) for i, n in enumerate(counts)}
        fp["imbalance"] = float(counts.max() / max(1, counts.min()))
        groups = {c.get("group") for c in cases if c.get("group") is not None}
        fp["groups"] = len(groups) or None
    fp["bad_files"] = bad
    return fp


def write_fingerprint(fp: Dict, path) -> Path:
    """Write ``fp`` as indented JSON to ``path`` (parents created); returns the path."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fp, indent=1, sort_keys=False) + "\n")
    return path
