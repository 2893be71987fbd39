"""End to end histopathology: LeNet on a few dozen real IDC patches, split by patient with named test patients,
then the tile-streamed heatmap of the real 2801 x 2351 region of patient 8863, scored against its patch label
mask and read back from MLflow."""

import csv
import json
import os
from pathlib import Path

import pytest
import yaml

from medpipe.config import validate_config
from medpipe.data.cases import DataError
from medpipe.data.splits import split_classification_cases
from medpipe.workflow import run_pipeline

ROOT = Path(__file__).resolve().parent.parent
# (patient, label_idc) -> patches taken; 8863 is the slide's patient, 8975 the demo test sets' patient
PICK = {("8864", "0"): 3, ("8864", "1"): 3, ("8865", "0"): 3, ("8865", "1"): 3, ("8867", "0"): 3, ("8867", "1"): 3,
        ("8913", "0"): 4, ("8917", "1"): 4, ("8956", "1"): 4, ("8863", "0"): 3, ("8863", "1"): 3,
        ("8975", "1"): 2}


@pytest.fixture
def small_idc(tmp_path, datasets):
    """A data root with 44 real patches of 11 patients (incl. 2 + 2 demo test patches) and the slide region."""
    src = datasets / "idc_breast_histopathology"
    with open(src / "labels.csv", newline="") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: r["path"])
    picked = []
    for (patient, label), n in PICK.items():
        picked += [r for r in rows if r["split"] == "train" and r["patient_id"] == patient
                   and r["label_idc"] == label][:n]
    for split in ("demo_test_set1", "demo_test_set2"):
        picked += [r for r in rows if r["split"] == split][:2]
    root = tmp_path / "idc"
    for r in picked:
        (root / r["path"]).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(src / r["path"], root / r["path"])
    os.symlink(src / "reconstructed_region", root / "reconstructed_region")
    with open(root / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(picked)
    return root


def _cfg(tmp_path, root):
    d = yaml.safe_load((ROOT / "pipelines" / "histo_lenet.yaml").read_text())
    d["output_dir"] = str(tmp_path / "artifacts")
    d["data"]["root"] = str(root)
    d["train"].update(max_epochs=1, batch_size=8, val_batch_size=64, progress=False, device="cpu")
    d["tracking"] = {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "histo_e2e",
                     "artifact_location": str(tmp_path / "mlruns"), "log_model": False}
    return d


def test_histo_lenet_patients_then_scored_slide_heatmap(tmp_path, small_idc):
    from mlflow.tracking import MlflowClient

    result = run_pipeline(validate_config(_cfg(tmp_path, small_idc)))
    out = result.output_dir

    manifest = json.loads((out / "manifest.json").read_text())
    groups = {s: {c["group"] for c in manifest[s]} for s in ("train", "val", "test")}
    assert groups["test"] == {"8863", "8975"}  # split.test_groups: the slide's and the demo sets' patients
    assert not (groups["train"] & groups["val"]) and not (groups["train"] | groups["val"]) & groups["test"]
    assert len(manifest["test"]) == 6 + 2 + 4 and sum("demo_test_set" in c["image"] for c in manifest["test"]) == 4
    assert len(manifest["train"]) + len(manifest["val"]) == 30

    metrics = json.loads((out / "metrics.json").read_text())
    (slide,) = metrics["slides"]
    score = slide["score"]
    # the real region: 979 labelled 50x50 cells, 207 IDC; every cell scored once
    assert (score["n_patches"], score["n_pos"], score["n_neg"]) == (979, 207, 772)
    assert slide["shape"] == [2351, 2801] and slide["settings"]["input_size"] == [28, 28]
    assert 0 < slide["windows_run"] < slide["windows"] == 48 * 57  # background windows skipped
    assert 0.0 <= score["auc"] <= 1.0 and metrics["final"]["slide_auc"] == pytest.approx(score["auc"])
    assert result.metrics["slide_auc"] == pytest.approx(score["auc"])
    for png in (slide["heatmap_png"], slide["overlay_png"]):
        assert (out / png).stat().st_size > 1000
    # geometry: the heatmap cell of each test patch of patient 8863 (file x/y are 1-based top-left corners)
    # scores what the classifier gave the patch itself (up to the mosaic's JPEG re-encoding)
    import re

    import numpy as np
    import zarr
    from PIL import Image

    from medpipe.inference.slide_scoring import score_heatmap

    heat = zarr.open_group(str(out / "slides" / "patient8863_mosaic_heatmap.zarr"), mode="r")["prob"][1]
    mask = np.asarray(Image.open(small_idc / "reconstructed_region" / "patient8863_patch_label_mask.png"))
    cells = score_heatmap(np.asarray(heat), mask, 50, return_patches=True)
    cell = {tuple(yx): s for yx, s in zip(cells["patch_yx"].tolist(), cells["patch_score"])}
    with open(out / "predictions" / "test.csv", newline="") as fh:
        pairs = [(float(r["p_1"]), cell[(int(m[2]) - 1, int(m[1]) - 1)]) for r in csv.DictReader(fh)
                 if (m := re.search(r"8863_idx5_x(\d+)_y(\d+)", r["image"]))]
    assert len(pairs) == 6
    assert np.allclose(*zip(*pairs), atol=0.05), pairs

    report = (out / "report.md").read_text()
    assert "## Slide heatmaps" in report and "979 (207 / 772)" in report and "Janowczyk" in report

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["slide_auc"] == pytest.approx(score["auc"])
    assert run.data.metrics["slide_tiles_per_second"] > 0 and run.data.metrics["slide_seconds"] > 0
    assert "test_auc" in run.data.metrics and run.data.params["slide_infer.roi_size"] == "50"
    logged = {a.path for a in client.list_artifacts(result.run_id, "slides")}
    assert {"slides/patient8863_mosaic_heatmap.png", "slides/patient8863_mosaic_overlay.png",
            "slides/slides.json"} <= logged


def test_missing_slide_fails_before_training(tmp_path, small_idc):
    d = _cfg(tmp_path, small_idc)
    d["slide_infer"]["slides"][0]["image"] = "reconstructed_region/nope.jpg"
    with pytest.raises(FileNotFoundError, match=r"slide_infer\.slides\.0\.image: .*nope\.jpg not found"):
        run_pipeline(validate_config(d))


def test_unknown_test_group_is_named(tmp_path, small_idc):
    d = _cfg(tmp_path, small_idc)
    d["data"]["split"]["test_groups"] = ["8863", "9999"]
    cfg = validate_config(d)
    from medpipe.data.discovery import discover_classification_cases

    cases, _ = discover_classification_cases(cfg.data)
    with pytest.raises(DataError, match=r"test_groups: group\(s\) \['9999'\] not found"):
        split_classification_cases(cases, cfg.data.split)


def test_real_patient_split_of_the_bundled_pipeline(datasets):
    """The histo_lenet split of all 2,112 real rows: 17 patients train/val, patients 8863 + 8975 test."""
    from medpipe.config import load_config
    from medpipe.data.discovery import discover_classification_cases

    cfg = load_config(ROOT / "pipelines" / "histo_lenet.yaml")
    cases, classes = discover_classification_cases(cfg.data)
    train, val, test = split_classification_cases(cases, cfg.data.split)
    assert classes == ["0", "1"] and len(cases) == 2112  # the demo test rows are kept, in test
    assert {c["group"] for c in test} == {"8863", "8975"}
    assert (len(test), sum(c["label"] for c in test)) == (507, 283)  # 224 non-IDC + 283 IDC
    tv = [{c["group"] for c in part} for part in (train, val)]
    assert not tv[0] & tv[1] and len(tv[0] | tv[1]) == 17 and len(train) + len(val) == 1605
