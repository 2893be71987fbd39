"""``python -m medpipe.compare``: two fake run folders of real Kermany test images (classification) and real ISBI-2012
images (segmentation), with configs resolved from the shipped pipelines, manifests, metrics.json and predictions
CSVs as the workflow writes them; numbers checked against sklearn and hand-written bootstrap loops."""

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from medpipe.compare import compare_runs, main
from medpipe.config import load_config, resolved_dict
from medpipe.metrics import (add_intervals, classification_intervals, classification_metrics, delong_test,
                             flat_classification_metrics)
from medpipe.metrics.intervals import resample_indices
from medpipe.runs import RunFolder
from medpipe.tracking import client_for
from medpipe.workflow.report import write_predictions_csv

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"
CLASSES = ["NORMAL", "PNEUMONIA"]


def _cxr_cases(datasets, n_normal=30, n_pneumonia=45):
    root = datasets / "kermany_pneumonia_cxr" / "test"
    cases = []
    for label, name, n in ((0, "NORMAL", n_normal), (1, "PNEUMONIA", n_pneumonia)):
        for path in sorted((root / name).iterdir())[:n]:
            cases.append({"image": str(path), "label": label, "split": "test"})
    return cases


def _cls_run(tmp, name, cases, p1, threshold, with_intervals=False):
    """A classification run folder as medpipe.workflow writes it (config, manifest, metrics.json, predictions)."""
    run = RunFolder(tmp / name)
    run.path.mkdir(parents=True)
    run.write_config(resolved_dict(load_config(PIPELINES / "pneumonia_xray.yaml")))
    run.write_manifest({"train": [], "val": cases[:4], "test": cases, "skipped": [], "classes": CLASSES})
    labels = np.array([c["label"] for c in cases])
    probs = np.round(np.stack([1 - p1, p1], 1), 6)
    result = classification_metrics(labels, probs, threshold=threshold, class_names=CLASSES)
    final = flat_classification_metrics(result, "test_")
    if with_intervals:
        add_intervals(final, classification_intervals(labels, probs, threshold, CLASSES, n_resamples=200, seed=9),
                      "test_")
    run.write_metrics({"final": final, "classes": CLASSES, "threshold": threshold, "threshold_rule": "youden",
                       "test": result})
    run.predictions_dir.mkdir()
    sp = SimpleNamespace(images=[c["image"] for c in cases], labels=labels, probs=probs)
    write_predictions_csv(run.predictions_dir / "test.csv", sp, (probs[:, 1] >= threshold).astype(int), CLASSES)
    return run


@pytest.fixture
def cls_runs(tmp_path, datasets):
    cases = _cxr_cases(datasets)
    y = np.array([c["label"] for c in cases])
    rng = np.random.default_rng(4)
    latent = rng.normal(size=len(y))  # what both models see: their errors are correlated
    p_a = 1 / (1 + np.exp(-(1.0 * (2 * y - 1) + latent + 0.8 * rng.normal(size=len(y)))))
    p_b = 1 / (1 + np.exp(-(1.6 * (2 * y - 1) + latent + 0.5 * rng.normal(size=len(y)))))
    a = _cls_run(tmp_path, "pneumonia_xray-20261201-090000", cases, p_a, 0.62)
    b = _cls_run(tmp_path, "pneumonia_xray_resnet18-20261201-100000", cases, p_b, 0.48, with_intervals=True)
    return a, b, y


def _csv_probs(run):
    with open(run.predictions_dir / "test.csv", newline="") as fh:
        return np.array([float(r["p_PNEUMONIA"]) for r in csv.DictReader(fh)])


