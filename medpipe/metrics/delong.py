"""DeLong's confidence interval of a ROC AUC and DeLong's test of two correlated AUCs (two classes).

E. R. DeLong, D. M. DeLong & D. L. Clarke-Pearson, "Comparing the areas under two or more correlated receiver
operating characteristic curves: a nonparametric approach", Biometrics 44(3):837-845, 1988, computed with the fast
midrank algorithm of X. Sun & W. Xu, "Fast implementation of DeLong's algorithm for comparing the areas under
correlated receiver operating characteristic curves", IEEE Signal Processing Letters 21(11):1389-1393, 2014
(O(N log N) through ``scipy.stats.rankdata`` midranks instead of the O(m n) kernel). Interval and test as R's pROC
(Robin et al., BMC Bioinformatics 12:77, 2011; ``ci.auc`` / ``roc.test`` with ``method = "delong"``): normal
approximation on the AUC scale, the interval clipped to ``[0, 1]``. The tests reproduce pROC's published values for
its ``aSAH`` data (e.g. S100B: AUC 0.7314, 95 % CI 0.6301-0.8326) and a brute-force structural-components
computation. Re-exported by :mod:`medpipe.metrics.intervals` and :mod:`medpipe.metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Dict, Tuple

import numpy as np
from scipy import stats as sps

from medpipe.metrics.arrays import to_numpy

__all__ = ["delong_interval", "delong_test"]


def _level(confidence_level: float) -> float:
    cl = float(confidence_level)
    if not 0.0 < cl < 1.0:
        raise ValueError(f"confidence_level must be in (0, 1), got {confidence_level!r}.")
    return cl


def _binary(labels: Any, scores: Sequence[Any]) -> Tuple[np.ndarray, np.ndarray]:
    """``(N,)`` bool positives and ``(K, N)`` float64 finite scores, or ``ValueError``."""
    y = to_numpy(labels)
    if y.ndim != 1 or not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels: expected a 1-D (N,) array of 0/1, got shape {tuple(y.shape)} with values "
                         f"{np.unique(y)[:5].tolist()}.")
    pos = y.astype(bool)
    if pos.all() or not pos.any():
        raise ValueError(f"labels: DeLong needs both classes, found only class {int(y[0])}.")
    s = np.stack([np.asarray(to_numpy(v), dtype=np.float64) for v in scores])
    if s.shape[1:] != y.shape:
        raise ValueError(f"scores: expected shape {tuple(y.shape)} like labels, got {tuple(s.shape[1:])}.")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values.")
    return pos, s


def _delong_components(pos: np.ndarray, scores: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """AUCs ``(K,)`` and their DeLong covariance ``(K, K)`` (Sun & Xu 2014, midranks by ``scipy.stats.rankdata``)."""
    x, y = scores[:, pos], scores[:, ~pos]
    m, n = x.shape[1], y.shape[1]
    tz = sps.rankdata(np.concatenate([x, y], axis=1), axis=1)  # midranks of the pooled scores
    tx, ty = sps.rankdata(x, axis=1), sps.rankdata(y, axis=1)
    v10 = (tz[:, :m] - tx) / n  # structural components of the positives
    v01 = 1.0 - (tz[:, m:] - ty) / m  # and of the negatives
    aucs = v10.mean(axis=1)
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((len(scores), len(scores)))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((len(scores), len(scores)))
    return aucs, s10 / m + s01 / n


def delong_interval(labels: Any, scores: Any, confidence_level: float = 0.95) -> Tuple[float, float, float]:
    """ROC AUC with DeLong's confidence interval, as R's ``pROC::ci.auc(method = "delong")``.

    ``AUC +/- z * sqrt(var)`` with ``z`` the ``(1 + confidence_level) / 2`` normal quantile
    (``scipy.stats.norm.ppf``) and ``var`` DeLong's variance (DeLong et al. 1988; fast algorithm of Sun & Xu 2014),
    clipped to ``[0, 1]``. Class 1 is the positive class and higher scores mean class 1 (pROC instead picks the
    direction from the data).

    Args:
        labels: ``(N,)`` int 0/1 true classes, both present.
        scores: ``(N,)`` float scores or probabilities of class 1, finite.
        confidence_level: two-sided coverage in ``(0, 1)``.

    Returns:
        ``(auc, low, high)`` Python floats; ``auc`` equals ``sklearn.metrics.roc_auc_score(labels, scores)``.

    Raises:
        ValueError: labels not 0/1 or one class only, shapes differ, non-finite scores, bad ``confidence_level``.
    """
    cl = _level(confidence_level)
    pos, s = _binary(labels, [scores])
    aucs, cov = _delong_components(pos, s)
    auc, se = float(aucs[0]), math.sqrt(max(float(cov[0, 0]), 0.0))
    z = float(sps.norm.ppf((1 + cl) / 2))
    return auc, max(0.0, auc - z * se), min(1.0, auc + z * se)


def delong_test(labels: Any, scores_a: Any, scores_b: Any, confidence_level: float = 0.95) -> Dict[str, float]:
    """DeLong's test of two correlated ROC AUCs (two models scored on the same cases), as R's
    ``pROC::roc.test(method = "delong", paired = TRUE)``.

    ``z = (AUC_b - AUC_a) / sqrt(var_a + var_b - 2 cov_ab)`` with DeLong's covariance (DeLong et al. 1988; Sun &
    Xu 2014); two-sided ``p = 2 * (1 - Phi(|z|))``; the interval of the difference is ``difference +/- z_crit * se``
    (not clipped). Identical scores give difference 0, ``z = 0`` and ``p = 1`` (as pROC).

    Args:
        labels: ``(N,)`` int 0/1 true classes, both present.
        scores_a: ``(N,)`` float scores of class 1 from model A.
        scores_b: ``(N,)`` float scores of class 1 from model B.
        confidence_level: two-sided coverage of the difference's interval.

    Returns:
        ``{"auc_a", "auc_b", "difference" (B minus A), "low", "high", "z", "p_value"}`` floats.

    Raises:
        ValueError: as :func:`delong_interval`.
    """
    cl = _level(confidence_level)
    pos, s = _binary(labels, [scores_a, scores_b])
    aucs, cov = _delong_components(pos, s)
    diff = float(aucs[1] - aucs[0])
    se = math.sqrt(max(float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]), 0.0))
    if se > 0:
        z = diff / se
    else:
        z = 0.0 if diff == 0 else math.copysign(math.inf, diff)
    crit = float(sps.norm.ppf((1 + cl) / 2))
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "difference": diff, "low": diff - crit * se,
            "high": diff + crit * se, "z": float(z), "p_value": float(2 * sps.norm.sf(abs(z)))}
