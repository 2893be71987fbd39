"""Out-of-distribution scores against scipy / hand computations, the validation threshold, error AUROC."""

import numpy as np
import pytest

from medpipe.metrics import error_detection_auroc, fit_ood_threshold, ood_scores


def test_scores_by_hand():
    logits = np.array([[0.0, 0.0], [np.log(3.0), 0.0], [10.0, -10.0]])
    # energy = -log(sum exp): -log 2, -log 4, -log(e^10 + e^-10)
    assert ood_scores(logits, "energy") == pytest.approx([-np.log(2), -np.log(4), -np.log(np.exp(10) + np.exp(-10))])
    # max softmax: 1/2, 3/4, ~1 -> scores 1/2, 1/4, ~0
    assert ood_scores(logits, "max_softmax") == pytest.approx([0.5, 0.25, 2e-9], abs=1e-9)
    # energy is large for small logits everywhere (the network sees nothing it knows)
    assert ood_scores(np.zeros((1, 2)), "energy")[0] > ood_scores(np.full((1, 2), 5.0), "energy")[0]
    with pytest.raises(ValueError, match="kind"):
        ood_scores(logits, "mahalanobis")
    with pytest.raises(ValueError, match="logits"):
        ood_scores(logits[0], "energy")


def test_threshold_covers_the_validation_fraction():
    scores = np.arange(1, 101, dtype=float)  # 1..100
    thr = fit_ood_threshold(scores, 0.95)
    assert thr == pytest.approx(np.quantile(scores, 0.95))
    assert np.mean(scores <= thr) == pytest.approx(0.95)
    with pytest.raises(ValueError, match="coverage"):
        fit_ood_threshold(scores, 1.0)


def test_error_detection_auroc():
    scores = np.array([0.1, 0.2, 0.9, 0.3, 0.8])
    correct = np.array([True, True, False, True, False])
    assert error_detection_auroc(scores, correct) == 1.0
    # one wrong case ranked below one correct case: 5 of 6 pairs ordered
    assert error_detection_auroc([0.1, 0.5, 0.4, 0.3, 0.8], correct) == pytest.approx(5 / 6)
    assert np.isnan(error_detection_auroc(scores, np.ones(5, bool)))
