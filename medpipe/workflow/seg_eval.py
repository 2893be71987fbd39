"""Per-case scores of segmentation predictions on the original pixel grid, their means and bootstrap intervals.

The segmentation finish (:mod:`medpipe.workflow.segmentation`) and the cross-validation ensemble
(:mod:`medpipe.workflow.ensemble`) score each labelled case from its predicted probabilities and final mask:

* ``dice``: MONAI ``DiceMetric(include_background=False, ignore_empty=True)`` (what ``MeanDice`` of the validation
  handler computes), the mean over foreground classes of the case (classes absent from the ground truth left out);
* ``hd95``: :class:`medpipe.engine.metric_handlers.HD95Metric` (MONAI's ``HausdorffDistanceMetric``, percentile 95,
  pixels, with medpipe's empty-mask rule), the mean over foreground classes of the case;
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
from medpipe.engine.metric_handlers import HD95Metric
from medpipe.metrics.isbi2012 import best_over_thresholds

logger = logging.getLogger(__name__)

__all__ = ["OFFICIAL", "SplitScores", "label_on_grid", "cell_probability", "case_scores", "summarize_split",
           "write_per_case_csv"]

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
    """The ground-truth class indices of a case on the original image's grid, as read from its file.

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

    Returns:
        ``(*spatial)`` int64 class indices (channel dimension removed).
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
    return np.rint(arr[0]).astype(np.int64)


def cell_probability(prob: np.ndarray) -> np.ndarray:
    """``(K, *spatial)`` softmax -> ``(*spatial)`` float64 probability of a cell (any class but 0), in [0, 1]:
    channel 1 for two classes, ``1 - P(class 0)`` otherwise (as the validation handler's official scores)."""
    prob = np.asarray(prob, dtype=np.float64)
    cell = prob[1] if prob.shape[0] == 2 else 1.0 - prob[0]
    return np.clip(cell, 0.0, 1.0)


def _one_hot(mask: np.ndarray, num_classes: int) -> torch.Tensor:
    """``(*spatial)`` int -> ``(1, K, *spatial)`` float one-hot."""
    t = torch.nn.functional.one_hot(torch.as_tensor(np.asarray(mask, dtype=np.int64)), num_classes)
    return t.movedim(-1, 0)[None].float()


def _nanmean(values: Any) -> float:
    """Mean of the finite values (NaN when none), without numpy's empty-slice warning."""
    arr = np.asarray(values, dtype=np.float64).ravel()
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def case_scores(prob: np.ndarray, mask: np.ndarray, label: np.ndarray, names: Sequence[str], num_classes: int
                ) -> Tuple[Dict[str, float], Optional[Dict[str, np.ndarray]]]:
    """The scores of one case (module docstring).

    Args:
        prob: ``(K, *spatial)`` float class probabilities (after test-time augmentation) on the original grid.
        mask: ``(*spatial)`` int predicted class indices (after post-processing).
        label: ``(*spatial)`` int ground-truth class indices, same grid.
        names: metric names (``metrics.names``).
        num_classes: ``K``.

    Returns:
        ``(row, table)``: ``row`` ``{metric: float}`` for every name but the official ``v_rand`` / ``v_info``;
        ``table`` the case's :func:`medpipe.metrics.isbi2012_score_table` (``(1, T)`` rows) when they are asked
        for, else ``None``.

    Raises:
        ValueError: ``mask`` and ``label`` differ in shape, or an unknown metric name.
    """
    from monai.metrics import DiceMetric

    if np.shape(mask) != np.shape(label):
        raise ValueError(f"mask shape {np.shape(mask)} differs from label shape {np.shape(label)}")
    row: Dict[str, float] = {}
    for name in names:
        if name == "dice":
            d = DiceMetric(include_background=False, reduction="none", ignore_empty=True)(
                _one_hot(mask, num_classes), _one_hot(label, num_classes))
            row[name] = _nanmean(d.numpy())
        elif name == "hd95":
            row[name] = _nanmean(HD95Metric()(_one_hot(mask, num_classes), _one_hot(label, num_classes)).numpy())
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

    Args:
        scores: the split's per-case scores.
        names: metric names, in the order of the columns.
        intervals: ``metrics.intervals`` (``n_resamples``, ``confidence_level``, ``seed``); ``None`` or
            ``n_resamples == 0``: no intervals.

    Returns:
        ``(values, cis, columns, official)``: ``values`` ``{metric: split score}``, ``cis`` ``{metric: (low, high)}``
        (percentile bootstrap over cases; empty without intervals), ``columns`` ``{metric: per-case values}``, and
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
        else:
            col = np.array([r[name] for r in scores.rows], dtype=np.float64)
            values[name], columns[name] = _nanmean(col), [float(v) for v in col]
            if boot:
                cis[name] = (M.mean_interval(col, **kw) if np.isfinite(col).any()
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
