"""medpipe.plan on small real subsets: layouts, fingerprints against hand-checked values, the planned YAML (comments,
validation, one short epoch through medpipe.run), the budget rule with a measured (deliberately slow) step, and
clear errors.

Hand-checked values were read with Pillow / nibabel directly (not through medpipe): EM labels 0-3 are 512x512,
values {0, 255}, non-zero fractions 0.78069, 0.77251, 0.75370, 0.75475; hippocampus 001/003/004/006 have shapes
35x51x35, 34x52x35, 36x52x38, 35x52x34 at 1 mm, labels 1 / 2 counting 1324+1550+1832+2314 / 1624+1803+1866+1949
of 257371 voxels; Kermany JPEGs are 224x224x3 with three equal channels; IDC patches 50x50x3 RGB.
"""

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from medpipe.config import load_config
from medpipe.plan import (BudgetError, LayoutError, Timing, compute_fingerprint, detect_layout, epochs_for_budget,
                          parse_budget, plan, to_yaml)
from medpipe.plan.planner import split_cases_of
from tests.subsets import link_subset, read_rows

HIPPO = ("001", "003", "004", "006")


@pytest.fixture
def em_folders(tmp_path, datasets):
    root = tmp_path / "em"
    for sub in ("image", "label"):
        (root / "train" / sub).mkdir(parents=True)
        for n in range(4):
            os.symlink(datasets / "isbi2012_em" / "train" / sub / f"{n}.png", root / "train" / sub / f"{n}.png")
    return root


@pytest.fixture
def msd_subset(tmp_path, datasets):
    root = tmp_path / "hippo"
    obj = json.loads((datasets / "msd_hippocampus" / "dataset.json").read_text())
    obj["training"] = [r for r in obj["training"] if any(f"_{n}." in r["image"] for n in HIPPO)]
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
        for n in HIPPO:
            os.symlink(datasets / "msd_hippocampus" / sub / f"hippocampus_{n}.nii.gz",
                       root / sub / f"hippocampus_{n}.nii.gz")
    (root / "dataset.json").write_text(json.dumps(obj))
    return root


@pytest.fixture
def class_folders(tmp_path, datasets):
    root = tmp_path / "cxr"
    for cls in ("NORMAL", "PNEUMONIA"):
        (root / cls).mkdir(parents=True)
        for f in sorted((datasets / "kermany_pneumonia_cxr" / "train" / cls).iterdir())[:8]:
            os.symlink(f, root / cls / f.name)
    return root


@pytest.fixture
def idc_list(tmp_path, datasets):
    src = datasets / "idc_breast_histopathology"
    rows = read_rows(src / "labels.csv")
    pick = []
    for patient in ("8863", "8864", "8865", "8867", "8975"):  # the patients with patches of both classes
        for label in ("0", "1"):
            pick += [r for r in rows if r["patient_id"] == patient and r["label_idc"] == label][:3]
    return link_subset(src, pick, "path", tmp_path / "idc", "labels.csv")


def test_layouts_are_detected(em_folders, msd_subset, class_folders, idc_list):
    em = detect_layout(em_folders)
    assert em.task == "segmentation" and em.data["images"] == "train/image/*.png"
    assert em.data["labels"] == "train/label/*.png"
    msd = detect_layout(msd_subset)
    assert msd.data["list_file"] == "dataset.json" and msd.modality == ["MRI"]
    assert msd.label_names == ["background", "Anterior", "Posterior"]
    cxr = detect_layout(class_folders)
    assert cxr.task == "classification" and cxr.data["classes"] == ["NORMAL", "PNEUMONIA"]
    idc = detect_layout(idc_list / "labels.csv")
    assert idc.task == "classification" and idc.data["image_column"] == "path"
    assert idc.data["label_column"] == "label_idc" and idc.data["group_column"] == "patient_id"
    assert idc.data["split_column"] == "split" and idc.data["classes"] == ["0", "1"]
    with pytest.raises(LayoutError, match="--task classification.*segmentation"):
        detect_layout(em_folders, "classification")


