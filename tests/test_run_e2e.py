"""End to end: a short real run on 4 EM images, read back through the MLflow client; crash handling; CLI."""

import json

import numpy as np
import pytest
import yaml

from medpipe.config import validate_config
from medpipe.run import main
from medpipe.workflow import run_pipeline

LOAD = {"name": "LoadImaged", "keys": ["image", "label"], "reader": "PILReader", "reverse_indexing": False}
CHAN = {"name": "EnsureChannelFirstd", "keys": ["image", "label"], "channel_dim": "no_channel"}
SCALE = {"name": "ScaleIntensityRanged", "keys": ["image"], "a_min": 0, "a_max": 255, "b_min": 0.0, "b_max": 1.0,
         "clip": True}
MAP = {"name": "MapLabelValued", "keys": ["label"], "orig_labels": [0, 255], "target_labels": [0, 1]}


def _cfg_dict(tmp_path, root, epochs=2):
    return {
        "name": "em_tiny",
        "output_dir": str(tmp_path / "artifacts"),
        "data": {"root": str(root), "images": "image/*.png", "labels": "label/*.png", "test_images": "test/*.png",
                 "split": {"val": ["3.png"]}, "cache": "memory"},
        "transforms": {
            "train": [LOAD, CHAN, SCALE, MAP,
                      {"name": "RandSpatialCropSamplesd", "keys": ["image", "label"], "roi_size": [64, 64],
                       "num_samples": 2, "random_size": False},
                      {"name": "RandFlipd", "keys": ["image", "label"], "prob": 0.5, "spatial_axis": 0}],
            "val": [LOAD, CHAN, SCALE, MAP],
        },
        "net": {"name": "basic_unet", "features": [4, 4, 8, 16, 32, 4]},
        "optimizer": {"name": "adamw", "lr": 0.01},
        "scheduler": {"name": "cosine"},
        "train": {"max_epochs": epochs, "batch_size": 6, "val_interval": 1, "seed": 0, "device": "cpu",
                  "progress": False, "grad_clip_norm": 1.0},
        "metrics": {"names": ["dice", "pixel_accuracy", "v_rand", "v_info"], "key_metric": "dice"},
        "infer": {"roi_size": [128, 128], "sw_batch_size": 8, "overlap": 0.25, "save_probabilities": True},
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "e2e",
                     "artifact_location": str(tmp_path / "mlruns"), "tags": {"purpose": "test"}},
    }


def test_short_run_trains_predicts_and_tracks(tmp_path, small_em):
    from mlflow.tracking import MlflowClient

    cfg = validate_config(_cfg_dict(tmp_path, small_em))
    result = run_pipeline(cfg)
    out = result.output_dir

    # checkpoints, resolved config, metrics, plots, masks
    assert list((out / "checkpoints").glob("best_*.pt")) and list((out / "checkpoints").glob("latest_*.pt"))
    resolved = yaml.safe_load((out / "config.resolved.yaml").read_text())
    assert resolved["train"]["max_epochs"] == 2 and resolved["loss"]["name"] == "dice_ce"  # defaults filled in
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["history"]["train"]) == 2 and len(metrics["history"]["val"]) == 2
    assert (out / "plots" / "training_curves.png").stat().st_size > 1000
    assert (out / "plots" / "val_overlays.png").stat().st_size > 1000
    from PIL import Image

    val_mask = np.asarray(Image.open(out / "predictions" / "val" / "3.png"))
    assert val_mask.shape == (512, 512) and set(np.unique(val_mask).tolist()) <= {0, 255}
    assert sorted(p.name for p in (out / "predictions" / "test").glob("*.png")) == ["0.png", "1.png"]
    prob = np.load(out / "predictions" / "test" / "0_prob.npy")
    assert prob.shape == (512, 512) and prob.dtype == np.float32 and 0 <= prob.min() <= prob.max() <= 1
    # the written mask is the thresholded probability map
    test_mask = np.asarray(Image.open(out / "predictions" / "test" / "0.png")) > 0
    assert np.array_equal(test_mask, prob > 0.5) or np.mean(test_mask != (prob > 0.5)) < 1e-4

    # the scores are real numbers in range, and the final metrics are the re-evaluated best checkpoint
    for k in ("best_val_dice", "best_val_pixel_accuracy", "best_val_v_rand", "best_val_v_info"):
        assert 0.0 <= result.metrics[k] <= 1.0
    best_val = max(r["dice"] for r in metrics["history"]["val"])
    assert result.metrics["best_val_dice"] == pytest.approx(best_val, abs=1e-6)

    # read everything back from the MLflow sqlite store
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == out.name  # <pipeline>-<time>, the artifact folder: unique and findable
    assert run.data.params["train.max_epochs"] == "2" and run.data.params["net.name"] == "basic_unet"
    assert run.data.params["optimizer.lr"] == "0.01"
    assert run.data.tags["purpose"] == "test" and len(run.data.tags["dataset.manifest_sha256"]) == 64
    assert run.data.tags["version.monai"] and run.data.tags["dataset.n_val"] == "1"
    assert run.data.metrics["best_val_dice"] == pytest.approx(result.metrics["best_val_dice"])
    hist = client.get_metric_history(result.run_id, "val_dice")
    assert [m.step for m in hist] == [1, 2]
    losses = client.get_metric_history(result.run_id, "train_loss")
    assert len(losses) == 2 and all(np.isfinite(m.value) for m in losses)
    names = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.resolved.yaml", "manifest.json", "metrics.json", "plots", "predictions"} <= names
    assert result.model_uri == f"runs:/{result.run_id}/model"

    # the logged model loads and reproduces the network's output
    import mlflow.pytorch
    import torch

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    model = mlflow.pytorch.load_model(result.model_uri).eval()
    best = sorted((out / "checkpoints").glob("best_*.pt"))[-1]
    from medpipe.nets import build_net

    net = build_net(cfg.net)
    net.load_state_dict(torch.load(best, weights_only=True))
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), net.eval()(x), atol=1e-5)


