"""A short 3D run end to end on 4 real MSD Hippocampus volumes: ``pipelines/hippocampus_3d.yaml`` as shipped, made
small (1 epoch, a tiny DynUNet with deep supervision, a 32-voxel patch), through ``medpipe.workflow.run_pipeline``:
it trains, predicts NIfTI masks with each input's shape and affine, and logs to an MLflow sqlite store."""

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medpipe.config import load_config

ROOT = Path(__file__).resolve().parent.parent
CASES = ("001", "003", "004", "006")


@pytest.fixture
def four_volumes(tmp_path, datasets):
    """A data root in the MSD layout with 4 real volumes and their labels (symlinks)."""
    root = tmp_path / "msd_hippocampus"
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
        for n in CASES:
            os.symlink(datasets / "msd_hippocampus" / sub / f"hippocampus_{n}.nii.gz",
                       root / sub / f"hippocampus_{n}.nii.gz")
    return root


def test_hippocampus_3d_trains_predicts_nifti_and_tracks(tmp_path, four_volumes):
    from mlflow.tracking import MlflowClient

    from medpipe.workflow import run_pipeline

    patch = "[32,32,32]"
    cfg = load_config(ROOT / "pipelines" / "hippocampus_3d.yaml", [
        f"data.root={four_volumes}", "data.split.val_fraction=0.25", f"output_dir={tmp_path / 'artifacts'}",
        "train.max_epochs=1", "train.val_interval=1", "train.progress=false", "train.device=cpu",
        f"net.patch_size={patch}", "net.filters=[4,8,16,32]", "net.deep_supr_num=1", f"infer.roi_size={patch}",
        "infer.overlap=0.25",
        f"transforms.train.4.spatial_size={patch}", f"transforms.train.5.roi_size={patch}",
        f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"tracking.artifact_location={tmp_path / 'mlruns'}",
    ])
    assert cfg.net.name == "dyn_unet" and cfg.net.deep_supervision and cfg.infer.output_format == "nifti"
    result = run_pipeline(cfg)
    out = result.output_dir

    metrics = json.loads((out / "metrics.json").read_text())
    train = metrics["history"]["train"]
    assert len(train) == 1 and np.isfinite(train[0]["train_loss"]) and train[0]["train_samples"] == 3
    assert 0.0 <= result.metrics["best_val_dice"] <= 1.0 and "best_val_hd95" in result.metrics

    masks = sorted((out / "predictions" / "val").glob("*.nii.gz"))
    assert len(masks) == 1
    source = four_volumes / "imagesTr" / masks[0].name
    image, mask = nib.load(source), nib.load(masks[0])
    assert mask.shape == image.shape  # the input's grid, not the padded or cropped one
    np.testing.assert_allclose(mask.affine, image.affine, atol=1e-5)
    assert set(np.unique(np.asarray(mask.dataobj)).tolist()) <= {0, 1, 2}

    run = MlflowClient(cfg.tracking.tracking_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["net.name"] == "dyn_unet" and run.data.params["net.deep_supervision"] == "True"
    assert np.isfinite(run.data.metrics["train_loss"]) and "best_val_dice" in run.data.metrics


@pytest.mark.parametrize("name", ["hippocampus_3d", "hippocampus_3d_gpu"])
def test_shipped_3d_pipelines_agree_on_the_patch(name):
    """Both pipelines validate; the network's patch is the padding size, the crop and the sliding window, and the
    network built from it has nnU-Net's plan for this data (three 2x poolings)."""
    from medpipe.nets import build_net

    cfg = load_config(ROOT / "pipelines" / f"{name}.yaml")
    patch = cfg.net.patch_size
    steps = {t.name: t.model_extra for t in cfg.transforms.train}
    assert steps["SpatialPadd"]["spatial_size"] == patch and steps["RandSpatialCropd"]["roi_size"] == patch
    assert cfg.infer.roi_size == patch and cfg.infer.output_format == "nifti"
    assert [t.name for t in cfg.transforms.val] == [t.name for t in cfg.transforms.train][:4]  # same normalisation
    net = build_net(cfg.net)
    assert net.strides == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]] and net.deep_supervision