def test_classification_numbers_markdown_and_mlflow(cls_runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root of the new experiment
    a, b, y = cls_runs
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    doc = compare_runs([str(a.path), str(b.path)], out_dir=tmp_path / "cmp", tracking_uri=uri, n_resamples=300,
                       seed=1)
    p_a, p_b = _csv_probs(a), _csv_probs(b)
    assert doc["split"] == "test" and doc["n_cases"] == len(y) and doc["task"] == "classification"
    assert doc["thresholds"] == {"A": 0.62, "B": 0.48}
    # side by side: A's intervals computed here, B's read from its metrics.json
    ma, mb = doc["metrics"]["A"], doc["metrics"]["B"]
    assert ma["auc"]["value"] == pytest.approx(roc_auc_score(y, p_a), abs=1e-12)
    assert ma["sensitivity"]["value"] == pytest.approx(np.mean(p_a[y == 1] >= 0.62))
    assert ma["auc"]["interval"] == "bootstrap" and mb["auc"]["interval"] == "metrics.json"
    stored = json.loads(b.metrics_file.read_text())["final"]
    assert (mb["f1"]["low"], mb["f1"]["high"]) == (stored["test_f1_ci_low"], stored["test_f1_ci_high"])
    # paired bootstrap difference of the accuracy, by hand with sklearn on the same stratified resamples
    diff = doc["differences"][0]
    assert (diff["a"], diff["b"]) == ("A", "B")
    idx = resample_indices(len(y), strata=y, n_resamples=300, seed=1)
    reps = np.array([accuracy_score(y[i], p_b[i] >= 0.48) - accuracy_score(y[i], p_a[i] >= 0.62) for i in idx])
    acc = diff["metrics"]["accuracy"]
    assert acc["difference"] == pytest.approx(accuracy_score(y, p_b >= 0.48) - accuracy_score(y, p_a >= 0.62))
    assert (acc["low"], acc["high"]) == pytest.approx((np.percentile(reps, 2.5), np.percentile(reps, 97.5)))
    assert acc["p_value"] == pytest.approx(min(1.0, 2 * np.mean(reps <= 0)))
    assert diff["delong"] == pytest.approx(delong_test(y, p_a, p_b))
    assert diff["delong"]["auc_a"] == pytest.approx(0.941, abs=5e-4) and diff["delong"]["auc_b"] == pytest.approx(
        0.987, abs=5e-4) and diff["delong"]["p_value"] < 0.05
    # files
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "B minus A" in md and "DeLong's test" in md and "![ROC curves](roc.png)" in md
    assert (tmp_path / "cmp" / "roc.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "cmp" / "comparison.json").read_text())["mlflow_run_id"] == doc["mlflow_run_id"]
    # the MLflow run
    client = client_for(uri)
    exp = client.get_experiment_by_name("compare")
    run = client.get_run(doc["mlflow_run_id"])
    assert run.info.experiment_id == exp.experiment_id and run.info.status == "FINISHED"
    assert run.data.metrics["B_minus_A_accuracy"] == pytest.approx(acc["difference"])
    assert run.data.tags["compare.run_A"] == str(a.path)
    assert {f.path for f in client.list_artifacts(run.info.run_id)} >= {"comparison.md", "comparison.json", "roc.png"}


def test_refuses_runs_on_different_cases(cls_runs, tmp_path):
    a, b, _ = cls_runs
    manifest = json.loads(b.manifest_file.read_text())
    dropped = manifest["test"][5]["image"]
    manifest["test"][5] = dict(manifest["test"][5], image=dropped.replace("IM-", "XX-"))
    b.write_manifest(manifest)
    with pytest.raises(ValueError) as err:
        compare_runs([str(a.path), str(b.path)], out_dir=tmp_path / "cmp", track=False)
    msg = str(err.value)
    assert str(a.path) in msg and str(b.path) in msg and dropped in msg and "different test cases" in msg
    assert not (tmp_path / "cmp").exists()


def test_refuses_missing_predictions_and_single_run(cls_runs, tmp_path, capsys):
    a, b, _ = cls_runs
    (b.predictions_dir / "test.csv").unlink()
    with pytest.raises(ValueError, match="test.csv not found"):
        compare_runs([str(a.path), str(b.path)], split="test", track=False)
    assert main([str(a.path)]) == 2
    assert "at least two runs" in capsys.readouterr().err


def test_a_run_id_is_found_in_the_store(cls_runs, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)
    a, b, _ = cls_runs
    uri = f"sqlite:///{tmp_path}/ids.db"
    client = mlflow.MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("x"), tags={"output_dir": str(b.path)}).info.run_id
    assert main([str(a.path), run_id, "--tracking-uri", uri, "--no-tracking", "--resamples", "100",
                 "-o", str(tmp_path / "ids")]) == 0
    doc = json.loads((tmp_path / "ids" / "comparison.json").read_text())
    assert doc["runs"][1]["folder"] == str(b.path) and doc["mlflow_run_id"] is None


def _seg_run(tmp, name, images, values, final):
    run = RunFolder(tmp / name)
    run.path.mkdir(parents=True)
    run.write_config(resolved_dict(load_config(PIPELINES / "em_unet.yaml")))
    labels = [str(Path(i).parent.parent / "label" / Path(i).name) for i in images]
    run.write_manifest({"train": [], "val": [{"image": i, "label": lab} for i, lab in zip(images, labels)],
                        "test": [], "skipped": []})
    run.write_metrics({"final": final})
    run.predictions_dir.mkdir()
    with open(run.predictions_dir / "val_per_case.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image"] + list(values))
        for k, img in enumerate(images):
            w.writerow([img] + ["" if math.isnan(v[k]) else f"{v[k]:.6f}" for v in values.values()])
    return run


