"""MLflow read helpers of medpipe.tracking: they resolve models in the store they are given and leave MLflow's
process-wide tracking and registry URIs (and their environment variables) as they were."""

import json
import os
from pathlib import Path

import mlflow
import numpy as np
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


# ------------------------------------------------------------------------------------------ issue 16
def _tracking(tmp, **kw):
    from medpipe.config.tracking import TrackingConfig

    return TrackingConfig(tracking_uri=f"sqlite:///{tmp}/k.db", artifact_location=str(tmp / "mlruns"), **kw)


def test_experiments_are_model_training_experiments(tmp_path):
    """A new experiment gets MLflow 3's experiment-kind tag for model training; an existing one without it (an
    older medpipe store) gets it added; a kind set by hand stays."""
    from mlflow.tracking import MlflowClient

    from medpipe.tracking import EXPERIMENT_KIND_TAG, TRAINING_KIND, Tracker, runs_page

    cfg = _tracking(tmp_path)
    client = MlflowClient(cfg.tracking_uri)
    old = client.create_experiment("old", artifact_location=str(tmp_path / "mlruns"))
    by_hand = client.create_experiment("mine", artifact_location=str(tmp_path / "mlruns"),
                                       tags={EXPERIMENT_KIND_TAG: "genai_development"})
    kinds = {}
    for name in ("new", "old", "mine"):
        with Tracker(cfg, name) as tracker:
            pass
        kinds[name] = client.get_experiment(tracker.experiment_id).tags.get(EXPERIMENT_KIND_TAG)
    assert kinds == {"new": TRAINING_KIND, "old": TRAINING_KIND, "mine": "genai_development"}
    assert {old, by_hand} <= {e.experiment_id for e in client.search_experiments()}
    assert runs_page("7") == "#/experiments/7/runs?workflowType=machine_learning"


def test_register_model_needs_log_model():
    from pydantic import ValidationError

    from medpipe.config.tracking import TrackingConfig

    assert TrackingConfig().register_model is None
    with pytest.raises(ValidationError, match="register_model is 'em' but log_model is false"):
        TrackingConfig(register_model="em", log_model=False)


@pytest.fixture(scope="module")
def em_run(tmp_path_factory, datasets):
    """A 1-epoch EM run (real images) with ``tracking.register_model`` set, in a sqlite store."""
    from medpipe.config import validate_config
    from medpipe.workflow import run_pipeline

    from tests.conftest import link_em
    from tests.test_run_e2e import _cfg_dict

    tmp = tmp_path_factory.mktemp("em_run")
    root = link_em(tmp / "em", datasets, 4, 2)
    raw = _cfg_dict(tmp, root, epochs=1)
    raw["tracking"]["register_model"] = "em_unet"
    return validate_config(raw), run_pipeline(validate_config(raw))


def test_splits_are_logged_as_dataset_inputs(em_run):
    """train / val / test are MLflow dataset inputs (Dataset column, lineage): the pipeline's name, the data root
    as source, a digest from the manifest hash and the split's cases, the full hash as an input tag."""
    from medpipe.data.cases import resolve_root
    from medpipe.tracking import split_digest

    cfg, result = em_run
    run = mlflow.MlflowClient(result.tracking_uri).get_run(result.run_id)
    manifest = json.loads((result.output_dir / "manifest.json").read_text())
    sha = run.data.tags["dataset.manifest_sha256"]
    assert len(sha) == 64
    got = {}
    for inp in run.inputs.dataset_inputs:
        tags = {t.key: t.value for t in inp.tags}
        got[tags["mlflow.data.context"]] = (inp.dataset, tags)
    assert sorted(got) == ["test", "train", "val"]
    for split, (ds, tags) in got.items():
        assert ds.name == "em_tiny" and tags["medpipe.manifest_sha256"] == sha
        assert ds.digest == split_digest(sha, split, manifest[split]) and len(ds.digest) == 36
        assert str(resolve_root(cfg.data.root)) in ds.source
        assert json.loads(ds.profile)["num_rows"] == len(manifest[split])
    assert len({ds.digest for ds, _ in got.values()}) == 3


def test_model_has_signature_example_and_is_registered_with_metrics(em_run, tmp_path):
    """The logged model has a signature ``(-1, 1, -1, -1) -> (-1, 2, -1, -1)`` and an input example of one
    inference window ``(1, 1, 128, 128)``; BasicUNet stays pickled (its pt2 export refuses sizes the module pads)
    beside the tensors-only state dict; ``register_model`` made a registry version tagged with the run's
    metrics."""
    from mlflow.models import Model

    from medpipe.mlflow_models import STATE_DICT_FILE, resolve_model_uri

    _, result = em_run
    client = mlflow.MlflowClient(result.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.data.tags["model.serialization"] == "pickle"
    assert "refuses input (1, 1, 129, 129)" in run.data.tags["model.pickle_reason"]
    _, location = resolve_model_uri(result.model_uri, result.tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(tmp_path),
                                                     tracking_uri=result.tracking_uri))
    model = Model.load(str(local))
    spec_in, spec_out = model.signature.inputs.inputs[0], model.signature.outputs.inputs[0]
    assert (spec_in.shape, str(spec_in.type)) == ((-1, 1, -1, -1), "float32")
    assert spec_out.shape == (-1, 2, -1, -1)
    example = json.loads((local / "input_example.json").read_text())
    assert np.asarray(example).shape == (1, 1, 128, 128)
    assert (local / STATE_DICT_FILE).is_file()
    versions = client.search_model_versions("name = 'em_unet'")
    assert len(versions) == 1 and versions[0].run_id == result.run_id
    tags = versions[0].tags
    assert float(tags["best_val_dice"]) == pytest.approx(result.metrics["best_val_dice"], rel=1e-5)
    assert run.data.tags["model.registered"] == "em_unet/1"


def test_classifier_is_logged_as_pt2_serving_every_size(tmp_path):
    """ResNet-18's exported program serves other batches and sizes, so it is logged with MLflow's code-free pt2
    (no pickle file), and MLflow's loader gives the network's outputs on a batch of 3 at another size."""
    from medpipe.config import ResNetNet
    from medpipe.mlflow_models import PICKLED_MODEL_FILES, log_network, network_example
    from medpipe.nets import build_net

    torch.manual_seed(0)
    net = build_net(ResNetNet(name="resnet18", spatial_dims=2, in_channels=1, num_classes=2)).eval()
    example = network_example([{"image": np.zeros((1, 64, 64), np.float32)}])
    assert example.shape == (1, 1, 64, 64) and example.dtype == np.float32
    before = mlflow.get_tracking_uri()
    try:
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/c.db")
        exp = mlflow.create_experiment("c", artifact_location=str(tmp_path / "mlruns"))
        with mlflow.start_run(experiment_id=exp):
            fmt, reason, uri = log_network(net, "model", ["torch"], example)
            info = mlflow.last_logged_model()
        assert uri == f"models:/{info.model_id}"
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=info.artifact_location,
                                                         dst_path=str(tmp_path / "m")))
        assert (fmt, reason) == ("pt2", None)
        assert (local / "data" / "model.pt2").is_file() and not (local / PICKLED_MODEL_FILES[0]).is_file()
        loaded = mlflow.pytorch.load_model(str(local))
    finally:
        mlflow.set_tracking_uri(before)
    x = torch.rand(3, 1, 80, 72)
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=1e-4)
