"""A NaN training loss stops the run: FAILED in MLflow, the epoch and batch named, the last good checkpoint kept."""

import logging

import pytest
import torch

from medpipe.config import validate_config
from medpipe.engine.trainer import NonFiniteLossError
from medpipe.workflow import run_pipeline
from tests.test_run_e2e import _cfg_dict


def _nan_from_call(monkeypatch, first_nan_call: int):
    """Make the training loss NaN from its ``first_nan_call``-th call on (1-based), gradients flowing: the step
    after it writes NaN weights, as a diverging run does."""
    import medpipe.engine.trainer as trainer_mod

    build = trainer_mod.build_loss
    calls = {"n": 0}

    class NaNAfter(torch.nn.Module):
        def __init__(self, loss):
            super().__init__()
            self.loss = loss

        def forward(self, pred, label):
            calls["n"] += 1
            out = self.loss(pred, label)
            return out * float("nan") if calls["n"] >= first_nan_call else out

    monkeypatch.setattr(trainer_mod, "build_loss", lambda *a, **k: NaNAfter(build(*a, **k)))
    return calls


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, small_em, monkeypatch, caplog):
    from mlflow.tracking import MlflowClient

    d = _cfg_dict(tmp_path, small_em, epochs=2)
    d["train"]["batch_size"] = 1  # 3 training images: 3 batches per epoch
    d["train"]["val_interval"] = 2  # (speed) no validation before the NaN
    calls = _nan_from_call(monkeypatch, first_nan_call=5)  # epoch 2, batch 2
    with caplog.at_level(logging.INFO), pytest.raises(NonFiniteLossError) as info:
        run_pipeline(validate_config(d))
    err = info.value
    assert (err.epoch, err.iteration) == (2, 2) and err.loss != err.loss  # NaN
    assert calls["n"] == 5, "training stopped at the first NaN batch"
    msg = str(err)
    assert "training loss is nan at epoch 2, batch 2" in msg and "latest_checkpoint_1.pt" in msg
    assert "Traceback" not in caplog.text, "the engine does not log a traceback for it"

    client = MlflowClient(tracking_uri=d["tracking"]["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    ckpt_dir = next((tmp_path / "artifacts").glob("em_tiny-*/checkpoints"))
    assert sorted(p.name for p in ckpt_dir.glob("latest_*.pt")) == ["latest_checkpoint_1.pt"]
    assert err.checkpoint == ckpt_dir / "latest_checkpoint_1.pt"
    state = torch.load(err.checkpoint, map_location="cpu", weights_only=True)
    assert state["trainer"]["iteration"] == 3  # written after epoch 1 (3 batches)
    assert all(torch.isfinite(t).all() for t in state["net"].values() if t.is_floating_point())


def test_nan_loss_in_the_first_epoch_names_no_checkpoint(tmp_path, small_em, monkeypatch):
    d = _cfg_dict(tmp_path, small_em, epochs=2)
    d["tracking"]["enabled"] = False
    _nan_from_call(monkeypatch, first_nan_call=1)
    with pytest.raises(NonFiniteLossError, match=r"at epoch 1, batch 1: .*no checkpoint was written") as info:
        run_pipeline(validate_config(d))
    assert info.value.checkpoint is None
    assert not list((tmp_path / "artifacts").glob("em_tiny-*/checkpoints/*.pt"))
