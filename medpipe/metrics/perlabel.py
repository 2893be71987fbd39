"""Per-label scores of one multi-class segmentation (2D or 3D): Dice, boundary distances and volumes per class.

With ``K > 2`` classes (e.g. MSD Hippocampus: background, anterior, posterior) every foreground class is reported
on its own, as the Medical Segmentation Decathlon does (Antonelli et al., "The Medical Segmentation Decathlon",
Nat. Commun. 13:4128, 2022): Dice per label, HD95 and average surface distance per label in mm
(:mod:`medpipe.metrics.distance`), and the predicted and true volume of each label in mm3.

* Dice of class ``c``: ``2 |P_c ∩ L_c| / (|P_c| + |L_c|)`` (Dice 1945), MONAI ``DiceMetric(include_background=False,
  reduction="none", ignore_empty=True)``: NaN when the class is absent from the ground truth (left out of means).
* Volume of class ``c``: the number of voxels labelled ``c`` times the voxel volume ``prod(spacing)`` (mm3 for
  spacings in mm; pixels for a PNG, whose spacing is 1).

Inputs are ``(*spatial)`` integer class-index arrays (numpy or torch) of one case.
"""

from __future__ import annotations

import re
from typing import Any, List, Optional, Sequence

import numpy as np
import torch

from medpipe.metrics.arrays import as_int_labels, check_same_shape
from medpipe.metrics.distance import boundary_distances

__all__ = ["label_names", "one_hot", "per_label_dice", "per_label_distances", "label_volumes"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def label_names(num_classes: int, class_names: Optional[Sequence[str]] = None) -> List[str]:
    """Names of the foreground classes ``1 .. K - 1``, used in metric keys (``dice_<name>``).

    Args:
        num_classes: ``K`` (>= 2), background included.
        class_names: ``K`` names, background first (``metrics.class_names``); ``None``: ``class_1``, ``class_2``, ...

    Returns:
        ``K - 1`` names, in class order.

    Raises:
        ValueError: ``class_names`` does not hold ``K`` distinct names of letters, digits, ``_``, ``.``, ``-``.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes: expected >= 2 (background and a foreground class), got {num_classes}")
    if class_names is None:
        return [f"class_{c}" for c in range(1, num_classes)]
    names = [str(n) for n in class_names]
    if len(names) != num_classes:
        raise ValueError(f"metrics.class_names: expected {num_classes} names (background first) for "
                         f"{num_classes} classes, got {len(names)}: {names}")
    bad = [n for n in names if not _NAME.match(n)]
    if bad or len(set(names)) != len(names):
        raise ValueError(f"metrics.class_names: expected distinct names of letters, digits, '_', '.', '-' "
                         f"(they become metric keys), got {names}")
    return names[1:]


def one_hot(mask: Any, num_classes: int, name: str = "mask") -> torch.Tensor:
    """``(*spatial)`` class indices -> ``(1, K, *spatial)`` float32 one-hot (a batch of one image).

    Raises:
        ValueError: values outside ``[0, num_classes)`` or not integers.
    """
    arr = as_int_labels(mask, name, num_classes)
    t = torch.nn.functional.one_hot(torch.from_numpy(arr), num_classes)
    return t.movedim(-1, 0)[None].float()


def _pair(pred: Any, label: Any, num_classes: int):
    """Both masks one-hot, after checking that their shapes agree."""
    p, t = as_int_labels(pred, "pred", num_classes), as_int_labels(label, "label", num_classes)
    check_same_shape(p, t, "pred", "label")
    return one_hot(p, num_classes, "pred"), one_hot(t, num_classes, "label")


def per_label_dice(pred: Any, label: Any, num_classes: int) -> np.ndarray:
    """Dice of each foreground class of one case (module docstring).

    Args:
        pred: ``(*spatial)`` predicted class indices in ``[0, K)``.
        label: ``(*spatial)`` ground-truth class indices, same shape.
        num_classes: ``K`` (>= 2).

    Returns:
        ``(K - 1,)`` float64 Dice per class ``1 .. K - 1``; NaN for a class absent from ``label``.

    Raises:
        ValueError: shapes differ or values are out of range.
    """
    from monai.metrics import DiceMetric

    p, t = _pair(pred, label, num_classes)
    d = DiceMetric(include_background=False, reduction="none", ignore_empty=True)(p, t)
    return d[0].double().numpy()


def per_label_distances(pred: Any, label: Any, num_classes: int, kind: str = "hd95",
                        spacing: Optional[Sequence[float]] = None) -> np.ndarray:
    """HD95 or ASD of each foreground class of one case, in the unit of ``spacing``, with the empty-mask rule
    (:func:`medpipe.metrics.distance.boundary_distances`).

    Args:
        pred: ``(*spatial)`` predicted class indices in ``[0, K)``.
        label: ``(*spatial)`` ground-truth class indices, same shape.
        num_classes: ``K`` (>= 2).
        kind: ``"hd95"`` or ``"asd"``.
        spacing: one value per spatial axis (mm); ``None``: pixels.

    Returns:
        ``(K - 1,)`` float64 distances; the image diagonal where exactly one mask of the class is empty, NaN where
        both are.

    Raises:
        ValueError: shapes differ, values are out of range, or ``spacing`` has the wrong length.
    """
    p, t = _pair(pred, label, num_classes)
    return boundary_distances(p, t, kind, spacing).distances[0].double().numpy()


def label_volumes(mask: Any, num_classes: int, spacing: Optional[Sequence[float]] = None) -> np.ndarray:
    """Volume of each foreground class of one mask: voxel count times ``prod(spacing)``.

    Args:
        mask: ``(*spatial)`` class indices in ``[0, K)``.
        num_classes: ``K`` (>= 2).
        spacing: one value per spatial axis (mm gives mm3); ``None``: voxels (pixels).

    Returns:
        ``(K - 1,)`` float64 volumes of classes ``1 .. K - 1``.

    Raises:
        ValueError: values out of range, or ``spacing`` does not have one value per axis of ``mask``.
    """
    arr = as_int_labels(mask, "mask", num_classes)
    sp = [1.0] * arr.ndim if spacing is None else [float(v) for v in spacing]
    if len(sp) != arr.ndim:
        raise ValueError(f"spacing: expected {arr.ndim} values for a mask of shape {arr.shape}, got {spacing}")
    counts = np.bincount(arr.ravel(), minlength=num_classes)[1:num_classes].astype(np.float64)
    return counts * float(np.prod(sp))
