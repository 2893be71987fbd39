"""Per-case scores of segmentation predictions on the original voxel grid, their means and bootstrap intervals.

The segmentation finish (:mod:`medpipe.workflow.segmentation`) and the cross-validation ensemble
(:mod:`medpipe.workflow.ensemble`) score each labelled case from its predicted probabilities and final mask:

* ``dice``: MONAI ``DiceMetric(include_background=False, ignore_empty=True)`` (what ``MeanDice`` of the validation
  handler computes), the mean over foreground classes of the case (classes absent from the ground truth left out);
* ``hd95`` / ``asd``: MONAI's ``HausdorffDistanceMetric`` (percentile 95) / ``SurfaceDistanceMetric`` (symmetric)
  at the case's voxel spacing, in **mm** (pixels for PNG / TIFF, spacing 1), with medpipe's empty-mask rule (the
  image diagonal in mm; :func:`medpipe.metrics.boundary_distances`, as
  :class:`medpipe.engine.metric_handlers.HD95Metric`), the mean over foreground classes of the case;
* ``volume``: ``volume_pred_<class>_mm3`` and ``volume_true_<class>_mm3``, the predicted and true volume of every
  foreground class (voxel count times the voxel volume; :func:`medpipe.metrics.label_volumes`);
* with more than two classes also per foreground class: ``dice_<class>``, ``hd95_<class>``, ``asd_<class>``
  (:mod:`medpipe.metrics.perlabel`; class names from ``metrics.class_names``, default ``class_1``, ...);
* ``pixel_accuracy``, ``v_rand_unthinned``, ``v_info_unthinned``: :mod:`medpipe.metrics.segmentation`;
* ``v_rand`` / ``v_info``: the official ISBI-2012 scores (:func:`medpipe.metrics.isbi2012_score_table`). The split's
  score is **not** a mean of per-case scores: it is the maximum over thresholds of the mean over cases
  (:func:`medpipe.metrics.isbi2012.best_over_thresholds`); a case's column holds its score at the chosen threshold
  (whose mean over cases is then the split's score), and the interval bootstraps cases of the per-threshold table,
  taking the maximum again in every resample.

Every other split score is the mean of its per-case column (NaN cases left out, as MONAI's reductions do); its
interval is :func:`medpipe.metrics.mean_interval` (percentile bootstrap over cases).
"""

from __future__ import annotations

import csv
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from medpipe import metrics as M
from medpipe.metrics.isbi2012 import best_over_thresholds

logger = logging.getLogger(__name__)

__all__ = ["OFFICIAL", "SplitScores", "label_on_grid", "label_and_spacing", "cell_probability", "case_scores",
           "seg_metric_columns", "summarize_split", "write_per_case_csv"]

#: the official ISBI-2012 scores, reduced over the whole split (max over thresholds of the mean over cases)
OFFICIAL = ("v_rand", "v_info")


@dataclass
class SplitScores:
    """The per-case scores of one split.

    Attributes:
        images: image paths, one per case.
        rows: per case ``{metric: float}`` of the per-case metrics (all names but :data:`OFFICIAL`).
        isbi: per case ``{"v_rand": (T,), "v_info": (T,)}`` rows of the official table (empty without them).
        thresholds: ``(T,)`` thresholds of the official table, or ``None``.
    """

    images: List[str] = field(default_factory=list)
    rows: List[Dict[str, float]] = field(default_factory=list)
    isbi: List[Dict[str, np.ndarray]] = field(default_factory=list)
    thresholds: Optional[np.ndarray] = None

    def add(self, image: str, scores: Tuple[Dict[str, float], Optional[Dict[str, np.ndarray]]]) -> None:
        """Append one case's :func:`case_scores` result."""
        row, table = scores
        self.images.append(image)
        self.rows.append(row)
        if table is not None:
            self.thresholds = table["thresholds"]
            self.isbi.append({k: table[k][0] for k in OFFICIAL})


