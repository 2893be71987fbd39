"""Calibration metrics against hand computations, the reference loop of Guo et al. 2017 and scipy."""

import numpy as np
import pytest
from scipy.special import softmax

from medpipe.metrics import (apply_temperature, expected_calibration_error, fit_temperature, negative_log_likelihood,
                             reliability_curve)


def _gpleiss_ece(labels, probs, n_bins):
    """The loop of gpleiss/temperature_scaling ``_ECELoss`` in numpy (bins (lower, upper])."""
    conf, pred = probs.max(1), probs.argmax(1)
    acc = pred == labels
    edges = np.linspace(0, 1, n_bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.mean() > 0:
            ece += abs(conf[in_bin].mean() - acc[in_bin].mean()) * in_bin.mean()
    return ece


def test_ece_by_hand():
    # confidences 0.9, 0.9 (one right), 0.6 (right), 0.55 (wrong); 2 bins: (0, .5], (.5, 1] -> all in bin 1
    # 10 bins: bin (.8,.9]: conf .9 acc .5 -> |.4| * 2/4; bin (.5,.6]: conf .575 acc .5 -> .075 * 2/4
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.4, 0.6], [0.55, 0.45]])
    labels = np.array([0, 0, 1, 1])
    assert expected_calibration_error(labels, probs, n_bins=10) == pytest.approx(0.4 * 0.5 + 0.075 * 0.5)
    # 2 bins: one bin, mean conf (0.9+0.9+0.6+0.55)/4 = 0.7375, accuracy 0.5
    assert expected_calibration_error(labels, probs, n_bins=2) == pytest.approx(0.2375)
    curve = reliability_curve(labels, probs, n_bins=10)
    assert curve["count"].tolist() == [0, 0, 0, 0, 0, 2, 0, 0, 2, 0]
    assert curve["accuracy"][8] == 0.5 and curve["confidence"][5] == pytest.approx(0.575)
    assert np.isnan(curve["accuracy"][0]) and curve["bin_upper"][-1] == 1.0
    # (N,) P(class 1) equals the two-column form; an edge value 0.6 lands in (0.5, 0.6]
    assert expected_calibration_error(labels, probs[:, 1], 10) == pytest.approx(0.2375)


def test_ece_matches_reference_loop_on_random_multiclass():
    rng = np.random.default_rng(0)
    for n_bins in (5, 15):
        probs = softmax(rng.normal(size=(500, 4)) * 3, axis=1)
        labels = rng.integers(0, 4, 500)
        assert expected_calibration_error(labels, probs, n_bins) == pytest.approx(_gpleiss_ece(labels, probs, n_bins))


def test_temperature_reduces_nll_and_recovers_the_scale():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(4000, 3)) * 1.5
    labels = np.array([rng.choice(3, p=p) for p in softmax(z, axis=1)])  # calibrated at T = 1
    logits = 3.0 * z  # overconfident by a factor 3
    t = fit_temperature(labels, logits)
    assert t == pytest.approx(3.0, rel=0.1)
    before, after = negative_log_likelihood(labels, logits), negative_log_likelihood(labels, logits, t)
    assert after < before - 0.1
    # the optimum: a finite-difference derivative of the NLL in T is ~0 at t, and t beats its neighbours
    assert negative_log_likelihood(labels, logits, t * 1.05) > after
    assert negative_log_likelihood(labels, logits, t / 1.05) > after
    probs = apply_temperature(logits, t)
    assert np.allclose(probs.sum(1), 1) and (probs.argmax(1) == logits.argmax(1)).all()
    assert expected_calibration_error(labels, probs) < expected_calibration_error(labels, softmax(logits, 1)) / 2
    # log-probabilities give the same temperature (softmax ignores a per-row constant)
    log_p = np.log(softmax(logits, axis=1))
    assert fit_temperature(labels, log_p) == pytest.approx(t, rel=1e-4)


def test_nll_by_hand_and_errors():
    logits = np.array([[0.0, np.log(3.0)], [np.log(4.0), 0.0]])
    # softmax rows: [1/4, 3/4], [4/5, 1/5]; labels 1, 1 -> -(log .75 + log .2) / 2
    assert negative_log_likelihood([1, 1], logits) == pytest.approx(-(np.log(0.75) + np.log(0.2)) / 2)
    assert apply_temperature(logits, 1.0)[0, 1] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(logits, 0.0)
    with pytest.raises(ValueError, match="labels"):
        fit_temperature([0, 2], logits)
    with pytest.raises(ValueError, match="probs"):
        expected_calibration_error([0, 1], logits + 2)


def test_temperature_of_averaged_views_minimises_the_nll_of_the_mean():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(800, 3))
    labels = np.array([rng.choice(3, p=p) for p in softmax(z, axis=1)])
    views = 2.5 * np.stack([z + rng.normal(scale=0.5, size=z.shape) for _ in range(4)])  # (M, N, C)
    t = fit_temperature(labels, views)

    def nll(temp):
        p = np.mean([softmax(v / temp, axis=1) for v in views], axis=0)
        return -np.log(p[np.arange(len(labels)), labels]).mean()

    grid = np.exp(np.linspace(np.log(0.5), np.log(8), 400))
    assert t == pytest.approx(grid[np.argmin([nll(g) for g in grid])], rel=0.01)
    assert nll(t) < nll(1.0)
    assert fit_temperature(labels, views[:1]) == pytest.approx(fit_temperature(labels, views[0]), rel=1e-6)
    with pytest.raises(ValueError, match="logits"):
        fit_temperature(labels, views[0, :, 0])