def test_errors_name_the_input(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError, match="empty.*neither image"):
        detect_layout(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        detect_layout(tmp_path / "nowhere")
    (tmp_path / "l.csv").write_text("a,b\n1,2\n")
    with pytest.raises(LayoutError, match="l.csv: no column holds image paths"):
        detect_layout(tmp_path / "l.csv")
    assert parse_budget("15min") == 900 and parse_budget("1h") == 3600 and parse_budget("90s") == 90
    assert parse_budget("2") == 120
    with pytest.raises(ValueError, match="--budget 'soon'"):
        parse_budget("soon")


def _fingerprint(root, task=None):
    layout = detect_layout(root, task)
    train, val, test, cases, classes = split_cases_of(layout)
    return compute_fingerprint(cases, layout.task, classes, modality=layout.modality)


def test_fingerprint_2d_grey_segmentation(em_folders):
    fp = _fingerprint(em_folders)
    assert fp["dimensionality"] == 2 and fp["shape"]["median"] == [512, 512] and fp["num_cases"] == 4
    assert fp["channel_kinds"] == {"grey": 4} and fp["bits"] == [8] and fp["label_values"] == [0, 255]
    assert fp["foreground_fraction"] == pytest.approx(np.mean([0.78069, 0.77251, 0.75370, 0.75475]), abs=1e-5)
    assert fp["files"] == 8 and fp["total_bytes"] > 0 and fp["bad_files"] == []
    assert 0 <= fp["intensity_foreground"]["min"] <= fp["intensity_foreground"]["max"] <= 255


def test_fingerprint_3d_mri(msd_subset):
    fp = _fingerprint(msd_subset)
    assert fp["dimensionality"] == 3 and fp["modality"] == ["MRI"]
    assert fp["shape"]["median"] == [35, 52, 35] and fp["shape"]["max"] == [36, 52, 38]
    assert fp["spacing_mm"]["median"] == [1, 1, 1] and fp["anisotropy"] == 1
    assert fp["label_values"] == [0, 1, 2]
    assert fp["label_fraction"]["1"] == pytest.approx(7020 / 257371)
    assert fp["label_fraction"]["2"] == pytest.approx(7242 / 257371)
    assert fp["objects"]["1"]["objects_per_case_median"] >= 1


def test_fingerprint_classification_folders_grey_stored_as_rgb(class_folders):
    fp = _fingerprint(class_folders)
    assert fp["task"] == "classification" and fp["class_counts"] == {"NORMAL": 8, "PNEUMONIA": 8}
    assert fp["channel_kinds"] == {"grey-as-rgb": 16} and fp["shape"]["median"] == [224, 224]
    assert fp["imbalance"] == 1 and fp["groups"] is None


def test_fingerprint_rgb_list_with_patients(idc_list):
    fp = _fingerprint(idc_list / "labels.csv")
    assert fp["channel_kinds"].get("rgb", 0) >= 25 and fp["groups"] == 5
    assert fp["class_counts"] == {"0": 15, "1": 15}
    assert fp["shape"]["median"] == [50, 50]


def _run_one_epoch(path: Path, tmp_path: Path, extra=()):
    from medpipe.workflow import run_pipeline

    cfg = load_config(path, ["train.max_epochs=1", "train.val_interval=1", "train.progress=false",
                             "train.device=cpu", f"output_dir={tmp_path / 'artifacts'}",
                             f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                             f"tracking.artifact_location={tmp_path / 'mlruns'}", *extra])
    result = run_pipeline(cfg)
    metrics = json.loads((result.output_dir / "metrics.json").read_text())
    assert len(metrics["history"]["train"]) == 1 and np.isfinite(metrics["history"]["train"][0]["train_loss"])
    return result


def _plan_and_check(root, tmp_path, task=None, budget=3600.0):
    out = tmp_path / "planned.yaml"
    fp_path = tmp_path / "planned.fingerprint.json"
    p = plan(root, task, budget, n_steps=1, fingerprint_path=str(fp_path))
    out.write_text(p.yaml)
    fp_path.write_text(json.dumps(p.fingerprint))
    assert yaml.safe_load(p.yaml) == p.data  # the comments change nothing
    cfg = load_config(out)
    assert cfg.train.max_epochs == p.config.train.max_epochs >= 1
    assert "# " in p.yaml.split("max_epochs:")[1].splitlines()[0]  # the budget says why
    assert "measured" in p.why["train.max_epochs"]
    return p, out


def test_plan_3d_mri_matches_nnunet_and_runs(msd_subset, tmp_path):
    p, out = _plan_and_check(msd_subset, tmp_path)
    cfg = p.config
    assert cfg.net.name == "dyn_unet" and cfg.net.patch_size == [40, 56, 40]  # nnU-Net 2.8.1's own plan
    names = [t.name for t in cfg.transforms.train]
    assert "Spacingd" not in names and "NormalizeIntensityd" in names and "Orientationd" in names
    assert cfg.metrics.class_names == ["background", "anterior", "posterior"]
    assert "median shape 35x52x35 -> patch 40x56x40" in p.yaml
    result = _run_one_epoch(out, tmp_path, ["net.filters=[4,8,16,32]"])
    assert (result.output_dir / "fingerprint.json").is_file()  # report.fingerprint: logged with the run
    assert list((result.output_dir / "predictions" / "val").glob("*.nii.gz"))


def test_plan_2d_grey_segmentation_runs(em_folders, tmp_path):
    p, out = _plan_and_check(em_folders, tmp_path)
    steps = {t.name: t.model_extra for t in p.config.transforms.train}
    assert steps["MapLabelValued"]["orig_labels"] == [0, 255]
    assert steps["ScaleIntensityRanged"]["a_max"] == 255 and p.config.net.patch_size == [256, 256]
    _run_one_epoch(out, tmp_path, ["net.filters=[4,8,16,32,32,32,32]"])


@pytest.mark.parametrize("fixture", ["class_folders", "idc_list"])
def test_plan_classification_runs(fixture, request, tmp_path):
    root = request.getfixturevalue(fixture)
    src = root / "labels.csv" if fixture == "idc_list" else root
    p, out = _plan_and_check(src, tmp_path, budget=600.0)
    cfg = p.config
    names = [t.name for t in cfg.transforms.train]
    if fixture == "class_folders":
        assert "ToGrayscaled" in names and cfg.net.in_channels == 1 and "RandFlipd" not in names
        assert p.tried[0]["size"] == 224  # the largest candidate first
    else:
        assert cfg.net.in_channels == 3 and "RandRotate90d" in names and cfg.data.group_column == "patient_id"
    assert cfg.metrics.key_metric == "auc"
    _run_one_epoch(out, tmp_path)


class _Slow:
    """A network whose every forward call first sleeps ``delay`` seconds (a fake slow step)."""

    def __init__(self, net, delay):
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, x):
                time.sleep(delay)
                return self.net(x)

        self.module = Wrapped()


