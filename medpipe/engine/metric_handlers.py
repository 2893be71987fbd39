"""Validation metrics as MONAI cumulative metrics and ignite handlers for ``SupervisedEvaluator``.

Segmentation: Dice is MONAI's ``MeanDice`` (and, with more than two classes, the Dice of each foreground class,
:class:`ClassDiceMetric`, as ``dice_<class>``); HD95 is MONAI's ``HausdorffDistanceMetric`` (percentile 95) and ASD
its ``SurfaceDistanceMetric`` (symmetric), in mm from the spacing of the validation batch's affine (pixels for PNG),
with a defined score for empty masks (:class:`HD95Metric`, :class:`ASDMetric`); pixel accuracy and the unthinned V-Rand / V-Info wrap the
per-image numpy functions of :mod:`medpipe.metrics.segmentation` in ``monai.metrics.CumulativeIterationMetric`` so
that MONAI's ``IgniteMetricHandler`` accumulates them (and reduces them across processes) like its own metrics. The
official ISBI-2012 ``v_rand`` / ``v_info`` (:class:`ISBI2012Metric`) buffer a per-slice, per-threshold table from
the softmax cell probability (engine output key :data:`PROB_KEY`) and reduce it as the challenge does.

Classification: :class:`ClassificationMetric` buffers every case's class probabilities and label and computes the
named metric over the whole split with :func:`medpipe.metrics.classification_metrics`, the function the
final evaluation uses, so per-epoch and final numbers share one definition. (MONAI's ``ConfusionMatrixMetric``
"balanced accuracy" is the mean over classes of ``(sensitivity + specificity) / 2``, which differs from the
multiclass balanced accuracy, the mean recall, of Brodersen et al. 2010 and scikit-learn; the tests check that our
AUC and per-class sensitivity / specificity / precision equal MONAI's ``compute_roc_auc`` and
``ConfusionMatrixMetric``.)
"""

from __future__ import annotations

import logging
import warnings
from typing import Callable, Dict

import numpy as np
import torch
from monai.handlers import IgniteMetricHandler, MeanDice, from_engine
from monai.metrics import CumulativeIterationMetric, DiceMetric, HausdorffDistanceMetric, SurfaceDistanceMetric
from monai.metrics.utils import do_metric_reduction

from medpipe import metrics as M
from medpipe.config.evaluation import NOT_KEY_METRICS
from medpipe.metrics.isbi2012 import DEFAULT_THRESHOLDS, best_over_thresholds

logger = logging.getLogger(__name__)

__all__ = ["PerImageMetric", "HD95Metric", "ASDMetric", "ClassDiceMetric", "FINAL_ONLY_METRICS", "ISBI2012Metric", "ISBI2012_METRICS", "PROB_KEY",
           "build_seg_metric_handlers", "ClassificationMetric", "build_cls_metric_handlers"]

#: engine-output key of the softmax probabilities ``(K, H, W)`` kept before ``AsDiscreted`` (for the ISBI metrics)
PROB_KEY = "prob"
#: metrics of the final evaluation only (no per-epoch handler)
FINAL_ONLY_METRICS = ("volume",)
#: the metrics computed by :class:`ISBI2012Metric` from :data:`PROB_KEY`
ISBI2012_METRICS = ("v_rand", "v_info")


def _to_index(x: torch.Tensor) -> np.ndarray:
    """``(1, C, H, W)`` one-hot or ``(1, 1, H, W)`` index tensor -> ``(H, W)`` int class-index array."""
    x = x.detach().cpu()
    x = x[0]
    x = x.argmax(0) if x.shape[0] > 1 else x[0]
    return x.numpy().astype(np.int64)


