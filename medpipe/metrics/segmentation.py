"""Segmentation metrics of one image: Dice, pixel accuracy and the ISBI-2012 EM scores V-Rand / V-Info.

Plain numpy / scikit-image; every result is a Python ``float`` (or a dict of them), so it can be written with
``json.dumps`` or logged to MLflow as is. Torch tensors are accepted anywhere an array is (converted with
:func:`medpipe.metrics.arrays.to_numpy`); this module does not import torch.

Binary masks follow the ISBI-2012 EM membrane challenge convention: ``1`` = cell interior, ``0`` = membrane
(boundary).

**Variant.** ``v_rand_unthinned`` / ``v_info_unthinned`` (and :func:`rand_and_info_scores`) here are the
*foreground-restricted V-Rand / V-Info without border thinning, at one threshold*: the binary prediction is scored
as given. The challenge leaderboard additionally thinned the predicted membranes to 1 pixel and took the best score
over the thresholds 0.0, 0.1, ..., 0.9 of the **cell** probability map; that official protocol is
:func:`medpipe.metrics.isbi2012.isbi2012_scores` (medpipe's ``v_rand`` / ``v_info`` metrics). Numbers from this
module are not leaderboard numbers.

References:
    - I. Arganda-Carreras, S. C. Turaga, D. R. Berger, et al., "Crowdsourcing the creation of image
      segmentation algorithms for connectomics", Front. Neuroanat. 9:142, 2015. doi:10.3389/fnana.2015.00142
      (the ISBI 2012 EM segmentation challenge).
    - Reference implementation of the challenge scores: Fiji ``Trainable_Segmentation``,
      ``trainableSegmentation.metrics.RandError.foregroundRestrictedStatsN2`` and
      ``VariationOfInformation.foregroundRestrictedFscore``.
    - L. R. Dice, "Measures of the amount of ecologic association between species", Ecology 26(3):297-302, 1945.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from skimage import measure
from skimage.metrics import contingency_table, variation_of_information

from medpipe.metrics.arrays import as_binary_mask, as_int_labels, check_same_shape, to_numpy

logger = logging.getLogger(__name__)

__all__ = [
    "dice_score",
    "pixel_accuracy",
    "rand_and_info_scores",
    "segmentation_metrics",
    "v_rand_unthinned",
    "v_info_unthinned",
]

_PRED_BACKGROUND_MODES = ("singletons", "segment")
_SCORE_KEYS = ("v_rand", "v_info", "rand_error", "v_rand_split", "v_rand_merge", "v_info_split", "v_info_merge")


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
    p = as_int_labels(pred, "pred", num_classes)
    lab = as_int_labels(label, "label", num_classes)
    check_same_shape(p, lab, "pred", "label")
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
    p, lab = to_numpy(pred), to_numpy(label)
    check_same_shape(p, lab, "pred", "label")
    if p.size == 0:
        raise ValueError("pixel_accuracy: pred and label are empty.")
    return float(np.mean(p == lab))


def _entropy_bits(counts: np.ndarray) -> float:
    """Shannon entropy in bits of the distribution given by non-negative ``counts``."""
    counts = counts[counts > 0].astype(np.float64)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def _rand_scores(table: Any) -> tuple[float, float, float, np.ndarray, np.ndarray]:
    """``(v_rand_split, v_rand_merge, v_rand, s_counts, t_counts)`` of a sparse contingency table
    (rows = ground truth T, columns = prediction S), with the challenge's ``n^2`` normalisation."""
    t_counts = np.asarray(table.sum(axis=1), dtype=np.float64).ravel()
    s_counts = np.asarray(table.sum(axis=0), dtype=np.float64).ravel()
    sum_p2 = float(np.square(table.data, dtype=np.float64).sum())
    sum_s2 = float(np.square(s_counts).sum())
    sum_t2 = float(np.square(t_counts).sum())
    return sum_p2 / sum_t2, sum_p2 / sum_s2, 2.0 * sum_p2 / (sum_s2 + sum_t2), s_counts, t_counts


