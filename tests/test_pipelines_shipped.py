"""The shipped classification pipelines, and the lung segmentation pipeline, run as written, on a few real images
each.

Each test loads ``pipelines/<name>.yaml`` itself and overrides only what makes the run small: a list file (or, for
``covid_lung_seg``, a symlinked data root from :mod:`tests.subsets`) with a handful of the dataset's real rows, one
epoch, the MLflow store. Networks, transforms, losses, optimizers, splits
and metrics are the pipeline's own. The COVID pipeline's training options (z-score normalisation, Xavier
initialisation, AdamW, gradient clipping, augmentation) are each checked on real images.
"""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from medpipe.config import load_config

ROOT = Path(__file__).resolve().parent.parent

# pipeline -> (dataset folder, CSV, label column, split column or None, rows per (split, class))
SUBSETS = {
    "pneumonia_xray": ("kermany_pneumonia_cxr", "labels.csv", "label", "split", {"train": 8, "test": 3}),
    "covid_xray": ("covid_qu_ex", "labels.csv", "label", "split", {"train": 6, "val": 2}),
    "mammography": ("mini_mias", "image_labels.csv", "label", None, {None: 7}),
}


def _subset_csv(datasets: Path, name: str, out: Path) -> Path:
    folder, csv_name, label_col, split_col, per = SUBSETS[name]
    with open(datasets / folder / csv_name, newline="") as fh:
        rows = list(csv.DictReader(fh))
    picked = []
    for split, n in per.items():
        for label in sorted({r[label_col] for r in rows}):
            picked += [r for r in rows if r[label_col] == label and (split is None or r[split_col] == split)][:n]
    path = out / f"{name}_subset.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(picked)
    return path


def _small(name: str, datasets: Path, tmp_path: Path, extra=()):
    subset = _subset_csv(datasets, name, tmp_path)
    overrides = [
        f"data.list_file={subset}", f"output_dir={tmp_path / 'artifacts'}", "train.max_epochs=1",
        "train.progress=false", "train.device=cpu", f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"tracking.artifact_location={tmp_path / 'mlruns'}", *extra,
    ]
    return load_config(ROOT / "pipelines" / f"{name}.yaml", overrides)


