"""Calibration of a classifier's probabilities: expected calibration error, the reliability curve, temperature
scaling.

Plain numpy / scipy; no torch.

References:
    - C. Guo, G. Pleiss, Y. Sun, K. Q. Weinberger, "On Calibration of Modern Neural Networks", ICML 2017
      (top-label ECE over equal-width confidence bins, reliability diagrams, temperature scaling fitted by minimising
      the validation negative log-likelihood). Reference implementation: ``gpleiss/temperature_scaling``
      (``_ECELoss``: bins ``(lower, upper]``, ``ECE = sum_b |B_b| / N * |acc(B_b) - conf(B_b)|``).
    - M. P. Naeini, G. F. Cooper, M. Hauskrecht, "Obtaining Well Calibrated Probabilities Using Bayesian
      Binning", AAAI 2015 (the ECE definition).
"""

from __future__ import annotations

import logging
from typing import Any, Dict

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, logsumexp, softmax

from medpipe.metrics.arrays import to_numpy

logger = logging.getLogger(__name__)

__all__ = ["expected_calibration_error", "reliability_curve", "fit_temperature", "apply_temperature",
           "negative_log_likelihood", "TEMPERATURE_BOUNDS"]

#: the temperatures :func:`fit_temperature` searches (a bounded search on ``log T``)
TEMPERATURE_BOUNDS = (0.05, 20.0)


def _labels_probs(labels: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(N,)`` int64 labels and ``(N, C)`` float64 probabilities, checked; ``(N,)`` P(class 1) is expanded."""
    y = to_numpy(labels)
    p = to_numpy(probs).astype(np.float64)
    if p.ndim == 1:
        p = np.stack([1.0 - p, p], axis=1)
    if p.ndim != 2 or p.shape[1] < 2 or y.shape != (p.shape[0],) or p.shape[0] == 0:
        raise ValueError(f"labels, probs: expected (N,) class indices and (N, C) probabilities with N >= 1, C >= 2, "
                         f"got {tuple(y.shape)} and {tuple(to_numpy(probs).shape)}")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise ValueError("probs: expected finite probabilities in [0, 1]; apply softmax (or apply_temperature) to "
                         "logits first")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"labels: expected class indices in [0, {p.shape[1]}), found [{y.min()}, {y.max()}]")
    return y, p


def _labels_logits(labels: Any, logits: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(N,)`` int64 labels and ``(N, C)`` float64 finite logits, checked."""
    y = to_numpy(labels).astype(np.int64)
    z = to_numpy(logits).astype(np.float64)
    if z.ndim != 2 or z.shape[1] < 2 or y.shape != (z.shape[0],) or z.shape[0] == 0:
        raise ValueError(f"labels, logits: expected (N,) class indices and (N, C) logits with N >= 1, C >= 2, got "
                         f"{tuple(y.shape)} and {tuple(z.shape)}")
    if not np.all(np.isfinite(z)):
        raise ValueError("logits: expected finite values, found NaN or infinity")
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError(f"labels: expected class indices in [0, {z.shape[1]}), found [{y.min()}, {y.max()}]")
    return y, z


def reliability_curve(labels: Any, probs: Any, n_bins: int = 15) -> Dict[str, np.ndarray]:
    """Top-label reliability curve over equal-width confidence bins (Guo et al. 2017, section 2).

    The confidence of a case is its largest class probability, its prediction the argmax; bin ``b`` holds the
    cases with confidence in ``(b / n_bins, (b + 1) / n_bins]`` (as ``gpleiss/temperature_scaling``).

    Args:
        labels: ``(N,)`` int true class indices in ``[0, C)``.
        probs: ``(N, C)`` float probabilities (rows summing to 1), or ``(N,)`` P(class 1) of a binary problem.
        n_bins: number of bins, at least 1.

    Returns:
        ``{"bin_lower", "bin_upper", "confidence", "accuracy", "count"}``, each ``(n_bins,)``: bin edges, mean
        confidence and accuracy (fraction of argmax predictions that are right) of the cases in the bin (float64,
        NaN for an empty bin), and the number of cases (int64).

    Raises:
        ValueError: bad shapes, labels out of range, values outside ``[0, 1]``, or ``n_bins < 1``.
    """
    if int(n_bins) < 1:
        raise ValueError(f"n_bins: expected at least 1, got {n_bins}")
    y, p = _labels_probs(labels, probs)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    # bin b = (edges[b], edges[b + 1]]; a confidence of exactly 0 (impossible for a top label) joins bin 0
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, int(n_bins) - 1)
    count = np.bincount(idx, minlength=int(n_bins)).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=int(n_bins)) / count
        acc = np.bincount(idx, weights=correct, minlength=int(n_bins)) / count
    return {"bin_lower": edges[:-1], "bin_upper": edges[1:], "confidence": np.where(count > 0, mean_conf, np.nan),
            "accuracy": np.where(count > 0, acc, np.nan), "count": count}