class PerImageMetric(CumulativeIterationMetric):
    """A per-image metric ``fn(pred_index (H, W), label_index (H, W)) -> float`` averaged over images.

    Each image of a batch is reduced to an ``(H, W)`` int64 class-index map (argmax over a one-hot channel axis)
    before ``fn`` sees it; the per-image values are buffered as float64 and reduced across processes by MONAI.

    Args:
        fn: the per-image function (e.g. :func:`medpipe.metrics.v_rand`, :func:`medpipe.metrics.v_info`).

    Shapes:
        ``y_pred``/``y``: ``(B, C, H, W)`` one-hot (after ``AsDiscrete``) or ``(B, 1, H, W)`` class indices.
        ``aggregate()`` returns the mean over all images seen as a 0-d float64 tensor.
    """

    def __init__(self, fn: Callable[[np.ndarray, np.ndarray], float]):
        super().__init__()
        self.fn = fn

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        vals = [self.fn(_to_index(p[None]), _to_index(t[None])) for p, t in zip(y_pred, y)]
        return torch.tensor(vals, dtype=torch.float64).reshape(-1, 1)

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        """Mean of the per-image values seen since the last reset (NaN values skipped).

        Returns:
            a 0-d float64 tensor; a 0-d float32 NaN if no image was seen.
        """
        data = self.get_buffer()
        if data is None or (isinstance(data, torch.Tensor) and data.numel() == 0):
            return torch.tensor(float("nan"))
        return torch.as_tensor(data, dtype=torch.float64).nanmean()


def _spacing_of(y_pred, y):
    """The voxel spacing carried by the batch: from the affine of ``y`` (else ``y_pred``) when it is a
    ``MetaTensor`` (``(4, 4)`` for the whole batch or ``(B, 4, 4)`` per image), else ``None`` (pixels)."""
    from monai.data import MetaTensor

    ndim = y_pred.ndim - 2
    for t in (y, y_pred):
        if isinstance(t, MetaTensor):
            aff = t.affine
            if aff.ndim == 3:
                return [M.spacing_from_affine(a, ndim) for a in aff]
            return M.spacing_from_affine(aff, ndim)
    return None


class _BoundaryMetric:
    """What :class:`HD95Metric` and :class:`ASDMetric` share: spacing, empty-mask rule, counters, reduction."""

    kind = "hd95"
    percentile = 95.0

    def reset(self) -> None:
        """Clear the buffered distances and the empty-mask counters."""
        super().reset()  # type: ignore[misc]
        self.n_one_empty = 0
        self.n_both_empty = 0

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor,  # type: ignore[override]
                        **kwargs) -> torch.Tensor:
        spacing = kwargs.get("spacing")
        if spacing is None:
            spacing = _spacing_of(y_pred, y)
        scored = M.boundary_distances(y_pred, y, self.kind, spacing, self.percentile)
        self.n_one_empty += scored.n_one_empty
        self.n_both_empty += scored.n_both_empty
        return scored.distances

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        """Mean distance over the (image, class) pairs with a defined value, with warnings counting the empty-mask
        pairs.

        Returns:
            a 0-d float32 tensor, mm (pixels without spacing); NaN if no image was seen or none has a defined value.
        """
        data = self.get_buffer()  # type: ignore[attr-defined]
        if data is None or (isinstance(data, torch.Tensor) and data.numel() == 0):
            return torch.tensor(float("nan"))
        data = torch.as_tensor(data, dtype=torch.float32)
        if self.n_one_empty:
            logger.warning("%s: %d image(s) with an empty prediction or an empty ground truth (not both) scored "
                           "the image diagonal", self.kind, self.n_one_empty)
        if self.n_both_empty:
            logger.warning("%s: %d image(s) with empty prediction and ground truth are left out of the mean",
                           self.kind, self.n_both_empty)
        if not torch.isfinite(data).any():
            logger.warning("%s is undefined for all %d image(s) (prediction and ground truth empty): NaN",
                           self.kind, data.shape[0])
            return torch.tensor(float("nan"))
        f, _ = do_metric_reduction(data, "mean")
        return f.reshape(())