def test_budget_scales_epochs_with_the_measured_step(msd_subset):
    from medpipe.config import validate_config
    from medpipe.nets import build_net
    from medpipe.plan.budget import measure
    from medpipe.plan.rules import plan_sections

    layout = detect_layout(msd_subset)
    train, val, test, cases, _ = split_cases_of(layout)
    fp = compute_fingerprint(cases, "segmentation", modality=["MRI"])
    cfg_dict, _ = plan_sections(fp, layout)
    cfg_dict["net"]["filters"] = [4, 8, 16, 32]
    cfg = validate_config(cfg_dict)
    timings = {}
    for delay in (0.02, 0.2):
        timings[delay] = measure(cfg, train, val, test, n_cases=2, n_steps=2,
                                 net=_Slow(build_net(cfg.net), delay).module)
    assert timings[0.2].step_s >= 0.2 and timings[0.02].step_s < timings[0.2].step_s
    # same run with 200 training cases: epochs fall as the measured step time grows
    big = {d: Timing(**{**t.__dict__, "n_train": 200, "steps_per_epoch": 100}) for d, t in timings.items()}
    fast, _, _ = epochs_for_budget(big[0.02], 3600)
    slow, _, reason = epochs_for_budget(big[0.2], 3600)
    assert slow < fast and "measured" in reason
    ratio = (big[0.2].epoch_s() + big[0.2].validation_s()) / (big[0.02].epoch_s() + big[0.02].validation_s())
    assert fast / slow == pytest.approx(ratio, rel=0.35)


