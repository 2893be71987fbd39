"""Evaluation metrics: segmentation (Dice, pixel accuracy, ISBI-2012 V-Rand / V-Info) and classification.

Everything here is plain numpy / scikit-image / scikit-learn and returns plain Python ``float``/``int``/``list``
values, so a result dict can be written with ``json.dumps`` or logged to MLflow as is. Torch tensors are accepted
anywhere an array is (they are converted with ``np.asarray(x.detach().cpu())``); torch itself is never imported.

Segmentation metrics follow the ISBI-2012 EM membrane challenge convention for binary masks:
``1`` = cell interior, ``0`` = membrane (boundary).

References:
    - I. Arganda-Carreras, S. C. Turaga, D. R. Berger, et al., "Crowdsourcing the creation of image
      segmentation algorithms for connectomics", Front. Neuroanat. 9:142, 2015. doi:10.3389/fnana.2015.00142
    - Reference implementation of the challenge scores: Fiji ``Trainable_Segmentation``,
      ``trainableSegmentation.metrics.RandError.foregroundRestrictedStatsN2`` and
      ``VariationOfInformation.foregroundRestrictedFscore``.
    - W. J. Youden, "Index for rating diagnostic tests", Cancer 3(1):32-35, 1950.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from skimage import measure
from skimage.metrics import contingency_table, variation_of_information
from sklearn import metrics as skm

logger = logging.getLogger(__name__)

__all__ = [
    "dice_score",
    "pixel_accuracy",
    "rand_and_info_scores",
    "segmentation_metrics",
    "confusion_matrix",
    "classification_metrics",
    "youden_threshold",
    "select_metric",
    "flat_classification_metrics",
]

_PRED_BACKGROUND_MODES = ("singletons", "segment")


# ----------------------------------------------------------------------------------------------------------------
# input helpers
# ----------------------------------------------------------------------------------------------------------------
def _to_numpy(x: Any) -> np.ndarray:
    """Convert a numpy array, list or torch tensor (duck-typed, torch is not imported) to a numpy array."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
    return np.asarray(x)


def _describe_values(arr: np.ndarray, limit: int = 8) -> str:
    values = np.unique(arr)
    shown = ", ".join(repr(v.item()) for v in values[:limit])
    return f"[{shown}{', ...' if values.size > limit else ''}]"


def _as_int_labels(x: Any, name: str, num_classes: int) -> np.ndarray:
    """Return ``x`` as an int64 array with values in ``[0, num_classes)`` or raise ``ValueError``."""
    arr = _to_numpy(x)
    if arr.dtype == bool:
        arr = arr.astype(np.int64)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name}: expected an integer label array, got dtype {arr.dtype}.")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(
                f"{name}: expected integer class labels, found non-integer values {_describe_values(arr)}; "
                "take the argmax / threshold of probabilities first."
            )
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(
            f"{name}: labels must be in [0, {num_classes - 1}] for num_classes={num_classes}, "
            f"found values {_describe_values(arr)}."
        )
    return arr


def _as_binary_mask(x: Any, name: str) -> np.ndarray:
    """Return ``x`` as a 2-D bool mask (``True`` = cell interior) or raise ``ValueError``."""
    arr = _to_numpy(x)
    if arr.ndim != 2:
        raise ValueError(
            f"{name}: expected a 2-D (H, W) mask, got shape {tuple(arr.shape)}; squeeze batch/channel "
            "dimensions, and score 3-D stacks slice by slice (the ISBI-2012 challenge averaged per-slice scores)."
        )
    if arr.dtype == bool:
        return arr
    if not np.all(np.isin(arr, (0, 1))):
        raise ValueError(
            f"{name}: expected a binary mask with values in {{0, 1}} (1 = cell interior), found values "
            f"{_describe_values(arr)}; threshold first, e.g. `prob > 0.5` or `png > 127` for ISBI label PNGs."
        )
    return arr.astype(bool)


def _check_same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {a.shape} and {b.shape}.")