class HD95Metric(_BoundaryMetric, HausdorffDistanceMetric):
    """95th-percentile symmetric Hausdorff distance (HD95) over the foreground classes, in mm (pixels without
    spacing).

    MONAI's ``HausdorffDistanceMetric(include_background=False, percentile=95)`` (Euclidean distances between the
    boundary voxels of prediction and ground truth scaled by the voxel spacing; the 95th percentile of both directed
    distance sets, the larger of the two; :func:`medpipe.metrics.boundary_distances`), computed per image and
    foreground class, averaged over images like MONAI's ``reduction="mean"``. Lower is better (0: the boundaries
    coincide).

    **Spacing**: the ``spacing`` keyword of ``__call__`` (any form of :func:`medpipe.metrics.batch_spacing`), else
    the spacing of the affine of ``y`` (or ``y_pred``) when it is a MONAI ``MetaTensor`` (the validation batch of a
    NIfTI / DICOM volume: mm, on the grid the network sees), else 1 (**pixels**). A PNG's ``MetaTensor`` has the
    identity affine, so 2D runs score in pixels as before.

    Empty masks, which MONAI scores NaN (and its mean silently skips, so a network that predicts nothing could look
    better than one that predicts something wrong), get the rule of :func:`medpipe.metrics.score_empty_masks`:

    * prediction empty and ground truth not, or the reverse: the image diagonal ``sqrt(sum(((s - 1) sp)^2))`` over
      the spatial sizes ``s`` and spacings ``sp`` (360.6 px for 256 x 256), the largest distance two voxels of the
      image can have; as the BraTS challenge scores an empty prediction of a present tumour with its volume's maximum
      distance;
    * both empty: NaN, left out of the mean (there is no boundary to be distant from).

    ``aggregate()`` logs a warning with the number of such images, and returns NaN (a 0-d tensor) if no image has a
    defined value; MLflow logging (:meth:`medpipe.tracking.Tracker.log_metrics`) skips non-finite values.

    ``y_pred``/``y``: ``(B, C, H, W[, D])`` one-hot binary tensors (after ``AsDiscrete``; channel 0 background) or
    lists of ``(C, H, W[, D])``. Returns ``(B, C - 1)`` float32 distances from ``__call__``.

    Args:
        percentile: percentile of the directed boundary distances, in ``[0, 100]``; 95 gives HD95.
    """

    kind = "hd95"

    def __init__(self, percentile: float = 95.0):
        super().__init__(include_background=False, distance_metric="euclidean", percentile=percentile,
                         reduction="mean")


class ASDMetric(_BoundaryMetric, SurfaceDistanceMetric):
    """Average symmetric surface distance (ASD / ASSD) over the foreground classes, in mm (pixels without spacing).

    The mean of the distances from every boundary voxel of the prediction to the ground truth's boundary and from
    every boundary voxel of the ground truth to the prediction's, pooled (Heimann et al., IEEE TMI 28(8), 2009;
    MONAI ``SurfaceDistanceMetric(include_background=False, symmetric=True)``;
    :func:`medpipe.metrics.boundary_distances`), per image and foreground class, averaged over images. Spacing and
    empty masks as :class:`HD95Metric`. Lower is better.

    ``y_pred``/``y``: ``(B, C, H, W[, D])`` one-hot binary tensors or lists of ``(C, H, W[, D])``. Returns
    ``(B, C - 1)`` float32 distances from ``__call__``.
    """

    kind = "asd"

    def __init__(self):
        super().__init__(include_background=False, symmetric=True, distance_metric="euclidean", reduction="mean")


class ClassDiceMetric(DiceMetric):
    """Dice of one foreground class, averaged over images: MONAI ``DiceMetric(include_background=False,
    ignore_empty=True)`` on the background and that class's channels, i.e. column ``class_index - 1`` of
    ``DiceMetric(include_background=False, reduction="none")`` (an image without the class in its ground truth is
    NaN and left out of the mean, as ``MeanDice``).

    Args:
        class_index: the class ``c`` (1 .. K - 1).

    Shapes:
        ``y_pred``/``y``: ``(B, K, *spatial)`` one-hot (after ``AsDiscrete``). ``aggregate()`` returns a 0-d tensor.

    Raises:
        ValueError: ``class_index < 1``.
    """

    def __init__(self, class_index: int):
        if class_index < 1:
            raise ValueError(f"class_index: expected a foreground class >= 1, got {class_index}")
        super().__init__(include_background=False, reduction="mean", ignore_empty=True)
        self.class_index = int(class_index)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        idx = torch.tensor([0, self.class_index], device=y_pred.device)
        plain = [t.as_tensor() if hasattr(t, "as_tensor") else t for t in (y_pred, y)]
        return super()._compute_tensor(plain[0].index_select(1, idx), plain[1].index_select(1, idx))