def label_on_grid(case: Dict, val_transform) -> np.ndarray:
    """The ground-truth class indices of a case on the original image's grid: :func:`label_and_spacing` without
    the spacing.

    Args:
        case: ``{"image": path, "label": path}``.
        val_transform: the pipeline's validation ``Compose`` (loads image and label).

    Returns:
        ``(*spatial)`` int64 class indices (channel dimension removed).
    """
    return label_and_spacing(case, val_transform)[0]


def label_and_spacing(case: Dict, val_transform) -> Tuple[np.ndarray, Tuple[float, ...]]:
    """The ground-truth class indices of a case on the original image's grid, as read from its file, and the voxel
    spacing of that grid.

    The validation chain is applied step by step; a step that records an invertible operation on the label
    (resizing, cropping, orientation, ...: MONAI's ``applied_operations``) is skipped for the label, which keeps
    its file's grid exactly (resampling a label and back would change it), while the value mappings (e.g.
    ``MapLabelValued`` 0/255 -> 0/1) apply. If skipping breaks a later step (it needed image and label of one
    size), the label goes through the whole chain and is brought back with MONAI's ``Invertd`` (nearest
    neighbour), with a warning. This is the grid of :func:`medpipe.inference.predict.predict_case`'s
    probabilities.

    Args:
        case: ``{"image": path, "label": path}``.
        val_transform: the pipeline's validation ``Compose`` (loads image and label).

    The spacing is that of the label's affine on this grid (``MetaTensor.affine``, the file's header:
    :func:`medpipe.metrics.spacing_from_affine`), in mm for NIfTI / DICOM; 1 per axis for a PNG (MONAI gives it the
    identity affine) or a label that is not a ``MetaTensor``.

    Returns:
        ``(label, spacing)``: ``(*spatial)`` int64 class indices (channel dimension removed) and one float per
        spatial axis.
    """
    from monai.data import MetaTensor
    from monai.transforms import Invertd, apply_transform

    try:
        data: Any = dict(case)
        for step in val_transform.flatten().transforms:
            before = data.get("label")
            n = len(before.applied_operations) if isinstance(before, MetaTensor) else 0
            data = apply_transform(step, data)
            label = data["label"]
            if isinstance(label, MetaTensor) and len(label.applied_operations) > n and isinstance(before, MetaTensor):
                data["label"] = before
        label = data["label"]
    except Exception as exc:  # a step needed image and label on one grid
        logger.warning("label of %s: the validation chain needs the resampled label (%s); scoring against the "
                       "label resampled back with Invertd", case.get("label"), exc)
        data = val_transform(dict(case))
        label = data["label"]
        if isinstance(label, MetaTensor) and label.applied_operations:
            data = Invertd(keys="label", transform=val_transform, orig_keys="label", nearest_interp=True)(data)
            label = data["label"]
    arr = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
    ndim = arr.ndim - 1
    spacing = M.spacing_from_affine(label.affine, ndim) if isinstance(label, MetaTensor) else (1.0,) * ndim
    return np.rint(arr[0]).astype(np.int64), spacing


def cell_probability(prob: np.ndarray) -> np.ndarray:
    """``(K, *spatial)`` softmax -> ``(*spatial)`` float64 probability of a cell (any class but 0), in [0, 1]:
    channel 1 for two classes, ``1 - P(class 0)`` otherwise (as the validation handler's official scores)."""
    prob = np.asarray(prob, dtype=np.float64)
    cell = prob[1] if prob.shape[0] == 2 else 1.0 - prob[0]
    return np.clip(cell, 0.0, 1.0)


def _nanmean(values: Any) -> float:
    """Mean of the finite values (NaN when none), without numpy's empty-slice warning."""
    arr = np.asarray(values, dtype=np.float64).ravel()
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else float("nan")


#: the metrics reported per foreground class when there are more than two classes
PER_LABEL = ("dice", "hd95", "asd")