# ----------------------------------------------------------------------------------------------------------------
# segmentation metrics
# ----------------------------------------------------------------------------------------------------------------
def dice_score(pred: Any, label: Any, *, include_background: bool = False, num_classes: int = 2) -> float:
    """Mean Dice coefficient over classes of two integer label masks.

    For each class ``c`` the Dice coefficient is ``2 |P_c ∩ L_c| / (|P_c| + |L_c|)`` (Dice 1945), where ``P_c`` and
    ``L_c`` are the pixels labelled ``c`` in ``pred`` and ``label``. The result is the unweighted mean over the
    scored classes. A class absent from both masks (empty-empty) scores ``1.0``: nothing to find and nothing
    wrongly found; a class absent from ``label`` but present in ``pred`` scores ``0.0``. This equals
    ``monai.metrics.DiceMetric(include_background=..., ignore_empty=False)`` on one-hot inputs of one image.

    Args:
        pred: predicted class indices, shape ``(H, W)`` (any shape works, equal to ``label``'s), integer dtype
            (bool and integral floats are accepted), values in ``[0, num_classes)``.
        label: ground-truth class indices, same shape and value range as ``pred``.
        include_background: whether class ``0`` is scored. For ISBI-2012 (0 = membrane, 1 = cell interior) the
            default ``False`` gives the Dice of the cell-interior class.
        num_classes: number of classes ``C`` (>= 1).

    Returns:
        Mean Dice in ``[0, 1]`` as a Python float.

    Raises:
        ValueError: shapes differ, values are outside ``[0, num_classes)`` or not integers, or no class is left
            to score (``num_classes=1`` with ``include_background=False``).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    classes = range(0 if include_background else 1, num_classes)
    if len(classes) == 0:
        raise ValueError(
            "dice_score: no class to score with num_classes=1 and include_background=False; "
            "set include_background=True or num_classes >= 2."
        )
    p = _as_int_labels(pred, "pred", num_classes)
    lab = _as_int_labels(label, "label", num_classes)
    _check_same_shape(p, lab, "pred", "label")
    scores = []
    for c in classes:
        pc, lc = p == c, lab == c
        denom = int(pc.sum()) + int(lc.sum())
        scores.append(1.0 if denom == 0 else 2.0 * int(np.logical_and(pc, lc).sum()) / denom)
    return float(np.mean(scores))


def pixel_accuracy(pred: Any, label: Any) -> float:
    """Fraction of pixels whose predicted label equals the ground-truth label.

    Args:
        pred: predicted labels, any shape (typically ``(H, W)``), any dtype comparable with ``label``.
        label: ground-truth labels, same shape as ``pred``.

    Returns:
        ``mean(pred == label)`` in ``[0, 1]`` as a Python float.

    Raises:
        ValueError: shapes differ or the arrays are empty.
    """
    p, lab = _to_numpy(pred), _to_numpy(label)
    _check_same_shape(p, lab, "pred", "label")
    if p.size == 0:
        raise ValueError("pixel_accuracy: pred and label are empty.")
    return float(np.mean(p == lab))


def _f_score(a: float, b: float) -> float:
    return 0.0 if a + b == 0 else 2.0 * a * b / (a + b)


def _entropy_bits(counts: np.ndarray) -> float:
    counts = counts[counts > 0].astype(np.float64)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def rand_and_info_scores(
    pred_interior: Any,
    label_interior: Any,
    *,
    connectivity: int = 1,
    pred_background: str = "singletons",
) -> dict[str, float]:
    """Foreground-restricted Rand and information-theoretic scores of the ISBI-2012 EM challenge.

    Implements V-Rand and V-Info of Arganda-Carreras et al. 2015 ("Crowdsourcing the creation of image
    segmentation algorithms for connectomics", Front. Neuroanat. 9:142), as computed by the challenge's reference
    code (Fiji ``Trainable_Segmentation``: ``RandError.foregroundRestrictedStatsN2``,
    ``VariationOfInformation.foregroundRestrictedFscore``).

    **Segmentations.** Both binary cell-interior masks are turned into segmentations by connected-component
    labelling (``skimage.measure.label``). ``connectivity=1`` (4-neighbourhood, the default) is what the challenge
    code uses (``Utils.connectedComponents(..., 4)``); it is also the topologically consistent choice, since a
    1-pixel membrane drawn with diagonal steps separates two cells under 4-connectivity but not under 8.

    **Foreground restriction.** Only the ``n`` pixels inside a ground-truth cell (ground-truth component label
    > 0) are counted; ground-truth membrane pixels are ignored, whatever is predicted there.

    **Predicted background.** Pixels inside a ground-truth cell that the prediction calls membrane (label 0) are,
    as in the challenge code, each treated as a *singleton* segment of their own (``pred_background=
    "singletons"``): predicted boundary pixels are never "in the same segment" as anything, so thick predicted
    membranes cost some score. ``pred_background="segment"`` instead keeps them together as one segment labelled
    0 (scikit-image's convention when only ground-truth label 0 is ignored); it is offered for comparison.

    **Formulas.** With ``p_ij`` the fraction of the ``n`` counted pixels in predicted segment ``i`` of ``S``
    and ground-truth segment ``j`` of ``T``, ``s_i = sum_j p_ij``, ``t_j = sum_i p_ij``:

    - Rand split score ``V_split^Rand = sum_ij p_ij^2 / sum_j t_j^2``, merge score
      ``V_merge^Rand = sum_ij p_ij^2 / sum_i s_i^2``, and
      ``V_Rand = 2 sum_ij p_ij^2 / (sum_i s_i^2 + sum_j t_j^2)`` (their harmonic mean, alpha = 0.5);
      a singleton contributes ``1/n^2`` to ``sum p_ij^2`` and to ``sum s_i^2``. This uses the challenge's ``n^2``
      normalisation; ``skimage.metrics.adapted_rand_error`` counts pairs of distinct pixels (``sum n_ij^2 - n``
      over counts) instead, which differs by ``O(1/segment size)``, so it is not used for the score.
    - Information split score ``V_split^Info = I(S;T) / H(S)``, merge score ``V_merge^Info = I(S;T) / H(T)``
      and ``V_Info = 2 I(S;T) / (H(S) + H(T))``, where ``H`` are entropies of the marginals and
      ``I(S;T) = H(S) - H(S|T)``; the conditional entropy comes from
      ``skimage.metrics.variation_of_information`` on the same restricted table. A score whose entropy is 0
      (a single segment, so no split / merge error of that kind) is defined as 1.0; when both entropies are 0
      both sides are one identical segment and ``V_Info = 1.0`` (the challenge code returns 0 there).
    - ``rand_error = 1 - V_Rand`` (the "adapted Rand error" of the challenge leaderboard).

    Differences from the challenge leaderboard numbers: the challenge thresholded a membrane *probability* map at
    0.0, 0.1, ..., 0.9, thinned the predicted membranes to 1 pixel with a watershed, and reported the best score
    over thresholds; here the binary prediction is scored as given (no thinning, no threshold sweep).

    Args:
        pred_interior: predicted cell-interior mask, shape ``(H, W)``, bool or integer with values in
            ``{0, 1}`` (1 = cell interior, 0 = membrane).
        label_interior: ground-truth cell-interior mask, same shape and encoding (ISBI-2012 label PNG: ``png > 127``).
        connectivity: ``skimage.measure.label`` connectivity, 1 = 4-neighbourhood (challenge default),
            2 = 8-neighbourhood.
        pred_background: ``"singletons"`` (challenge, default) or ``"segment"``, see above.

    Returns:
        dict with Python floats ``v_rand``, ``v_info``, ``rand_error`` (``1 - v_rand``), ``v_rand_split``,
        ``v_rand_merge``, ``v_info_split``, ``v_info_merge``, all in ``[0, 1]`` (higher is better, except
        ``rand_error``). All are NaN, with a logged warning, when the ground truth has no cell-interior pixel.

    Raises:
        ValueError: masks are not 2-D binary masks of the same shape, or an option is not one of the allowed values.
    """
    if connectivity not in (1, 2):
        raise ValueError(f"connectivity must be 1 (4-neighbourhood) or 2 (8-neighbourhood), got {connectivity!r}.")
    if pred_background not in _PRED_BACKGROUND_MODES:
        raise ValueError(
            f"pred_background must be one of {list(_PRED_BACKGROUND_MODES)}, got {pred_background!r}."
        )
    pred = _as_binary_mask(pred_interior, "pred_interior")
    gt = _as_binary_mask(label_interior, "label_interior")
    _check_same_shape(pred, gt, "pred_interior", "label_interior")

    gt_seg = measure.label(gt, connectivity=connectivity).astype(np.int64)
    pred_seg = measure.label(pred, connectivity=connectivity).astype(np.int64)
    fg = gt_seg > 0
    n = int(fg.sum())
    keys = ("v_rand", "v_info", "rand_error", "v_rand_split", "v_rand_merge", "v_info_split", "v_info_merge")
    if n == 0:
        logger.warning("rand_and_info_scores: the ground truth has no cell-interior pixel; all scores are NaN.")
        return {k: float("nan") for k in keys}

    if pred_background == "singletons":
        lonely = fg & (pred_seg == 0)
        pred_seg[lonely] = pred_seg.max() + 1 + np.arange(int(lonely.sum()), dtype=np.int64)

    # counts n_ij over ground-truth foreground pixels; rows = ground truth T, columns = prediction S
    table = contingency_table(gt_seg, pred_seg, ignore_labels=[0], sparse_type="array")
    t_counts = np.asarray(table.sum(axis=1), dtype=np.float64).ravel()
    s_counts = np.asarray(table.sum(axis=0), dtype=np.float64).ravel()
    sum_p2 = float(np.square(table.data, dtype=np.float64).sum())
    sum_s2 = float(np.square(s_counts).sum())
    sum_t2 = float(np.square(t_counts).sum())
    v_rand_split = sum_p2 / sum_t2
    v_rand_merge = sum_p2 / sum_s2
    v_rand = 2.0 * sum_p2 / (sum_s2 + sum_t2)

    h_s = _entropy_bits(s_counts)
    h_t = _entropy_bits(t_counts)
    # skimage returns [H(image1 | image0), H(image0 | image1)] in bits: image0 = ground truth T, image1 = prediction
    # S; ignore_labels masks ground-truth label 0 exactly as above. (Its `table=` argument cannot be used: skimage
    # 0.26 shape-checks the absent images.)
    h_s_given_t, _ = variation_of_information(gt_seg, pred_seg, ignore_labels=[0])
    mutual_info = float(np.clip(h_s - h_s_given_t, 0.0, min(h_s, h_t)))
    v_info_split = 1.0 if h_s == 0 else mutual_info / h_s
    v_info_merge = 1.0 if h_t == 0 else mutual_info / h_t
    v_info = 1.0 if h_s == 0 and h_t == 0 else 2.0 * mutual_info / (h_s + h_t)

    return {
        "v_rand": float(v_rand),
        "v_info": float(v_info),
        "rand_error": float(1.0 - v_rand),
        "v_rand_split": float(v_rand_split),
        "v_rand_merge": float(v_rand_merge),
        "v_info_split": float(v_info_split),
        "v_info_merge": float(v_info_merge),
    }


def segmentation_metrics(pred: Any, label: Any) -> dict[str, float]:
    """Dice, pixel accuracy, V-Rand and V-Info of one binary ISBI-2012 style mask pair.

    Args:
        pred: predicted mask, shape ``(H, W)``, bool or integer in ``{0, 1}`` (1 = cell interior, 0 = membrane).
        label: ground-truth mask, same shape and encoding.

    Returns:
        dict of Python floats: ``dice`` (Dice of the interior class, :func:`dice_score` with
        ``include_background=False``), ``pixel_accuracy``, ``v_rand`` and ``v_info``
        (:func:`rand_and_info_scores` with its challenge defaults: 4-connectivity, predicted membrane pixels
        inside ground-truth cells as singletons).

    Raises:
        ValueError: the masks are not 2-D binary masks of the same shape.
    """
    p = _as_binary_mask(pred, "pred")
    lab = _as_binary_mask(label, "label")
    _check_same_shape(p, lab, "pred", "label")
    scores = rand_and_info_scores(p, lab)
    return {
        "dice": dice_score(p, lab, include_background=False, num_classes=2),
        "pixel_accuracy": pixel_accuracy(p, lab),
        "v_rand": scores["v_rand"],
        "v_info": scores["v_info"],
    }


# ----------------------------------------------------------------------------------------------------------------
# classification metrics
# ----------------------------------------------------------------------------------------------------------------
def _as_label_vector(x: Any, name: str, num_classes: int) -> np.ndarray:
    arr = _to_numpy(x)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D (N,) array of class indices, got shape {tuple(arr.shape)}.")
    if arr.size == 0:
        raise ValueError(f"{name}: no samples.")
    return _as_int_labels(arr, name, num_classes)


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
    _check_same_shape(yt, yp, "y_true", "y_pred")
    return skm.confusion_matrix(yt, yp, labels=np.arange(num_classes)).astype(np.int64)


def _as_probabilities(y_prob: Any, n: int) -> np.ndarray:
    prob = _to_numpy(y_prob).astype(np.float64)
    if prob.ndim == 1:
        prob = np.stack([1.0 - prob, prob], axis=1)
    if prob.ndim != 2 or prob.shape[1] < 2:
        raise ValueError(
            f"y_prob: expected shape (N, C) with C >= 2 (or (N,) probabilities of class 1), "
            f"got {tuple(_to_numpy(y_prob).shape)}."
        )
    if prob.shape[0] != n:
        raise ValueError(f"y_prob has {prob.shape[0]} rows but y_true has {n} samples.")
    if not np.all(np.isfinite(prob)) or prob.min() < 0.0 or prob.max() > 1.0:
        raise ValueError(
            f"y_prob: expected probabilities in [0, 1], found range [{np.nanmin(prob):.4g}, {np.nanmax(prob):.4g}]"
            f"{' with NaN/inf' if not np.all(np.isfinite(prob)) else ''}; apply softmax/sigmoid to logits first."
        )
    return prob


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
    ``sklearn.metrics.balanced_accuracy_score`` (mean recall over the classes present in ``y_true``).

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
    yt_raw = _to_numpy(y_true)
    if yt_raw.ndim != 1:
        raise ValueError(f"y_true: expected a 1-D (N,) array of class indices, got shape {tuple(yt_raw.shape)}.")
    prob = _as_probabilities(y_prob, yt_raw.shape[0])
    n, num_classes = prob.shape
    yt = _as_label_vector(yt_raw, "y_true", num_classes)

    if class_names is None:
        names = [str(c) for c in range(num_classes)]
    else:
        names = [str(c) for c in class_names]
        if len(names) != num_classes or len(set(names)) != num_classes:
            raise ValueError(
                f"class_names: expected {num_classes} unique names (one per column of y_prob), got {names}."
            )

    if num_classes == 2:
        thr = 0.5 if threshold is None else float(threshold)
        if not 0.0 <= thr <= 1.0:
            raise ValueError(f"threshold must be a probability in [0, 1], got {threshold!r}.")
        yp = (prob[:, 1] >= thr).astype(np.int64)
    else:
        if threshold is not None:
            raise ValueError(
                f"threshold={threshold!r} only applies to binary problems; with {num_classes} classes the "
                "prediction is the argmax, so leave threshold=None."
            )
        thr = None
        yp = prob.argmax(axis=1).astype(np.int64)

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
    macro_auc = float(np.mean(finite_aucs)) if finite_aucs else float("nan")

    per_class = {
        name: {
            "sensitivity": float(recall[c]),
            "specificity": float(specificity[c]),
            "precision": float(precision[c]),
            "f1": float(f1[c]),
            "roc_auc": aucs[c],
            "support": int(support[c]),
        }
        for c, name in enumerate(names)
    }
    result: dict[str, Any] = {
        "num_samples": int(n),
        "num_classes": int(num_classes),
        "class_names": names,
        "threshold": thr,
        "accuracy": float(skm.accuracy_score(yt, yp)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(yt, yp)),
        "macro_sensitivity": float(np.mean(recall)),
        "macro_specificity": float(np.mean(specificity)),
        "macro_precision": float(np.mean(precision)),
        "macro_f1": float(np.mean(f1)),
        "roc_auc": aucs[1] if num_classes == 2 else macro_auc,
        "macro_roc_auc": macro_auc,
    }
    if num_classes == 2:
        result.update(
            sensitivity=float(recall[1]),
            specificity=float(specificity[1]),
            precision=float(precision[1]),
            f1=float(f1[1]),
        )
    result["per_class"] = per_class
    result["confusion_matrix"] = cm.tolist()
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
    score = _to_numpy(prob_positive).astype(np.float64)
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


_MACRO = {"sensitivity": "macro_sensitivity", "specificity": "macro_specificity", "precision": "macro_precision",
          "f1": "macro_f1"}


def select_metric(result: dict[str, Any], name: str) -> float:
    """One configured metric (:class:`medpipe.config.MetricsConfig` name) from a :func:`classification_metrics`
    result: ``auc`` is ``roc_auc``; with two classes ``sensitivity``/``specificity``/``precision``/``f1`` are
    those of the positive class (index 1), with more classes their macro means.

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
