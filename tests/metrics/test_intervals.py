"""Bootstrap and DeLong intervals: pROC's published aSAH numbers, a brute-force O(m n) DeLong, the classification
metrics recomputed resample by resample, coverage on simulated data, reproducibility, strata and NaN rules."""

import logging
import math
import time

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from medpipe.metrics import (add_intervals, bootstrap_interval, classification_intervals, classification_metrics,
                             delong_interval, delong_test, flat_classification_metrics, format_with_interval,
                             mean_interval, paired_bootstrap_difference)
from medpipe.metrics.intervals import bootstrap_classification_metrics, difference_summary, resample_indices

# pROC's aSAH data (Turck et al., Intensive Care Med 36:107-115, 2010; shipped as pROC/data/aSAH.RData): outcome
# (1 = Poor), WFNS grade, S100B and NDKA of 113 patients, in the data's row order.
ASAH_POOR = (
    "0000110100101100101110100000000010011011000000000110001000101001110110111100011010000001000000000000"
    "1111110001000"
)
ASAH_WFNS = (
    "1111325412525512522521111212113421454142551124112552125122215112521452441412142123242145115422111312"
    "5225552445111"
)
ASAH_S100B = [
    0.13, 0.14, 0.1, 0.04, 0.13, 0.1, 0.47, 0.16, 0.18, 0.1, 0.12, 0.1, 0.44, 0.71, 0.04, 0.08, 0.49, 0.04,
    0.07, 0.33, 0.09, 0.09, 0.07, 0.11, 0.07, 0.17, 0.07, 0.11, 0.13, 0.19, 0.05, 0.16, 0.41, 0.14, 0.34, 0.35,
    0.48, 0.09, 0.96, 0.25, 0.5, 0.46, 0.16, 0.07, 0.43, 0.45, 0.11, 0.08, 0.09, 0.86, 0.52, 0.08, 0.06, 0.13,
    2.07, 0.1, 0.14, 0.15, 0.07, 0.06, 0.77, 0.05, 0.09, 0.3, 0.03, 0.09, 0.04, 0.23, 0.7, 0.09, 0.27, 0.71,
    0.08, 0.26, 0.08, 0.16, 0.09, 0.13, 0.1, 0.08, 0.11, 0.33, 0.11, 0.28, 0.07, 0.1, 0.32, 0.22, 0.07, 0.05,
    0.24, 0.38, 0.1, 0.15, 0.08, 0.14, 0.1, 0.07, 0.04, 0.19, 0.56, 0.14, 0.58, 0.32, 0.82, 0.74, 0.15, 0.47,
    0.17, 0.44, 0.15, 0.5, 0.48
]
ASAH_NDKA = [
    3.01, 8.54, 8.09, 10.42, 17.4, 12.75, 6.0, 13.2, 15.54, 6.01, 15.96, 17.86, 5.18, 8.9, 13.41, 20.75, 11.6,
    16.11, 32.37, 54.82, 32.41, 49.94, 40.34, 9.47, 6.29, 12.53, 6.54, 6.3, 80.3, 12.8, 9.8, 9.81, 9.85, 18.21,
    5.03, 14.04, 21.93, 8.02, 7.42, 8.38, 6.59, 9.63, 13.12, 7.96, 14.34, 41.43, 7.63, 7.06, 12.59, 13.56, 3.87,
    9.44, 7.66, 12.98, 419.19, 27.19, 22.27, 9.95, 21.22, 11.73, 10.4, 58.83, 6.39, 11.09, 12.22, 13.67, 17.21,
    22.63, 12.9, 9.7, 21.57, 8.23, 72.57, 15.54, 10.51, 10.6, 14.57, 5.19, 9.63, 4.61, 21.48, 17.3, 12.71, 9.44,
    11.07, 19.46, 10.83, 5.37, 11.97, 7.75, 9.83, 10.55, 28.49, 8.53, 12.57, 12.9, 46.83, 11.68, 12.67, 9.01,
    9.57, 34.06, 11.72, 14.26, 47.61, 11.67, 24.58, 10.33, 13.87, 15.89, 22.43, 6.79, 13.45
]


def _asah():
    y = np.array([int(c) for c in ASAH_POOR])
    return y, np.array([float(c) for c in ASAH_WFNS]), np.array(ASAH_S100B), np.array(ASAH_NDKA)