def seg_metric_columns(names: Sequence[str], num_classes: int, class_names: Optional[Sequence[str]] = None
                       ) -> List[str]:
    """The per-case columns (and ``best_val_`` / ``test_`` keys) the metric ``names`` give, in order.

    Args:
        names: metric names (``metrics.names``).
        num_classes: ``K``.
        class_names: ``K`` names, background first (``metrics.class_names``); default ``class_1``, ``class_2``, ...

    Returns:
        e.g. ``["dice", "dice_anterior", "dice_posterior", "hd95", "hd95_anterior", ..., "volume_pred_anterior_mm3",
        "volume_true_anterior_mm3", ...]``: ``<metric>`` and, with ``K > 2``, ``<metric>_<class>`` for ``dice``,
        ``hd95``, ``asd``; ``volume_pred_<class>_mm3`` and ``volume_true_<class>_mm3`` for ``volume`` (every ``K``).

    Raises:
        ValueError: ``class_names`` does not hold ``K`` distinct names.
    """
    labels = M.label_names(max(num_classes, 2), class_names)
    cols: List[str] = []
    for name in names:
        if name == "volume":
            cols += [f"volume_{kind}_{lab}_mm3" for lab in labels for kind in ("pred", "true")]
            continue
        cols.append(name)
        if name in PER_LABEL and num_classes > 2:
            cols += [f"{name}_{lab}" for lab in labels]
    return cols


def _per_label(row: Dict[str, float], name: str, values: np.ndarray, labels: Sequence[str]) -> None:
    """``row[name]`` = the mean of ``values`` over classes (NaN left out) and, with more than one foreground
    class, ``row[f"{name}_{label}"]`` each."""
    row[name] = _nanmean(values)
    if len(labels) > 1:
        row.update({f"{name}_{lab}": float(v) for lab, v in zip(labels, values)})


def case_scores(prob: np.ndarray, mask: np.ndarray, label: np.ndarray, names: Sequence[str], num_classes: int,
                *, spacing: Optional[Sequence[float]] = None, class_names: Optional[Sequence[str]] = None
                ) -> Tuple[Dict[str, float], Optional[Dict[str, np.ndarray]]]:
    """The scores of one case (module docstring).

    Args:
        prob: ``(K, *spatial)`` float class probabilities (after test-time augmentation) on the original grid.
        mask: ``(*spatial)`` int predicted class indices (after post-processing).
        label: ``(*spatial)`` int ground-truth class indices, same grid.
        names: metric names (``metrics.names``).
        num_classes: ``K``.
        spacing: the grid's voxel spacing, one value per spatial axis (mm; :func:`label_and_spacing`); ``None``:
            pixels (spacing 1).
        class_names: ``K`` names, background first (``metrics.class_names``); default ``class_1``, ``class_2``, ...

    Returns:
        ``(row, table)``: ``row`` ``{column: float}`` for every column of :func:`seg_metric_columns` but the official
        ``v_rand`` / ``v_info``; ``table`` the case's :func:`medpipe.metrics.isbi2012_score_table` (``(1, T)``
        rows) when they are asked for, else ``None``.

    Raises:
        ValueError: ``mask`` and ``label`` differ in shape, an unknown metric name, ``spacing`` does not have one
            value per axis, or ``class_names`` does not fit ``num_classes``.
    """
    if np.shape(mask) != np.shape(label):
        raise ValueError(f"mask shape {np.shape(mask)} differs from label shape {np.shape(label)}")
    k = max(num_classes, 2)  # one output channel: a binary mask {0, 1}
    labels = M.label_names(k, class_names)
    row: Dict[str, float] = {}
    for name in names:
        if name == "dice":
            _per_label(row, name, M.per_label_dice(mask, label, k), labels)
        elif name in ("hd95", "asd"):
            _per_label(row, name, M.per_label_distances(mask, label, k, name, spacing), labels)
        elif name == "volume":
            pred_v, true_v = M.label_volumes(mask, k, spacing), M.label_volumes(label, k, spacing)
            for lab, p, t in zip(labels, pred_v, true_v):
                row[f"volume_pred_{lab}_mm3"], row[f"volume_true_{lab}_mm3"] = float(p), float(t)
        elif name == "pixel_accuracy":
            row[name] = M.pixel_accuracy(mask, label)
        elif name == "v_rand_unthinned":
            row[name] = M.v_rand_unthinned(mask, label)
        elif name == "v_info_unthinned":
            row[name] = M.v_info_unthinned(mask, label)
        elif name not in OFFICIAL:
            raise ValueError(f"metrics.names: {name!r} is not a segmentation metric")
    table = None
    if set(OFFICIAL) & set(names):
        table = M.isbi2012_score_table(cell_probability(prob), label > 0)
    return row, table


