"""Out-of-distribution scores of a classifier's logits, their threshold, and how well they flag errors.

Higher scores mean more unusual inputs. Plain numpy / scipy / scikit-learn; no torch.

References:
    - W. Liu, X. Wang, J. D. Owens, Y. Li, "Energy-based Out-of-distribution Detection", NeurIPS 2020
      (energy ``E(x) = -T logsumexp(f(x) / T)``, here with ``T = 1`` as in their main results).
    - D. Hendrycks, K. Gimpel, "A Baseline for Detecting Misclassified and Out-of-Distribution Examples in Neural
      Networks", ICLR 2017 (maximum softmax probability; AUROC of separating misclassified from correct cases).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from scipy.special import logsumexp, softmax
from sklearn.metrics import roc_auc_score

from medpipe.metrics.arrays import to_numpy

logger = logging.getLogger(__name__)

__all__ = ["OOD_SCORES", "ood_scores", "fit_ood_threshold", "error_detection_auroc"]

#: the score kinds of :func:`ood_scores`
OOD_SCORES = ("energy", "max_softmax")


def ood_scores(logits: Any, kind: str) -> np.ndarray:
    """Per-case out-of-distribution score; higher = more unusual.

    ``energy``: ``-logsumexp(logits)`` over classes (Liu et al. 2020, temperature 1; unbounded, in logit units).
    ``max_softmax``: ``1 - max softmax(logits)`` (Hendrycks & Gimpel 2017; in ``[0, 1 - 1/C]``).

    Args:
        logits: ``(N, C)`` float logits of the network (before softmax, without temperature scaling).
        kind: ``"energy"`` or ``"max_softmax"``.

    Returns:
        ``(N,)`` float64 scores.

    Raises:
        ValueError: ``kind`` is not one of :data:`OOD_SCORES`, or ``logits`` is not ``(N, C)`` with finite values.
    """
    if kind not in OOD_SCORES:
        raise ValueError(f"kind: expected one of {OOD_SCORES}, got {kind!r}")
    z = to_numpy(logits).astype(np.float64)
    if z.ndim != 2 or z.shape[1] < 1:
        raise ValueError(f"logits: expected shape (N, C), got {tuple(z.shape)}")
    if not np.all(np.isfinite(z)):
        raise ValueError("logits: expected finite values, found NaN or infinity")
    if kind == "energy":
        return -logsumexp(z, axis=1)
    return 1.0 - softmax(z, axis=1).max(axis=1)


def fit_ood_threshold(val_scores: Any, coverage: float = 0.95) -> float:
    """The score threshold below which a fraction ``coverage`` of the validation cases lies.

    The ``coverage`` quantile of the validation scores (``numpy.quantile``, linear interpolation); a case whose
    score is **above** the threshold is flagged as out of distribution, so about ``1 - coverage`` of in-distribution
    cases are flagged (the usual "95 % true-positive rate" operating point of Liu et al. 2020).

    Args:
        val_scores: ``(N,)`` float scores of the validation cases (:func:`ood_scores`), ``N >= 1``.
        coverage: fraction in ``(0, 1)``.

    Returns:
        The threshold as a Python float.

    Raises:
        ValueError: no finite score, or ``coverage`` outside ``(0, 1)``.
    """
    if not 0 < coverage < 1:
        raise ValueError(f"coverage: expected a fraction in (0, 1), got {coverage!r}")
    s = to_numpy(val_scores).astype(np.float64).reshape(-1)
    s = s[np.isfinite(s)]
    if s.size == 0:
        raise ValueError("val_scores: expected at least one finite score")
    return float(np.quantile(s, coverage))


def error_detection_auroc(scores: Any, correct: Any) -> float:
    """AUROC of the score separating misclassified (positive) from correctly classified cases (Hendrycks & Gimpel
    2017, "misclassification detection"); 0.5 = the score says nothing about errors.

    Args:
        scores: ``(N,)`` float scores, higher = more unusual.
        correct: ``(N,)`` bool, whether each case was classified correctly.

    Returns:
        ``sklearn.metrics.roc_auc_score(~correct, scores)`` as a Python float; NaN (logged) when every case is
        correct or every case is wrong.

    Raises:
        ValueError: shapes differ.
    """
    s = to_numpy(scores).astype(np.float64).reshape(-1)
    ok = to_numpy(correct).astype(bool).reshape(-1)
    if s.shape != ok.shape:
        raise ValueError(f"scores, correct: expected the same length, got {s.shape[0]} and {ok.shape[0]}")
    if ok.all() or not ok.any():
        logger.info("error_detection_auroc: %s cases are correct; the AUROC is undefined (NaN)",
                    "all" if ok.all() else "no")
        return float("nan")
    return float(roc_auc_score(~ok, s))