def test_delong_reproduces_proc_on_asah():
    y, wfns, s100b, ndka = _asah()
    assert y.shape == (113,) and y.sum() == 41
    # pROC docs: roc(aSAH$outcome, aSAH$s100b): "Area under the curve: 0.7314, 95% CI: 0.6301-0.8326 (DeLong)"
    auc, low, high = delong_interval(y, s100b)
    assert (round(auc, 4), round(low, 4), round(high, 4)) == (0.7314, 0.6301, 0.8326)
    # pROC tests/testthat/test-ci.auc.R: ci.auc(r.ndka)
    assert delong_interval(y, ndka) == pytest.approx((0.611957994579946, 0.501244999271703, 0.722670989888189),
                                                      abs=1e-12)
    # pROC tests/testthat/test-roc.test.R: roc.test(r.wfns, r.s100b) (AUC wfns - AUC s100b: our B minus A)
    t1 = delong_test(y, s100b, wfns)
    assert t1["z"] == pytest.approx(2.20898359144091, abs=1e-10)
    assert t1["p_value"] == pytest.approx(0.0271757822291882, abs=1e-12)
    assert (t1["low"], t1["high"]) == pytest.approx((0.0104061769564846, 0.174214419249478), abs=1e-12)
    t2 = delong_test(y, ndka, wfns)
    assert (t2["z"], t2["p_value"]) == pytest.approx((2.79777591868904, 0.00514557970691098), abs=1e-10)
    t3 = delong_test(y, s100b, ndka)
    assert (t3["z"], t3["p_value"]) == pytest.approx((-1.39077002573558, 0.164295175223054), abs=1e-10)
    assert (t3["low"], t3["high"]) == pytest.approx((-0.2876917446341914, 0.0488706064228094), abs=1e-12)


def _brute_force_delong(y, scores):
    """DeLong et al. 1988 directly: structural components from the O(m n) kernel psi, then their covariances."""
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    v10 = np.zeros((len(scores), m))
    v01 = np.zeros((len(scores), n))
    for k in range(len(scores)):
        for i in range(m):
            for j in range(n):
                psi = 1.0 if pos[k, i] > neg[k, j] else 0.5 if pos[k, i] == neg[k, j] else 0.0
                v10[k, i] += psi / n
                v01[k, j] += psi / m
    aucs = v10.mean(axis=1)
    s10 = np.array([[np.sum((v10[a] - aucs[a]) * (v10[b] - aucs[b])) / (m - 1) for b in range(len(scores))]
                    for a in range(len(scores))])
    s01 = np.array([[np.sum((v01[a] - aucs[a]) * (v01[b] - aucs[b])) / (n - 1) for b in range(len(scores))]
                    for a in range(len(scores))])
    return aucs, s10 / m + s01 / n


def test_delong_matches_brute_force_structural_components_with_ties():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 80)
    a = np.round(rng.normal(y * 0.8, 1.0), 1)  # rounded: many ties
    b = np.round(0.5 * a + rng.normal(y * 0.5, 0.8), 1)
    aucs, cov = _brute_force_delong(y, np.stack([a, b]))
    auc, low, high = delong_interval(y, a, confidence_level=0.9)
    z90 = stats.norm.ppf(0.95)
    assert auc == pytest.approx(aucs[0], abs=1e-12) and auc == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert (low, high) == pytest.approx((aucs[0] - z90 * math.sqrt(cov[0, 0]), aucs[0] + z90 * math.sqrt(cov[0, 0])),
                                        abs=1e-12)
    t = delong_test(y, a, b)
    se = math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert t["difference"] == pytest.approx(aucs[1] - aucs[0], abs=1e-12)
    assert t["z"] == pytest.approx((aucs[1] - aucs[0]) / se, rel=1e-10)
    assert t["p_value"] == pytest.approx(2 * stats.norm.sf(abs(t["z"])), rel=1e-10)


def test_delong_interval_is_clipped_and_checks_input():
    y = np.array([0, 0, 0, 1, 1, 1])
    auc, low, high = delong_interval(y, np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]))
    assert (auc, high) == (1.0, 1.0) and low <= 1.0
    with pytest.raises(ValueError, match="both classes"):
        delong_interval(np.zeros(4, int), np.arange(4.0))
    with pytest.raises(ValueError, match="0/1"):
        delong_interval(np.array([0, 1, 2]), np.arange(3.0))
    with pytest.raises(ValueError, match="NaN"):
        delong_interval(y, np.array([0.1, np.nan, 0.3, 0.7, 0.8, 0.9]))