def test_epochs_for_budget_is_exact_on_a_known_timing():
    t = Timing(cache_s=0.1, augment_s=0.0, step_s=1.0, infer_s=2.0, steps_per_epoch=10, n_cases=50, n_train=40,
               n_val=10, n_test=0, device="cpu")
    # fixed 30 + 5 + 40 = 75 s; epoch 10 s, validation 20 s
    epochs, vi, _ = epochs_for_budget(t, 75 + 6 * 10 + 3 * 20)  # 6 epochs, validated every 2nd: 120 s
    assert (epochs, vi) == (6, 1) or epochs * 10 + (epochs // vi) * 20 <= 120
    assert epochs * 10 + (epochs // vi) * 20 <= 120 and (epochs + vi) * 10 + (epochs // vi + 1) * 20 > 120
    with pytest.raises(BudgetError, match="does not fit one epoch"):
        epochs_for_budget(t, 80)
    double = Timing(**{**t.__dict__, "step_s": 2.0})
    assert epochs_for_budget(double, 10_000)[0] < epochs_for_budget(t, 10_000)[0]


def test_yaml_comments_and_orphan_reasons():
    cfg = {"name": "x", "transforms": {"train": [{"name": "LoadImaged", "keys": ["image"]},
                                                 {"name": "RandFlipd", "keys": ["image"], "prob": 0.5}],
                                       "val": [{"name": "LoadImaged", "keys": ["image"]}]},
           "train": {"max_epochs": 3}}
    why = {"name": "because", "transforms.train.augment": "mirroring", "transforms.train.spacing": "no Spacingd",
           "train.max_epochs": "budget"}
    text = to_yaml(cfg, why, ["header"])
    assert text.startswith("# header\n") and yaml.safe_load(text) == cfg
    assert "# no Spacingd" in text and "RandFlipd" in [ln for ln in text.splitlines() if "# mirroring" in ln][0]
    assert [ln for ln in text.splitlines() if ln.strip().startswith("max_epochs")][0].endswith("# budget")


def test_cli_writes_yaml_and_fingerprint(msd_subset, tmp_path, capsys):
    from medpipe.plan.__main__ import main

    out = tmp_path / "p" / "hippo.yaml"
    assert main([str(msd_subset), "--budget", "30min", "-o", str(out)]) == 0
    fp = json.loads(out.with_suffix(".fingerprint.json").read_text())
    assert fp["dimensionality"] == 3 and "timing" in fp
    assert load_config(out).report.fingerprint == str(out.with_suffix(".fingerprint.json"))
    assert main([str(tmp_path / "missing")]) == 2
    assert "missing: no such file" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "p")


def test_a_pipeline_yaml_keeps_its_data_and_metrics(tmp_path, em_folders):
    """Planning from a pipeline keeps the protocol: the same files, split and metrics (so the planned run is scored
    on the hand-written one's cases, by its key metric)."""
    src = (Path(__file__).resolve().parent.parent / "pipelines" / "em_unet.yaml").read_text()
    (tmp_path / "em.yaml").write_text(src.replace("root: isbi2012_em", f"root: {em_folders}"))
    layout = detect_layout(tmp_path / "em.yaml")
    cfg = load_config(tmp_path / "em.yaml")
    assert layout.task == "segmentation" and layout.data["root"] == str(em_folders)
    assert layout.data["split"] == {"val_fraction": 0.2, "seed": 0} and layout.data["images"] == cfg.data.images
    assert layout.metrics["key_metric"] == "v_rand" and "v_info" in layout.metrics["names"]


def test_rules_for_ct_and_anisotropic_volumes():
    """CT: clip to the foreground percentiles then z-score with the foreground statistics (nnU-Net's
    CTNormalization); an anisotropic set keeps its coarse axis at the 10th percentile (nnU-Net's target spacing)."""
    from medpipe.plan.layout import Layout
    from medpipe.plan.rules import plan_sections, target_spacing_rule

    spacing, reason = target_spacing_rule({"median": [0.8, 0.8, 5.0], "p10": [0.7, 0.7, 2.5]})
    assert spacing == [0.8, 0.8, 2.5] and "10th percentile" in reason
    fp = {"task": "segmentation", "dimensionality": 3, "num_cases": 10, "modality": ["CT"], "splits": {},
          "shape": {"median": [200, 200, 60]}, "channel_kinds": {"grey": 10}, "bits": None, "dtypes": ["int16"],
          "spacing_mm": {"median": [0.8, 0.8, 5.0], "p10": [0.7, 0.7, 2.5], "min": [0.6, 0.6, 2.5],
                         "max": [1.0, 1.0, 5.0]},
          "intensity_foreground": {"percentile_00_5": -98.0, "percentile_99_5": 240.0, "mean": 60.5, "std": 41.2,
                                   "min": -1024.0, "max": 3000.0},
          "label_values": [0, 1], "foreground_fraction": 0.01}
    cfg, why = plan_sections(fp, Layout("segmentation", {"root": "/x", "images": "i/*", "labels": "l/*"}))
    steps = {t["name"]: t for t in cfg["transforms"]["train"]}
    assert steps["ScaleIntensityRanged"]["a_min"] == -98.0 and steps["ScaleIntensityRanged"]["a_max"] == 240.0
    assert steps["NormalizeIntensityd"]["subtrahend"] == 60.5 and steps["NormalizeIntensityd"]["divisor"] == 41.2
    assert steps["Spacingd"]["pixdim"] == [0.8, 0.8, 2.5] and "CTNormalization" in why["transforms.train.normalise"]
    assert "RandCropByPosNegLabeld" in steps  # 1 % foreground: nnU-Net's foreground oversampling
    assert cfg["net"]["spacing"] == [0.8, 0.8, 2.5]


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parent.parent / "pipelines" / "planned")
                                        .glob("*.yaml")), ids=lambda p: p.stem)
