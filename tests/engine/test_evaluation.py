"""Final classifier evaluation: logits kept, test-time augmentation, operating points from sensitivity /
specificity targets, temperature scaling, OOD scores and intervals in the flat metrics."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.special import softmax

from medpipe.engine.evaluation import (SplitPredictions, choose_threshold, evaluate_classifier, predict_classifier,
                                       target_threshold, threshold_rule_name)
from medpipe.metrics import expected_calibration_error
from tests.subsets import first_rows, read_rows


@pytest.fixture(scope="module")
def cxr_loader(datasets):
    """Two batches of 6 real Kermany test chest X-rays (3 per class each), grey, 40x32 (not square: a wrong flip
    axis would show), in [0, 1]."""
    src = datasets / "kermany_pneumonia_cxr"
    rows = read_rows(src / "labels.csv")
    picked = [r for label in ("NORMAL", "PNEUMONIA") for r in first_rows(rows, 6, sort_by="path", split="test",
                                                                          label=label)]
    imgs = [np.asarray(Image.open(src / r["path"]).convert("L").resize((32, 40)), np.float32) / 255 for r in picked]
    labels = [int(r["label"] == "PNEUMONIA") for r in picked]
    order = [0, 6, 1, 7, 2, 8, 3, 9, 4, 10, 5, 11]
    x = torch.as_tensor(np.stack([imgs[i] for i in order]))[:, None]
    y = torch.as_tensor([labels[i] for i in order])
    return [{"image": x[:6], "label": y[:6]}, {"image": x[6:], "label": y[6:]}]


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 5), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 36 * 28, 2))


def test_predict_keeps_logits_and_tta_averages_mirrored_softmax(cxr_loader):
    net = _net()
    plain = predict_classifier(net, cxr_loader, "cpu")
    x = torch.cat([b["image"] for b in cxr_loader])
    with torch.no_grad():
        ref = net(x).double().numpy()
    assert plain.logits.dtype == np.float64 and plain.logits.shape == (12, 2)
    assert np.allclose(plain.logits, ref, atol=1e-5)
    assert np.allclose(plain.probs, softmax(plain.logits, axis=1), atol=1e-12)
    assert plain.labels.tolist() == [0, 1] * 6 and plain.tta_logits is None
    tta = predict_classifier(net, cxr_loader, "cpu", tta=True, tta_axes=[1])  # mirror W only: 2 copies
    with torch.no_grad():
        flipped = net(torch.flip(x, dims=[3])).double().numpy()
    expect = (softmax(ref, 1) + softmax(flipped, 1)) / 2
    assert np.allclose(tta.probs, expect, atol=1e-5)
    assert np.allclose(tta.logits, plain.logits) and tta.tta_logits.shape == (2, 12, 2)
    assert not np.allclose(tta.probs, plain.probs, atol=1e-4)  # the mirrored copy changed something
    # calibrated TTA probabilities: the mean of softmax(logits_m / T), as the served model computes them
    assert np.allclose(tta.calibrated(2.0), (softmax(ref / 2, 1) + softmax(flipped / 2, 1)) / 2, atol=1e-5)
    # temperature fitted with mirrored copies lowers the NLL of the reported (averaged) probabilities
    ev = evaluate_classifier({"val": tta}, ["NORMAL", "PNEUMONIA"], calibration="temperature")
    assert ev["calibration"]["val"]["nll_after"] <= ev["calibration"]["val"]["nll_before"] + 1e-12


def _brute(labels, p1, kind, value):
    """The target threshold by enumerating every score as a threshold."""
    best = None
    for t in np.unique(p1):
        pred = p1 >= t
        sens, spec = pred[labels == 1].mean(), (~pred[labels == 0]).mean()
        if kind == "sensitivity" and sens >= value and (best is None or t > best):
            best = t
        if kind == "specificity" and spec >= value and (best is None or t < best):
            best = t
    return best


def test_target_thresholds_match_enumeration():
    rng = np.random.default_rng(0)
    for trial in range(20):
        labels = rng.integers(0, 2, 60)
        labels[:2] = [0, 1]
        p1 = np.round(np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1), 2)  # rounded: ties
        for kind in ("sensitivity", "specificity"):
            for value in (0.5, 0.8, 0.95):
                assert target_threshold(labels, p1, kind, value) == _brute(labels, p1, kind, value)
    # by hand: P1 of negatives .1 .2 .3 .6 .7, positives .4 .8 .9
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    p1 = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.4, 0.8, 0.9])
    assert target_threshold(y, p1, "sensitivity", 0.6) == 0.8  # 2 of 3 positives >= 0.8
    assert target_threshold(y, p1, "sensitivity", 1.0) == 0.4
    assert target_threshold(y, p1, "specificity", 0.8) == 0.7  # 4 of 5 negatives below 0.7
    assert target_threshold(y, p1, "specificity", 1.0) == 0.8
    val = SplitPredictions(["v"] * 8, y, np.stack([1 - p1, p1], 1))
    assert choose_threshold(SimpleNamespace(sensitivity=0.6, specificity=None), val) == 0.8
    assert choose_threshold({"specificity": 0.8}, val) == 0.7
    assert threshold_rule_name({"sensitivity": 0.95}) == "sensitivity >= 0.95"
    with pytest.raises(ValueError, match="sensitivity"):
        choose_threshold({"sensitivity": 0.9, "specificity": 0.9}, val)


def _miscalibrated(rng, n, scale=4.0):
    z = rng.normal(size=(n, 2)) * 1.2
    labels = np.array([rng.choice(2, p=p) for p in softmax(z, axis=1)])
    logits = scale * z
    return SplitPredictions([f"c{i}" for i in range(n)], labels, softmax(logits, 1), logits)


def test_evaluation_calibrates_chooses_on_val_and_reports_both_points():
    rng = np.random.default_rng(3)
    splits = {"val": _miscalibrated(rng, 600), "test": _miscalibrated(rng, 400)}
    target = {"sensitivity": 0.9}
    ev = evaluate_classifier(splits, ["neg", "pos"], target, calibration="temperature", calibration_bins=10,
                             ood="energy", ood_coverage=0.9)
    cal = ev["calibration"]
    assert cal["method"] == "temperature" and cal["temperature"] == pytest.approx(4.0, rel=0.2)
    for n in ("val", "test"):
        assert cal[n]["ece_after"] < cal[n]["ece_before"] and cal[n]["nll_after"] < cal[n]["nll_before"]
    probs = softmax(splits["val"].logits / cal["temperature"], axis=1)
    assert np.allclose(ev["probs"]["val"], probs)
    # the threshold meets the target on the calibrated validation probabilities, the highest such
    thr = ev["threshold"]
    assert thr == target_threshold(splits["val"].labels, probs[:, 1], "sensitivity", 0.9)
    assert ev["val"]["sensitivity"] >= 0.9 and ev["threshold_rule"] == "sensitivity >= 0.9"
    # test at the chosen point and at 0.5, on the calibrated probabilities
    tp = ev["probs"]["test"][:, 1]
    yt = splits["test"].labels
    assert ev["test"]["sensitivity"] == pytest.approx(np.mean(tp[yt == 1] >= thr))
    assert ev["at_050"]["test"]["sensitivity"] == pytest.approx(np.mean(tp[yt == 1] >= 0.5))
    f = ev["final"]
    assert f["test_at050_threshold"] == 0.5 and f["test_threshold"] == pytest.approx(thr)
    assert f["test_ece"] == pytest.approx(cal["test"]["ece_after"])
    assert f["test_ece_uncalibrated"] == pytest.approx(expected_calibration_error(yt, splits["test"].probs, 10))
    assert f["calibration_temperature"] == cal["temperature"]
    # OOD: energy of the raw logits; 10 % of validation flagged by construction
    ood = ev["ood"]
    assert ood["score"] == "energy" and ood["coverage"] == 0.9
    assert ood["val"]["flagged_fraction"] == pytest.approx(0.1, abs=0.01)
    assert np.allclose(ev["ood_scores"]["test"], -np.logaddexp(*splits["test"].logits.T))
    assert f["test_ood_flagged"] == pytest.approx(np.mean(ev["ood_scores"]["test"] > ood["threshold"]))
    assert 0 <= f["test_ood_error_auroc"] <= 1 and not any(k.endswith("_ci_low") for k in f)


def test_no_calibration_keeps_probabilities_and_multiclass_has_no_050():
    rng = np.random.default_rng(4)
    z = rng.normal(size=(90, 3)) * 2
    y = np.arange(90) % 3
    sp = SplitPredictions(["x"] * 90, y, softmax(z, 1), z)
    ev = evaluate_classifier({"val": sp}, ["a", "b", "c"], 0.5)
    assert ev["threshold"] is None and ev["at_050"] == {} and ev["ood"] is None
    assert ev["probs"]["val"] is sp.probs and ev["calibration"]["val"]["ece"] == pytest.approx(
        expected_calibration_error(y, sp.probs, 15))
    assert "best_val_ece" in ev["final"] and "calibration_temperature" not in ev["final"]
    with pytest.raises(ValueError, match="logits"):
        evaluate_classifier({"val": SplitPredictions(["x"] * 90, y, sp.probs)}, ["a", "b", "c"], ood="energy")


def test_intervals_cover_every_final_metric():
    rng = np.random.default_rng(5)
    splits = {"val": _miscalibrated(rng, 120), "test": _miscalibrated(rng, 100)}
    iv = SimpleNamespace(n_resamples=200, confidence_level=0.95, seed=0)
    ev = evaluate_classifier(splits, ["neg", "pos"], "youden", ood="max_softmax", intervals=iv)
    f = ev["final"]
    for prefix in ("best_val_", "test_", "test_at050_"):
        for m in ("accuracy", "auc", "sensitivity", "specificity", "f1"):
            lo, hi = f[f"{prefix}{m}_ci_low"], f[f"{prefix}{m}_ci_high"]
            assert lo <= f[prefix + m] + 1e-9 and f[prefix + m] <= hi + 1e-9, (prefix, m)
    for prefix in ("best_val_", "test_"):
        for m in ("nll", "ood_flagged", "ood_error_auroc"):
            assert f[f"{prefix}{m}_ci_low"] <= f[f"{prefix}{m}_ci_high"], (prefix, m)
        assert f[f"{prefix}auc_delong_low"] < f[f"{prefix}auc"] < f[f"{prefix}auc_delong_high"]
    assert set(ev["intervals"]) == {"val", "test", "at_050"}
