"""End to end classification: a short real run on a few Kermany chest X-rays per class, read back from MLflow."""

import csv
import json
import os

import numpy as np
import pytest
import yaml

from medpipe.config import validate_config
from medpipe.workflow import run_pipeline
from tests.subsets import first_rows, link_subset, read_rows

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def small_cxr(tmp_path, datasets):
    """A data root with 12 train + 4 test real chest X-rays per class and a CSV like the real one."""
    src = datasets / "kermany_pneumonia_cxr"
    rows = read_rows(src / "labels.csv")
    picked = [r for split, n in (("train", 12), ("test", 4)) for label in ("NORMAL", "PNEUMONIA")
              for r in first_rows(rows, n, sort_by="path", split=split, label=label)]
    return link_subset(src, picked, "path", tmp_path / "cxr", "labels.csv")


def _cfg(tmp_path, root, **over):
    d = yaml.safe_load((ROOT / "pipelines" / "pneumonia_xray.yaml").read_text())
    d["output_dir"] = str(tmp_path / "artifacts")
    d["data"]["root"] = str(root)
    d["data"]["split"] = {"val_fraction": 0.25, "seed": 0}
    for chain in ("train", "val"):
        for t in d["transforms"][chain]:
            if t["name"] == "Resized":
                t["spatial_size"] = [48, 48]
    d["net"] = {"name": "resnet18", "in_channels": 1, "num_classes": 2, "widen_factor": 0.25}  # small, fast
    d["train"].update(max_epochs=2, batch_size=6, val_batch_size=8, progress=False, device="cpu")
    d["tracking"] = {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "cls_e2e",
                     "artifact_location": str(tmp_path / "mlruns")}
    d.update(over)
    return d


