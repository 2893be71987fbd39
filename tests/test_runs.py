"""medpipe.runs: run-folder naming, checkpoint lookup, JSON files and finding a run (no training)."""

import json
import os
import re
import time

import pytest

from medpipe.runs import DEFAULT_TRACKING_URI, RunFolder, default_tracking_uri, find_run, no_nan


def test_create_names_folders_uniquely(tmp_path):
    a = RunFolder.create(tmp_path, "em")
    b = RunFolder.create(tmp_path, "em")
    assert a.path.is_dir() and b.path.is_dir() and a.path != b.path
    assert re.fullmatch(r"em-\d{8}-\d{6}", a.path.name)
    assert re.fullmatch(r"em-\d{8}-\d{6}(-1)?", b.path.name)  # "-1" when created in the same second


def test_checkpoints_and_json_files(tmp_path):
    run = RunFolder(tmp_path)
    assert run.best_checkpoint() is None and run.latest_checkpoint() is None and run.checkpoint_epochs() == []
    run.checkpoint_dir.mkdir()
    for name in ("latest_checkpoint_2.pt", "latest_checkpoint_10.pt", "latest_checkpoint_3.pt.tmp", "best_a.pt"):
        (run.checkpoint_dir / name).write_bytes(b"")
    time.sleep(0.01)
    (run.checkpoint_dir / "best_b.pt").write_bytes(b"")
    os.utime(run.checkpoint_dir / "best_a.pt", (1, 1))
    assert [e for e, _ in run.checkpoint_epochs()] == [2, 10]
    assert run.latest_checkpoint().name == "latest_checkpoint_10.pt"
    assert run.best_checkpoint().name == "best_b.pt"

    assert run.read_metrics() == {} and run.read_manifest() is None and run.mlflow_run() is None
    run.write_metrics({"final": {"dice": float("nan"), "n": [1.0, float("nan")]}})
    assert json.loads(run.metrics_file.read_text()) == {"final": {"dice": None, "n": [1.0, None]}}
    run.write_manifest({"train": [{"image": "a.png"}]})
    assert run.read_manifest() == {"train": [{"image": "a.png"}]}
    run.write_mlflow_run("r1", "e1", "sqlite:///x.db")
    assert run.mlflow_run() == {"run_id": "r1", "experiment_id": "e1", "tracking_uri": "sqlite:///x.db"}
    assert run.write_problems([]) is None
    assert run.write_problems([{"file": "a.png", "reason": "bad"}]).read_text().splitlines() == ["file,reason",
                                                                                               "a.png,bad"]
    assert no_nan([float("nan"), {"a": 1}]) == [None, {"a": 1}]


def test_default_tracking_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri() == DEFAULT_TRACKING_URI == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert default_tracking_uri() == "sqlite:///env.db" and default_tracking_uri("file:///x") == "file:///x"


def test_find_run_errors_name_the_source_and_the_store(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--resume abc: not a folder, and not a run id in MLflow at "
                                                r"sqlite:///.*s\.db"):
        find_run("abc", f"sqlite:///{tmp_path}/s.db", context="--resume abc")
    with pytest.raises(FileNotFoundError, match="config.resolved.yaml not found; expected a medpipe run folder"):
        find_run(str(tmp_path))
