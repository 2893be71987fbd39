"""Segmentation metrics as MONAI cumulative metrics and ignite handlers for ``SupervisedEvaluator``.

Dice is MONAI's ``MeanDice``; pixel accuracy, V-Rand and V-Info wrap the per-image numpy functions of
:mod:`medpipe.engine.metrics` in ``monai.metrics.CumulativeIterationMetric`` so that MONAI's
``IgniteMetricHandler`` accumulates them (and reduces them across processes) like its own metrics.
"""

from __future__ import annotations

from typing import Callable, Dict

import numpy as np
import torch
from monai.handlers import IgniteMetricHandler, MeanDice, from_engine
from monai.metrics import CumulativeIterationMetric

from medpipe.engine import metrics as M

__all__ = ["PerImageMetric", "build_seg_metric_handlers"]


def _to_index(x: torch.Tensor) -> np.ndarray:
    """``(1, C, H, W)`` one-hot or ``(1, 1, H, W)`` index tensor -> ``(H, W)`` int class-index array."""
    x = x.detach().cpu()
    x = x[0]
    x = x.argmax(0) if x.shape[0] > 1 else x[0]
    return x.numpy().astype(np.int64)


class PerImageMetric(CumulativeIterationMetric):
    """A per-image metric ``fn(pred_index (H, W), label_index (H, W)) -> float`` averaged over images.

    Args:
        fn: the per-image function (from :mod:`medpipe.engine.metrics`).

    ``y_pred``/``y``: ``(B, C, H, W)`` one-hot (after ``AsDiscrete``) or ``(B, 1, H, W)`` class indices.
    ``aggregate()`` returns the mean over all images seen as a 0-d float tensor.
    """

    def __init__(self, fn: Callable[[np.ndarray, np.ndarray], float]):
        super().__init__()
        self.fn = fn

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        vals = [self.fn(_to_index(p[None]), _to_index(t[None])) for p, t in zip(y_pred, y)]
        return torch.tensor(vals, dtype=torch.float64).reshape(-1, 1)

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        data = self.get_buffer()
        if data is None or (isinstance(data, torch.Tensor) and data.numel() == 0):
            return torch.tensor(float("nan"))
        return torch.as_tensor(data, dtype=torch.float64).nanmean()


_last: Dict[str, object] = {"pred": None, "label": None, "scores": None}


def _boundary_scores(pred: np.ndarray, label: np.ndarray) -> Dict[str, float]:
    """V-Rand and V-Info of one image; the V-Info handler reuses the V-Rand handler's result for the same
    image instead of labelling the connected components twice."""
    if not (_last["pred"] is not None and np.array_equal(_last["pred"], pred)
            and np.array_equal(_last["label"], label)):
        _last.update(pred=pred, label=label, scores=M.rand_and_info_scores(pred > 0, label > 0))
    return _last["scores"]  # type: ignore[return-value]


def _v_rand(pred: np.ndarray, label: np.ndarray) -> float:
    return _boundary_scores(pred, label)["v_rand"]


def _v_info(pred: np.ndarray, label: np.ndarray) -> float:
    return _boundary_scores(pred, label)["v_info"]


_PER_IMAGE: Dict[str, Callable] = {
    "pixel_accuracy": lambda p, t: float(M.pixel_accuracy(p, t)),
    "v_rand": _v_rand,
    "v_info": _v_info,
}


def build_seg_metric_handlers(names, key_metric: str):
    """Ignite metric handlers for a ``SupervisedEvaluator``.

    Args:
        names: metric names from :class:`medpipe.config.MetricsConfig`.
        key_metric: the name selecting the best checkpoint.

    Returns:
        ``(key_val_metric, additional_metrics)`` dicts for ``monai.engines.SupervisedEvaluator``. They read
        ``pred`` and ``label`` (one-hot, after the evaluator's post-transforms) from the engine output.
    """
    out = from_engine(["pred", "label"])
    handlers = {}
    for name in names:
        if name == "dice":
            handlers[name] = MeanDice(include_background=False, output_transform=out)
        else:
            handlers[name] = IgniteMetricHandler(metric_fn=PerImageMetric(_PER_IMAGE[name]), output_transform=out)
    key = {key_metric: handlers.pop(key_metric)}
    return key, handlers
