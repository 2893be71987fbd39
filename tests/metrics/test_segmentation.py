"""Tests for medpipe.metrics.segmentation: hand-computed cases, MONAI / sklearn cross-checks, one real ISBI-2012
label."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage as ndi
from scipy.stats import entropy
from sklearn.metrics import mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

from medpipe.metrics import dice_score, pixel_accuracy, rand_and_info_scores, segmentation_metrics

LOG2_3 = math.log2(3)

# ---------------------------------------------------------------------------------------------------------------
# Dice / pixel accuracy
# ---------------------------------------------------------------------------------------------------------------
PRED_4X4 = np.array(
    [
        [0, 0, 1, 1],
        [0, 1, 1, 1],
        [0, 0, 1, 1],
        [0, 0, 0, 1],
    ]
)
LABEL_4X4 = np.array(
    [
        [0, 0, 1, 1],
        [0, 0, 1, 1],
        [0, 1, 1, 1],
        [0, 0, 1, 1],
    ]
)


def test_dice_hand_computed_4x4():
    # class 1: |P| = 2+3+2+1 = 8, |L| = 2+2+3+2 = 9, |P∩L| = 2+2+2+1 = 7 -> 14/17
    # class 0: |P| = 8, |L| = 7, |P∩L| = 16 - |P1 ∪ L1| = 16 - (8+9-7) = 6 -> 12/15
    assert dice_score(PRED_4X4, LABEL_4X4) == pytest.approx(14 / 17)
    assert dice_score(PRED_4X4, LABEL_4X4, include_background=True) == pytest.approx((14 / 17 + 12 / 15) / 2)
    # agreeing pixels: 7 (class 1) + 6 (class 0) = 13 of 16
    assert pixel_accuracy(PRED_4X4, LABEL_4X4) == pytest.approx(13 / 16)


def test_dice_empty_cases_and_torch_input():
    zeros = np.zeros((4, 4), dtype=np.int64)
    assert dice_score(zeros, zeros) == 1.0  # class 1 absent from both: defined as 1.0
    assert dice_score(LABEL_4X4, zeros) == 0.0  # predicted but absent from the label
    assert dice_score(torch.from_numpy(PRED_4X4), torch.from_numpy(LABEL_4X4)) == pytest.approx(14 / 17)


def test_dice_matches_monai_dice_metric():
    from monai.metrics import DiceMetric

    rng = np.random.default_rng(0)
    num_classes = 4
    label = rng.integers(0, 3, size=(24, 24))  # class 3 absent from both -> empty-empty case included
    pred = np.where(rng.random((24, 24)) < 0.7, label, rng.integers(0, 3, size=(24, 24)))

    def one_hot(x):
        return torch.nn.functional.one_hot(torch.from_numpy(x), num_classes).permute(2, 0, 1)[None].float()

    for include_background in (False, True):
        metric = DiceMetric(include_background=include_background, reduction="mean", ignore_empty=False)
        metric(y_pred=one_hot(pred), y=one_hot(label))
        expected = float(metric.aggregate())
        ours = dice_score(pred, label, include_background=include_background, num_classes=num_classes)
        assert ours == pytest.approx(expected, abs=1e-6)
        assert 0.3 < ours < 1.0


def test_dice_and_accuracy_reject_bad_input():
    with pytest.raises(ValueError, match="labels must be in"):
        dice_score(PRED_4X4 * 2, LABEL_4X4)
    with pytest.raises(ValueError, match="same shape"):
        dice_score(PRED_4X4, LABEL_4X4[:3])
    with pytest.raises(ValueError, match="non-integer"):
        dice_score(PRED_4X4 * 0.5, LABEL_4X4)
    with pytest.raises(ValueError, match="same shape"):
        pixel_accuracy(PRED_4X4, LABEL_4X4.T[:2])


# ---------------------------------------------------------------------------------------------------------------
# V-Rand / V-Info (ISBI-2012)
# ---------------------------------------------------------------------------------------------------------------
def test_perfect_segmentation_scores_one():
    gt = np.array([[1, 1, 0, 1, 1], [1, 1, 0, 1, 1], [0, 0, 0, 0, 0], [1, 1, 0, 1, 1]])
    scores = rand_and_info_scores(gt, gt)
    assert scores["v_rand"] == pytest.approx(1.0)
    assert scores["v_info"] == pytest.approx(1.0)
    assert scores["rand_error"] == pytest.approx(0.0)


def test_merge_of_two_cells_hand_computed():
    # 2 x 8: GT cells A (cols 0-1), B (cols 3-4), C (cols 6-7), 4 px each; GT membrane at cols 2 and 5.
    # The prediction fills col 2, merging A and B into X; C is predicted exactly (Y).
    gt = np.array([[1, 1, 0, 1, 1, 0, 1, 1]] * 2)
    pred = np.array([[1, 1, 1, 1, 1, 0, 1, 1]] * 2)
    # Restricted to the n = 12 GT-cell pixels, contingency counts: A->X 4, B->X 4, C->Y 4.
    #   sum n_ij^2 = 16+16+16 = 48; sum_T (GT sizes)^2 = 3*16 = 48; sum_S (pred sizes)^2 = 8^2 + 4^2 = 80
    #   V_rand = 2*48 / (48 + 80) = 0.75, split = 48/48 = 1, merge = 48/80 = 0.6
    # Info (bits): H(T) = log2 3; H(S) = H(2/3, 1/3) = log2 3 - 2/3; S is a function of T so I = H(S)
    #   V_info = 2 I / (H(S) + H(T)) = 2 (log2 3 - 2/3) / (2 log2 3 - 2/3) ~ 0.73368
    h_t, h_s = LOG2_3, LOG2_3 - 2 / 3
    scores = rand_and_info_scores(pred, gt)
    assert scores["v_rand"] == pytest.approx(0.75)
    assert scores["rand_error"] == pytest.approx(0.25)
    assert scores["v_rand_split"] == pytest.approx(1.0)
    assert scores["v_rand_merge"] == pytest.approx(0.6)
    assert scores["v_info"] == pytest.approx(2 * h_s / (h_s + h_t))
    assert scores["v_info"] == pytest.approx(0.7336804, abs=1e-6)
    assert scores["v_info_split"] == pytest.approx(1.0)
    assert scores["v_info_merge"] == pytest.approx(h_s / h_t)


def test_split_of_one_cell_hand_computed_with_singletons():
    # 2 x 7: GT cell A (cols 0-3, 8 px), membrane col 4, cell B (cols 5-6, 4 px); n = 12.
    # The prediction draws a membrane through A at col 2: X (cols 0-1, 4 px), Y (col 3, 2 px), Z (B, 4 px),
    # and the 2 predicted-membrane pixels inside A are singletons s1, s2 (challenge convention).
    gt = np.array([[1, 1, 1, 1, 0, 1, 1]] * 2)
    pred = np.array([[1, 1, 0, 1, 0, 1, 1]] * 2)
    # counts: A->X 4, A->Y 2, A->s1 1, A->s2 1, B->Z 4
    #   sum n_ij^2 = 16+4+1+1+16 = 38; sum_T^2 = 8^2 + 4^2 = 80; sum_S^2 = 16+4+1+1+16 = 38
    #   V_rand = 2*38 / (80 + 38) = 76/118
    # Info (bits): H(T) = H(2/3, 1/3) = log2 3 - 2/3; H(S) = H(4,2,1,1,4 / 12)
    #   = 2*(1/3)log2 3 + (1/6)log2 6 + 2*(1/12)log2 12 ~ 2.08496; T is a function of S so I = H(T)
    h_t = LOG2_3 - 2 / 3
    h_s = 2 / 3 * LOG2_3 + math.log2(6) / 6 + math.log2(12) / 6
    scores = rand_and_info_scores(pred, gt)
    assert scores["v_rand"] == pytest.approx(76 / 118)
    assert scores["v_rand_merge"] == pytest.approx(1.0)
    assert scores["v_rand_split"] == pytest.approx(38 / 80)
    assert scores["v_info"] == pytest.approx(2 * h_t / (h_s + h_t))
    assert scores["v_info_merge"] == pytest.approx(1.0)
    # With predicted membrane kept as one segment 0 instead: A->0 has count 2, so
    # sum n_ij^2 = 16+4+4+16 = 40 = sum_S^2, V_rand = 80 / (80 + 40) = 2/3
    assert rand_and_info_scores(pred, gt, pred_background="segment")["v_rand"] == pytest.approx(2 / 3)


def test_ground_truth_membrane_pixels_do_not_matter():
    # GT: cells A (cols 0-1) and B (cols 5-6) separated by a 3-px-wide membrane (cols 2-4).
    gt = np.array([[1, 1, 0, 0, 0, 1, 1]] * 3)
    pred = gt.copy()
    pred[1, 1] = 0  # one real error inside A, so scores are below 1
    base = rand_and_info_scores(pred, gt)
    assert base["v_rand"] < 1.0 and base["v_info"] < 1.0
    # change the prediction only on GT membrane, without bridging A and B
    changed = pred.copy()
    changed[:, 2] = 1  # attaches to A only
    changed[0, 4] = 1  # attaches to B only
    changed[2, 3] = 1  # isolated predicted fragment
    assert np.array_equal(changed[gt == 1], pred[gt == 1])
    assert rand_and_info_scores(changed, gt) == pytest.approx(base)


def test_four_connectivity_is_the_default():
    # Two GT cells touching only diagonally: separate under 4-connectivity, one cell under 8-connectivity.
    gt = np.array([[1, 0], [0, 1]])
    pred = np.ones((2, 2), dtype=np.int64)  # one predicted segment covering both
    # 4-conn: counts A->X 1, B->X 1: V_rand = 2*2 / (2 + 4) = 2/3; 8-conn: one cell, perfect
    assert rand_and_info_scores(pred, gt)["v_rand"] == pytest.approx(2 / 3)
    assert rand_and_info_scores(pred, gt, connectivity=2)["v_rand"] == pytest.approx(1.0)


def test_segment_mode_matches_independent_sklearn_computation():
    from skimage.measure import label as cc_label

    rng = np.random.default_rng(1)
    gt = (rng.random((40, 40)) > 0.35).astype(np.int64)
    pred = np.where(rng.random((40, 40)) < 0.9, gt, 1 - gt)
    t = cc_label(gt, connectivity=1)
    s = cc_label(pred, connectivity=1)
    keep = t > 0
    t, s = t[keep], s[keep]
    # Rand F-score with n^2 normalisation from sklearn's contingency matrix
    cont = contingency_matrix(t, s).astype(np.float64)
    sum_p2, sum_t2, sum_s2 = (cont**2).sum(), (cont.sum(1) ** 2).sum(), (cont.sum(0) ** 2).sum()
    # information F-score from sklearn mutual information and scipy entropies (nats; the ratio is base-free)
    mi = mutual_info_score(t, s)
    h_t, h_s = entropy(np.bincount(t)), entropy(np.bincount(s))
    scores = rand_and_info_scores(pred, gt, pred_background="segment")
    assert scores["v_rand"] == pytest.approx(2 * sum_p2 / (sum_s2 + sum_t2))
    assert scores["v_info"] == pytest.approx(2 * mi / (h_s + h_t))
    assert 0.2 < scores["v_rand"] < 1.0


def test_rand_info_input_validation_and_empty_ground_truth(caplog):
    gt = np.ones((4, 4), dtype=np.int64)
    with pytest.raises(ValueError, match="binary mask"):
        rand_and_info_scores(gt * 255, gt)
    with pytest.raises(ValueError, match="2-D"):
        rand_and_info_scores(gt[None], gt[None])
    with pytest.raises(ValueError, match="pred_background"):
        rand_and_info_scores(gt, gt, pred_background="ignore")
    with pytest.raises(ValueError, match="connectivity"):
        rand_and_info_scores(gt, gt, connectivity=8)
    with caplog.at_level(logging.WARNING, logger="medpipe.metrics.segmentation"):
        scores = rand_and_info_scores(gt, np.zeros_like(gt))
    assert math.isnan(scores["v_rand"]) and math.isnan(scores["v_info"])
    assert "no cell-interior pixel" in caplog.text


def test_real_isbi_label_vs_itself_and_eroded(datasets):
    path = datasets / "isbi2012_em/train/label/0.png"
    label = (np.asarray(Image.open(path)) > 127).astype(np.int64)
    assert label.shape == (512, 512)
    same = segmentation_metrics(label, label)
    assert same == pytest.approx({"dice": 1.0, "pixel_accuracy": 1.0, "v_rand_unthinned": 1.0,
                                  "v_info_unthinned": 1.0})

    eroded = ndi.binary_erosion(label, iterations=2).astype(np.int64)
    scores = rand_and_info_scores(eroded, label)
    assert 0.8 < scores["v_rand"] < 0.99
    assert 0.7 < scores["v_info"] < 0.99
    # erosion only shrinks / splits cells, never merges them
    assert scores["v_rand_merge"] == pytest.approx(1.0)
    assert scores["v_info_merge"] == pytest.approx(1.0)
    summary = segmentation_metrics(eroded, label)
    assert summary["v_rand_unthinned"] == pytest.approx(scores["v_rand"])
    assert 0.8 < summary["dice"] < 1.0
    json.dumps(summary)
