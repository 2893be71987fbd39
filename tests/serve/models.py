"""Tiny real models for the serve and export tests, trained once per test session with ``medpipe.run``.

Fixtures are defined here and imported by ``tests/serve/conftest.py`` and ``tests/test_export.py``; the trained
runs are cached in this module so that each model is trained once however many modules use it.

* ``seg_run``: the EM U-Net pipeline's transforms on 3 ISBI-2012 images (2 train, 1 val), 1 epoch of a
  4-feature BasicUNet on 64-pixel crops, sliding windows of 256 pixels;
* ``cls_run``: a ResNet-18 pneumonia classifier on 12 real chest X-rays of ``kermany_pneumonia_cxr`` resized to
  64 x 64, 1 epoch (class names from the folders, val and test splits by stratified fractions).

Both are tracked into a temporary sqlite MLflow store, as ``medpipe.run`` does by default.
"""

import os

import pytest

from medpipe.config import validate_config
from tests.conftest import link_em

LOAD = {"name": "LoadImaged", "keys": ["image", "label"], "reader": "PILReader", "reverse_indexing": False}
CHAN = {"name": "EnsureChannelFirstd", "keys": ["image", "label"], "channel_dim": "no_channel"}
SCALE = {"name": "ScaleIntensityRanged", "keys": ["image"], "a_min": 0, "a_max": 255, "b_min": 0.0, "b_max": 1.0,
         "clip": True}
MAP = {"name": "MapLabelValued", "keys": ["label"], "orig_labels": [0, 255], "target_labels": [0, 1]}

CXR = "kermany_pneumonia_cxr"


def cxr_files(datasets, split="train", cls="NORMAL", n=1, skip=0):
    """``n`` real chest X-ray JPEGs of one class, sorted by name."""
    return sorted((datasets / CXR / split / cls).glob("*.jpeg"))[skip:skip + n]


_CACHE = {}


def _once(key, build):
    if key not in _CACHE:
        _CACHE[key] = build()
    return _CACHE[key]


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory):
    def build():
        base = tmp_path_factory.mktemp("mlflow")
        return {"tracking_uri": f"sqlite:///{base}/mlflow.db", "artifact_location": str(base / "mlruns")}

    return _once("mlflow", build)


@pytest.fixture(scope="session")
def seg_run(tmp_path_factory, datasets, mlflow_store):
    """RunResult of a 1-epoch EM U-Net run (with ``.cfg``)."""
    return _once("seg", lambda: _train_seg(tmp_path_factory, datasets, mlflow_store))


def _train_seg(tmp_path_factory, datasets, mlflow_store):
    from medpipe.workflow import run_pipeline

    tmp = tmp_path_factory.mktemp("seg")
    root = link_em(tmp / "em", datasets, 3, 0)
    cfg = validate_config({
        "name": "em_serve_tiny", "output_dir": str(tmp / "artifacts"),
        "data": {"root": str(root), "images": "image/*.png", "labels": "label/*.png",
                 "split": {"val": ["2.png"]}, "cache": "memory"},
        "transforms": {"train": [LOAD, CHAN, SCALE, MAP,
                                 {"name": "RandSpatialCropSamplesd", "keys": ["image", "label"], "roi_size": [64, 64],
                                  "num_samples": 2, "random_size": False}],
                       "val": [LOAD, CHAN, SCALE, MAP]},
        "net": {"name": "basic_unet", "features": [4, 4, 8, 16, 32, 4]},
        "optimizer": {"name": "adamw", "lr": 0.01},
        "train": {"max_epochs": 1, "batch_size": 4, "seed": 0, "device": "cpu", "progress": False},
        "metrics": {"names": ["dice"], "key_metric": "dice"},
        "infer": {"roi_size": [256, 256], "sw_batch_size": 4, "overlap": 0.25},
        "tracking": {**mlflow_store, "experiment": "serve_seg"},
    })
    result = run_pipeline(cfg)
    result.cfg = cfg
    return result


CLS_TRANSFORMS = [
    {"name": "LoadImaged", "keys": ["image"], "reader": "PILReader", "reverse_indexing": False},
    {"name": "EnsureChannelFirstd", "keys": ["image"]},
    {"name": "ToGrayscaled", "keys": ["image"]},
    {"name": "Resized", "keys": ["image"], "spatial_size": [64, 64], "mode": "area"},
    {"name": "ScaleIntensityRanged", "keys": ["image"], "a_min": 0, "a_max": 255, "b_min": 0.0, "b_max": 1.0,
     "clip": True},
]


@pytest.fixture(scope="session")
def cls_run(tmp_path_factory, datasets, mlflow_store):
    """RunResult of a 1-epoch ResNet-18 pneumonia classifier (with ``.cfg``)."""
    return _once("cls", lambda: _train_cls(tmp_path_factory, datasets, mlflow_store))


def _train_cls(tmp_path_factory, datasets, mlflow_store):
    from medpipe.workflow import run_pipeline

    tmp = tmp_path_factory.mktemp("cls")
    root = tmp / "cxr"
    for split, n in (("train", 5), ("test", 1)):
        for cls in ("NORMAL", "PNEUMONIA"):
            (root / split / cls).mkdir(parents=True)
            for f in cxr_files(datasets, split, cls, n):
                os.symlink(f, root / split / cls / f.name)
    cfg = validate_config({
        "name": "cxr_serve_tiny", "task": "classification", "output_dir": str(tmp / "artifacts"),
        "data": {"root": str(root), "images": "train/*/*.jpeg", "test_images": "test/*/*.jpeg",
                 "class_from": "folder", "split": {"val_fraction": 0.4, "seed": 0}, "cache": "memory"},
        "transforms": {"train": CLS_TRANSFORMS, "val": CLS_TRANSFORMS},
        "net": {"name": "resnet18", "in_channels": 1, "num_classes": 2},
        "optimizer": {"name": "adamw", "lr": 0.001},
        "train": {"max_epochs": 1, "batch_size": 3, "val_batch_size": 2, "seed": 0, "device": "cpu",
                  "progress": False},
        "metrics": {"threshold": "youden"},
        "tracking": {**mlflow_store, "experiment": "serve_cls"},
    })
    result = run_pipeline(cfg)
    result.cfg = cfg
    return result
