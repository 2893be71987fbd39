"""Post-processing of segmentation masks chosen on validation as nnU-Net does: keep the largest connected component.

nnU-Net (Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical image
segmentation", Nature Methods 18:203-211, 2021; nnU-Net v2 ``nnunetv2/postprocessing/remove_connected_components.py``,
``determine_postprocessing``) decides on the validation predictions:

1. remove every foreground component but the largest one of all foreground classes together (the union of the
   classes; removed pixels become background 0); keep this step when the mean Dice over foreground classes rises
   (strictly) **and** no single class's Dice falls;
2. then, only with more than one foreground class, for each class in turn on top of what was kept so far: keep
   only its largest component; keep the step when that class's Dice rises (strictly).

Dice per class as nnU-Net's ``compute_metrics_on_folder``: per case ``2 TP / (2 TP + FP + FN)``, NaN when the class
is absent from prediction and ground truth (``TP + FP + FN = 0``), averaged over cases with NaN left out; the
foreground mean is the mean over classes (here also NaN-skipping: a class absent from every validation case cannot
decide anything). The operation is MONAI's ``KeepLargestConnectedComponent`` (full connectivity: 8-neighbourhood in
2-D, 26 in 3-D, as nnU-Net's ``remove_all_but_largest_component`` with scikit-image's default).

The chosen post-processing is a JSON-serialisable spec (stored in ``metrics.json`` ``postprocessing``) that
:func:`apply_postprocess` applies to any mask: at prediction, serving and export.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Dict, Iterable, List, Sequence, Tuple

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["keep_largest_component", "class_dice", "choose_postprocess", "apply_postprocess"]

METHOD = "keep_largest_component"


def _as_mask(mask: Any, name: str) -> np.ndarray:
    """A numpy integer mask, or ``ValueError``."""
    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()
    arr = np.asarray(mask)
    if arr.ndim < 1 or arr.size == 0:
        raise ValueError(f"{name}: expected a non-empty class-index mask (*spatial), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.bool_) and not np.all(np.mod(arr, 1) == 0):
            raise ValueError(f"{name}: expected integer class indices, got non-integer values of dtype {arr.dtype}")
        arr = arr.astype(np.int64)
    return arr


def keep_largest_component(mask: Any, labels: Sequence[int]) -> np.ndarray:
    """Remove every component of the union of ``labels`` but the largest (MONAI ``KeepLargestConnectedComponent``).

    Args:
        mask: ``(*spatial)`` integer class indices (e.g. ``(H, W)``), numpy or torch.
        labels: the classes treated together as one foreground (e.g. ``[1, 2]``, or ``[2]`` for one class).

    Returns:
        A new ``(*spatial)`` int64 mask: pixels of ``labels`` outside the largest connected component (full
        connectivity) of their union set to 0; other pixels unchanged.

    Raises:
        ValueError: ``mask`` is empty or not integer, or ``labels`` is empty or holds 0 (the background).
    """
    import torch
    from monai.transforms import KeepLargestConnectedComponent

    arr = _as_mask(mask, "mask")
    labels = [int(v) for v in labels]
    if not labels or 0 in labels:
        raise ValueError(f"labels: expected foreground classes (> 0) to keep the largest component of, got {labels}")
    op = KeepLargestConnectedComponent(applied_labels=labels, is_onehot=False, independent=False)
    out = op(torch.as_tensor(arr.astype(np.int64))[None])
    out = out.as_tensor() if hasattr(out, "as_tensor") else out
    return np.asarray(out[0].cpu().numpy(), dtype=np.int64)


def class_dice(pairs: Sequence[Tuple[np.ndarray, np.ndarray]], num_classes: int) -> np.ndarray:
    """Mean Dice per foreground class over cases, as nnU-Net's ``compute_metrics_on_folder`` computes it.

    Args:
        pairs: ``(prediction, label)`` integer masks of equal shape, one pair per case.
        num_classes: ``K`` (classes ``0..K-1``, 0 = background).

    Returns:
        ``(K - 1,)`` float64: for class ``c`` the mean over cases of ``2 TP / (2 TP + FP + FN)``, cases where
        ``TP + FP + FN = 0`` left out; NaN when every case leaves it out.
    """
    sums, counts = np.zeros(num_classes - 1), np.zeros(num_classes - 1)
    for pred, label in pairs:
        for c in range(1, num_classes):
            p, t = pred == c, label == c
            tp = int(np.count_nonzero(p & t))
            denom = int(np.count_nonzero(p)) + int(np.count_nonzero(t))
            if denom:
                sums[c - 1] += 2.0 * tp / denom
                counts[c - 1] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _fg_mean(dice: np.ndarray) -> float:
    """Mean over the foreground classes with a defined Dice (NaN when none)."""
    finite = dice[np.isfinite(dice)]
    return float(finite.mean()) if finite.size else float("nan")


def _json_list(values: np.ndarray) -> List[Any]:
    return [None if not math.isfinite(float(v)) else float(v) for v in values]


def _check_pairs(pairs: Iterable[Tuple[Any, Any]], num_classes: int) -> List[Tuple[np.ndarray, np.ndarray]]:
    """The pairs as numpy int masks of equal shapes with values in ``[0, num_classes)``, or ``ValueError``."""
    if num_classes < 2:
        raise ValueError(f"num_classes: post-processing needs a background and a foreground class, got {num_classes}")
    out = []
    for i, (pred, label) in enumerate(pairs):
        p, t = _as_mask(pred, f"pairs[{i}] prediction"), _as_mask(label, f"pairs[{i}] label")
        if p.shape != t.shape:
            raise ValueError(f"pairs[{i}]: prediction shape {p.shape} differs from label shape {t.shape}")
        for arr, what in ((p, "prediction"), (t, "label")):
            if arr.min() < 0 or arr.max() >= num_classes:
                raise ValueError(f"pairs[{i}] {what}: values must be class indices in [0, {num_classes}), got "
                                 f"[{arr.min()}, {arr.max()}]")
        out.append((p, t))
    if not out:
        raise ValueError("pairs: no validation case to choose the post-processing on")
    return out


def choose_postprocess(pairs: Iterable[Tuple[Any, Any]], num_classes: int) -> Dict[str, Any]:
    """Choose the largest-component post-processing on validation cases by nnU-Net's rule (module docstring).

    Args:
        pairs: ``(predicted mask, label mask)`` per validation case: integer class indices ``(*spatial)`` of equal
            shape, values in ``[0, num_classes)``.
        num_classes: ``K`` including the background 0.

    Returns:
        The spec, JSON-serialisable: ``{"method": "keep_largest_component", "steps": [[labels...], ...]`` (in the
        order to apply; ``[]`` = nothing helped), ``"connectivity": "full"``, ``"rule"`` (text),
        ``"val_dice_before"`` / ``"val_dice_after"`` (mean foreground Dice as decided on) and
        ``"val_dice_per_class_before"`` / ``"val_dice_per_class_after"`` (``K - 1`` values, ``None`` = undefined),
        ``"n_cases"``}.

    Raises:
        ValueError: no pair, shapes differ, values are not class indices in ``[0, num_classes)``, or
            ``num_classes < 2``.
    """
    cases = _check_pairs(pairs, num_classes)
    foreground = list(range(1, num_classes))
    before = class_dice(cases, num_classes)
    current, dice, steps = [p for p, _ in cases], before, []
    trial = [keep_largest_component(p, foreground) for p in current]
    got = class_dice(list(zip(trial, [t for _, t in cases])), num_classes)
    worse = np.any(got[np.isfinite(before)] < before[np.isfinite(before)])
    if _fg_mean(got) > _fg_mean(dice) and not worse:
        current, dice = trial, got
        steps.append(foreground)
    logger.info("post-processing: largest component of all foreground classes %s (val Dice %.5f -> %.5f)",
                "kept" if steps else "rejected", _fg_mean(before), _fg_mean(got))
    if len(foreground) > 1:
        for c in foreground:
            trial = [keep_largest_component(p, [c]) for p in current]
            got = class_dice(list(zip(trial, [t for _, t in cases])), num_classes)
            keep = bool(got[c - 1] > dice[c - 1])
            logger.info("post-processing: largest component of class %d %s (val Dice %.5f -> %.5f)", c,
                        "kept" if keep else "rejected", dice[c - 1], got[c - 1])
            if keep:
                current, dice = trial, got
                steps.append([c])
    return {"method": METHOD, "steps": steps, "connectivity": "full",
            "rule": "nnU-Net determine_postprocessing: all foreground together if the mean foreground Dice rises "
                    "and no class falls, then per class if its Dice rises",
            "val_dice_before": _fg_mean(before), "val_dice_after": _fg_mean(dice),
            "val_dice_per_class_before": _json_list(before), "val_dice_per_class_after": _json_list(dice),
            "n_cases": len(cases)}


def apply_postprocess(mask: Any, spec: Dict[str, Any]) -> np.ndarray:
    """Apply a spec of :func:`choose_postprocess` to one mask.

    Args:
        mask: ``(*spatial)`` integer class indices, numpy or torch.
        spec: ``{"method": "keep_largest_component", "steps": [[labels...], ...]}`` (other keys ignored); ``None``
            or no steps leave the mask unchanged.

    Returns:
        ``(*spatial)`` int64 mask, each step's :func:`keep_largest_component` applied in order.

    Raises:
        ValueError: an unknown ``method``, or ``steps`` that are not lists of foreground classes.
    """
    arr = _as_mask(mask, "mask").astype(np.int64)
    if not spec:
        return arr
    if spec.get("method", METHOD) != METHOD:
        raise ValueError(f"postprocessing spec: unknown method {spec.get('method')!r}; expected {METHOD!r}")
    steps = spec.get("steps") or []
    if not isinstance(steps, (list, tuple)) or not all(isinstance(s, (list, tuple)) for s in steps):
        raise ValueError(f"postprocessing spec: steps must be a list of label lists, e.g. [[1, 2], [2]], got {steps!r}")
    for labels in steps:
        arr = keep_largest_component(arr, labels)
    return arr