def _official_max(table: np.ndarray, idx: np.ndarray) -> float:
    """Maximum over thresholds of the mean over the cases ``idx`` of a ``(N, T)`` table (NaN rows left out)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(table[idx], axis=0)
    return float(np.nanmax(mean)) if np.isfinite(mean).any() else float("nan")


def summarize_split(scores: SplitScores, names: Sequence[str], intervals: Any = None
                    ) -> Tuple[Dict[str, float], Dict[str, Tuple[float, float]], Dict[str, List[float]], Dict]:
    """Split scores, intervals and per-case columns of a :class:`SplitScores`.

    Every column of the rows is summarised: a metric's own column and its per-class columns (``dice_<class>``,
    ``volume_pred_<class>_mm3``, ...: the row keys starting with ``<metric>_``), in the order of ``names``.

    Args:
        scores: the split's per-case scores.
        names: metric names, in the order of the columns.
        intervals: ``metrics.intervals`` (``n_resamples``, ``confidence_level``, ``seed``); ``None`` or
            ``n_resamples == 0``: no intervals.

    Returns:
        ``(values, cis, columns, official)``: ``values`` ``{column: split score}`` (columns of
        :func:`seg_metric_columns`), ``cis`` ``{column: (low, high)}``
        (percentile bootstrap over cases; empty without intervals), ``columns`` ``{column: per-case values}``, and
        ``official`` ``{"v_rand_threshold": t, "v_info_threshold": t}`` for the official scores asked for.
    """
    values, cis, columns, official = {}, {}, {}, {}
    n = len(scores.images)
    boot = intervals is not None and int(getattr(intervals, "n_resamples", 0)) > 0 and n > 0
    kw = dict(n_resamples=intervals.n_resamples, confidence_level=intervals.confidence_level,
              seed=intervals.seed) if boot else {}
    tables = {k: np.stack([r[k] for r in scores.isbi]) for k in OFFICIAL} if scores.isbi else {}
    best = best_over_thresholds({"thresholds": scores.thresholds, **tables}) if tables else {}
    for name in names:
        if name in OFFICIAL:
            table = tables[name]
            thr = best[f"{name}_threshold"]
            official[f"{name}_threshold"] = thr
            col = (table[:, int(np.flatnonzero(scores.thresholds == thr)[0])] if np.isfinite(thr)
                   else np.full(n, np.nan))
            values[name], columns[name] = best[name], [float(v) for v in col]
            if boot:
                cis[name] = M.bootstrap_interval(lambda idx, t=table: _official_max(t, idx), n, **kw)
            continue
        keys = list(scores.rows[0]) if scores.rows else []
        for key in [k for k in keys if k == name or k.startswith(f"{name}_")]:
            col = np.array([r[key] for r in scores.rows], dtype=np.float64)
            values[key], columns[key] = _nanmean(col), [float(v) for v in col]
            if boot:
                cis[key] = (M.mean_interval(col, **kw) if np.isfinite(col).any()
                            else (float("nan"), float("nan")))
    return values, cis, columns, official


def write_per_case_csv(path: Path, images: Sequence[str], columns: Dict[str, List[float]]) -> Path:
    """``path``: a CSV with the column ``image`` and one column per metric (``columns`` order), one row per case
    (empty cell for NaN). Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", *columns])
        for i, image in enumerate(images):
            writer.writerow([image, *("" if np.isnan(v[i]) else repr(float(v[i])) for v in columns.values())])
    return path
