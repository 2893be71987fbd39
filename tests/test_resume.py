"""Crash and resume: a training process killed with SIGKILL (mid-epoch, or while writing its checkpoint) is resumed
with ``--resume`` and reaches the same weights as an uninterrupted run with the same seed, logging into the same
MLflow run. Real EM images, CPU."""

import json
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

from medpipe.config import validate_config
from medpipe.runs import latest_checkpoint
from medpipe.run import main
from medpipe.workflow import run_pipeline
from tests.test_run_e2e import _cfg_dict

EPOCHS = 3

# Runs a pipeline and SIGKILLs its own process in epoch 2: after the 2nd iteration ("iteration"), or halfway through
# writing the epoch-2 checkpoint, after the temporary file has received bytes ("save").
KILLER = textwrap.dedent("""
    import os, signal, sys
    import torch
    from ignite.engine import Events
    import medpipe.workflow.skeleton as S
    from medpipe.config import load_config
    from medpipe.workflow import run_pipeline

    mode = sys.argv[2]
    build = S.build_engines

    def build_and_arm(*args, **kwargs):
        engines = build(*args, **kwargs)
        trainer = engines.trainer
        if mode == "iteration":
            @trainer.on(Events.ITERATION_COMPLETED)
            def _kill(engine):
                if engine.state.epoch == 2 and engine.state.iteration == engine.state.epoch_length + 2:
                    os.kill(os.getpid(), signal.SIGKILL)
        else:
            save = torch.save

            def save_then_die(obj, f, *a, **k):
                if isinstance(obj, dict) and "trainer" in obj and obj["trainer"]["iteration"] > \\
                        obj["trainer"]["epoch_length"]:
                    f.write(b"half a checkpoint")
                    f.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
                return save(obj, f, *a, **k)

            torch.save = save_then_die
        return engines

    S.build_engines = build_and_arm  # where the run skeleton looks it up
    run_pipeline(load_config(sys.argv[1]))
""")


def _config(tmp_path, root):
    d = _cfg_dict(tmp_path, root, epochs=EPOCHS)
    d["infer"]["splits"] = []
    d["train"]["batch_size"] = 2  # 3 training images x 2 crops: 3 iterations per epoch
    return d


def _weights(folder):
    return torch.load(latest_checkpoint(folder / "checkpoints"), map_location="cpu", weights_only=True)["net"]


@pytest.mark.parametrize("kill_in", ["iteration", "save"])
def test_sigkill_then_resume_reaches_the_uninterrupted_weights(tmp_path, small_em, kill_in):
    from mlflow.tracking import MlflowClient

    d = _config(tmp_path, small_em)
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(yaml.safe_dump(d))
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    proc = subprocess.run([sys.executable, str(script), str(pipeline), kill_in], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]

    (folder,) = (tmp_path / "artifacts").glob("em_tiny-*")
    ckpts = folder / "checkpoints"
    # killed in epoch 2: only epoch 1's checkpoint is complete; an interrupted save leaves only a temporary file
    assert sorted(p.name for p in ckpts.glob("latest_*.pt")) == ["latest_checkpoint_1.pt"]
    torch.load(ckpts / "latest_checkpoint_1.pt", weights_only=True)  # loads
    if kill_in == "save":
        assert [p for p in ckpts.iterdir() if p.suffix != ".pt"], "the half-written temporary file"
    run_id = json.loads((folder / "mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri=d["tracking"]["tracking_uri"])
    assert client.get_run(run_id).info.status == "RUNNING"  # SIGKILL: nobody could mark it

    assert main(["--resume", str(folder)]) == 0
    resumed = _weights(folder)
    assert sorted(p.name for p in ckpts.glob("latest_*.pt")) == [f"latest_checkpoint_{EPOCHS - 1}.pt",
                                                                  f"latest_checkpoint_{EPOCHS}.pt"]

    # the same pipeline, never interrupted
    d2 = _config(tmp_path, small_em)
    d2["output_dir"] = str(tmp_path / "uninterrupted")
    d2["tracking"]["enabled"] = False
    straight = run_pipeline(validate_config(d2))
    reference = _weights(straight.output_dir)
    assert resumed.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(resumed[name], reference[name], rtol=1e-5, atol=1e-6, msg=name)

    # one MLflow run, finished, with every epoch logged once and the history of all epochs in metrics.json
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert [m.step for m in client.get_metric_history(run_id, "val_dice")] == list(range(1, EPOCHS + 1))
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == list(range(1, EPOCHS + 1))
    history = json.loads((folder / "metrics.json").read_text())["history"]
    assert [r["epoch"] for r in history["train"]] == list(range(1, EPOCHS + 1))
    reference_history = json.loads((straight.output_dir / "metrics.json").read_text())["history"]
    for a, b in zip(history["train"], reference_history["train"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    assert len(list(ckpts.glob("best_*.pt"))) == 1


def test_resume_by_mlflow_run_id_and_errors(tmp_path, small_em, capsys):
    from mlflow.tracking import MlflowClient

    d = _config(tmp_path, small_em)
    d["train"]["max_epochs"] = 1
    result = run_pipeline(validate_config(d))
    client = MlflowClient(tracking_uri=d["tracking"]["tracking_uri"])
    # a finished run is refused: resuming would log its final metrics and model twice
    assert main(["--resume", result.run_id, "--tracking-uri", d["tracking"]["tracking_uri"]]) == 2
    assert "the run finished" in capsys.readouterr().err
    assert client.get_run(result.run_id).info.status == "FINISHED"

    # killed after training, while finishing (no metrics.json, MLflow run still RUNNING): found by its MLflow run
    # id, not trained again, only re-evaluated
    (result.output_dir / "metrics.json").unlink()
    client.update_run(result.run_id, status="RUNNING")
    assert main(["--resume", result.run_id, "--tracking-uri", d["tracking"]["tracking_uri"]]) == 0
    assert f"artifacts: {result.output_dir}" in capsys.readouterr().out
    assert [m.step for m in client.get_metric_history(result.run_id, "train_loss")] == [1]
    assert client.get_run(result.run_id).info.status == "FINISHED"
    assert main(["--resume", "no-such-run", "--tracking-uri", d["tracking"]["tracking_uri"]]) == 2
    assert "not a run id" in capsys.readouterr().err
    (result.output_dir / "metrics.json").unlink()
    for ckpt in (result.output_dir / "checkpoints").glob("latest_*.pt"):
        ckpt.unlink()
    assert main(["--resume", str(result.output_dir)]) == 2
    assert "no checkpoints/latest_checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--resume", str(result.output_dir), "--set", "train.max_epochs=3"])


def test_resume_refuses_changed_data(tmp_path, small_em):
    from medpipe.data.cases import DataError
    from medpipe.workflow import find_resume

    d = _config(tmp_path, small_em)
    d["train"]["max_epochs"] = 1
    d["tracking"]["enabled"] = False
    result = run_pipeline(validate_config(d))
    (result.output_dir / "metrics.json").unlink()  # as if killed while finishing
    (small_em / "image" / "2.png").unlink()
    (small_em / "label" / "2.png").unlink()
    cfg, resume = find_resume(str(result.output_dir))
    with pytest.raises(DataError, match="train split"):
        run_pipeline(cfg, resume=resume)