def test_committed_plans_validate_and_say_why(path):
    """The planned pipelines of docs/plan.md validate as committed, and their budgeted values carry a reason."""
    cfg = load_config(path)
    text = path.read_text()
    assert cfg.name.endswith("_planned") and cfg.report.fingerprint
    assert (Path(__file__).resolve().parent.parent / cfg.report.fingerprint).is_file()
    line = [ln for ln in text.splitlines() if ln.strip().startswith("max_epochs:")][0]
    assert "measured" in line and "budget" in line


def test_classification_size_falls_through_sizes_the_budget_cannot_train(class_folders, monkeypatch):
    """Candidate input sizes are timed from the largest; a size that fits no epoch (BudgetError) or fewer than
    MIN_EPOCHS is passed over for the next smaller one. The timing is replaced by one proportional to the pixels
    (no network runs here), so the choice is exact: 224 px fits no epoch, 192 too few, 160 enough."""
    import medpipe.plan.planner as planner_mod

    def fake_measure(cfg, train, val, test, n_steps=3, net=None):
        side = [t for t in cfg.transforms.train if t.name == "Resized"][0].model_extra["spatial_size"][0]
        step = 0.02 * (side / 32) ** 2  # 224 px: 0.98 s, 192: 0.72 s, 160: 0.5 s per step
        return Timing(cache_s=0.0, augment_s=0.0, step_s=step * 100, infer_s=0.0, steps_per_epoch=1,
                      n_cases=len(train) + len(val) + len(test), n_train=len(train), n_val=len(val),
                      n_test=len(test))

    monkeypatch.setattr(planner_mod, "measure", fake_measure)
    # budget 30 s start-up + 600 s: 224 px = 98 s/epoch -> 6 epochs; 192 px = 72 s -> 8; 160 px = 50 s -> 12
    p = plan(class_folders, budget_s=630.0)
    assert [t["size"] for t in p.tried] == [224, 192, 160]
    assert [t["max_epochs"] for t in p.tried] == [6, 8, 12] and p.config.train.max_epochs == 12
    assert "160 px: 12 epochs" in p.why["transforms.train.resize"]
    # 80 s: no epoch at 224 or 192 (98, 72 s + 30 s start-up), 160 px fits one
    p = plan(class_folders, budget_s=85.0)
    assert [t["max_epochs"] for t in p.tried][:2] == [0, 0] and p.tried[2]["size"] == 160
    with pytest.raises(BudgetError, match="does not fit one epoch"):
        plan(class_folders, budget_s=31.0)