def _info_scores(gt_seg: np.ndarray, pred_seg: np.ndarray, s_counts: np.ndarray,
                 t_counts: np.ndarray) -> tuple[float, float, float]:
    """``(v_info_split, v_info_merge, v_info)`` of two segmentations restricted to ground-truth label > 0."""
    h_s = _entropy_bits(s_counts)
    h_t = _entropy_bits(t_counts)
    # skimage returns [H(image1 | image0), H(image0 | image1)] in bits: image0 = ground truth T, image1 = prediction
    # S; ignore_labels masks ground-truth label 0 exactly as the contingency table does. (Its `table=` argument
    # cannot be used: skimage 0.26 shape-checks the absent images.)
    h_s_given_t, _ = variation_of_information(gt_seg, pred_seg, ignore_labels=[0])
    mutual_info = float(np.clip(h_s - h_s_given_t, 0.0, min(h_s, h_t)))
    v_info_split = 1.0 if h_s == 0 else mutual_info / h_s
    v_info_merge = 1.0 if h_t == 0 else mutual_info / h_t
    v_info = 1.0 if h_s == 0 and h_t == 0 else 2.0 * mutual_info / (h_s + h_t)
    return v_info_split, v_info_merge, v_info


def _check_rand_options(connectivity: int, pred_background: str) -> None:
    if connectivity not in (1, 2):
        raise ValueError(f"connectivity must be 1 (4-neighbourhood) or 2 (8-neighbourhood), got {connectivity!r}.")
    if pred_background not in _PRED_BACKGROUND_MODES:
        raise ValueError(
            f"pred_background must be one of {list(_PRED_BACKGROUND_MODES)}, got {pred_background!r}."
        )


def rand_and_info_scores(
    pred_interior: Any,
    label_interior: Any,
    *,
    connectivity: int = 1,
    pred_background: str = "singletons",
) -> dict[str, float]:
    """Foreground-restricted V-Rand and V-Info without border thinning, at one threshold (ISBI-2012 EM challenge).

    Implements V-Rand and V-Info of Arganda-Carreras et al. 2015 ("Crowdsourcing the creation of image
    segmentation algorithms for connectomics", Front. Neuroanat. 9:142; the ISBI 2012 EM segmentation challenge),
    as computed by the challenge's reference code (Fiji ``Trainable_Segmentation``:
    ``RandError.foregroundRestrictedStatsN2``, ``VariationOfInformation.foregroundRestrictedFscore``), on the
    binary prediction as given (see "Variant" below).

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
      and ``V_Info = 2 I(S;T) / (H(S) + H(T))``, where ``H`` are entropies (bits) of the marginals and
      ``I(S;T) = H(S) - H(S|T)``; the conditional entropy comes from
      ``skimage.metrics.variation_of_information`` on the same restricted table. A score whose entropy is 0
      (a single segment, so no split / merge error of that kind) is defined as 1.0; when both entropies are 0
      both sides are one identical segment and ``V_Info = 1.0`` (the challenge code returns 0 there).
    - ``rand_error = 1 - V_Rand`` (the "adapted Rand error" of the challenge leaderboard).

    **Variant.** Foreground-restricted, *no border thinning, one threshold*: the challenge thresholded a cell
    probability map at 0.0, 0.1, ..., 0.9, thinned the predicted membranes to 1 pixel with a watershed, and
    reported the best score over thresholds (:func:`medpipe.metrics.isbi2012.isbi2012_scores`); here the binary
    prediction is scored as given, so the numbers are not comparable with the leaderboard (a prediction whose
    membranes are one pixel thicker than the truth scores about 0.94 here and 0.999 officially).

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
    _check_rand_options(connectivity, pred_background)
    pred = as_binary_mask(pred_interior, "pred_interior")
    gt = as_binary_mask(label_interior, "label_interior")
    check_same_shape(pred, gt, "pred_interior", "label_interior")

    gt_seg = measure.label(gt, connectivity=connectivity).astype(np.int64)
    pred_seg = measure.label(pred, connectivity=connectivity).astype(np.int64)
    fg = gt_seg > 0
    if int(fg.sum()) == 0:
        logger.warning("rand_and_info_scores: the ground truth has no cell-interior pixel; all scores are NaN.")
        return {k: float("nan") for k in _SCORE_KEYS}

    if pred_background == "singletons":
        lonely = fg & (pred_seg == 0)
        pred_seg[lonely] = pred_seg.max() + 1 + np.arange(int(lonely.sum()), dtype=np.int64)

    # counts n_ij over ground-truth foreground pixels; rows = ground truth T, columns = prediction S
    table = contingency_table(gt_seg, pred_seg, ignore_labels=[0], sparse_type="array")
    v_rand_split, v_rand_merge, v_rand_, s_counts, t_counts = _rand_scores(table)
    v_info_split, v_info_merge, v_info_ = _info_scores(gt_seg, pred_seg, s_counts, t_counts)
    return {
        "v_rand": float(v_rand_),
        "v_info": float(v_info_),
        "rand_error": float(1.0 - v_rand_),
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
        ``include_background=False``), ``pixel_accuracy``, ``v_rand_unthinned`` and ``v_info_unthinned``
        (:func:`rand_and_info_scores` with its challenge defaults: 4-connectivity, predicted membrane pixels inside
        ground-truth cells as singletons; foreground-restricted, without border thinning, at one threshold; the
        official scores need a probability map: :func:`medpipe.metrics.isbi2012.isbi2012_scores`).

    Raises:
        ValueError: the masks are not 2-D binary masks of the same shape.
    """
    p = as_binary_mask(pred, "pred")
    lab = as_binary_mask(label, "label")
    check_same_shape(p, lab, "pred", "label")
    scores = rand_and_info_scores(p, lab)
    return {
        "dice": dice_score(p, lab, include_background=False, num_classes=2),
        "pixel_accuracy": pixel_accuracy(p, lab),
        "v_rand_unthinned": scores["v_rand"],
        "v_info_unthinned": scores["v_info"],
    }


