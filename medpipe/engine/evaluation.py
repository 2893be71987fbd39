"""Final evaluation of a trained classifier: predictions over a split, calibration, the operating threshold,
metrics at 0.5 and at that threshold, out-of-distribution scores and confidence intervals.

:func:`predict_classifier` runs the network over a loader (optionally averaging mirrored copies) and keeps the raw
logits; :func:`evaluate_classifier` fits the temperature (``metrics.calibration``) and chooses the binary operating
threshold on the validation split (0.5, a fixed value, Youden's J, or a sensitivity / specificity target) and
applies both unchanged to the test split, which never influences any choice. The calibration, OOD and interval
parts live in :mod:`medpipe.engine.reliability`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from sklearn.metrics import roc_curve

from medpipe import metrics as M
from medpipe.engine.reliability import calibrate_splits, final_metrics, ood_section

logger = logging.getLogger(__name__)

__all__ = ["SplitPredictions", "predict_classifier", "choose_threshold", "threshold_rule_name",
           "evaluate_classifier"]


@dataclass
class SplitPredictions:
    """A classifier's outputs on one split.

    Attributes:
        images: image paths, in loader order, ``N`` of them.
        labels: ``(N,)`` int64 true class indices.
        probs: ``(N, C)`` float64 probabilities: the softmax of the logits, or with test-time augmentation the
            mean softmax over the mirrored copies.
        logits: ``(N, C)`` float64 raw logits of the plain (unmirrored) pass, or ``None`` when not kept.
        tta_logits: ``(M, N, C)`` float64 logits of the ``M`` mirrored copies (test-time augmentation), or ``None``.
    """

    images: List[str]
    labels: np.ndarray
    probs: np.ndarray
    logits: Optional[np.ndarray] = None
    tta_logits: Optional[np.ndarray] = None

    def calibrated(self, temperature: Optional[float]) -> np.ndarray:
        """``(N, C)`` float64 probabilities with the logits divided by ``temperature`` (Guo et al. 2017): the mean
        of ``softmax(logits_m / T)`` over the mirrored copies with test-time augmentation (as the served model
        computes it), else ``softmax(logits / T)``; ``probs`` unchanged when ``temperature`` is ``None``.

        Raises:
            ValueError: a temperature is given but no logits were kept.
        """
        if temperature is None:
            return self.probs
        if self.tta_logits is not None:
            return np.mean([M.apply_temperature(z, temperature) for z in self.tta_logits], axis=0)
        if self.logits is None:
            raise ValueError("SplitPredictions.calibrated: temperature scaling needs the logits (predict_classifier "
                             "keeps them)")
        return M.apply_temperature(self.logits, temperature)


def _paths(batch: Dict, n: int) -> List[str]:
    img = batch.get("image")
    meta = getattr(img, "meta", None)
    if isinstance(meta, dict) and "filename_or_obj" in meta:
        names = meta["filename_or_obj"]
        return [str(x) for x in (names if isinstance(names, (list, tuple)) else [names] * n)]
    return [""] * n


@torch.inference_mode()
def predict_classifier(net: torch.nn.Module, loader, device: Union[str, torch.device], amp: bool = False,
                       tta: bool = False, tta_axes: Optional[Sequence[int]] = None) -> SplitPredictions:
    """Class probabilities and raw logits of every case in ``loader``, under ``torch.inference_mode()``.

    Args:
        net: classifier returning logits ``(B, C)``; put in eval mode here (and left in it).
        loader: batches ``{"image": (B, C_in, H, W[, D]) MetaTensor, "label": (B,) or (B, 1)}`` (not shuffled).
        device: torch device the images are moved to (``net`` must already be there).
        amp: autocast on CUDA (ignored on CPU); probabilities are computed in float64 from the logits.
        tta: test-time augmentation: ``probs`` is the mean softmax over the mirrored copies along every
            combination of ``tta_axes`` (:func:`medpipe.inference.tta.tta_softmax`, ``flip_back=False``: a
            classifier's output has no spatial axes); ``logits`` stay those of the plain pass.
        tta_axes: spatial axes mirrored (0 = first spatial axis); default all.

    Returns:
        :class:`SplitPredictions`: ``labels`` ``(N,)`` int64, ``probs`` ``(N, C)`` float64, ``logits`` ``(N, C)``
        float64, ``tta_logits`` ``(M, N, C)`` with ``tta``, and paths from the image meta-data
        ``filename_or_obj`` (``""`` when the batch has none), in loader order.
    """
    device = torch.device(device)
    net.eval()
    images: List[str] = []
    labels, probs, logits, views = [], [], [], []
    for batch in loader:
        x = batch["image"].to(device)
        with torch.autocast(device.type, enabled=bool(amp and device.type == "cuda")):
            z = net(x).float()
            if tta:
                p, zs = _tta(net, x, tta_axes)
                views.append(zs)
        logits.append(z.cpu().double().numpy())
        probs.append(p if tta else torch.softmax(z.double(), dim=1).cpu().numpy())
        labels.append(torch.as_tensor(batch["label"]).reshape(-1).long().numpy())
        images.extend(_paths(batch, x.shape[0]))
    return SplitPredictions(images, np.concatenate(labels), np.concatenate(probs).astype(np.float64),
                            np.concatenate(logits), np.concatenate(views, axis=1) if tta else None)


def _tta(net: torch.nn.Module, x: torch.Tensor, axes: Optional[Sequence[int]]):
    """``(mean softmax (B, C) float64, logits of the mirrored copies (M, B, C) float64)``."""
    from medpipe.inference.tta import tta_softmax

    seen: List[np.ndarray] = []

    def fn(v: torch.Tensor) -> torch.Tensor:
        out = net(v).float()
        seen.append(out.cpu().double().numpy())
        return out

    mean = tta_softmax(fn, x, spatial_axes=list(axes) if axes is not None else None, flip_back=False)
    return mean.float().cpu().double().numpy(), np.stack(seen)


def _target(rule: Any) -> Optional[tuple]:
    """``("sensitivity" | "specificity", value)`` of a ``ThresholdTarget`` (or a one-key dict), else ``None``."""
    if isinstance(rule, dict):
        items = [(k, v) for k, v in rule.items() if v is not None]
    elif hasattr(rule, "sensitivity") and hasattr(rule, "specificity"):
        items = [(k, getattr(rule, k)) for k in ("sensitivity", "specificity") if getattr(rule, k) is not None]
    else:
        return None
    if len(items) != 1 or items[0][0] not in ("sensitivity", "specificity"):
        raise ValueError(f"metrics.threshold: expected {{sensitivity: x}} or {{specificity: x}}, got {rule!r}")
    return items[0][0], float(items[0][1])


def threshold_rule_name(rule: Any) -> str:
    """The ``metrics.threshold`` rule as text: ``"youden"``, ``"0.5"``, ``"sensitivity >= 0.95"``."""
    target = _target(rule)
    return f"{target[0]} >= {target[1]:g}" if target else str(rule)


def target_threshold(labels: np.ndarray, p1: np.ndarray, kind: str, value: float) -> float:
    """The operating threshold on ``p1`` meeting a sensitivity or specificity target on these cases.

    Candidates are the thresholds of ``sklearn.metrics.roc_curve`` (``drop_intermediate=False``: every distinct
    score; a case is positive when ``p1 >= t``). ``sensitivity``: the **highest** threshold whose sensitivity is at
    least ``value`` (the most specific such point). ``specificity``: the **lowest** threshold whose specificity is
    at least ``value`` (the most sensitive such point); when no score meets it, a threshold just above the highest
    score (nothing predicted positive here), with a warning.

    Args:
        labels: ``(N,)`` int binary labels, both classes present.
        p1: ``(N,)`` float P(class 1) in ``[0, 1]``.
        kind: ``"sensitivity"`` or ``"specificity"``.
        value: the target in ``(0, 1]``.

    Returns:
        The threshold, a Python float in ``[0, 1]``.

    Raises:
        ValueError: ``kind`` is neither ``"sensitivity"`` nor ``"specificity"``.
    """
    fpr, tpr, thr = roc_curve(labels, p1, drop_intermediate=False)
    finite = np.isfinite(thr)
    fpr, tpr, thr = fpr[finite], tpr[finite], thr[finite]  # thresholds decreasing: tpr and fpr increase
    if kind == "sensitivity":
        return float(thr[int(np.argmax(tpr >= value - 1e-12))])  # the lowest threshold always reaches 1
    if kind != "specificity":
        raise ValueError(f"kind: expected 'sensitivity' or 'specificity', got {kind!r}")
    ok = np.flatnonzero(1.0 - fpr >= value - 1e-12)
    if ok.size:
        return float(thr[ok[-1]])
    above = float(min(np.nextafter(np.max(p1), np.inf), 1.0))
    logger.warning("metrics.threshold: no validation threshold reaches specificity %.3f; using %.6g, above every "
                   "validation score (nothing predicted positive)", value, above)
    return above


def choose_threshold(rule: Any, val: SplitPredictions, probs: Optional[np.ndarray] = None) -> Optional[float]:
    """The binary operating threshold on P(class 1) from the ``metrics.threshold`` rule, on the validation split.

    Args:
        rule: a probability (e.g. 0.5), ``"youden"``: the validation threshold maximising
            ``sensitivity + specificity - 1`` (:func:`medpipe.metrics.youden_threshold`, Youden 1950), or a
            target (:class:`medpipe.config.ThresholdTarget` or ``{"sensitivity": x}`` / ``{"specificity": x}``,
            :func:`target_threshold`).
        val: validation predictions.
        probs: ``(N, C)`` validation probabilities to use instead of ``val.probs`` (calibrated ones).

    Returns:
        The threshold, or ``None`` for more than two classes (argmax). Falls back to 0.5 with a warning when a
        data-driven rule meets a validation split lacking one of the two classes (the ROC curve is undefined).

    Raises:
        ValueError: ``rule`` is neither ``"youden"``, a target, nor convertible to a float (two-class case only;
            the config section validates it first).
    """
    probs = val.probs if probs is None else probs
    if probs.shape[1] != 2:
        return None
    target = _target(rule)
    if rule != "youden" and target is None:
        return float(rule)
    if len(np.unique(val.labels)) < 2:
        logger.warning("metrics.threshold: %s needs both classes in the validation split; using 0.5",
                       threshold_rule_name(rule))
        return 0.5
    if target is not None:
        return target_threshold(val.labels, probs[:, 1], *target)
    return M.youden_threshold(val.labels, probs[:, 1])


def evaluate_classifier(splits: Dict[str, SplitPredictions], class_names: Sequence[str],
                        threshold_rule: Any = 0.5, *, calibration: str = "none", calibration_bins: int = 15,
                        intervals: Any = None, ood: str = "none", ood_coverage: float = 0.95) -> Dict[str, Any]:
    """The final evaluation of a classifier: calibration and operating threshold chosen on ``splits["val"]``,
    metrics of every split at that threshold (and, for two classes, of the main split at 0.5), OOD scores and
    confidence intervals.

    Args:
        splits: ``{"val": ..., "test": ...}`` predictions (``val`` required; ``logits`` required for
            ``calibration="temperature"`` or an ``ood`` score).
        class_names: names in class-index order.
        threshold_rule: see :func:`choose_threshold`.
        calibration: ``"none"`` or ``"temperature"`` (:func:`medpipe.engine.reliability.calibrate_splits`).
        calibration_bins: equal-width bins of the expected calibration error.
        intervals: ``metrics.intervals`` (``n_resamples``, ``confidence_level``, ``seed``), or ``None`` for none.
        ood: ``"energy"``, ``"max_softmax"`` or ``"none"`` (:func:`medpipe.engine.reliability.ood_section`).
        ood_coverage: fraction of validation cases scored in distribution.

    Returns:
        ``{"threshold": float | None, "threshold_rule": str, "<split>": classification_metrics(...)}`` (at the
        chosen threshold, on the calibrated probabilities), ``"at_050": {<main split>: classification_metrics}``
        (two classes; main = test, else val), ``"calibration"`` and ``"ood"`` (``metrics.json`` sections; ``ood``
        ``None`` when off), ``"probs"``, ``"preds"`` and ``"ood_scores"`` (``{split: (N, C) / (N,)}`` arrays
        used), ``"intervals"`` (``{"<split>" | "at_050": {name: (low, high)}}``) and ``"final"`` (flat
        ``best_val_<m>`` / ``test_<m>`` / ``test_at050_<m>`` scalars with ``_ci_low`` / ``_ci_high``, see
        :func:`medpipe.engine.reliability.final_metrics`).

    Raises:
        KeyError: ``splits`` has no ``"val"``.
    """
    val = splits["val"]
    cal, probs = calibrate_splits(splits, calibration, calibration_bins)
    thr = choose_threshold(threshold_rule, val, probs["val"])
    out: Dict[str, Any] = {"threshold": thr, "threshold_rule": threshold_rule_name(threshold_rule),
                           "calibration": cal, "probs": probs, "at_050": {}}
    main = "test" if "test" in splits else "val"
    for name, pred in splits.items():
        out[name] = M.classification_metrics(pred.labels, probs[name], threshold=thr, class_names=class_names)
    if probs["val"].shape[1] == 2:
        out["at_050"][main] = M.classification_metrics(splits[main].labels, probs[main], threshold=0.5,
                                                       class_names=class_names)
    out["preds"] = {n: ((p[:, 1] >= thr) if thr is not None else p.argmax(1)).astype(np.int64)
                    for n, p in probs.items()}
    out["ood"], out["ood_scores"] = ood_section(splits, out["preds"], ood, ood_coverage)
    out["intervals"], out["final"] = final_metrics(splits, out, class_names, intervals)
    return out