def test_segmentation_paired_mean_differences(tmp_path, datasets):
    images = [str(datasets / "isbi2012_em" / "train" / "image" / f"{n}.png") for n in range(12)]
    rng = np.random.default_rng(2)
    dice_a = np.round(rng.uniform(0.88, 0.94, 12), 6)
    dice_b = np.round(dice_a + rng.normal(0.01, 0.004, 12), 6)
    hd_a = np.round(rng.uniform(3, 9, 12), 6)
    hd_a[3] = np.nan  # an empty mask: HD95 undefined for that case
    hd_b = np.round(hd_a - 0.5, 6)
    a = _seg_run(tmp_path, "em_unet-20261201-054000", images, {"dice": dice_a, "hd95": hd_a},
                 {"best_val_dice": 0.91})
    b = _seg_run(tmp_path, "em_unet-20261201-062838", images[::-1], {"dice": dice_b[::-1], "hd95": hd_b[::-1]},
                 {"best_val_dice": 0.92, "best_val_dice_ci_low": 0.9, "best_val_dice_ci_high": 0.93})
    doc = compare_runs([str(a.path), str(b.path)], out_dir=tmp_path / "seg", n_resamples=400, seed=3, track=False)
    assert doc["task"] == "segmentation" and doc["split"] == "val"  # no test predictions: val
    assert doc["metrics"]["A"]["hd95"]["value"] == pytest.approx(np.nanmean(hd_a))
    # value and interval come together: from metrics.json when it has the interval, else from the CSV
    assert doc["metrics"]["A"]["dice"]["value"] == pytest.approx(dice_a.mean())
    assert doc["metrics"]["A"]["dice"]["interval"] == "bootstrap"
    assert doc["metrics"]["B"]["dice"] == {"value": 0.92, "low": 0.9, "high": 0.93, "interval": "metrics.json"}
    d = doc["differences"][0]["metrics"]
    assert d["dice"]["difference"] == pytest.approx(dice_b.mean() - dice_a.mean())  # rows matched by image
    idx = resample_indices(12, n_resamples=400, seed=3)
    reps = np.array([dice_b[i].mean() - dice_a[i].mean() for i in idx])
    assert (d["dice"]["low"], d["dice"]["high"]) == pytest.approx((np.percentile(reps, 2.5), np.percentile(reps, 97.5)))
    assert d["dice"]["low"] > 0 and d["dice"]["p_value"] == 0.0
    assert d["hd95"]["difference"] == pytest.approx(-0.5) and d["hd95"]["high"] == pytest.approx(-0.5)
    assert "B minus A" in (tmp_path / "seg" / "comparison.md").read_text()
    assert not (tmp_path / "seg" / "roc.png").exists()