def test_unreadable_or_nonfinite_files_are_named(tmp_path, msd_subset, em_folders):
    """A truncated image or a volume with NaN is listed in the fingerprint and stops the plan with a DataError naming
    the file, before any timing reads it."""
    import nibabel as nib

    from medpipe.data.cases import DataError

    vol = msd_subset / "imagesTr" / "hippocampus_003.nii.gz"
    img = nib.load(vol)
    data = np.asarray(img.dataobj, dtype=np.float32)
    data[10, 10, 10] = np.nan
    vol.unlink()
    nib.save(nib.Nifti1Image(data, img.affine), vol)
    fp = _fingerprint(msd_subset)
    assert fp["bad_files"] == [{"file": str(vol), "error": "1 NaN or infinite values"}] and fp["num_read"] == 3
    with pytest.raises(DataError, match="hippocampus_003.nii.gz: 1 NaN"):
        plan(msd_subset)
    png = tmp_path / "em" / "train" / "image" / "0.png"
    data = png.read_bytes()
    png.unlink()
    png.write_bytes(data[:3000])
    with pytest.raises(DataError, match=r"0.png.*truncated"):
        plan(tmp_path / "em")


def _fake_timing(step_s):
    def fake_measure(cfg, train, val, test, n_steps=3, net=None):
        return Timing(cache_s=0.0, augment_s=0.0, step_s=step_s(cfg), infer_s=0.0, steps_per_epoch=10,
                      n_cases=len(train) + len(val) + len(test), n_train=len(train), n_val=len(val),
                      n_test=len(test))
    return fake_measure


def test_segmentation_network_follows_the_budget(em_folders, monkeypatch):
    """nnU-Net's 7-stage 2D topology is kept when the budget trains it for MIN_SEG_STEPS optimizer steps; below, the
    timed compact network (5 stages, BasicUNet's widths 16-16-32-64-128) is taken because it trains more steps. The
    timing is replaced (no network runs): nnU-Net's 1.0 s per step, the compact one 0.25 s, 10 steps per epoch."""
    import medpipe.plan.planner as planner_mod
    from medpipe.plan.rules import MIN_SEG_STEPS

    monkeypatch.setattr(planner_mod, "measure", _fake_timing(lambda cfg: 0.25 if cfg.net.strides else 1.0))
    p = plan(em_folders, budget_s=30 + 1.3 * MIN_SEG_STEPS)  # nnU-Net's topology: >= MIN_SEG_STEPS
    assert p.config.net.strides is None and len(p.config.net.filters) == 7
    assert [t["network"] for t in p.tried] == ["nnU-Net topology"] and p.tried[0]["optimizer_steps"] >= MIN_SEG_STEPS
    p = plan(em_folders, budget_s=30 + 330)  # nnU-Net's: about 300 steps; the compact network 4x as many
    full, compact = [t["optimizer_steps"] for t in p.tried]
    assert full < MIN_SEG_STEPS and 3.5 * full <= compact <= 4 * full
    assert p.config.net.filters == [16, 16, 32, 64, 128] and len(p.config.net.strides) == 5
    assert p.config.train.max_epochs * 10 == compact and f"{full} steps, this one {compact}" in p.yaml


def test_tiny_images_get_a_small_network_not_a_smaller_size(idc_list, monkeypatch):
    """IDC's 50 px patches: when ResNet-18 trains fewer than MIN_EPOCHS at their own size (48 px), LeNet at 48 px is
    taken before any downscaling (timing replaced: ResNet-18 10 s per step, LeNet 0.1 s)."""
    import medpipe.plan.planner as planner_mod

    monkeypatch.setattr(planner_mod, "measure", _fake_timing(lambda cfg: 0.1 if cfg.net.name == "lenet" else 10.0))
    p = plan(idc_list / "labels.csv", budget_s=330.0)  # ResNet-18: 100 s per epoch -> 3; LeNet: 1 s -> 300
    assert [t["network"] for t in p.tried] == ["ResNet-18 48 px", "LeNet 48 px"]
    assert p.config.net.name == "lenet" and p.config.net.input_size == 48 and p.config.train.max_epochs >= 10
    resized = [t for t in p.config.transforms.train if t.name == "Resized"][0].model_extra
    assert resized["spatial_size"] == [48, 48] and "LeNet" in p.yaml


