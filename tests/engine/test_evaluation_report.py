"""report.md, predictions CSV and reliability diagram of a classifier evaluation with every option on."""

import csv
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.special import softmax

from medpipe.config import MetricsConfig
from medpipe.engine.evaluation import SplitPredictions, evaluate_classifier
from medpipe.workflow.plots import plot_reliability
from medpipe.workflow.report import classification_report_md, write_predictions_csv


def _split(rng, n):
    z = rng.normal(size=(n, 2)) * 1.2
    y = np.array([rng.choice(2, p=p) for p in softmax(z, axis=1)])
    return SplitPredictions([f"/d/case{i}.png" for i in range(n)], y, softmax(3 * z, 1), 3 * z)


def test_report_shows_intervals_both_points_calibration_and_ood(tmp_path):
    rng = np.random.default_rng(0)
    splits = {"val": _split(rng, 80), "test": _split(rng, 60)}
    m = MetricsConfig(threshold={"specificity": 0.9}, calibration="temperature", intervals={"n_resamples": 100})
    ev = evaluate_classifier(splits, ["NORMAL", "PNEUMONIA"], m.threshold, calibration=m.calibration,
                             intervals=m.intervals, ood=m.ood, ood_coverage=m.ood_coverage)
    cfg = SimpleNamespace(name="demo", net=SimpleNamespace(name="resnet18"), metrics=m, infer=None,
                          report=SimpleNamespace(anchor=None, explain="gradcam"))
    data = SimpleNamespace(classes=["NORMAL", "PNEUMONIA"], train=[{"label": 0}] * 3, val=[{"label": 1}] * 2,
                           test=[{"label": 0}])
    ev["explain_png"] = "plots/explain_test.png"
    md = classification_report_md(cfg, data, ev, {"epochs": 2, "best_epoch": 1, "train_seconds": 60}, None)
    f = ev["final"]
    from medpipe.metrics.intervals import format_with_interval

    acc = format_with_interval(f["test_accuracy"], f["test_accuracy_ci_low"], f["test_accuracy_ci_high"], True)
    acc050 = format_with_interval(f["test_at050_accuracy"], f["test_at050_accuracy_ci_low"],
                                  f["test_at050_accuracy_ci_high"], True)
    assert f"| accuracy | {acc} | {acc050} |" in md
    assert "| metric | test | test at 0.5 | val |" in md and "DeLong" in md
    assert f"{ev['threshold']:.4f}** (specificity >= 0.9, chosen on the validation split)" in md
    assert f"T = {ev['calibration']['temperature']:.4f}" in md and "ECE before" in md
    assert "Score `energy`" in md and "![class-activation heatmaps](plots/explain_test.png)" in md

    sp, name = splits["test"], "test"
    write_predictions_csv(tmp_path / "t.csv", sp, ev["preds"][name], data.classes, probs=ev["probs"][name],
                          ood=("energy", ev["ood_scores"][name], ev["ood"]["threshold"]))
    with open(tmp_path / "t.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[-4:] == ["logit_NORMAL", "logit_PNEUMONIA", "ood_energy", "ood_flag"]
    p = np.array([float(r["p_PNEUMONIA"]) for r in rows])
    assert np.allclose(p, ev["probs"][name][:, 1], atol=1e-6)  # calibrated probabilities
    assert sum(int(r["ood_flag"]) for r in rows) == ev["ood"]["test"]["n_flagged"]
    assert [int(r["pred"]) for r in rows] == (p >= ev["threshold"]).astype(int).tolist()

    curves = {n: {"before": (s.labels, s.probs), "after": (s.labels, ev["probs"][n])} for n, s in splits.items()}
    png = plot_reliability(curves, tmp_path / "reliability.png", 10, "demo")
    assert png.stat().st_size > 5000