def expected_calibration_error(labels: Any, probs: Any, n_bins: int = 15) -> float:
    """Top-label expected calibration error (ECE) over equal-width bins (Naeini et al. 2015; Guo et al. 2017).

    ``ECE = sum_b (|B_b| / N) * |accuracy(B_b) - confidence(B_b)|`` over the bins of :func:`reliability_curve`
    (empty bins contribute nothing). 0 = perfectly calibrated on these cases; at most 1.

    Args:
        labels: ``(N,)`` int true class indices.
        probs: ``(N, C)`` float probabilities, or ``(N,)`` P(class 1).
        n_bins: number of equal-width confidence bins (Guo et al. use 15).

    Returns:
        The ECE as a Python float (a fraction, not a percentage).

    Raises:
        ValueError: see :func:`reliability_curve`.
    """
    curve = reliability_curve(labels, probs, n_bins)
    n = curve["count"].sum()
    used = curve["count"] > 0
    gap = np.abs(curve["accuracy"][used] - curve["confidence"][used])
    return float(np.sum(curve["count"][used] / n * gap))


def negative_log_likelihood(labels: Any, logits: Any, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood ``-log softmax(logits / T)[label]`` over cases, in nats (no clipping).

    Args:
        labels: ``(N,)`` int true class indices.
        logits: ``(N, C)`` float logits (or log-probabilities: softmax ignores a per-row constant).
        temperature: ``T > 0``.

    Returns:
        The mean as a Python float.

    Raises:
        ValueError: bad shapes, non-finite logits, labels out of range, or ``temperature <= 0``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature: expected a positive number, got {temperature!r}")
    y, z = _labels_logits(labels, logits)
    return float(-log_softmax(z / float(temperature), axis=1)[np.arange(len(y)), y].mean())


def fit_temperature(labels: Any, logits: Any) -> float:
    """Temperature scaling (Guo et al. 2017, section 4.2): the ``T > 0`` minimising the mean negative
    log-likelihood of ``softmax(logits / T)`` on (validation) cases.

    The NLL is minimised over ``log T`` in ``log(TEMPERATURE_BOUNDS)`` with ``scipy.optimize.minimize_scalar``
    (``method="bounded"``, Brent's method); for one set of logits the objective is smooth and, in ``1 / T``,
    convex. A result at a bound is logged (the logits separate the classes perfectly, or carry no information).
    ``T > 1`` softens overconfident probabilities; the argmax of one set of logits never changes.

    Args:
        labels: ``(N,)`` int true class indices in ``[0, C)``.
        logits: ``(N, C)`` float logits of the same cases (log-probabilities give the same temperature), or
            ``(M, N, C)``: the logits of ``M`` views of each case (mirrored copies, ensemble members) whose
            probabilities are averaged, ``mean_m softmax(logits_m / T)``, the NLL of that mean is minimised.

    Returns:
        The temperature as a Python float.

    Raises:
        ValueError: bad shapes, non-finite logits or labels out of range.
    """
    z = to_numpy(logits).astype(np.float64)
    views = z if z.ndim == 3 else z[None]
    if views.ndim != 3:
        raise ValueError(f"logits: expected (N, C) or (M, N, C) logits, got shape {tuple(z.shape)}")
    y, _ = _labels_logits(labels, views[0])
    if not np.all(np.isfinite(views)):
        raise ValueError("logits: expected finite values, found NaN or infinity")
    rows, m = np.arange(len(y)), views.shape[0]
    lo, hi = np.log(TEMPERATURE_BOUNDS)

    def nll(log_t: float) -> float:
        log_p = logsumexp(log_softmax(views * np.exp(-log_t), axis=2), axis=0) - np.log(m)
        return float(-log_p[rows, y].mean())

    res = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-6})
    t = float(np.exp(res.x))
    if min(res.x - lo, hi - res.x) < 1e-3:
        logger.warning("fit_temperature: the fitted temperature %.4g is at the search bound %s; the validation "
                       "logits give no interior optimum", t, TEMPERATURE_BOUNDS)
    logger.info("temperature scaling: T = %.4f (validation NLL %.4f -> %.4f)", t, nll(0.0), float(res.fun))
    return t


def apply_temperature(logits: Any, temperature: float) -> np.ndarray:
    """Calibrated probabilities ``softmax(logits / T)`` (Guo et al. 2017).

    Args:
        logits: ``(N, C)`` float logits (or log-probabilities).
        temperature: ``T > 0`` from :func:`fit_temperature`.

    Returns:
        ``(N, C)`` float64 probabilities.

    Raises:
        ValueError: ``logits`` is not 2-D or ``temperature <= 0``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature: expected a positive number, got {temperature!r}")
    z = to_numpy(logits).astype(np.float64)
    if z.ndim != 2:
        raise ValueError(f"logits: expected shape (N, C), got {tuple(z.shape)}")
    return softmax(z / float(temperature), axis=1)
