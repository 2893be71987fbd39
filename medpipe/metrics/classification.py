"""Classification metrics over a split: confusion matrix, sensitivity / specificity / precision / F1, ROC AUC,
the Youden operating threshold, and the flat names logged to MLflow.

Plain numpy / scikit-learn; results are JSON-serialisable Python ``float``/``int``/``list`` values. Torch tensors
are accepted anywhere an array is (converted with :func:`medpipe.metrics.arrays.to_numpy`); this module does not
import torch.

References:
    - W. J. Youden, "Index for rating diagnostic tests", Cancer 3(1):32-35, 1950.
    - K. H. Brodersen, C. S. Ong, K. E. Stephan, J. M. Buhmann, "The balanced accuracy and its posterior
      distribution", ICPR 2010 (balanced accuracy = mean recall, as ``sklearn.metrics.balanced_accuracy_score``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm

from medpipe.metrics.arrays import as_int_labels, check_same_shape, to_numpy

logger = logging.getLogger(__name__)

__all__ = [
    "confusion_matrix",
    "classification_metrics",
    "youden_threshold",
    "select_metric",
    "flat_classification_metrics",
    "mean_cross_entropy",
]

_MACRO = {"sensitivity": "macro_sensitivity", "specificity": "macro_specificity", "precision": "macro_precision",
          "f1": "macro_f1"}


def _as_label_vector(x: Any, name: str, num_classes: int) -> np.ndarray:
    """``(N,)`` int64 class indices in ``[0, num_classes)``, ``N >= 1``, or ``ValueError``."""
    arr = to_numpy(x)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D (N,) array of class indices, got shape {tuple(arr.shape)}.")
    if arr.size == 0:
        raise ValueError(f"{name}: no samples.")
    return as_int_labels(arr, name, num_classes)


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """Confusion matrix with a row and a column for every class, predicted or not.

    Args:
        y_true: true class indices, shape ``(N,)``, integer in ``[0, num_classes)``.
        y_pred: predicted class indices, shape ``(N,)``, integer in ``[0, num_classes)``.
        num_classes: number of classes ``C``.

    Returns:
        ``(C, C)`` int64 array; entry ``[i, j]`` counts samples of true class ``i`` predicted as class ``j``
        (rows = true, columns = predicted; ``sklearn.metrics.confusion_matrix`` with ``labels=range(C)``).

    Raises:
        ValueError: shapes differ, arrays are empty or not 1-D, or labels are outside ``[0, num_classes)``
            (sklearn would silently drop such samples).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    yt = _as_label_vector(y_true, "y_true", num_classes)
    yp = _as_label_vector(y_pred, "y_pred", num_classes)
    check_same_shape(yt, yp, "y_true", "y_pred")
    return skm.confusion_matrix(yt, yp, labels=np.arange(num_classes)).astype(np.int64)


def _as_probabilities(y_prob: Any, n: int) -> np.ndarray:
    """``(N, C)`` float64 probabilities (``(N,)`` of class 1 expanded to two columns), or ``ValueError``."""
    prob = to_numpy(y_prob).astype(np.float64)
    if prob.ndim == 1:
        prob = np.stack([1.0 - prob, prob], axis=1)
    if prob.ndim != 2 or prob.shape[1] < 2:
        raise ValueError(
            f"y_prob: expected shape (N, C) with C >= 2 (or (N,) probabilities of class 1), "
            f"got {tuple(to_numpy(y_prob).shape)}."
        )
    if prob.shape[0] != n:
        raise ValueError(f"y_prob has {prob.shape[0]} rows but y_true has {n} samples.")
    if not np.all(np.isfinite(prob)) or prob.min() < 0.0 or prob.max() > 1.0:
        raise ValueError(
            f"y_prob: expected probabilities in [0, 1], found range [{np.nanmin(prob):.4g}, {np.nanmax(prob):.4g}]"
            f"{' with NaN/inf' if not np.all(np.isfinite(prob)) else ''}; apply softmax/sigmoid to logits first."
        )
    return prob


def _class_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    """``class_names`` as ``C`` unique strings (default ``"0", "1", ...``), or ``ValueError``."""
    if class_names is None:
        return [str(c) for c in range(num_classes)]
    names = [str(c) for c in class_names]
    if len(names) != num_classes or len(set(names)) != num_classes:
        raise ValueError(
            f"class_names: expected {num_classes} unique names (one per column of y_prob), got {names}."
        )
    return names