def test_training_is_deterministic_with_seed(tmp_path, small_em):
    d = _cfg_dict(tmp_path, small_em, epochs=1)
    d["tracking"]["enabled"] = False
    d["infer"]["splits"] = []
    r1 = run_pipeline(validate_config(d))
    r2 = run_pipeline(validate_config(d))
    h1 = json.loads((r1.output_dir / "metrics.json").read_text())["history"]
    h2 = json.loads((r2.output_dir / "metrics.json").read_text())["history"]
    assert h1["train"][0]["train_loss"] == pytest.approx(h2["train"][0]["train_loss"], rel=1e-6)


def test_crash_marks_run_failed_and_keeps_checkpoints(tmp_path, small_em, monkeypatch):
    from ignite.engine import Events
    from mlflow.tracking import MlflowClient

    import medpipe.tracking as tracking

    original = tracking.Tracker.attach

    def attach_and_crash(self, engines):
        original(self, engines)

        @engines.trainer.on(Events.EPOCH_COMPLETED(once=2))
        def _boom(_):
            raise RuntimeError("simulated crash in epoch 2")

    monkeypatch.setattr(tracking.Tracker, "attach", attach_and_crash)
    d = _cfg_dict(tmp_path, small_em, epochs=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pipeline(validate_config(d))
    client = MlflowClient(tracking_uri=d["tracking"]["tracking_uri"])
    exp = client.get_experiment_by_name("e2e")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    # epoch 1 was checkpointed and logged; epoch 2 crashed before its checkpoint, so MLflow has no epoch 2 either
    # (an epoch is logged once its checkpoint exists: what --resume repeats is never logged twice)
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "val_dice")] == [1]
    ckpts = list((tmp_path / "artifacts").glob("em_tiny-*/checkpoints/latest_*.pt"))
    assert [p.name for p in ckpts] == ["latest_checkpoint_1.pt"], "checkpoints written before the crash must stay"


def test_cli_validate_only_and_errors(tmp_path, small_em, capsys):
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(_cfg_dict(tmp_path, small_em)))
    assert main([str(p), "--validate-only"]) == 0
    assert "valid" in capsys.readouterr().out
    assert main([str(p), "--validate-only", "--set", "train.max_epochz=3"]) == 2
    err = capsys.readouterr().err
    assert "train.max_epochz" in err and "Did you mean 'max_epochs'" in err
    assert main([str(tmp_path / "missing.yaml")]) == 2
    bad_root = tmp_path / "q.yaml"
    d = _cfg_dict(tmp_path, small_em)
    d["data"]["images"] = "nothing/*.png"
    bad_root.write_text(yaml.safe_dump(d))
    assert main([str(bad_root)]) == 2
    assert "no files match 'nothing/*.png'" in capsys.readouterr().err
