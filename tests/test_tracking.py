"""MLflow read helpers of medpipe.tracking: they resolve models in the store they are given and leave MLflow's
process-wide tracking and registry URIs (and their environment variables) as they were."""

import os

import mlflow
import pytest
import torch

from medpipe.tracking import fetch_model_run, load_model_state_dict, resolve_model_uri


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sqlite store with one logged (MLflow 3 logged model, with medpipe's weights-only state dict) and registered
    tiny network."""
    from medpipe.mlflow_models import log_network

    tmp = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{tmp}/b.db"
    before = mlflow.get_tracking_uri()
    try:
        mlflow.set_tracking_uri(uri)
        exp = mlflow.create_experiment("t", artifact_location=str(tmp / "mlruns"))
        torch.manual_seed(0)
        net = torch.nn.Linear(3, 2)
        with mlflow.start_run(experiment_id=exp) as run:
            log_network(net, "model", ["torch"])  # as Tracker.log_model does
            (tmp / "config.resolved.yaml").write_text("name: x\n")
            mlflow.log_artifact(str(tmp / "config.resolved.yaml"))
        version = mlflow.register_model(f"runs:/{run.info.run_id}/model", "tiny").version
    finally:
        mlflow.set_tracking_uri(before)
    return {"uri": uri, "run_id": run.info.run_id, "version": version, "state": net.state_dict()}


def test_models_resolve_in_the_given_store_and_global_uris_stay(store, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    before = mlflow.get_tracking_uri()
    try:
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/a.db")
        env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        for uri in (f"runs:/{store['run_id']}/model", f"models:/tiny/{store['version']}", "models:/tiny/latest"):
            run_id, _ = resolve_model_uri(uri, store["uri"])
            assert run_id == store["run_id"]
            sd = load_model_state_dict(uri, tracking_uri=store["uri"])
            assert all(torch.equal(sd[k], v) for k, v in store["state"].items())
        got = fetch_model_run(f"models:/tiny/{store['version']}", tmp_path / "dl", store["uri"],
                              files=("config.resolved.yaml", "metrics.json"))
        assert got["run_id"] == store["run_id"] and got["files"]["metrics.json"] is None
        assert got["files"]["config.resolved.yaml"].read_text() == "name: x\n"
        with pytest.raises(mlflow.exceptions.MlflowException, match="tiny_missing"):
            fetch_model_run("models:/tiny_missing/1", tmp_path / "dl2", store["uri"])
        # untouched: the global tracking URI, and the registry URI still follows it (not pinned to a.db)
        assert mlflow.get_tracking_uri().endswith("a.db") and mlflow.get_registry_uri().endswith("a.db")
        assert {k: os.environ.get(k) for k in env} == env
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/c.db")
        assert mlflow.get_registry_uri().endswith("c.db")
    finally:
        mlflow.set_tracking_uri(before)