def _predict(prob: np.ndarray, threshold: float | None) -> tuple[float | None, np.ndarray]:
    """``(threshold used, (N,) int64 predicted classes)``: ``P(class 1) >= threshold`` for two classes, else argmax."""
    num_classes = prob.shape[1]
    if num_classes == 2:
        thr = 0.5 if threshold is None else float(threshold)
        if not 0.0 <= thr <= 1.0:
            raise ValueError(f"threshold must be a probability in [0, 1], got {threshold!r}.")
        return thr, (prob[:, 1] >= thr).astype(np.int64)
    if threshold is not None:
        raise ValueError(
            f"threshold={threshold!r} only applies to binary problems; with {num_classes} classes the "
            "prediction is the argmax, so leave threshold=None."
        )
    return None, prob.argmax(axis=1).astype(np.int64)


def _counting_scores(yt: np.ndarray, yp: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """Confusion matrix ``cm`` and per-class ``precision``, ``recall``, ``f1``, ``support``, ``specificity``
    (one-vs-rest, zero division -> 0); logs a warning for classes never predicted."""
    num_classes, n = len(names), yt.shape[0]
    labels = np.arange(num_classes)
    cm = skm.confusion_matrix(yt, yp, labels=labels).astype(np.int64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = n - tp - fp - fn
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        yt, yp, labels=labels, average=None, zero_division=0
    )
    neg = tn + fp
    specificity = np.where(neg > 0, tn / np.maximum(neg, 1), 0.0)
    never = [names[c] for c in range(num_classes) if tp[c] + fp[c] == 0]
    if never:
        logger.warning("classification_metrics: class(es) %s never predicted; their precision is set to 0 "
                       "(sklearn zero_division=0)", never)
    return {"cm": cm, "precision": precision, "recall": recall, "f1": f1, "support": support,
            "specificity": specificity}


def _one_vs_rest_aucs(yt: np.ndarray, prob: np.ndarray, names: list[str]) -> tuple[list[float], float]:
    """Per-class one-vs-rest ROC AUC (NaN, with a warning, for a class with no positive or no negative sample)
    and their mean over the defined ones (NaN if none)."""
    aucs = []
    for c, name in enumerate(names):
        positives = yt == c
        if positives.all() or not positives.any():
            logger.warning(
                "classification_metrics: class %r has %s in y_true; its ROC AUC is undefined (NaN) and is left "
                "out of the macro AUC.",
                name,
                "no samples" if not positives.any() else "all samples",
            )
            aucs.append(float("nan"))
        else:
            aucs.append(float(skm.roc_auc_score(positives, prob[:, c])))
    finite_aucs = [a for a in aucs if not np.isnan(a)]
    return aucs, (float(np.mean(finite_aucs)) if finite_aucs else float("nan"))


def _per_class(names: list[str], s: dict[str, np.ndarray], aucs: list[float]) -> dict[str, dict[str, Any]]:
    return {
        name: {
            "sensitivity": float(s["recall"][c]),
            "specificity": float(s["specificity"][c]),
            "precision": float(s["precision"][c]),
            "f1": float(s["f1"][c]),
            "roc_auc": aucs[c],
            "support": int(s["support"][c]),
        }
        for c, name in enumerate(names)
    }


def classification_metrics(
    y_true: Any,
    y_prob: Any,
    *,
    threshold: float | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Accuracy, sensitivity, specificity, precision, F1, ROC AUC and confusion matrix of a classifier.

    Prediction rule: for two classes, a sample is predicted class 1 when ``y_prob[:, 1] >= threshold``
    (default 0.5; ``>=`` matches the thresholds of ``sklearn.metrics.roc_curve`` and :func:`youden_threshold`);
    for more classes, ``argmax`` over classes (``threshold`` must then be ``None``).

    Per class ``c`` (one-vs-rest, from the confusion matrix): sensitivity (recall) ``TP / (TP + FN)``,
    specificity ``TN / (TN + FP)``, precision ``TP / (TP + FP)``, F1, support, and ROC AUC of ``y_prob[:, c]``
    for ``y_true == c``. Zero division gives 0.0 (sklearn ``zero_division=0``): a class never predicted has
    precision 0, a class absent from ``y_true`` has sensitivity 0, a class that is every sample has specificity 0.
    Macro values are unweighted means over all ``C`` classes (sklearn ``average="macro"`` with
    ``labels=range(C)``), except AUC: a class with no positive or no negative sample in ``y_true`` has AUC NaN and
    is left out of ``macro_roc_auc`` with a logged warning (for classes all present this equals
    ``sklearn.metrics.roc_auc_score(..., multi_class="ovr", average="macro")``). ``balanced_accuracy`` is
    ``sklearn.metrics.balanced_accuracy_score`` (mean recall over the classes present in ``y_true``; Brodersen
    et al. 2010).

    Args:
        y_true: true class indices, shape ``(N,)``, integer in ``[0, C)``.
        y_prob: class probabilities, shape ``(N, C)``, float in ``[0, 1]``; for binary problems ``(N,)``
            probabilities of class 1 are accepted too.
        threshold: binary decision threshold on the probability of class 1, in ``[0, 1]``; default 0.5.
        class_names: ``C`` unique names used as keys of ``per_class``; default ``"0", "1", ...``.

    Returns:
        JSON-serialisable dict (Python floats, ints, lists; NaN for undefined AUC) with keys ``num_samples``,
        ``num_classes``, ``class_names``, ``threshold`` (``None`` for multiclass), ``accuracy``,
        ``balanced_accuracy``, ``macro_sensitivity``, ``macro_specificity``, ``macro_precision``, ``macro_f1``,
        ``roc_auc`` (binary: AUC of class 1; multiclass: equal to ``macro_roc_auc``), ``macro_roc_auc``,
        ``per_class`` (``{name: {sensitivity, specificity, precision, f1, roc_auc, support}}``) and
        ``confusion_matrix`` (nested list, rows = true, columns = predicted). Binary problems add the
        positive-class (class 1) ``sensitivity``, ``specificity``, ``precision`` and ``f1`` at the top level.

    Raises:
        ValueError: bad shapes, labels out of range, probabilities outside ``[0, 1]``, a ``threshold`` for a
            multiclass problem or outside ``[0, 1]``, or ``class_names`` of the wrong length or with duplicates.
    """
    yt_raw = to_numpy(y_true)
    if yt_raw.ndim != 1:
        raise ValueError(f"y_true: expected a 1-D (N,) array of class indices, got shape {tuple(yt_raw.shape)}.")
    prob = _as_probabilities(y_prob, yt_raw.shape[0])
    n, num_classes = prob.shape
    yt = _as_label_vector(yt_raw, "y_true", num_classes)
    names = _class_names(class_names, num_classes)
    thr, yp = _predict(prob, threshold)
    s = _counting_scores(yt, yp, names)
    aucs, macro_auc = _one_vs_rest_aucs(yt, prob, names)
    result: dict[str, Any] = {
        "num_samples": int(n),
        "num_classes": int(num_classes),
        "class_names": names,
        "threshold": thr,
        "accuracy": float(skm.accuracy_score(yt, yp)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(yt, yp)),
        "macro_sensitivity": float(np.mean(s["recall"])),
        "macro_specificity": float(np.mean(s["specificity"])),
        "macro_precision": float(np.mean(s["precision"])),
        "macro_f1": float(np.mean(s["f1"])),
        "roc_auc": aucs[1] if num_classes == 2 else macro_auc,
        "macro_roc_auc": macro_auc,
    }
    if num_classes == 2:
        result.update(sensitivity=float(s["recall"][1]), specificity=float(s["specificity"][1]),
                      precision=float(s["precision"][1]), f1=float(s["f1"][1]))
    result["per_class"] = _per_class(names, s, aucs)
    result["confusion_matrix"] = s["cm"].tolist()
    return result


def youden_threshold(y_true: Any, prob_positive: Any) -> float:
    """Decision threshold maximising Youden's J statistic over the ROC curve (Youden 1950).

    ``J(t) = sensitivity(t) + specificity(t) - 1 = TPR(t) - FPR(t)``, evaluated at every threshold returned by
    ``sklearn.metrics.roc_curve`` (``drop_intermediate=False``), where a sample is positive when
    ``prob_positive >= t``, the rule :func:`classification_metrics` uses. The leading ``+inf`` threshold of
    ``roc_curve`` (nothing positive) is skipped so the result is always a finite score value. Ties go to the
    highest threshold (the first maximum along the ROC curve, i.e. the most specific operating point).

    Args:
        y_true: binary labels, shape ``(N,)``, integer in ``{0, 1}``, both classes present.
        prob_positive: scores or probabilities of class 1, shape ``(N,)``, finite floats.

    Returns:
        The threshold, a Python float taken from the values of ``prob_positive``.

    Raises:
        ValueError: bad shapes, labels other than 0/1, only one class present, or non-finite scores.
    """
    yt = _as_label_vector(y_true, "y_true", 2)
    score = to_numpy(prob_positive).astype(np.float64)
    if score.ndim != 1 or score.shape != yt.shape:
        raise ValueError(
            f"prob_positive: expected shape {tuple(yt.shape)} like y_true, got {tuple(score.shape)}."
        )
    if not np.all(np.isfinite(score)):
        raise ValueError("prob_positive contains NaN or infinite values.")
    if yt.min() == yt.max():
        raise ValueError(
            f"youden_threshold needs both classes in y_true, found only class {int(yt[0])}; "
            "the ROC curve is undefined."
        )
    fpr, tpr, thresholds = skm.roc_curve(yt, score, drop_intermediate=False)
    finite = np.isfinite(thresholds)
    j = np.where(finite, tpr - fpr, -np.inf)
    return float(thresholds[int(np.argmax(j))])


def select_metric(result: dict[str, Any], name: str) -> float:
    """One configured metric from a :func:`classification_metrics` result.

    ``auc`` is ``roc_auc``; with two classes ``sensitivity`` / ``specificity`` / ``precision`` / ``f1`` are those
    of the positive class (index 1), with more classes their macro means; any other name is read as is.

    Args:
        result: a :func:`classification_metrics` result.
        name: a :class:`medpipe.config.MetricsConfig` classification metric name (``accuracy``,
            ``balanced_accuracy``, ``auc``, ``sensitivity``, ``specificity``, ``precision``, ``f1``).

    Returns:
        The value as a Python float (NaN possible for ``auc``).

    Raises:
        KeyError: unknown ``name``.
    """
    if name == "auc":
        return float(result["roc_auc"])
    if name in _MACRO and result["num_classes"] != 2:
        return float(result[_MACRO[name]])
    return float(result[name])


def _safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_-." else "_" for ch in str(name))


def flat_classification_metrics(result: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten a :func:`classification_metrics` result to ``{prefix + name: float}`` for MLflow.

    Keys: ``accuracy``, ``balanced_accuracy``, ``auc`` (= ``roc_auc``), ``macro_auc``, ``macro_sensitivity``,
    ``macro_specificity``, ``macro_precision``, ``macro_f1``, with two classes ``sensitivity``, ``specificity``,
    ``precision``, ``f1`` and ``threshold``, and per class ``<class>_sensitivity``, ``_specificity``,
    ``_precision``, ``_f1``, ``_auc`` (class names reduced to letters, digits, ``_-.``). NaN values are kept
    (the tracker skips them).

    Args:
        result: a :func:`classification_metrics` result.
        prefix: prepended to every key, e.g. ``"test_"``.

    Returns:
        ``{key: float}``.

    Raises:
        KeyError: ``result`` lacks a key of a :func:`classification_metrics` result.
    """
    out = {"accuracy": result["accuracy"], "balanced_accuracy": result["balanced_accuracy"],
           "auc": result["roc_auc"], "macro_auc": result["macro_roc_auc"]}
    for k in _MACRO.values():
        out[k] = result[k]
    if result["num_classes"] == 2:
        for k in ("sensitivity", "specificity", "precision", "f1", "threshold"):
            out[k] = result[k]
    for cls, vals in result["per_class"].items():
        for k in ("sensitivity", "specificity", "precision", "f1"):
            out[f"{_safe_name(cls)}_{k}"] = vals[k]
        out[f"{_safe_name(cls)}_auc"] = vals["roc_auc"]
    return {prefix + k: float(v) for k, v in out.items()}


def mean_cross_entropy(y_true: Any, y_prob: Any) -> float:
    """Mean unweighted cross-entropy ``-log p(true class)`` over samples, in nats.

    Probabilities are clipped to ``[1e-12, 1]`` before the logarithm, so a confident wrong prediction costs at
    most ``-log(1e-12) = 27.6``. This is the validation ``loss`` the classification handlers report.

    Args:
        y_true: true class indices, shape ``(N,)``, integer (or integral float) in ``[0, C)``.
        y_prob: class probabilities (after softmax), shape ``(N, C)``, float.

    Returns:
        The mean as a Python float.

    Raises:
        ValueError: ``y_prob`` is not 2-D or its number of rows differs from ``y_true``'s length.
        IndexError: a label is outside ``[0, C)``.
    """
    probs = to_numpy(y_prob)
    labels = to_numpy(y_true).astype(np.int64)
    if probs.ndim != 2 or labels.shape != (probs.shape[0],):
        raise ValueError(f"mean_cross_entropy: expected y_prob (N, C) and y_true (N,), got "
                         f"{tuple(probs.shape)} and {tuple(labels.shape)}.")
    p_true = probs[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(p_true, 1e-12, 1.0)).mean())