def test_identical_scores_give_difference_zero_and_p_one():
    y, wfns, s100b, _ = _asah()
    t = delong_test(y, s100b, s100b.copy())
    assert (t["difference"], t["z"], t["p_value"], t["low"], t["high"]) == (0.0, 0.0, 1.0, 0.0, 0.0)
    stat = lambda idx: float(np.mean(s100b[idx]))  # noqa: E731
    d = paired_bootstrap_difference(stat, stat, len(y), n_resamples=200)
    assert d == {"difference": 0.0, "low": 0.0, "high": 0.0, "p_value": 1.0}


def test_paired_bootstrap_difference_sees_a_real_difference_and_matches_by_hand():
    y, wfns, s100b, ndka = _asah()
    auc_a = lambda idx: roc_auc_score(y[idx], ndka[idx])  # noqa: E731
    auc_b = lambda idx: roc_auc_score(y[idx], wfns[idx])  # noqa: E731
    d = paired_bootstrap_difference(auc_a, auc_b, len(y), strata=y, n_resamples=300, seed=3)
    assert d["difference"] == pytest.approx(roc_auc_score(y, wfns) - roc_auc_score(y, ndka))
    assert 0 < d["low"] < d["difference"] < d["high"] and d["p_value"] < 0.05  # DeLong: p = 0.005
    # the same numbers by hand from the same resamples
    idx = resample_indices(len(y), strata=y, n_resamples=300, seed=3)
    reps = np.array([auc_b(r) - auc_a(r) for r in idx])
    assert d["low"] == pytest.approx(np.percentile(reps, 2.5)) and d["high"] == pytest.approx(np.percentile(reps, 97.5))
    assert d["p_value"] == pytest.approx(min(1.0, 2 * np.mean(reps <= 0)))
    assert difference_summary(-0.1, np.array([-0.2, -0.1, 0.05, 0.1]))["p_value"] == 1.0


def test_seeded_and_reproducible():
    rng = np.random.default_rng(0)
    v = rng.normal(size=50)
    assert mean_interval(v, seed=5) == mean_interval(v, seed=5)
    assert mean_interval(v, seed=5) != mean_interval(v, seed=6)
    stat = lambda idx: float(np.median(v[idx]))  # noqa: E731
    assert bootstrap_interval(stat, 50, seed=1) == bootstrap_interval(stat, 50, seed=1)
    # mean_interval is bootstrap_interval of the mean on the same resamples
    assert mean_interval(v, n_resamples=400, seed=2) == pytest.approx(
        bootstrap_interval(lambda idx: float(np.mean(v[idx])), 50, n_resamples=400, seed=2))


def test_stratified_resampling_keeps_class_counts():
    y = np.array([0] * 7 + [1] * 3 + [2] * 20)
    idx = resample_indices(len(y), strata=y, n_resamples=500, seed=0)
    assert idx.shape == (500, 30)
    counts = np.stack([np.bincount(y[row], minlength=3) for row in idx])
    assert (counts == [7, 3, 20]).all()
    assert (y[idx] == y).all()  # column j always holds a case of case j's class
    assert len(np.unique(idx[:, 7:10])) == 3  # the minority class is resampled, not fixed
    with pytest.raises(ValueError, match="strata"):
        resample_indices(30, strata=y[:5])


def test_coverage_on_simulated_data():
    """About 95 % of the 95 % intervals contain the truth: the mean of normals, the AUC of a binormal model."""
    rng = np.random.default_rng(11)
    hits_mean, hits_auc, sims = 0, 0, 150
    true_auc = stats.norm.cdf(1.0 / math.sqrt(2))  # binormal, unit variances, means 0 and 1
    for s in range(sims):
        v = rng.normal(2.0, 1.0, 80)
        low, high = mean_interval(v, n_resamples=500, seed=s)
        hits_mean += low <= 2.0 <= high
        y = np.r_[np.zeros(60, int), np.ones(40, int)]
        score = rng.normal(y.astype(float), 1.0)
        _, low, high = delong_interval(y, score)
        hits_auc += low <= true_auc <= high
    assert 0.88 <= hits_mean / sims <= 0.99
    assert 0.88 <= hits_auc / sims <= 0.99


def test_nan_cases_and_nan_resamples():
    v = np.array([0.9, 0.8, np.nan, 0.85, 0.95, np.nan, 0.7, 0.75])
    low, high = mean_interval(v, n_resamples=500)
    assert 0.7 <= low < np.nanmean(v) < high <= 0.95
    assert all(math.isnan(x) for x in mean_interval(np.full(5, np.nan)))