def test_short_classification_run_reports_and_tracks(tmp_path, small_cxr):
    from mlflow.tracking import MlflowClient

    cfg = validate_config(_cfg(tmp_path, small_cxr))
    result = run_pipeline(cfg)
    out = result.output_dir

    manifest = json.loads((out / "manifest.json").read_text())
    assert (len(manifest["train"]), len(manifest["val"]), len(manifest["test"])) == (18, 6, 8)
    assert manifest["classes"] == ["NORMAL", "PNEUMONIA"]
    assert all("/test/" in c["image"] for c in manifest["test"])  # the official test split, untouched
    assert sorted(c["label"] for c in manifest["val"]) == [0, 0, 0, 1, 1, 1]  # stratified

    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["history"]["train"]) == 2 and len(metrics["history"]["val"]) == 2
    assert {"train_loss", "train_accuracy", "lr"} <= set(metrics["history"]["train"][0])
    assert {"auc", "accuracy", "loss"} <= set(metrics["history"]["val"][0])
    thr = metrics["threshold"]
    assert metrics["threshold_rule"] == "youden" and 0.0 <= thr <= 1.0
    test = metrics["test"]
    assert test["num_samples"] == 8 and np.sum(test["confusion_matrix"]) == 8
    assert [sum(r) for r in test["confusion_matrix"]] == [4, 4]
    # the reported test metrics are those of the written per-case probabilities at the chosen threshold
    with open(out / "predictions" / "test.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    y = np.array([int(r["label"]) for r in rows])
    p = np.array([float(r["p_PNEUMONIA"]) for r in rows])
    pred = (p >= thr).astype(int)
    assert [int(r["pred"]) for r in rows] == pred.tolist()
    assert test["accuracy"] == pytest.approx(np.mean(pred == y))
    assert test["sensitivity"] == pytest.approx(np.mean(pred[y == 1] == 1))
    assert test["specificity"] == pytest.approx(np.mean(pred[y == 0] == 0))
    # the final validation AUC is the best epoch's (the reloaded best checkpoint)
    best_auc = max(r["auc"] for r in metrics["history"]["val"])
    assert result.metrics["best_val_auc"] == pytest.approx(best_auc, abs=1e-6)

    report = (out / "report.md").read_text()
    assert "Kermany et al. 2018" in report and "Confusion matrix (test" in report and f"{thr:.4f}" in report
    for name in ("learning_curves", "roc", "confusion_test", "confusion_val", "misclassified_test"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000, name

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["task"] == "classification" and run.data.params["net.name"] == "resnet18"
    assert run.data.params["metrics.key_metric"] == "auc" and run.data.params["loss.name"] == "cross_entropy"
    assert run.data.tags["dataset.classes"] == "NORMAL,PNEUMONIA" and run.data.tags["dataset.n_test"] == "8"
    for key in ("test_accuracy", "test_auc", "test_sensitivity", "test_specificity", "test_threshold",
                "best_val_auc", "test_NORMAL_precision", "test_PNEUMONIA_f1"):
        assert key in run.data.metrics, key
    assert run.data.metrics["test_accuracy"] == pytest.approx(test["accuracy"])
    assert run.data.metrics["test_threshold"] == pytest.approx(thr)
    assert [m.step for m in client.get_metric_history(result.run_id, "val_auc")] == [1, 2]
    assert len(client.get_metric_history(result.run_id, "train_accuracy")) == 2
    assert len(client.get_metric_history(result.run_id, "val_loss")) == 2
    names = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"metrics.json", "report.md", "plots", "predictions"} <= names
    assert result.model_uri == f"runs:/{result.run_id}/model"


@pytest.fixture
def small_covid(tmp_path, datasets):
    """8 train + 4 val real COVID-QU-Ex images per class (paths with spaces) plus one empty file."""
    src = datasets / "covid_qu_ex"
    rows = read_rows(src / "labels.csv")
    picked = [r for split, n in (("train", 8), ("val", 4)) for label in ("COVID-19", "Non-COVID", "Normal")
              for r in first_rows(rows, n, sort_by="image", split=split, label=label)]
    root = link_subset(src, picked, "image", tmp_path / "covid", "labels.csv",
                       extra=[{**picked[0], "image": "broken.png"}])
    (root / "broken.png").write_bytes(b"")
    return root


def _covid_cfg(tmp_path, root, name, **train):
    d = yaml.safe_load((ROOT / "pipelines" / "covid_xray.yaml").read_text())
    d.update(name=name, output_dir=str(tmp_path / "artifacts"))
    d["data"].update(root=str(root), on_bad_image="skip", sampler="weighted")
    d["data"]["split"]["column_values"] = {"train": "train", "val": "val"}  # no test split here
    for chain in ("train", "val"):
        for t in d["transforms"][chain]:
            if t["name"] == "Resized":
                t["spatial_size"] = [28, 28]
    d["net"] = {"name": "lenet", "in_channels": 1, "num_classes": 3, "input_size": 28, "init": "xavier_uniform"}
    d["loss"] = {"name": "cross_entropy", "class_weights": "balanced"}
    d["train"].update(max_epochs=2, batch_size=8, val_batch_size=16, progress=False, device="cpu", **train)
    d["tracking"] = {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "covid_e2e",
                     "artifact_location": str(tmp_path / "mlruns"), "log_model": False}
    return d


def test_multiclass_run_skips_bad_image_then_fine_tunes_from_it(tmp_path, small_covid):
    from mlflow.tracking import MlflowClient

    first = run_pipeline(validate_config(_covid_cfg(tmp_path, small_covid, "covid_a")))
    out = first.output_dir
    manifest = json.loads((out / "manifest.json").read_text())
    assert (len(manifest["train"]), len(manifest["val"]), manifest["test"]) == (24, 12, [])
    assert [os.path.basename(p["file"]) for p in manifest["skipped"]] == ["broken.png"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["threshold"] is None and "test" not in metrics  # argmax; no test split
    assert np.sum(metrics["val"]["confusion_matrix"]) == 12
    assert metrics["key_metric"] == "balanced_accuracy"
    assert "No held-out test split" in (out / "report.md").read_text()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(first.run_id)
    assert {"data_problems.csv", "report.md"} <= {a.path for a in client.list_artifacts(first.run_id)}
    assert run.data.tags["dataset.n_skipped"] == "1" and "test_accuracy" not in run.data.metrics
    assert run.data.metrics["best_val_macro_f1"] == pytest.approx(metrics["val"]["macro_f1"])
    assert run.data.params["loss.class_weights"] == "balanced" and run.data.params["data.sampler"] == "weighted"

    best = sorted((out / "checkpoints").glob("best_*.pt"))[-1]
    second = run_pipeline(validate_config(_covid_cfg(
        tmp_path, small_covid, "covid_b", freeze_backbone_epochs=1) | {"net": {
            "name": "lenet", "in_channels": 1, "num_classes": 3, "input_size": 28, "pretrained": str(best)}}))
    report = json.loads((second.output_dir / "pretrained_report.json").read_text())
    assert report["shape_mismatch"] == [] and report["n_loaded_values"] == report["n_net_values"]
    assert client.get_run(second.run_id).data.metrics["pretrained_loaded_fraction"] == 1.0