@pytest.mark.parametrize("name", sorted(SUBSETS))
def test_shipped_pipeline_runs_and_tracks(name, datasets, tmp_path):
    from medpipe.workflow import run_pipeline

    extra = ["data.split.kfold=2", "data.split.fold=0"] if name == "mammography" else []
    cfg = _small(name, datasets, tmp_path, extra)
    result = run_pipeline(cfg)

    run = MlflowClient(cfg.tracking.tracking_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["net.name"] == cfg.net.name
    for key in ("test_accuracy", "test_balanced_accuracy", "best_val_accuracy"):
        assert 0.0 <= run.data.metrics[key] <= 1.0, key
    report = (result.output_dir / "report.md").read_text()
    assert cfg.report.anchor and cfg.report.anchor[:40] in report
    for plot in ("roc.png", "confusion_test.png", "learning_curves.png"):
        assert (result.output_dir / "plots" / plot).stat().st_size > 0, plot


def test_shipped_lung_segmentation_pipeline_runs_and_tracks(datasets, tmp_path):
    """``covid_lung_seg``: 3 train and 1 val image of the dataset's own split (data.split_column), one epoch."""
    from medpipe.workflow import run_pipeline
    from tests.subsets import first_rows, link_subset, read_rows

    src = datasets / "covid_qu_ex"
    rows = read_rows(src / "labels.csv")
    picked = [*(first_rows(rows, 1, split="train", label=c)[0] for c in ("COVID-19", "Non-COVID", "Normal")),
              *first_rows(rows, 1, split="val", label="Normal")]
    root = link_subset(src, picked, ["image", "lung_mask"], tmp_path / "covid_qu_ex", "labels.csv")
    cfg = load_config(ROOT / "pipelines" / "covid_lung_seg.yaml", [
        f"data.root={root}", f"output_dir={tmp_path / 'artifacts'}", "train.max_epochs=1", "train.progress=false",
        "train.device=cpu", f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"tracking.artifact_location={tmp_path / 'mlruns'}"])
    result = run_pipeline(cfg)

    run = MlflowClient(cfg.tracking.tracking_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.params["net.name"] == "basic_unet"
    assert run.data.tags["dataset.n_train"] == "3" and run.data.tags["dataset.n_val"] == "1"
    assert 0.0 <= run.data.metrics["best_val_dice"] <= 1.0
    assert 0.0 <= run.data.metrics["best_val_hd95"] <= np.hypot(255, 255) + 1e-3  # pixels
    assert (result.output_dir / "plots" / "val_overlays.png").stat().st_size > 0


@pytest.fixture
def covid(datasets, tmp_path):
    return _small("covid_xray", datasets, tmp_path), datasets / "covid_qu_ex"


def _one_image(root: Path) -> dict:
    with open(root / "labels.csv", newline="") as fh:
        row = next(csv.DictReader(fh))
    return {"image": str(root / row["image"]), "label": 0}


def test_covid_z_score_normalisation(covid):
    from medpipe.data.transforms import build_transforms

    cfg, root = covid
    assert [t.name for t in cfg.transforms.val][-1] == "NormalizeIntensityd"
    image = build_transforms(cfg.transforms.val)(_one_image(root))["image"]
    assert tuple(image.shape) == (1, 128, 128)
    assert abs(float(image.mean())) < 1e-4
    assert abs(float(image.std(unbiased=False)) - 1.0) < 1e-3


def test_covid_augmentation_is_random_and_validation_is_not(covid):
    from medpipe.data.transforms import build_transforms

    cfg, root = covid
    case = _one_image(root)
    train_tf, val_tf = build_transforms(cfg.transforms.train), build_transforms(cfg.transforms.val)
    outs = []
    for seed in (0, 1, 2):
        train_tf.set_random_state(seed=seed)
        outs.append(np.asarray(train_tf(dict(case))["image"]))
    assert any(not np.allclose(outs[0], o) for o in outs[1:])
    assert np.array_equal(np.asarray(val_tf(dict(case))["image"]), np.asarray(val_tf(dict(case))["image"]))


def test_covid_xavier_init_and_adamw(covid):
    from medpipe.engine.optim import build_optimizer
    from medpipe.nets import build_net
    from medpipe.nets.factory import prepare_net

    cfg, _ = covid
    assert cfg.net.init == "xavier_uniform"
    torch.manual_seed(0)
    net, _ = prepare_net(build_net(cfg.net), cfg.net)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    for conv in convs:  # Glorot & Bengio 2010: U(-a, a), a = sqrt(6 / (fan_in + fan_out))
        fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        bound = (6.0 / (fan_in + fan_out)) ** 0.5
        w = conv.weight.detach()
        assert float(w.abs().max()) <= bound + 1e-6
        assert float(w.abs().max()) > 0.9 * bound  # uniform over the whole range, not a narrower default
    opt = build_optimizer(cfg.optimizer, net.parameters())
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["weight_decay"] == cfg.optimizer.weight_decay > 0


def test_covid_gradient_clipping_bounds_the_gradient_norm(covid, tmp_path):
    from monai.data import DataLoader, Dataset
    from monai.engines.utils import IterationEvents

    from medpipe.data.transforms import build_transforms
    from medpipe.engine.trainer import build_engines
    from medpipe.nets import build_net

    cfg, root = covid
    cfg.train.grad_clip_norm = 1e-3  # far below any real gradient norm, so clipping must act
    with open(root / "labels.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "train"]
    classes = cfg.data.classes
    cases = [{"image": str(root / r["image"]), "label": classes.index(r["label"])} for r in rows[::50][:4]]
    loader = DataLoader(Dataset(cases, build_transforms(cfg.transforms.val)), batch_size=4)
    engines = build_engines(cfg, build_net(cfg.net), loader, loader, tmp_path / "ckpt")
    norms = []

    @engines.trainer.on(IterationEvents.BACKWARD_COMPLETED)  # after the clipping handler, before the step
    def _record(engine):
        grads = [p.grad.detach().flatten() for p in engine.network.parameters() if p.grad is not None]
        norms.append(float(torch.cat(grads).norm()))

    engines.trainer.run()
    assert norms and max(norms) <= 1e-3 * (1 + 1e-4)
