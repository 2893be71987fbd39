"""Final evaluation of a trained classifier: predictions over a split, the operating threshold, metrics.

:func:`predict_classifier` runs the network over a loader and returns class probabilities;
:func:`evaluate_classifier` chooses the binary operating threshold on the validation split (0.5, a fixed value,
or Youden's J) and applies it unchanged to the test split, which never influences any choice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from medpipe import metrics as M

logger = logging.getLogger(__name__)

__all__ = ["SplitPredictions", "predict_classifier", "choose_threshold", "evaluate_classifier"]


@dataclass
class SplitPredictions:
    """A classifier's outputs on one split.

    Attributes:
        images: image paths, in loader order, ``N`` of them.
        labels: ``(N,)`` int64 true class indices.
        probs: ``(N, C)`` float64 softmax probabilities.
    """

    images: List[str]
    labels: np.ndarray
    probs: np.ndarray


def _paths(batch: Dict, n: int) -> List[str]:
    img = batch.get("image")
    meta = getattr(img, "meta", None)
    if isinstance(meta, dict) and "filename_or_obj" in meta:
        names = meta["filename_or_obj"]
        return [str(x) for x in (names if isinstance(names, (list, tuple)) else [names] * n)]
    return [""] * n


@torch.inference_mode()
def predict_classifier(net: torch.nn.Module, loader, device: Union[str, torch.device],
                       amp: bool = False) -> SplitPredictions:
    """Class probabilities of every case in ``loader``, under ``torch.inference_mode()``.

    Args:
        net: classifier returning logits ``(B, C)``; put in eval mode here (and left in it).
        loader: batches ``{"image": (B, C_in, H, W) MetaTensor, "label": (B,) or (B, 1)}`` (not shuffled).
        device: torch device the images are moved to (``net`` must already be there).
        amp: autocast on CUDA (ignored on CPU); probabilities are computed in float32 from the logits.

    Returns:
        :class:`SplitPredictions`: ``labels`` ``(N,)`` int64, ``probs`` ``(N, C)`` float64 softmax, and paths from
        the image meta-data ``filename_or_obj`` (``""`` when the batch has none), in loader order.
    """
    device = torch.device(device)
    net.eval()
    images: List[str] = []
    labels, probs = [], []
    for batch in loader:
        x = batch["image"].to(device)
        with torch.autocast(device.type, enabled=bool(amp and device.type == "cuda")):
            logits = net(x)
        probs.append(torch.softmax(logits.float(), dim=1).cpu().double().numpy())
        labels.append(torch.as_tensor(batch["label"]).reshape(-1).long().numpy())
        images.extend(_paths(batch, x.shape[0]))
    return SplitPredictions(images, np.concatenate(labels), np.concatenate(probs))


def choose_threshold(rule: Union[str, float], val: SplitPredictions) -> Optional[float]:
    """The binary operating threshold on P(class 1) from the ``metrics.threshold`` rule.

    Args:
        rule: a probability (e.g. 0.5) or ``"youden"``: the validation threshold maximising
            ``sensitivity + specificity - 1`` (:func:`medpipe.metrics.youden_threshold`, Youden 1950).
        val: validation predictions.

    Returns:
        The threshold, or ``None`` for more than two classes (argmax). Falls back to 0.5 with a warning when the
        validation split lacks one of the two classes (the ROC curve is then undefined).

    Raises:
        ValueError: ``rule`` is neither ``"youden"`` nor convertible to a float (two-class case only; the config
            section validates it first).
    """
    if val.probs.shape[1] != 2:
        return None
    if rule != "youden":
        return float(rule)
    if len(np.unique(val.labels)) < 2:
        logger.warning("metrics.threshold: youden needs both classes in the validation split; using 0.5")
        return 0.5
    return M.youden_threshold(val.labels, val.probs[:, 1])


def evaluate_classifier(splits: Dict[str, SplitPredictions], class_names: Sequence[str],
                        threshold_rule: Union[str, float] = 0.5) -> Dict[str, Any]:
    """Metrics of each split at one operating threshold chosen on ``splits["val"]``.

    Args:
        splits: ``{"val": ..., "test": ...}`` predictions (``val`` required).
        class_names: names in class-index order.
        threshold_rule: see :func:`choose_threshold`.

    Returns:
        ``{"threshold": float | None, "threshold_rule": str, "<split>": classification_metrics(...)}``, one entry
        per split (:func:`medpipe.metrics.classification_metrics`).

    Raises:
        KeyError: ``splits`` has no ``"val"``.
    """
    thr = choose_threshold(threshold_rule, splits["val"])
    out: Dict[str, Any] = {"threshold": thr, "threshold_rule": str(threshold_rule)}
    for name, pred in splits.items():
        out[name] = M.classification_metrics(pred.labels, pred.probs, threshold=thr, class_names=class_names)
    return out