# one-entry memo: a validation loop asks for v_rand_unthinned and then v_info_unthinned of the same image; the connected-component
# labelling and the contingency table are then computed once.
_last_pair: dict[str, Any] = {"pred": None, "label": None, "scores": None}


def _index_pair_scores(pred: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """:func:`rand_and_info_scores` of ``pred > 0`` and ``label > 0``, reused for the same (equal) pair of arrays."""
    if not (_last_pair["pred"] is not None and np.array_equal(_last_pair["pred"], pred)
            and np.array_equal(_last_pair["label"], label)):
        _last_pair.update(pred=pred, label=label, scores=rand_and_info_scores(pred > 0, label > 0))
    return _last_pair["scores"]  # type: ignore[return-value]


def v_rand_unthinned(pred: np.ndarray, label: np.ndarray) -> float:
    """Foreground-restricted V-Rand (no border thinning, one threshold) of one image of class indices.

    Every class ``> 0`` counts as cell interior, ``0`` as membrane (ISBI 2012, Arganda-Carreras et al. 2015); the
    score is ``rand_and_info_scores(pred > 0, label > 0)["v_rand"]`` with the challenge defaults. The last
    image pair's scores are kept, so a following :func:`v_info_unthinned` of the same arrays costs no second
    labelling. This is not the official (thinned, threshold-swept) score: see
    :func:`medpipe.metrics.isbi2012.isbi2012_scores`.

    Args:
        pred: predicted class indices, shape ``(H, W)``, integer dtype.
        label: ground-truth class indices, same shape.

    Returns:
        V-Rand in ``[0, 1]`` (higher is better), NaN when ``label`` has no pixel ``> 0``.

    Raises:
        ValueError: the arrays are not 2-D or their shapes differ.
    """
    return _index_pair_scores(pred, label)["v_rand"]


def v_info_unthinned(pred: np.ndarray, label: np.ndarray) -> float:
    """Foreground-restricted V-Info (no border thinning, one threshold) of one image of class indices.

    As :func:`v_rand_unthinned` (same conversion, same memo), returning
    ``rand_and_info_scores(pred > 0, label > 0)["v_info"]`` (Arganda-Carreras et al. 2015, ISBI 2012).

    Args:
        pred: predicted class indices, shape ``(H, W)``, integer dtype.
        label: ground-truth class indices, same shape.

    Returns:
        V-Info in ``[0, 1]`` (higher is better), NaN when ``label`` has no pixel ``> 0``.

    Raises:
        ValueError: the arrays are not 2-D or their shapes differ.
    """
    return _index_pair_scores(pred, label)["v_info"]