def _cell_probability(prob: torch.Tensor) -> np.ndarray:
    """``(K, H, W)`` softmax -> ``(H, W)`` float64 cell probability: channel 1 for ``K = 2``, ``1 - P(class 0)``
    for ``K > 2``, the channel itself for ``K = 1``."""
    prob = prob.detach().cpu().double()
    if prob.ndim != 3:
        raise ValueError(f"v_rand/v_info: expected 2-D softmax probabilities (K, H, W) per image, got shape "
                         f"{tuple(prob.shape)}; the ISBI-2012 scores are defined for 2-D slices")
    if prob.shape[0] == 1:
        cell = prob[0]
    elif prob.shape[0] == 2:
        cell = prob[1]
    else:
        cell = 1.0 - prob[0]
    return cell.clamp_(0.0, 1.0).numpy()


# one-entry memo: the v_rand and v_info handlers see the same image one after the other; its table is computed once
_isbi_last: Dict[str, object] = {"prob": None, "label": None, "thresholds": None, "row": None}


def _isbi_row(prob: np.ndarray, label: np.ndarray, thresholds) -> np.ndarray:
    """``(2T,)`` official V-Rand then V-Info of one slice at every threshold (memoised for an equal pair)."""
    last_p, last_l = _isbi_last["prob"], _isbi_last["label"]
    if not (isinstance(last_p, np.ndarray) and last_p.shape == prob.shape and np.array_equal(last_p, prob)
            and np.array_equal(last_l, label) and _isbi_last["thresholds"] == thresholds):
        table = M.isbi2012_score_table(prob, label, thresholds)
        row = np.concatenate([table["v_rand"][0], table["v_info"][0]])
        _isbi_last.update(prob=prob, label=label, thresholds=thresholds, row=row)
    return _isbi_last["row"]  # type: ignore[return-value]


class ISBI2012Metric(CumulativeIterationMetric):
    """Official ISBI-2012 ``v_rand`` or ``v_info`` over a validation run (after border thinning, best threshold).

    Each image contributes one row of :func:`medpipe.metrics.isbi2012_score_table` (its V-Rand and V-Info at every
    threshold, Arganda-Carreras et al. 2015); ``aggregate()`` averages the table over all images seen (NaN rows,
    images without a ground-truth cell, left out) and returns the maximum over thresholds of that mean, i.e.
    :func:`medpipe.metrics.isbi2012_scores` of the whole validation set, not a mean of per-image maxima. The
    cell probability is channel 1 of a 2-class softmax, ``1 - P(class 0)`` for more classes. The chosen threshold
    of the last ``aggregate()`` is kept in ``best_threshold``. Cost: ~0.3 s per 512 x 512 image (10
    thresholds, see :mod:`medpipe.metrics.isbi2012`); the v_rand and v_info handlers share one computation.

    Args:
        name: ``"v_rand"`` or ``"v_info"``.
        thresholds: cell-probability thresholds; default ``0.0, 0.1, ..., 0.9``.

    Shapes:
        ``y_pred``: ``(B, K, H, W)`` softmax probabilities (engine key :data:`PROB_KEY`); ``y``: ``(B, K, H, W)``
        one-hot or ``(B, 1, H, W)`` class indices (``> 0`` = cell). Buffered as ``(B, 2T)`` float64.

    Raises:
        ValueError: ``name`` is not ``v_rand`` / ``v_info``; (when called) the images are not 2-D.
    """

    def __init__(self, name: str, thresholds=None):
        super().__init__()
        if name not in ISBI2012_METRICS:
            raise ValueError(f"ISBI2012Metric: name must be one of {list(ISBI2012_METRICS)}, got {name!r}")
        self.name = name
        self.thresholds = tuple(DEFAULT_THRESHOLDS if thresholds is None else thresholds)
        self.best_threshold = float("nan")

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        rows = [_isbi_row(_cell_probability(p), _to_index(t[None]), self.thresholds) for p, t in zip(y_pred, y)]
        return torch.as_tensor(np.stack(rows), dtype=torch.float64)

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        """The official score of all images seen since the last reset.

        Returns:
            a 0-d float64 tensor; a 0-d float32 NaN if no image was seen.
        """
        data = self.get_buffer()
        if data is None or (isinstance(data, torch.Tensor) and data.numel() == 0):
            return torch.tensor(float("nan"))
        data = torch.as_tensor(data, dtype=torch.float64).cpu().numpy().reshape(-1, 2 * len(self.thresholds))
        n_t = len(self.thresholds)
        table = {"thresholds": np.asarray(self.thresholds), "v_rand": data[:, :n_t], "v_info": data[:, n_t:]}
        best = best_over_thresholds(table)
        self.best_threshold = best[f"{self.name}_threshold"]
        logger.debug("isbi2012 %s = %.6f at threshold %.1f over %d image(s)", self.name, best[self.name],
                     self.best_threshold, data.shape[0])
        return torch.tensor(best[self.name], dtype=torch.float64)


