"""Official ISBI-2012 scores (border thinning, threshold sweep): hand-derived cases and real ISBI-2012 labels."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi
from scipy.stats import entropy
from skimage import measure
from skimage.metrics import contingency_table, variation_of_information

from medpipe.metrics import isbi2012_score_table, isbi2012_scores, rand_and_info_scores
from medpipe.metrics.isbi2012 import (
    DEFAULT_THRESHOLDS,
    FIJI_SCRIPT_THRESHOLDS,
    thin_membranes,
)

FOUR = ndi.generate_binary_structure(2, 1)


def _two_cells():
    """5 x 7 ground truth: cell A = columns 0-2, membrane = column 3, cell B = columns 4-6 (15 pixels each)."""
    gt = np.ones((5, 7), dtype=np.uint8) * 255
    gt[:, 3] = 0
    return gt


def _prob(membrane_col: float, split_row: float) -> np.ndarray:
    """Cell probability 1.0 everywhere except the true membrane (column 3) and a false membrane across cell A
    (row 2, columns 0-2)."""
    p = np.ones((5, 7))
    p[:, 3] = membrane_col
    p[2, :3] = split_row
    return p


@pytest.fixture(scope="module")
def real_label(datasets):
    return np.asarray(Image.open(datasets / "isbi2012_em/train/label/0.png"))


def test_fiji_thresholds():
    # Fiji accumulates th += 0.1 in double: 10 thresholds up to 0.9, 11 up to 1.0 (the published script)
    assert len(DEFAULT_THRESHOLDS) == 10 and DEFAULT_THRESHOLDS[3] == 0.30000000000000004
    assert DEFAULT_THRESHOLDS[-1] == 0.8999999999999999
    assert len(FIJI_SCRIPT_THRESHOLDS) == 11 and FIJI_SCRIPT_THRESHOLDS[-1] == 0.9999999999999999


@pytest.mark.parametrize("width", [1, 2, 3, 4, 5])
def test_thinning_leaves_one_pixel_line(width):
    cells = np.ones((4, 6 + width), dtype=bool)
    cells[:, 3:3 + width] = False
    seg = thin_membranes(cells)
    for row in seg:
        assert (row == 0).sum() == 1  # a 1-pixel line wherever the membrane was
        assert set(np.unique(row)) == {0, 1, 2}
    assert (seg[:, :3] == seg[0, 0]).all() and (seg[:, -3:] == seg[0, -1]).all()  # cells keep their label


def test_thinning_without_cells_is_one_segment():
    seg = thin_membranes(np.zeros((6, 6), dtype=bool))
    assert (seg == 1).all()


def test_hand_made_cases():
    gt = _two_cells()
    # perfect: the true membrane thinned stays a line on ground-truth membrane, ignored
    assert isbi2012_scores(_prob(0.0, 1.0), gt) == pytest.approx(
        {"v_rand": 1.0, "v_info": 1.0, "v_rand_threshold": 0.0, "v_info_threshold": 0.0})
    # merged (no membrane predicted): one segment S; n = 30, t = (1/2, 1/2): sum p^2 = 1/2, sum s^2 = 1,
    # sum t^2 = 1/2 -> V_Rand = 2 (1/2) / (1 + 1/2) = 2/3; H(S) = 0 -> V_Info = 0 (Fiji)
    merged = isbi2012_score_table(_prob(1.0, 1.0), gt, thresholds=[0.5])
    assert merged["v_rand"][0, 0] == pytest.approx(2 / 3) and merged["v_info"][0, 0] == 0.0
    # empty prediction (no cell pixel): Fiji's one-segment rule gives the same numbers
    empty = isbi2012_score_table(np.zeros((5, 7)), gt, thresholds=[0.5])
    assert empty["v_rand"][0, 0] == pytest.approx(2 / 3) and empty["v_info"][0, 0] == 0.0
    # split: a false 1-pixel membrane across A stays a line of 3 singletons inside A; A_top 6, A_bottom 6, B 15
    # (counts): sum n_ij^2 = 36 + 36 + 3 + 225 = 300 = sum s_j^2, sum t_i^2 = 450 -> V_Rand = 600 / 750
    split = isbi2012_score_table(_prob(0.0, 0.0), gt, thresholds=[0.5])
    assert split["v_rand"][0, 0] == pytest.approx(0.8)
    h_t = math.log(2)
    h_s = -(2 * (6 / 30) * math.log(6 / 30) + 3 * (1 / 30) * math.log(1 / 30) + 0.5 * math.log(0.5))
    # S refines T, so I(S;T) = H(T) and V_Info = 2 H(T) / (H(S) + H(T))
    assert split["v_info"][0, 0] == pytest.approx(2 * h_t / (h_s + h_t))


def test_threshold_sweep_takes_max_of_mean_over_slices():
    gt = np.stack([_two_cells(), _two_cells()])
    # slice 0: true membrane 0.45, false membrane 0.55 -> t <= 0.4 merged (2/3), t = 0.5 perfect, t >= 0.6 split
    # slice 1: 0.75 / 0.85 -> t <= 0.7 merged, t = 0.8 perfect, t = 0.9 split
    prob = np.stack([_prob(0.45, 0.55), _prob(0.75, 0.85)])
    table = isbi2012_score_table(prob, gt)
    expected0 = [2 / 3] * 5 + [1.0] + [0.8] * 4
    expected1 = [2 / 3] * 8 + [1.0, 0.8]
    np.testing.assert_allclose(table["v_rand"], [expected0, expected1])
    single = isbi2012_scores(prob[0], gt[0])
    assert single["v_rand"] == pytest.approx(1.0) and single["v_rand_threshold"] == 0.5
    both = isbi2012_scores(prob, gt)
    # means per threshold: 2/3 (t <= 0.4), 5/6, 11/15, 11/15, 0.9 (t = 0.8), 0.8: the max of the mean is 0.9,
    # not the mean of the per-slice maxima (1.0)
    assert both["v_rand"] == pytest.approx(0.9)
    assert both["v_rand_threshold"] == DEFAULT_THRESHOLDS[8]
    assert both["v_info_threshold"] == DEFAULT_THRESHOLDS[8]


def test_real_label_perfect_dilated_and_empty(real_label):
    cell = real_label > 0
    assert isbi2012_scores(cell.astype(np.float64), real_label)["v_rand"] == 1.0
    assert isbi2012_scores(cell.astype(np.float64), real_label)["v_info"] == pytest.approx(1.0, abs=1e-12)
    # membranes one pixel thicker (4-neighbourhood): about 0.94 unthinned, near 1 officially (issue 12)
    thick = ndi.binary_erosion(cell, structure=FOUR)
    unthinned = rand_and_info_scores(thick, cell)
    assert 0.93 < unthinned["v_rand"] < 0.95
    official = isbi2012_scores(thick.astype(np.float64), real_label)
    assert official["v_rand"] > 0.995 and official["v_info"] > 0.995
    # no predicted cell pixel: one segment; V_Rand = 2 sum t^2 / (sum t^2 + 1), V_Info = 0 (Fiji)
    sizes = np.bincount(ndi.label(cell, structure=FOUR)[0].ravel())[1:] / cell.sum()
    sum_t2 = float(np.sum(sizes ** 2))
    empty = isbi2012_scores(np.zeros(cell.shape), real_label)
    assert empty["v_rand"] == pytest.approx(2 * sum_t2 / (sum_t2 + 1)) and empty["v_info"] == 0.0


def _reference_scores(gt_seg: np.ndarray, pred_seg: np.ndarray) -> tuple[float, float]:
    """Foreground-restricted V-Rand / V-Info with scikit-image's contingency table and variation of information,
    prediction label 0 inside ground-truth cells relabelled as singletons."""
    pred = pred_seg.astype(np.int64).copy()
    lonely = (gt_seg > 0) & (pred == 0)
    pred[lonely] = pred.max() + 1 + np.arange(lonely.sum())
    table = contingency_table(gt_seg, pred, ignore_labels=[0], normalize=True).tocsr()
    sum_p2 = float(table.multiply(table).sum())
    s = np.asarray(table.sum(axis=0)).ravel()
    t = np.asarray(table.sum(axis=1)).ravel()
    v_rand = 2 * sum_p2 / (np.sum(s ** 2) + np.sum(t ** 2))
    h_s, h_t = entropy(s[s > 0]), entropy(t[t > 0])
    h_s_given_t, _ = variation_of_information(gt_seg, pred, ignore_labels=[0])  # bits
    mutual = h_s - h_s_given_t * math.log(2)
    return v_rand, 2 * mutual / (h_s + h_t)


def test_per_threshold_scores_match_independent_computation(real_label):
    """Independent path: the thinned segments scored with scikit-image / scipy give the same numbers."""
    cell = real_label[:256, :256] > 0
    gt_seg = measure.label(cell, connectivity=1)
    rng = np.random.default_rng(0)
    prob = np.clip(ndi.gaussian_filter(cell.astype(float), 2) + rng.normal(0, 0.15, cell.shape), 0, 1)
    table = isbi2012_score_table(prob, real_label[:256, :256])
    for k, t in enumerate(DEFAULT_THRESHOLDS):
        seg = thin_membranes(prob > t)
        assert ((seg == 0) <= (prob <= t)).all()  # lines only on predicted membrane
        v_rand, v_info = _reference_scores(gt_seg, seg)
        assert table["v_rand"][0, k] == pytest.approx(v_rand, rel=1e-12)
        assert table["v_info"][0, k] == pytest.approx(v_info, rel=1e-9)
    best = isbi2012_scores(prob, real_label[:256, :256])
    assert 0.5 < best["v_rand"] < 1.0
    assert best["v_rand"] == pytest.approx(np.max(table["v_rand"]))


def test_bad_inputs():
    gt = _two_cells()
    with pytest.raises(ValueError, match="cell_probability"):
        isbi2012_scores(np.full((5, 7), 1.5), gt)
    with pytest.raises(ValueError, match="shape"):
        isbi2012_scores(np.ones((5, 6)), gt)
    with pytest.raises(ValueError, match="thresholds"):
        isbi2012_score_table(np.ones((5, 7)), gt, thresholds=[])
    assert all(math.isnan(v) for v in isbi2012_scores(np.ones((5, 7)), np.zeros((5, 7))).values())
