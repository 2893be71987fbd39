"""Deep supervision in training (``dyn_unet`` with ``deep_supervision``): the loss is nnU-Net's weighted sum over
DynUNet's stacked heads, training feeds the stack to it, and validation sees the main output only."""

import os

import pytest
import torch
from monai.losses import DiceCELoss

from medpipe.config import validate_config
from medpipe.engine.optim import (StackedDeepSupervisionLoss, build_loss, deep_supervision_weights,
                                  with_deep_supervision)


def test_weights_are_nnunets_halving_normalised():
    assert deep_supervision_weights(1) == [1.0]
    # nnU-Net v2: 1, 1/2, 1/4 normalised to sum 1 -> 4/7, 2/7, 1/7
    assert deep_supervision_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    with pytest.raises(ValueError, match="levels"):
        deep_supervision_weights(0)


def test_loss_equals_hand_computed_weighted_sum():
    torch.manual_seed(0)
    pred = torch.randn(2, 3, 3, 8, 10, 6)  # (B, 1 + deep_supr_num, C, H, W, D)
    label = torch.randint(0, 3, (2, 1, 8, 10, 6)).float()
    base = DiceCELoss(to_onehot_y=True, softmax=True)
    expected = sum(w * base(pred[:, i], label) for i, w in enumerate([4 / 7, 2 / 7, 1 / 7]))
    loss = StackedDeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True), levels=3)
    torch.testing.assert_close(loss(pred, label), expected)
    # an eval-mode output (B, C, ...) gets the plain loss
    torch.testing.assert_close(loss(pred[:, 0], label), base(pred[:, 0], label))
    with pytest.raises(ValueError, match="stacked 2 outputs, the loss expects 3"):
        loss(pred[:, :2], label)


def _cfg(tmp_path, root, deep=True):
    load = [{"name": "LoadImaged", "keys": ["image", "label"]},
            {"name": "EnsureChannelFirstd", "keys": ["image", "label"]},
            {"name": "NormalizeIntensityd", "keys": ["image"], "nonzero": True, "channel_wise": True}]
    return validate_config({
        "name": "ds", "task": "segmentation", "output_dir": str(tmp_path / "out"),
        "data": {"root": str(root), "images": "imagesTr/*.nii.gz", "labels": "labelsTr/*.nii.gz"},
        "transforms": {"train": load + [{"name": "RandSpatialCropd", "keys": ["image", "label"],
                                         "roi_size": [16, 16, 16], "random_size": False}], "val": load},
        "net": {"name": "dyn_unet", "spatial_dims": 3, "out_channels": 3, "patch_size": [16, 16, 16],
                "filters": [4, 8, 16], "deep_supervision": deep, "deep_supr_num": 1},
        "train": {"max_epochs": 1, "batch_size": 2, "device": "cpu", "progress": False},
        "infer": {"roi_size": [16, 16, 16], "sw_batch_size": 8},
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"},
    })


@pytest.fixture
def two_volumes(tmp_path, datasets):
    """Two real MSD Hippocampus volumes and labels (symlinks)."""
    root = tmp_path / "hippo"
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
        for n in ("001", "003"):
            os.symlink(datasets / "msd_hippocampus" / sub / f"hippocampus_{n}.nii.gz",
                       root / sub / f"hippocampus_{n}.nii.gz")
    return root


def test_training_feeds_the_stack_and_validation_the_main_output(tmp_path, two_volumes):
    """One epoch of the MONAI engines on 2 real volumes: the trainer's ``pred`` is the (1 + deep_supr_num) stack
    and its loss the deep-supervision loss; the evaluator's ``pred`` (sliding window over the whole volume) has
    the classes only, as the network in eval mode returns."""
    from ignite.engine import Events
    from monai.data import DataLoader, Dataset

    from medpipe.data.transforms import build_transforms
    from medpipe.engine.trainer import build_engines
    from medpipe.nets import build_net

    cfg = _cfg(tmp_path, two_volumes)
    cases = [{"image": str(p), "label": str(p).replace("imagesTr", "labelsTr")}
             for p in sorted((two_volumes / "imagesTr").glob("*.nii.gz"))]
    train = DataLoader(Dataset(cases, build_transforms(cfg.transforms.train, "transforms.train")), batch_size=2)
    val = DataLoader(Dataset(cases[:1], build_transforms(cfg.transforms.val, "transforms.val")), batch_size=1)
    engines = build_engines(cfg, build_net(cfg.net), train, val, tmp_path / "ckpt")
    assert isinstance(engines.trainer.loss_function, StackedDeepSupervisionLoss)
    seen = {}

    @engines.trainer.on(Events.ITERATION_COMPLETED)
    def _keep(engine):
        seen["train_pred"] = engine.state.output[0]["pred"].shape

    engines.trainer.run()
    assert seen["train_pred"] == (2, 3, 16, 16, 16)  # per sample: (1 + deep_supr_num = 2, C = 3, *patch)
    val_pred = engines.evaluator.state.output[0]["pred"]
    shape = engines.evaluator.state.output[0]["label"].shape
    assert val_pred.shape == (3, *shape[1:])  # one-hot classes on the whole volume, no stacked heads
    assert 0.0 <= engines.evaluator.state.metrics["dice"] <= 1.0


def test_without_deep_supervision_the_loss_is_the_configured_one(tmp_path, two_volumes):
    cfg = _cfg(tmp_path, two_volumes, deep=False)
    assert isinstance(with_deep_supervision(build_loss(cfg.loss), cfg.net), DiceCELoss)
    cfg = _cfg(tmp_path, two_volumes, deep=True)
    wrapped = with_deep_supervision(build_loss(cfg.loss), cfg.net)
    assert isinstance(wrapped, StackedDeepSupervisionLoss) and wrapped.levels == 2
