"""How far a classifier's final numbers can be trusted: calibration (ECE, temperature scaling), out-of-distribution
scores, and the confidence interval of every reported metric.

Used by :func:`medpipe.engine.evaluation.evaluate_classifier`; each function takes the split predictions
(:class:`medpipe.engine.evaluation.SplitPredictions`: ``labels``, ``probs``, ``logits``) and returns plain,
JSON-serialisable sections (``metrics.json`` ``calibration`` / ``ood``) or flat scalars (``final``).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from medpipe import metrics as M

logger = logging.getLogger(__name__)

__all__ = ["SPLIT_PREFIX", "calibrate_splits", "ood_section", "final_metrics"]

#: flat metric prefix of each split (``metrics.json`` ``final`` and MLflow)
SPLIT_PREFIX = {"val": "best_val_", "test": "test_"}


def calibrate_splits(splits: Dict[str, Any], method: str, n_bins: int = 15) -> Tuple[Dict, Dict[str, np.ndarray]]:
    """Expected calibration error of every split, and temperature scaling fitted on ``splits["val"]``.

    ``method="temperature"``: ``T`` minimises the validation negative log-likelihood of the probabilities as
    reported (:func:`medpipe.metrics.fit_temperature`, Guo et al. 2017) and every split's probabilities become
    ``softmax(logits / T)``; with test-time augmentation both are the mean of ``softmax(logits_m / T)`` over the
    mirrored copies (:meth:`~medpipe.engine.evaluation.SplitPredictions.calibrated`), as the served model computes. ECE: top-label, ``n_bins``
    equal-width bins (:func:`medpipe.metrics.expected_calibration_error`); NLL: mean cross-entropy in nats
    (:func:`medpipe.metrics.mean_cross_entropy`).

    Args:
        splits: ``{"val": SplitPredictions, ...}``.
        method: ``"none"`` or ``"temperature"``.
        n_bins: ECE bins.

    Returns:
        ``(section, probs)``: ``section`` = ``{"method", "n_bins", "<split>": {"ece", "nll"}}`` for ``none``, or
        ``{"method": "temperature", "temperature": T, "n_bins", "<split>": {"ece_before", "ece_after",
        "nll_before", "nll_after"}}``; ``probs`` = ``{split: (N, C) float64}`` probabilities to report.

    Raises:
        ValueError: unknown ``method``, or temperature scaling without logits.
    """
    if method not in ("none", "temperature"):
        raise ValueError(f"metrics.calibration: expected 'none' or 'temperature', got {method!r}")
    section: Dict[str, Any] = {"method": method, "n_bins": int(n_bins)}
    if method == "none":
        probs = {n: sp.probs for n, sp in splits.items()}
        for n, sp in splits.items():
            section[n] = {"ece": M.expected_calibration_error(sp.labels, sp.probs, n_bins),
                          "nll": M.mean_cross_entropy(sp.labels, sp.probs)}
        return section, probs
    val = splits["val"]
    if val.logits is None:
        raise ValueError("metrics.calibration: temperature scaling needs the validation logits")
    # with mirrored copies, T is fitted on what is reported (and served): the mean of softmax(logits_m / T)
    temperature = M.fit_temperature(val.labels, val.tta_logits if val.tta_logits is not None else val.logits)
    section["temperature"] = temperature
    probs = {n: sp.calibrated(temperature) for n, sp in splits.items()}
    for n, sp in splits.items():
        section[n] = {"ece_before": M.expected_calibration_error(sp.labels, sp.probs, n_bins),
                      "ece_after": M.expected_calibration_error(sp.labels, probs[n], n_bins),
                      "nll_before": M.mean_cross_entropy(sp.labels, sp.probs),
                      "nll_after": M.mean_cross_entropy(sp.labels, probs[n])}
    logger.info("calibration: T = %.4f; validation ECE %.4f -> %.4f", temperature, section["val"]["ece_before"],
                section["val"]["ece_after"])
    return section, probs


def ood_section(splits: Dict[str, Any], preds: Dict[str, np.ndarray], kind: str,
                coverage: float) -> Tuple[Optional[Dict], Dict[str, np.ndarray]]:
    """Out-of-distribution scores of every case, the threshold fitted on validation, and how they behave.

    Scores of the plain-pass logits (no temperature, no mirroring): :func:`medpipe.metrics.ood_scores`
    (``energy``, Liu et al. 2020, or ``max_softmax``, Hendrycks & Gimpel 2017); threshold: the ``coverage``
    quantile of the validation scores (:func:`medpipe.metrics.fit_ood_threshold`); a case above it is flagged.

    Args:
        splits: ``{"val": SplitPredictions, ...}`` with ``logits``.
        preds: ``{split: (N,) int}`` predicted classes at the operating threshold.
        kind: ``"energy"``, ``"max_softmax"`` or ``"none"``.
        coverage: fraction of validation cases below the threshold.

    Returns:
        ``(section, scores)``: ``section`` = ``{"score": kind, "threshold", "coverage", "<split>":
        {"flagged_fraction", "n_flagged", "error_auroc"}}`` (``error_auroc``: AUROC of the score separating
        misclassified from correct cases, :func:`medpipe.metrics.error_detection_auroc`), ``None`` for ``none``;
        ``scores`` = ``{split: (N,) float64}`` (empty for ``none``).

    Raises:
        ValueError: a score is asked for but a split has no logits.
    """
    if kind == "none":
        return None, {}
    missing = [n for n, sp in splits.items() if sp.logits is None]
    if missing:
        raise ValueError(f"metrics.ood: the {kind} score needs the logits of {missing}")
    scores = {n: M.ood_scores(sp.logits, kind) for n, sp in splits.items()}
    threshold = M.fit_ood_threshold(scores["val"], coverage)
    section: Dict[str, Any] = {"score": kind, "threshold": threshold, "coverage": float(coverage)}
    for n, sp in splits.items():
        flagged = scores[n] > threshold
        section[n] = {"flagged_fraction": float(flagged.mean()), "n_flagged": int(flagged.sum()),
                      "error_auroc": M.error_detection_auroc(scores[n], preds[n] == sp.labels)}
    return section, scores


def _scalars(ev: Dict, name: str) -> Dict[str, float]:
    """The calibration and OOD scalars of one split (names without prefix)."""
    cal, out = ev["calibration"], {}
    if cal["method"] == "temperature":
        c = cal[name]
        out.update(ece=c["ece_after"], nll=c["nll_after"], ece_uncalibrated=c["ece_before"],
                   nll_uncalibrated=c["nll_before"])
    else:
        out.update(ece=cal[name]["ece"], nll=cal[name]["nll"])
    if ev.get("ood"):
        out.update(ood_flagged=ev["ood"][name]["flagged_fraction"], ood_error_auroc=ev["ood"][name]["error_auroc"])
    return {k: float(v) for k, v in out.items()}


def final_metrics(splits: Dict[str, Any], ev: Dict, class_names: Sequence[str],
                  intervals: Any = None) -> Tuple[Dict[str, Dict], Dict[str, float]]:
    """The flat final scalars of a classifier's evaluation and their confidence intervals.

    Names: ``best_val_<m>`` / ``test_<m>`` (:func:`medpipe.metrics.flat_classification_metrics` at the operating
    threshold, plus ``ece``, ``nll``, with temperature scaling ``ece_uncalibrated`` / ``nll_uncalibrated``, with
    an OOD score ``ood_flagged`` / ``ood_error_auroc``), ``<main>_at050_<m>`` (two classes, at threshold 0.5),
    ``calibration_temperature``, ``ood_threshold``. Intervals (``intervals.n_resamples > 0``): every metric but
    the ECE (its binned estimator is biased upwards on resamples, so a percentile interval can miss it) gets
    ``<name>_ci_low`` / ``<name>_ci_high`` from a seeded, class-stratified percentile bootstrap over cases
    (:func:`medpipe.metrics.intervals.classification_intervals`, :func:`~medpipe.metrics.intervals.bootstrap_interval`;
    the threshold and temperature stay fixed), and two-class AUC also DeLong's ``auc_delong_low`` /
    ``auc_delong_high`` (:func:`~medpipe.metrics.intervals.delong_interval`).

    Args:
        splits: ``{split: SplitPredictions}``.
        ev: the evaluation so far (:func:`medpipe.engine.evaluation.evaluate_classifier`: metric dicts,
            ``threshold``, ``probs``, ``preds``, ``calibration``, ``ood``, ``ood_scores``, ``at_050``).
        class_names: names in class-index order.
        intervals: ``metrics.intervals`` (``n_resamples``, ``confidence_level``, ``seed``), or ``None``.

    Returns:
        ``(intervals_by_split, final)``: ``{"<split>" | "at_050": {name: (low, high)}}`` (names without prefix)
        and the flat ``{name: float}``.
    """
    final: Dict[str, float] = {}
    for name in splits:
        final.update(M.flat_classification_metrics(ev[name], SPLIT_PREFIX[name]))
        final.update({SPLIT_PREFIX[name] + k: v for k, v in _scalars(ev, name).items()})
    for name, res in ev["at_050"].items():
        final.update(M.flat_classification_metrics(res, SPLIT_PREFIX[name] + "at050_"))
    if ev["calibration"]["method"] == "temperature":
        final["calibration_temperature"] = float(ev["calibration"]["temperature"])
    if ev.get("ood"):
        final["ood_threshold"] = float(ev["ood"]["threshold"])
    if intervals is None or int(getattr(intervals, "n_resamples", 0)) <= 0:
        return {}, final
    ivs: Dict[str, Dict] = {}
    for name, sp in splits.items():
        ivs[name] = _split_intervals(sp.labels, ev, name, ev["threshold"], class_names, intervals)
    for name in ev["at_050"]:
        ivs["at_050"] = _split_intervals(splits[name].labels, ev, name, 0.5, class_names, intervals, extras=False)
    from medpipe.metrics.intervals import add_intervals

    for key, iv in ivs.items():
        prefix = SPLIT_PREFIX[key] if key in SPLIT_PREFIX else SPLIT_PREFIX[next(iter(ev["at_050"]))] + "at050_"
        delong = iv.pop("auc_delong", None)
        add_intervals(final, iv, prefix)
        if delong is not None:
            final[prefix + "auc_delong_low"], final[prefix + "auc_delong_high"] = delong
            iv["auc_delong"] = delong
    return ivs, final


def _split_intervals(labels: np.ndarray, ev: Dict, name: str, threshold: Optional[float],
                     class_names: Sequence[str], cfg: Any, extras: bool = True) -> Dict[str, Tuple[float, float]]:
    """``{metric: (low, high)}`` of one split: the classification metrics at ``threshold``, DeLong's AUC interval
    (two classes, both present), and with ``extras`` the calibration / OOD scalars."""
    from medpipe.metrics.intervals import bootstrap_interval, classification_intervals, delong_interval

    probs = ev["probs"][name]
    kw = dict(n_resamples=int(cfg.n_resamples), confidence_level=float(cfg.confidence_level), seed=int(cfg.seed))
    out = dict(classification_intervals(labels, probs, threshold, list(class_names), **kw))
    if probs.shape[1] == 2 and len(np.unique(labels)) == 2:
        _auc, low, high = delong_interval(labels, probs[:, 1], confidence_level=kw["confidence_level"])
        out["auc_delong"] = (float(low), float(high))
    if not extras:
        return out
    # no bootstrap interval for the ECE: the binned estimator is biased upwards on resamples (duplicated cases),
    # so its percentile interval can exclude the estimate itself (seen: ECE 0.102, interval 0.082-0.232)
    stats = {"nll": lambda i: M.mean_cross_entropy(labels[i], probs[i])}
    scores = ev.get("ood_scores", {}).get(name)
    if scores is not None:
        thr, right = ev["ood"]["threshold"], ev["preds"][name] == labels
        stats["ood_flagged"] = lambda i: float(np.mean(scores[i] > thr))
        stats["ood_error_auroc"] = lambda i: M.error_detection_auroc(scores[i], right[i])
    for key, fn in stats.items():
        out[key] = tuple(float(v) for v in bootstrap_interval(fn, len(labels), strata=labels, **kw))
    return out