_PER_IMAGE: Dict[str, Callable] = {
    "pixel_accuracy": lambda p, t: float(M.pixel_accuracy(p, t)),
    "v_rand_unthinned": M.v_rand_unthinned,
    "v_info_unthinned": M.v_info_unthinned,
}


def build_seg_metric_handlers(names, key_metric: str, num_classes: int = 2, class_names=None):
    """Ignite metric handlers for a ``SupervisedEvaluator``.

    Args:
        names: metric names from :class:`medpipe.config.MetricsConfig`.
        key_metric: the name selecting the best checkpoint.
        num_classes: ``K`` (``net.out_channels``); with ``K > 2`` and ``dice`` among ``names`` the Dice of every
            foreground class is added as ``dice_<class>`` (:class:`ClassDiceMetric`).
        class_names: ``K`` names, background first (``metrics.class_names``); default ``class_1``, ``class_2``, ...

    Returns:
        ``(key_val_metric, additional_metrics)`` dicts for ``monai.engines.SupervisedEvaluator``. They read
        ``pred`` and ``label`` (one-hot, after the evaluator's post-transforms) from the engine output, except
        ``v_rand`` / ``v_info`` (official ISBI-2012, :class:`ISBI2012Metric`), which read the softmax
        probabilities under :data:`PROB_KEY` and ``label``.
        ``dice``: MONAI ``MeanDice`` (foreground); ``hd95`` / ``asd``: :class:`HD95Metric` / :class:`ASDMetric` in
        an ``IgniteMetricHandler`` (what ``monai.handlers.HausdorffDistance`` / ``SurfaceDistance`` build, with
        empty masks scored as documented there), mm from the label's affine (pixels for PNG);
        ``pixel_accuracy``, ``v_rand_unthinned``, ``v_info_unthinned``: :class:`PerImageMetric`. ``volume`` is
        computed by the final evaluation only (:data:`FINAL_ONLY_METRICS`), not per epoch.

    Raises:
        ValueError: ``key_metric`` is lower-is-better (``hd95``, ``asd``) or ``volume``: the checkpoint handlers
            keep the highest value; ``class_names`` does not fit ``num_classes``.
        KeyError: a name that is not a segmentation metric, or ``key_metric`` not among ``names`` (both checked
            by :class:`medpipe.config.MetricsConfig` first).
    """
    if key_metric in NOT_KEY_METRICS:
        raise ValueError(f"metrics.key_metric: {key_metric!r} is lower-is-better or not a score; the best "
                         "checkpoint needs a higher-is-better metric such as dice")
    out = from_engine(["pred", "label"])
    handlers = {}
    for name in names:
        if name == "dice":
            handlers[name] = MeanDice(include_background=False, output_transform=out)
            if num_classes > 2:
                for c, label in enumerate(M.label_names(num_classes, class_names), start=1):
                    handlers[f"dice_{label}"] = IgniteMetricHandler(metric_fn=ClassDiceMetric(c),
                                                                    output_transform=out)
        elif name == "hd95":
            handlers[name] = IgniteMetricHandler(metric_fn=HD95Metric(), output_transform=out)
        elif name == "asd":
            handlers[name] = IgniteMetricHandler(metric_fn=ASDMetric(), output_transform=out)
        elif name in ISBI2012_METRICS:
            handlers[name] = IgniteMetricHandler(metric_fn=ISBI2012Metric(name),
                                                 output_transform=from_engine([PROB_KEY, "label"]))
        elif name not in FINAL_ONLY_METRICS:
            handlers[name] = IgniteMetricHandler(metric_fn=PerImageMetric(_PER_IMAGE[name]), output_transform=out)
    key = {key_metric: handlers.pop(key_metric)}
    return key, handlers