def test_nan_statistics_are_dropped_and_logged(caplog):
    y = np.array([0, 0, 0, 1, 1, 1, 1])

    def sensitivity(idx):
        pos = y[idx] == 1
        return float("nan") if not pos.any() else 1.0

    with caplog.at_level(logging.INFO, logger="medpipe.metrics.intervals"):
        low, high = bootstrap_interval(sensitivity, len(y), n_resamples=2000, seed=0)
    assert (low, high) == (1.0, 1.0)
    assert "gave NaN and were left out" in caplog.text
    assert all(math.isnan(x) for x in bootstrap_interval(lambda idx: float("nan"), 5, n_resamples=100))


def _names(c):
    return ["NORMAL", "PNEUMONIA"] if c == 2 else ["a b", "c", "d"]


@pytest.mark.parametrize("num_classes", [2, 3])
def test_vectorised_metrics_equal_classification_metrics_on_each_resample(num_classes):
    rng = np.random.default_rng(num_classes)
    n = 90
    y = rng.integers(0, num_classes, n)
    probs = rng.dirichlet(np.ones(num_classes), n)
    probs[np.arange(n), y] += 0.3
    probs = np.round(probs / probs.sum(1, keepdims=True), 2)  # ties in the scores
    probs = probs / probs.sum(1, keepdims=True)
    thr = 0.4 if num_classes == 2 else None
    idx = resample_indices(n, n_resamples=25, seed=1)
    idx[0, :] = 0  # a resample with one class only: AUC NaN, zero divisions
    reps = bootstrap_classification_metrics(y, probs, thr, _names(num_classes), idx)
    for r in range(len(idx)):
        flat = flat_classification_metrics(classification_metrics(y[idx[r]], probs[idx[r]], threshold=thr,
                                                                  class_names=_names(num_classes)))
        flat.pop("threshold", None)
        assert set(flat) == set(reps)
        for k, v in flat.items():
            assert reps[k][r] == pytest.approx(v, abs=1e-12, nan_ok=True), (r, k)


def test_classification_intervals_keys_stratification_and_speed():
    rng = np.random.default_rng(5)
    y = np.r_[np.zeros(234, int), np.ones(390, int)]  # the Kermany test split's class counts
    p1 = np.clip(rng.normal(0.35 + 0.4 * y, 0.2), 0, 1)
    probs = np.stack([1 - p1, p1], 1)
    t0 = time.perf_counter()
    ci = classification_intervals(y, probs, 0.5, ["NORMAL", "PNEUMONIA"], n_resamples=1000, confidence_level=0.95,
                                  seed=0)
    seconds = time.perf_counter() - t0
    assert seconds < 3.0, f"{seconds:.2f} s for 1000 resamples of 624 cases"
    point = flat_classification_metrics(classification_metrics(y, probs, threshold=0.5,
                                                               class_names=["NORMAL", "PNEUMONIA"]))
    assert set(ci) == set(point) - {"threshold"}
    for k, (low, high) in ci.items():
        assert low <= point[k] + 1e-12 and point[k] <= high + 1e-12, k
    assert ci["auc"] == ci["PNEUMONIA_auc"]
    # DeLong and the bootstrap agree on the AUC's uncertainty within a few thousandths
    _, low, high = delong_interval(y, p1)
    assert ci["auc"] == pytest.approx((low, high), abs=0.01)
    assert classification_intervals(y, probs, 0.5, None, n_resamples=100, seed=1) != \
        classification_intervals(y, probs, 0.5, None, n_resamples=100, seed=2)


def test_add_and_format_intervals():
    final = {"test_auc": 0.93}
    add_intervals(final, {"auc": (0.912, 0.948), "f1": (0.5, 0.6)}, "test_")
    assert final == {"test_auc": 0.93, "test_auc_ci_low": 0.912, "test_auc_ci_high": 0.948,
                     "test_f1_ci_low": 0.5, "test_f1_ci_high": 0.6}
    assert format_with_interval(0.931, 0.912, 0.948) == "0.931 (0.912-0.948)"
    assert format_with_interval(0.931, 0.912, 0.948, percent=True) == "93.1 % (91.2-94.8)"
    assert format_with_interval(-0.012, -0.03, 0.006) == "-0.012 (-0.030 to 0.006)"
    assert format_with_interval(float("nan"), 0.1, 0.2) == "n/a"
    assert format_with_interval(0.5, float("nan"), float("nan")) == "0.500"
    with pytest.raises(ValueError, match="confidence_level"):
        mean_interval([1.0, 2.0], confidence_level=95)