def test_augmentation_and_dice_background_follow_the_labels():
    """Many small objects (EM cells, label 0 = membranes on 22 % of the pixels): mirroring, 90-degree rotations, and
    label 0 in the Dice term. Two large objects per image (lungs): no mirroring, small affine transforms, label 0 left
    out (nnU-Net). 3D keeps nnU-Net's mirroring."""
    from medpipe.plan.layout import Layout
    from medpipe.plan.rules import plan_sections

    def fp(dim, fg, objects):
        return {"task": "segmentation", "dimensionality": dim, "num_cases": 30, "modality": None, "splits": {},
                "shape": {"median": [256] * dim}, "channel_kinds": {"grey": 30}, "bits": [8], "dtypes": ["uint8"],
                "intensity_foreground": {"min": 0.0, "max": 255.0}, "label_values": [0, 255],
                "foreground_fraction": fg, "objects": {"255": {"objects_per_case_median": objects}}}

    layout = Layout("segmentation", {"root": "/x", "images": "i/*", "labels": "l/*"})
    names = lambda cfg: [t["name"] for t in cfg["transforms"]["train"]]  # noqa: E731
    cells, why = plan_sections(fp(2, 0.78, 113.5), layout)
    assert {"RandFlipd", "RandRotate90d"} <= set(names(cells)) and cells["loss"]["include_background"] is True
    assert "22%" in why["loss.include_background"]
    lungs, why = plan_sections(fp(2, 0.23, 2.0), layout)
    assert "RandFlipd" not in names(lungs) and "RandAffined" in names(lungs)
    assert lungs["loss"]["include_background"] is False and "anatomical" in why["transforms.train.augment"]
    vol, _ = plan_sections(fp(3, 0.05, 2.0), layout)
    assert names(vol).count("RandFlipd") == 3 and "RandAffined" not in names(vol)


def test_whole_slide_sized_files_are_named_not_decoded(em_folders, datasets, monkeypatch):
    """A 2D file whose header gives more than MAX_PIXELS pixels is listed, with the way out, and never decoded; the
    plan stops naming it. A real whole-slide file (CMU-1-Small-Region.svs, 2220 x 2967) with the limit lowered to
    1 Mpx (the EM images have 0.26 Mpx) stands in for a gigapixel slide."""
    import medpipe.plan.fingerprint as fingerprint_mod
    from medpipe.data.cases import DataError
    from medpipe.data.imagefile import read_image as real_read

    monkeypatch.setattr(fingerprint_mod, "MAX_PIXELS", 1_000_000)
    slide = em_folders / "train" / "image" / "0.png"
    slide.unlink()
    os.symlink(datasets / "wsi_samples" / "CMU-1-Small-Region.svs", slide)
    decoded = []
    monkeypatch.setattr("medpipe.data.imagefile.read_image", lambda p, *a: decoded.append(p) or real_read(p, *a))
    fp = _fingerprint(em_folders)
    assert [b["file"] for b in fp["bad_files"]] == [str(slide)] and fp["num_read"] == 3
    assert "2220x2967 pixels" in fp["bad_files"][0]["error"] and "medpipe.data.patches" in fp["bad_files"][0]["error"]
    assert str(slide) not in decoded and len(decoded) == 6  # 3 images + 3 labels
    with pytest.raises(DataError, match=r"0.png: 2220x2967 pixels"):
        plan(em_folders)
    # a file beyond Pillow's decompression-bomb limit is refused when opened: reported the same way, not raised
    monkeypatch.setattr("PIL.Image.MAX_IMAGE_PIXELS", 1_000_000)
    fp = _fingerprint(em_folders)
    assert [b["file"] for b in fp["bad_files"]] == [str(slide)] and "whole-slide sized (" in fp["bad_files"][0]["error"]