_cls_last: Dict[str, object] = {"data": None, "result": None}


def _cls_result(data: np.ndarray, num_classes: int) -> dict:
    """``classification_metrics`` of an ``(N, C + 1)`` buffer (probabilities, label), computed once per buffer
    and shared by the handlers of one validation run."""
    last = _cls_last["data"]
    if not (isinstance(last, np.ndarray) and last.shape == data.shape and np.array_equal(last, data)):
        probs, labels = data[:, :num_classes], data[:, num_classes].astype(np.int64)
        _cls_last.update(data=data, result=M.classification_metrics(labels, probs))
    return _cls_last["result"]  # type: ignore[return-value]


class ClassificationMetric(CumulativeIterationMetric):
    """One classification metric over all cases seen, for ``IgniteMetricHandler``.

    Args:
        name: a :class:`medpipe.config.MetricsConfig` classification metric (``accuracy``, ``balanced_accuracy``,
            ``auc``, ``sensitivity``, ``specificity``, ``precision``, ``f1``; see
            :func:`medpipe.metrics.select_metric`) or ``loss``: the mean unweighted cross-entropy
            ``-log p(true class)`` (probabilities clipped at 1e-12; :func:`medpipe.metrics.mean_cross_entropy`).
        num_classes: ``C``.

    Shapes:
        ``y_pred``: ``(B, C)`` float class probabilities (after softmax); ``y``: ``(B,)`` or ``(B, 1)`` class
        indices. Buffered as ``(B, C + 1)`` rows (probabilities, label). Binary predictions use threshold 0.5.
        ``aggregate()`` returns a 0-d float64 tensor.

    Raises:
        ValueError: (when called) ``y_pred`` does not have ``num_classes`` columns.
    """

    def __init__(self, name: str, num_classes: int):
        super().__init__()
        self.name = name
        self.num_classes = int(num_classes)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        y_pred = y_pred.detach().float().reshape(y_pred.shape[0], -1)
        if y_pred.shape[1] != self.num_classes:
            raise ValueError(f"ClassificationMetric: expected predictions (B, {self.num_classes}), got "
                             f"{tuple(y_pred.shape)}")
        y = torch.as_tensor(y).detach().reshape(y_pred.shape[0], -1)[:, :1].to(y_pred)
        return torch.cat([y_pred.cpu(), y.cpu()], dim=1)  # (B, C + 1)

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        """The metric over all cases seen since the last reset.

        Returns:
            a 0-d float64 tensor; a 0-d float32 NaN if no case was seen.
        """
        data = self.get_buffer()
        if data is None or (isinstance(data, torch.Tensor) and data.numel() == 0):
            return torch.tensor(float("nan"))
        data = torch.as_tensor(data, dtype=torch.float64).cpu().numpy()
        if self.name == "loss":
            probs, labels = data[:, : self.num_classes], data[:, self.num_classes].astype(np.int64)
            return torch.tensor(M.mean_cross_entropy(labels, probs), dtype=torch.float64)
        return torch.tensor(M.select_metric(_cls_result(data, self.num_classes), self.name), dtype=torch.float64)


def build_cls_metric_handlers(names, key_metric: str, num_classes: int):
    """Ignite metric handlers for a classification ``SupervisedEvaluator``.

    Args:
        names: classification metric names from :class:`medpipe.config.MetricsConfig`.
        key_metric: the name selecting the best checkpoint.
        num_classes: number of classes.

    Returns:
        ``(key_val_metric, additional_metrics)``; the additional metrics always include ``loss`` (validation
        cross-entropy). They read ``pred`` (softmax probabilities) and ``label`` (class index) from the engine
        output.

    Raises:
        KeyError: ``key_metric`` is neither among ``names`` nor ``loss`` (checked by
            :class:`medpipe.config.MetricsConfig` first).
    """
    out = from_engine(["pred", "label"])
    handlers = {name: IgniteMetricHandler(metric_fn=ClassificationMetric(name, num_classes), output_transform=out)
                for name in list(names) + ["loss"]}
    key = {key_metric: handlers.pop(key_metric)}
    return key, handlers
