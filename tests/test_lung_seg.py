"""pipelines/covid_lung_seg.yaml end to end on 6 real COVID-QU-Ex X-rays with lung masks: the dataset's
train/val split is honoured, Dice and HD95 reach metrics.json and MLflow and equal the written masks' scores, the
overlays are written and logged; the pipeline's z-score and Xavier options act on the real images."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medpipe.config import load_config
from tests.subsets import first_rows, link_subset, read_rows

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def lung_cfg(datasets, tmp_path):
    """The shipped pipeline on a symlinked root with 4 train rows (COVID-19, Non-COVID, Normal, COVID-19) and 2 val
    rows of the real labels.csv; 2 epochs, CPU, a temporary MLflow store."""
    src = datasets / "covid_qu_ex"
    rows = read_rows(src / "labels.csv")
    picked = []
    for label, n in (("COVID-19", 2), ("Non-COVID", 1), ("Normal", 1)):
        picked += first_rows(rows, n, split="train", label=label)
    picked += first_rows(rows, 1, split="val", label="COVID-19") + first_rows(rows, 1, split="val", label="Normal")
    root = link_subset(src, picked, ["image", "lung_mask"], tmp_path / "covid_qu_ex", "labels.csv")
    overrides = [f"data.root={root}", f"output_dir={tmp_path / 'artifacts'}", "train.max_epochs=2",
                 "train.batch_size=4", "train.progress=false", "train.device=cpu",
                 f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                 f"tracking.artifact_location={tmp_path / 'mlruns'}"]
    return load_config(ROOT / "pipelines" / "covid_lung_seg.yaml", overrides), picked


def test_lung_seg_run_reports_dice_and_hd95_and_logs_overlays(lung_cfg):
    from mlflow.tracking import MlflowClient
    from monai.metrics import DiceMetric

    from medpipe.engine.metric_handlers import HD95Metric
    from medpipe.workflow import run_pipeline

    cfg, picked = lung_cfg
    result = run_pipeline(cfg)
    out = result.output_dir

    # the dataset's own split, not a random one
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(Path(c["image"]).name for c in manifest["val"]) == sorted(
        Path(r["image"]).name for r in picked if r["split"] == "val")
    assert len(manifest["train"]) == 4 and all(c["split"] == "train" for c in manifest["train"])
    assert all("/lung masks/" in c["label"] for c in manifest["val"])

    metrics = json.loads((out / "metrics.json").read_text())
    final = metrics["final"]
    assert 0.0 <= final["best_val_dice"] <= 1.0 and 0.0 <= final["best_val_pixel_accuracy"] <= 1.0
    assert 0.0 <= final["best_val_hd95"] <= np.hypot(255, 255) + 1e-3  # pixels, at most the image diagonal
    assert [sorted(r) for r in metrics["history"]["val"]] == [["dice", "epoch", "hd95", "pixel_accuracy"]] * 2

    # the reported scores are those of the written masks against the real lung masks
    preds, trues = [], []
    for case in manifest["val"]:
        mask = np.asarray(Image.open(out / "predictions" / "val" / Path(case["image"]).name)) > 0
        true = np.asarray(Image.open(case["label"])) > 127
        assert mask.shape == true.shape == (256, 256)
        preds.append(torch.stack([torch.as_tensor(~mask), torch.as_tensor(mask)]).float())
        trues.append(torch.stack([torch.as_tensor(~true), torch.as_tensor(true)]).float())
    hd, dice = HD95Metric(), DiceMetric(include_background=False)
    hd(y_pred=preds, y=trues)
    dice(y_pred=preds, y=trues)
    assert final["best_val_hd95"] == pytest.approx(float(hd.aggregate()), rel=1e-3, abs=1e-3)
    assert final["best_val_dice"] == pytest.approx(float(dice.aggregate()), abs=1e-3)

    overlays = out / "plots" / "val_overlays.png"
    assert overlays.stat().st_size > 1000
    assert Image.open(overlays).size[0] > 500

    client = MlflowClient(cfg.tracking.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["net.init"] == "xavier_uniform" and run.data.params["metrics.key_metric"] == "dice"
    assert run.data.metrics["best_val_hd95"] == pytest.approx(final["best_val_hd95"])
    assert run.data.metrics["best_val_dice"] == pytest.approx(final["best_val_dice"])
    assert [m.step for m in client.get_metric_history(result.run_id, "val_hd95")] == [1, 2]
    assert "plots/val_overlays.png" in {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert len(client.list_artifacts(result.run_id, "predictions/val")) == 2


def test_lung_seg_z_score_and_xavier_init(lung_cfg):
    from medpipe.data.discovery import discover_cases
    from medpipe.data.transforms import build_transforms
    from medpipe.nets import build_net
    from medpipe.nets.factory import prepare_net

    cfg, _ = lung_cfg
    case = discover_cases(cfg.data)[0]
    data = build_transforms(cfg.transforms.val)(dict(case))
    image, label = data["image"], data["label"]
    assert tuple(image.shape) == tuple(label.shape) == (1, 256, 256)
    assert abs(float(image.mean())) < 1e-4 and abs(float(image.std(unbiased=False)) - 1.0) < 1e-3  # z-score
    assert set(torch.unique(label).tolist()) == {0.0, 1.0}  # 0/255 -> class indices

    torch.manual_seed(0)
    net, report = prepare_net(build_net(cfg.net), cfg.net)
    assert report is None
    convs = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert len(convs) > 10
    for conv in convs:  # Glorot & Bengio 2010: U(-a, a), a = sqrt(6 / (fan_in + fan_out))
        fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(conv.weight)
        bound = (6.0 / (fan_in + fan_out)) ** 0.5
        w = conv.weight.detach().abs()
        assert float(w.max()) <= bound + 1e-6 and float(w.max()) > 0.9 * bound
        assert conv.bias is None or float(conv.bias.detach().abs().max()) == 0.0
    default_net = build_net(cfg.net.model_copy(update={"init": "default"}))
    first = next(m for m in default_net.modules() if isinstance(m, torch.nn.Conv2d))
    assert float(first.bias.detach().abs().max()) > 0  # without init, MONAI's (torch's) defaults stay
