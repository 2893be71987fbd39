"""Cross-validation: fold assignment (unit), and short real K-fold runs read back from MLflow (parent + children)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from medpipe.config import DataConfig, SplitConfig, validate_config
from medpipe.workflow import RunResult
from medpipe.workflow.cv import fold_config, summarize_folds
from medpipe.data.cases import DataError
from medpipe.data.discovery import discover_cases, discover_classification_cases
from medpipe.data.loaders import class_counts
from medpipe.data.splits import cross_validation_folds, split_cases, split_classification_cases
from medpipe.run import main
from medpipe.workflow import run_pipeline
from tests.subsets import first_rows, link_subset, read_rows

ROOT = Path(__file__).resolve().parent.parent
MIAS = {"root": "mini_mias", "list_file": "image_labels.csv", "image_column": "file_png512",
        "classes": ["NORMAL", "BENIGN", "MALIGNANT"]}


def _images(cases):
    return [c["image"] for c in cases]


# ------------------------------------------------------------------------------------------ fold assignment
def test_stratified_folds_partition_the_pool_after_one_test_holdout(datasets):
    cfg = DataConfig(**MIAS, split={"kfold": 5, "test_fraction": 0.2, "seed": 0})
    cases, _ = discover_classification_cases(cfg)
    folds, test = cross_validation_folds(cases, cfg.split)
    assert len(folds) == 5 and len(test) == 65
    pool = sorted(set(_images(cases)) - set(_images(test)))
    vals = [_images(val) for _, val in folds]
    assert sorted(sum(vals, [])) == pool  # every non-test case in exactly one validation fold
    for train, val in folds:
        assert not set(_images(train)) & set(_images(val)) and sorted(_images(train + val)) == pool
        assert not set(_images(test)) & set(_images(train + val))
    # stratified: each fold has the pool's class ratios (within one case per class)
    pool_counts = class_counts([c for c in cases if c["image"] in set(pool)], 3)
    for _, val in folds:
        assert np.abs(class_counts(val, 3) - pool_counts / 5).max() <= 1
    # fold k is exactly the single run with fold: k, the test split the single run's
    for k in (0, 3):
        single = split_classification_cases(cases, SplitConfig(kfold=5, fold=k, test_fraction=0.2, seed=0))
        assert single == (folds[k][0], folds[k][1], test)
    # deterministic with the seed, independent of input order; another seed gives other folds
    again = cross_validation_folds(list(reversed(cases)), cfg.split)
    assert again == (folds, test)
    other, other_test = cross_validation_folds(cases, SplitConfig(kfold=5, test_fraction=0.2, seed=1))
    assert [_images(v) for _, v in other] != vals


def test_grouped_folds_never_share_a_patient(datasets):
    cfg = DataConfig(root="idc_breast_histopathology", list_file="labels.csv", image_column="path",
                     label_column="label_idc", group_column="patient_id", split_column="split",
                     split={"kfold": 3, "test_fraction": 0.2, "seed": 0,
                            "column_values": {"train": "train", "demo_test_set1": "drop",
                                              "demo_test_set2": "drop"}})
    cases, _ = discover_classification_cases(cfg)
    folds, test = cross_validation_folds(cases, cfg.split)
    test_groups = {c["group"] for c in test}
    val_groups = [{c["group"] for c in val} for _, val in folds]
    assert test_groups and all(val_groups)
    for i, (train, val) in enumerate(folds):
        assert not {c["group"] for c in train} & val_groups[i]
        assert not test_groups & (val_groups[i] | {c["group"] for c in train})
    assert sum(len(g) for g in val_groups) == len(set().union(*val_groups))  # each patient in one val fold
    assert sorted(_images([c for _, v in folds for c in v])) == sorted(set(_images(cases)) - set(_images(test)))


def test_segmentation_folds_and_fold_errors(datasets, tmp_path):
    cfg = DataConfig(root="isbi2012_em", images="train/image/*.png", labels="train/label/*.png",
                     split={"kfold": 3, "seed": 0})
    cases = discover_cases(cfg)
    folds, test = cross_validation_folds(cases, cfg.split, task="segmentation")
    assert test == [] and sorted(_images([c for _, v in folds for c in v])) == sorted(_images(cases))
    assert [len(v) for _, v in folds] == [10, 10, 10]
    assert folds[1] == split_cases(cases, SplitConfig(kfold=3, fold=1, seed=0))
    # kfold without fold is cross-validation: a single split says how to run it
    with pytest.raises(DataError, match="run_cross_validation"):
        split_cases(cases, cfg.split)
    with pytest.raises(ValueError, match="needs kfold"):
        SplitConfig(fold=1)
    assert SplitConfig(kfold=5).fold is None


def test_a_predefined_validation_split_cannot_be_cross_validated(datasets):
    cfg = DataConfig(root="covid_qu_ex", list_file="labels.csv", split_column="split",
                     split={"kfold": 3, "seed": 0})
    cases, _ = discover_classification_cases(cfg)
    with pytest.raises(DataError, match=r"defines a validation split.*column_values"):
        cross_validation_folds(cases, cfg.split)


def test_summary_is_mean_and_sample_std_over_finite_values():
    flat, summary = summarize_folds([{"test_accuracy": 0.5, "test_auc": 0.6, "best_epoch": 1.0},
                                     {"test_accuracy": 0.7, "test_auc": float("nan"), "best_epoch": 3.0},
                                     {"test_accuracy": 0.9, "test_auc": 0.8}])
    assert flat["cv_mean_test_accuracy"] == pytest.approx(0.7)
    assert flat["cv_std_test_accuracy"] == pytest.approx(0.2)  # sqrt(((-.2)^2 + 0 + .2^2) / 2)
    assert summary["test_auc"] == pytest.approx({"mean": 0.7, "std": np.sqrt(0.02), "n": 2})
    assert summary["best_epoch"]["n"] == 2 and flat["cv_mean_best_epoch"] == 2.0
    assert list(summary) == ["test_accuracy", "test_auc", "best_epoch"]
    assert summarize_folds([{"a": 1.0}])[0] == {"cv_mean_a": 1.0, "cv_std_a": 0.0}


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture
def small_mias(tmp_path, datasets):
    """8 NORMAL + 5 BENIGN + 5 MALIGNANT real mini-MIAS films (512x512 PNG) and their CSV."""
    src = datasets / "mini_mias"
    rows = read_rows(src / "image_labels.csv")
    picked = [r for label, n in (("NORMAL", 8), ("BENIGN", 5), ("MALIGNANT", 5))
              for r in first_rows(rows, n, label=label)]
    return link_subset(src, picked, "file_png512", tmp_path / "mias", "image_labels.csv")


def _mias_cfg(tmp_path, root, kfold=2, **train):
    d = yaml.safe_load((ROOT / "pipelines" / "mammography.yaml").read_text())
    assert d["data"]["split"]["kfold"] == 5 and "fold" not in d["data"]["split"]  # the pipeline cross-validates
    d["output_dir"] = str(tmp_path / "artifacts")
    d["data"].update(root=str(root))
    d["data"]["split"].update(kfold=kfold, test_fraction=0.25)
    for chain in ("train", "val"):
        for t in d["transforms"][chain]:
            if t["name"] == "Resized":
                t["spatial_size"] = [48, 48]
    d["net"].update(widen_factor=0.25)
    d["train"].update(max_epochs=1, batch_size=4, val_batch_size=8, progress=False, device="cpu", **train)
    d["tracking"] = {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "cv_e2e",
                     "artifact_location": str(tmp_path / "mlruns"), "log_model": False}
    return d


def _runs(tmp_path, experiment):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = sorted((r for r in runs if "mlflow.parentRunId" in r.data.tags), key=lambda r: r.data.tags["fold"])
    return client, parents, children


def test_cli_cross_validates_with_parent_and_child_runs(tmp_path, small_mias, capsys):
    path = tmp_path / "mammo_cv.yaml"
    path.write_text(yaml.safe_dump(_mias_cfg(tmp_path, small_mias)))
    assert main([str(path)]) == 0
    assert "cv_mean_test_accuracy" in capsys.readouterr().out

    client, parents, children = _runs(tmp_path, "cv_e2e")
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.info.run_name == "mammography-cv2"
    assert parent.data.tags["cv.kfold"] == "2" and parent.data.params["data.split.fold"] == "None"
    out = Path(parent.data.tags["output_dir"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["test"]) == 5 and len(manifest["fold_of"]) == 13
    assert sorted(manifest["fold_of"].values()) == [0] * 7 + [1] * 6
    for k, child in enumerate(children):
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED" and child.info.run_name == f"mammography-fold{k}"
        assert child.data.tags["fold"] == str(k) and child.data.params["data.split.fold"] == str(k)
        assert {"test_accuracy", "test_balanced_accuracy", "best_val_balanced_accuracy"} <= set(child.data.metrics)
        fold_dir = Path(child.data.tags["output_dir"])
        assert fold_dir == out / f"fold_{k}" and (fold_dir / "report.md").is_file()
        fold_manifest = json.loads((fold_dir / "manifest.json").read_text())
        assert fold_manifest["test"] == manifest["test"]  # every fold's model on the same held-out test split
        assert fold_manifest["val"] == manifest["folds"][k]["val"]
        assert {"metrics.json", "report.md", "plots"} <= {a.path for a in client.list_artifacts(child.info.run_id)}

    accs = [c.data.metrics["test_accuracy"] for c in children]
    assert parent.data.metrics["cv_mean_test_accuracy"] == pytest.approx(np.mean(accs))
    assert parent.data.metrics["cv_std_test_accuracy"] == pytest.approx(np.std(accs, ddof=1))
    assert "cv_mean_best_val_balanced_accuracy" in parent.data.metrics
    assert [m.step for m in client.get_metric_history(parent.info.run_id, "fold_test_accuracy")] == [0, 1]
    assert {"cv_summary.json", "cv_summary.md", "manifest.json", "config.resolved.yaml"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)}
    summary = json.loads((out / "cv_summary.json").read_text())
    assert [f["run_id"] for f in summary["folds"]] == [c.info.run_id for c in children]
    table = (out / "cv_summary.md").read_text()
    assert "| **mean** |" in table and "| **std** |" in table and "test_balanced_accuracy" in table

    # the fold models' ensemble on the held-out test split, beside the folds, with intervals
    assert "| **ensemble** |" in table
    doc = json.loads((out / "metrics.json").read_text())
    ens = doc["ensemble"]
    assert ens["n_models"] == 2 and ens["n_test"] == 5 and ens["members"] == ["fold_0", "fold_1"]
    assert "out-of-fold" in ens["threshold_rule"] and summary["ensemble"]["n_models"] == 2
    acc = doc["final"]["ensemble_test_accuracy"]
    assert parent.data.metrics["ensemble_test_accuracy"] == pytest.approx(acc)
    assert doc["final"]["ensemble_test_accuracy_ci_low"] <= acc <= doc["final"]["ensemble_test_accuracy_ci_high"]
    # independent: the mean of the folds' own test probabilities (predictions/test.csv), argmax (3 classes)
    names = MIAS["classes"]
    fold_rows = [read_rows(out / f"fold_{k}" / "predictions" / "test.csv") for k in range(2)]
    assert [r["image"] for r in fold_rows[0]] == [r["image"] for r in fold_rows[1]]
    probs = np.mean([[[float(r[f"p_{c}"]) for c in names] for r in rows] for rows in fold_rows], axis=0)
    labels = np.array([int(r["label"]) for r in fold_rows[0]])
    assert acc == pytest.approx(float(np.mean(probs.argmax(1) == labels)))


def test_crashing_fold_fails_child_and_parent(tmp_path, small_mias, monkeypatch):
    from medpipe import tracking

    original = tracking.Tracker.attach

    def attach_and_crash(self, engines):
        original(self, engines)
        if self.cfg.tags.get("fold") == "1":
            raise RuntimeError("simulated crash in fold 1")

    monkeypatch.setattr(tracking.Tracker, "attach", attach_and_crash)
    d = _mias_cfg(tmp_path, small_mias)
    d["net"] = {"name": "lenet", "in_channels": 1, "num_classes": 3, "input_size": 48}
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pipeline(validate_config(d))
    _, parents, children = _runs(tmp_path, "cv_e2e")
    assert [c.info.status for c in children] == ["FINISHED", "FAILED"]
    assert parents[0].info.status == "FAILED" and parents[0].data.tags["cv.failed_fold"] == "1"
    assert "cv_mean_test_accuracy" in parents[0].data.metrics  # the summary of the fold that finished


def test_segmentation_cross_validates_too(tmp_path, datasets):
    src = datasets / "isbi2012_em" / "train"
    root = tmp_path / "em"
    for sub in ("image", "label"):
        (root / sub).mkdir(parents=True)
        for n in range(4):
            os.symlink(src / sub / f"{n}.png", root / sub / f"{n}.png")
    load = {"name": "LoadImaged", "keys": ["image", "label"], "reader": "PILReader", "reverse_indexing": False}
    chan = {"name": "EnsureChannelFirstd", "keys": ["image", "label"], "channel_dim": "no_channel"}
    scale = {"name": "ScaleIntensityRanged", "keys": ["image"], "a_min": 0, "a_max": 255, "b_min": 0.0,
             "b_max": 1.0, "clip": True}
    lab = {"name": "MapLabelValued", "keys": ["label"], "orig_labels": [0, 255], "target_labels": [0, 1]}
    size = [{"name": "Resized", "keys": ["image"], "spatial_size": [64, 64], "mode": "area"},
            {"name": "Resized", "keys": ["label"], "spatial_size": [64, 64], "mode": "nearest"}]
    cfg = validate_config({
        "name": "em_cv", "output_dir": str(tmp_path / "artifacts"),
        "data": {"root": str(root), "images": "image/*.png", "labels": "label/*.png", "split": {"kfold": 2}},
        "transforms": {"train": [load, chan, scale, lab, *size], "val": [load, chan, scale, lab, *size]},
        "net": {"name": "basic_unet", "features": [4, 4, 4, 4, 4, 4]},
        "train": {"max_epochs": 1, "batch_size": 2, "device": "cpu", "progress": False},
        "infer": {"roi_size": [64, 64], "splits": ["val"]},
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "em_cv",
                     "artifact_location": str(tmp_path / "mlruns"), "log_model": False},
    })
    result = run_pipeline(cfg)
    assert isinstance(result, RunResult) and result.kfold == 2 and len(result.folds) == 2
    assert [len(json.loads((r.output_dir / "manifest.json").read_text())["val"]) for r in result.folds] == [2, 2]
    dice = [r.metrics["best_val_dice"] for r in result.folds]
    assert result.metrics["cv_mean_best_val_dice"] == pytest.approx(np.mean(dice))
    assert result.summary["best_val_dice"]["n"] == 2
    _, parents, children = _runs(tmp_path, "em_cv")
    assert parents[0].info.run_id == result.run_id and [c.info.run_id for c in children] == [
        r.run_id for r in result.folds]
    assert fold_config(cfg, 1).data.split.fold == 1 and cfg.data.split.fold is None  # the copy, not the original


def test_segmentation_ensemble_on_a_predefined_test_split(tmp_path, datasets):
    """Two fold models of 4 real EM pairs predict 2 held-out test pairs together (mean of the softmax maps)."""
    src = datasets / "isbi2012_em" / "train"
    root = tmp_path / "em"
    rows = []
    for sub in ("image", "label"):
        (root / sub).mkdir(parents=True)
    for n in range(6):
        for sub in ("image", "label"):
            os.symlink(src / sub / f"{n}.png", root / sub / f"{n}.png")
        rows.append({"image": f"image/{n}.png", "label": f"label/{n}.png", "split": "test" if n >= 4 else "train"})
    with open(root / "list.csv", "w") as fh:
        fh.write("image,label,split\n" + "".join(f"{r['image']},{r['label']},{r['split']}\n" for r in rows))
    load = {"name": "LoadImaged", "keys": ["image", "label"], "reader": "PILReader", "reverse_indexing": False}
    chan = {"name": "EnsureChannelFirstd", "keys": ["image", "label"], "channel_dim": "no_channel"}
    scale = {"name": "ScaleIntensityRanged", "keys": ["image"], "a_min": 0, "a_max": 255, "b_min": 0.0,
             "b_max": 1.0, "clip": True}
    lab = {"name": "MapLabelValued", "keys": ["label"], "orig_labels": [0, 255], "target_labels": [0, 1]}
    size = [{"name": "Resized", "keys": ["image"], "spatial_size": [64, 64], "mode": "area"},
            {"name": "Resized", "keys": ["label"], "spatial_size": [64, 64], "mode": "nearest"}]
    cfg = validate_config({
        "name": "em_ens", "output_dir": str(tmp_path / "artifacts"),
        "data": {"root": str(root), "list_file": "list.csv", "split_column": "split", "split": {"kfold": 2}},
        "transforms": {"train": [load, chan, scale, lab, *size], "val": [load, chan, scale, lab, *size]},
        "net": {"name": "basic_unet", "features": [4, 4, 4, 4, 4, 4]},
        "train": {"max_epochs": 1, "batch_size": 2, "device": "cpu", "progress": False},
        "metrics": {"names": ["dice", "pixel_accuracy"], "key_metric": "dice", "intervals": {"n_resamples": 100}},
        "infer": {"roi_size": [64, 64], "splits": ["test"], "save_probabilities": True},
        "tracking": {"enabled": False},
    })
    result = run_pipeline(cfg)
    out = result.output_dir
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["ensemble"]["n_models"] == 2 and doc["ensemble"]["n_test"] == 2
    per_case = read_rows(out / "ensemble" / "test_per_case.csv")
    assert [Path(r["image"]).name for r in per_case] == ["4.png", "5.png"]
    from PIL import Image

    for r in per_case:  # independent: the mean of the folds' saved foreground probabilities, thresholded
        stem = Path(r["image"]).stem
        p1 = np.mean([np.load(out / f"fold_{k}" / "predictions" / "test" / f"{stem}_prob.npy") for k in (0, 1)], 0)
        truth = np.asarray(Image.open(r["image"].replace("/image/", "/label/"))) > 127
        pred = p1 > 0.5
        assert p1.shape == (512, 512)
        assert float(r["dice"]) == pytest.approx(2 * np.sum(pred & truth) / (pred.sum() + truth.sum()), abs=1e-4)
        assert float(r["pixel_accuracy"]) == pytest.approx(np.mean(pred == truth), abs=1e-4)
    assert result.metrics["ensemble_test_dice"] == pytest.approx(np.mean([float(r["dice"]) for r in per_case]))
    assert "ensemble_test_dice_ci_low" in result.metrics
    for k in (0, 1):  # every fold scored the labelled test split too, beside which the ensemble is reported
        assert "test_dice" in result.folds[k].metrics
    assert "| **ensemble** |" in (out / "cv_summary.md").read_text()
