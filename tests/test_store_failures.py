"""Runs and the MLflow store (issue 15, item 6): a finished run or a copy of a run folder is not resumed; a store
that fails mid-run stops the run with one line and keeps its checkpoints; a deleted store is continued into a new
MLflow run with the full config, params and history; a full disk or read-only folder is one line naming the path.

Small real EM runs (4 images, 64x64 crops, a few seconds an epoch)."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from medpipe.config import validate_config
from medpipe.run import main
from medpipe.runs import RunFolder
from medpipe.workflow import run_pipeline
from tests.test_resume import _config


def _own_lines(stderr: str):
    """The error lines medpipe's command line printed (MLflow's own INFO lines and progress bars left out)."""
    return [line for line in stderr.strip().splitlines() if line.startswith(("error:", "--resume"))]


def _interrupted_run(tmp_path, small_em, epochs=2):
    """A tracked run as a kill after epoch 1 of ``epochs`` leaves it: epoch 1's checkpoint, no metrics.json, its
    MLflow run RUNNING."""
    d = _config(tmp_path, small_em)
    d["train"]["max_epochs"] = epochs
    result = run_pipeline(validate_config(d))
    folder = RunFolder(result.output_dir)
    for e, path in folder.checkpoint_epochs():
        if e > 1:
            path.unlink()
    folder.metrics_file.unlink()
    client = MlflowClient(tracking_uri=d["tracking"]["tracking_uri"])
    client.update_run(result.run_id, status="RUNNING")
    return d, folder, result.run_id, client


def test_finished_runs_and_copies_are_not_resumed(tmp_path, small_em, capsys):
    d, folder, run_id, client = _interrupted_run(tmp_path, small_em)
    client.update_run(run_id, status="FINISHED")
    copy = folder.path.parent / (folder.path.name + "-copy")
    shutil.copytree(folder.path, copy)

    # the copy names its original; the original's MLflow run is untouched
    assert main(["--resume", str(copy)]) == 2
    err = _own_lines(capsys.readouterr().err)
    assert len(err) == 1 and "copy" in err[0] and str(folder.path.resolve()) in err[0]
    assert client.get_run(run_id).info.status == "FINISHED"
    # the original: its MLflow run has finished
    assert main(["--resume", str(folder.path)]) == 2
    assert "has finished" in capsys.readouterr().err
    # without mlflow_run.json the copy is continued, into a new MLflow run
    (copy / "mlflow_run.json").unlink()
    client.update_run(run_id, status="FINISHED")
    assert main(["--resume", str(copy)]) == 0
    new_id = json.loads((copy / "mlflow_run.json").read_text())["run_id"]
    assert new_id != run_id and client.get_run(new_id).info.status == "FINISHED"
    assert client.get_run(run_id).info.status == "FINISHED"


def test_a_deleted_store_is_continued_into_a_new_run_with_config_params_and_history(tmp_path, small_em):
    d, folder, run_id, _ = _interrupted_run(tmp_path, small_em)
    db = Path(d["tracking"]["tracking_uri"].replace("sqlite:///", ""))
    db.unlink()
    shutil.rmtree(d["tracking"]["artifact_location"])

    # a new process, as after a deleted store (this one's MLflow keeps a connection to the deleted file)
    proc = subprocess.run([sys.executable, "-m", "medpipe.run", "--resume", str(folder.path)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "continuing into a new MLflow run" in proc.stderr
    new_id = json.loads(folder.mlflow_run_file.read_text())["run_id"]
    assert new_id != run_id
    # read back in a new process too (this one's MLflow still holds the deleted database file open)
    probe = (
        "import json, sys; from mlflow.tracking import MlflowClient; c = MlflowClient(tracking_uri=sys.argv[1]); "
        "r = c.get_run(sys.argv[2]); print(json.dumps({'status': r.info.status, 'params': r.data.params, "
        "'tags': r.data.tags, 'train': [m.step for m in c.get_metric_history(sys.argv[2], 'train_loss')], "
        "'val': [m.step for m in c.get_metric_history(sys.argv[2], 'val_dice')], "
        "'artifacts': [a.path for a in c.list_artifacts(sys.argv[2])]}))")
    out = subprocess.run([sys.executable, "-c", probe, d["tracking"]["tracking_uri"], new_id], capture_output=True,
                         text=True, timeout=300)
    run = json.loads(out.stdout.strip().splitlines()[-1])
    assert run["status"] == "FINISHED"
    assert run["params"]["train.max_epochs"] == "2" and run["tags"]["output_dir"] == str(folder.path.resolve())
    assert run["train"] == [1, 2] and run["val"] == [1, 2]  # restored epoch 1, then epoch 2
    assert "config.resolved.yaml" in run["artifacts"]


def test_a_store_failing_mid_run_stops_with_one_line_and_resume_continues(tmp_path, small_em, capsys, monkeypatch):
    import mlflow
    from sqlalchemy.exc import OperationalError

    d = _config(tmp_path, small_em)
    pipeline = tmp_path / "p.yaml"
    import yaml

    pipeline.write_text(yaml.safe_dump(d))
    log_metrics = mlflow.log_metrics

    def failing(metrics, step=None, **kw):
        if step == 2:
            raise OperationalError("INSERT INTO metrics ...", {}, Exception("attempt to write a readonly database"))
        return log_metrics(metrics, step=step, **kw)

    monkeypatch.setattr(mlflow, "log_metrics", failing)
    assert main([str(pipeline)]) == 2
    err = _own_lines(capsys.readouterr().err)
    assert len(err) == 1 and "MLflow store" in err[0] and "readonly database" in err[0] and "--resume" in err[0]
    (folder,) = (tmp_path / "artifacts").glob("em_tiny-*")
    ckpts = sorted(p.name for p in (folder / "checkpoints").glob("latest_*.pt"))
    assert ckpts == ["latest_checkpoint_1.pt", "latest_checkpoint_2.pt"]  # training state kept

    monkeypatch.setattr(mlflow, "log_metrics", log_metrics)  # the store works again
    assert main(["--resume", str(folder)]) == 0
    run_id = json.loads((folder / "mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri=d["tracking"]["tracking_uri"])
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1, 2, 3]


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS])
def test_a_full_disk_or_read_only_folder_is_one_line_naming_the_path(tmp_path, small_em, capsys, monkeypatch, err):
    import yaml

    d = _config(tmp_path, small_em)
    d["tracking"]["enabled"] = False
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(yaml.safe_dump(d))
    if err == errno.ENOSPC:  # the disk fills while the first checkpoint is written (no file name from the OS)
        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(torch, "save", full)
        where = str(tmp_path / "artifacts" / "em_tiny-")
    else:  # the output folder cannot be created
        def read_only(self, *args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system", str(self))

        monkeypatch.setattr(Path, "mkdir", read_only)
        where = str(tmp_path / "artifacts")
    assert main([str(pipeline)]) == 2
    lines = _own_lines(capsys.readouterr().err)
    assert len(lines) == 1 and where in lines[0] and ("No space left" in lines[0] or "Read-only" in lines[0])
