"""No code runs from an untrusted run folder or MLflow model (issue 15, item 1).

A pickled file whose ``__reduce__`` opens (creates) a marker file is put where medpipe used to unpickle: MLflow's
``data/model.pth`` of a run folder's ``model/`` (served through ``runs.load_trained``), of a ``runs:/`` model used
as ``net.pretrained``, and of a model exported with ``medpipe.export``; also a run's ``checkpoints/best_*.pt`` and
the weights-only ``extra_files/state_dict.pt`` itself. By default each is refused with a one-line error naming the
source and how to opt in, and the marker never appears. With ``trust_pickle`` the marker does appear (the payload
is live), and a genuine model logged before medpipe wrote the state dict still loads. A normal trained run loads
as tensors only (``mlflow.pytorch.load_model`` is never called) and predicts exactly as the network it logged.
"""

import functools
import shutil
from pathlib import Path

import mlflow
import pytest
import torch

from medpipe.config import LeNetNet
from medpipe.export import export_model, main as export_main
from medpipe.mlflow_models import (STATE_DICT_FILE, UntrustedModelError, load_model_state_dict, load_weights_file,
                                   resolve_model_uri)
from medpipe.nets.factory import build_net, prepare_net
from medpipe.nets.lenet import LeNet
from medpipe.runs import load_trained

from tests.serve.models import mlflow_store, seg_run  # noqa: F401  (fixtures)


class _Payload:
    """Unpickles as ``open(marker, "w")``: a file appears when (and only when) the pickle is executed."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _EvilNet(torch.nn.Linear):
    """A module MLflow accepts for ``log_model`` whose pickle is the payload (a legacy, pickled-only model)."""

    def __init__(self, marker):
        super().__init__(2, 2)
        self.marker = str(marker)

    def __reduce_ex__(self, protocol):
        return (open, (self.marker, "w"))


def _write_payload(path, marker):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_Payload(marker), path)


def _download(model_uri, tracking_uri, dst):
    """The logged model's folder (MLmodel, data/model.pth, extra_files/state_dict.pt), downloaded to ``dst``."""
    _, location = resolve_model_uri(model_uri, tracking_uri)
    return mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(dst), tracking_uri=tracking_uri)


def _predict(trained, image):
    x = torch.as_tensor(trained.transform({"image": image})["image"])[None].float()
    with torch.no_grad():
        return trained.inferer(x, trained.net)


@pytest.fixture
def no_unpickling(monkeypatch):
    """Fail the test if anything calls ``mlflow.pytorch.load_model`` (MLflow's unpickling loader)."""
    import mlflow.pytorch

    def refuse(*args, **kwargs):
        raise AssertionError(f"mlflow.pytorch.load_model called with {args}")

    monkeypatch.setattr(mlflow.pytorch, "load_model", refuse)


@pytest.fixture
def run_copy(seg_run, tmp_path):
    """A copy of the tiny trained EM run folder with the logged MLflow model in ``model/``."""
    folder = tmp_path / "run"
    shutil.copytree(seg_run.output_dir, folder)
    shutil.copytree(_download(seg_run.model_uri, seg_run.tracking_uri, tmp_path / "dl"), folder / "model")
    return folder


def _image(seg_run):
    """A real EM image of the run's data."""
    return str(sorted((Path(seg_run.cfg.data.root) / "image").glob("*.png"))[0])


# ------------------------------------------------------------------------------------------- normal runs
def test_a_trained_run_loads_as_tensors_and_predicts_like_its_network(seg_run, run_copy, no_unpickling, tmp_path):
    assert (run_copy / "model" / STATE_DICT_FILE).is_file()  # Tracker.log_model wrote the weights-only file
    image = _image(seg_run)
    from_folder = load_trained(str(seg_run.output_dir))  # checkpoints/best_*.pt
    from_uri = load_trained(seg_run.model_uri, seg_run.tracking_uri)  # the model's extra_files/state_dict.pt
    shutil.rmtree(run_copy / "checkpoints")
    from_model_dir = load_trained(str(run_copy))  # model/extra_files/state_dict.pt
    ref = _predict(from_folder, image)
    assert torch.equal(ref, _predict(from_uri, image)) and torch.equal(ref, _predict(from_model_dir, image))


def test_the_logged_state_dict_equals_the_network_that_was_logged(seg_run, tmp_path, monkeypatch):
    import mlflow.pytorch

    # the pickled module is the network as it was in memory at the end of the run (trusted here: we made it)
    folder = _download(seg_run.model_uri, seg_run.tracking_uri, tmp_path / "dl")
    in_memory = mlflow.pytorch.load_model(folder, map_location="cpu").eval()
    trained = load_trained(seg_run.model_uri, seg_run.tracking_uri)
    own = in_memory.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in trained.net.state_dict().items())
    image = _image(seg_run)
    x = torch.as_tensor(trained.transform({"image": image})["image"])[None].float()
    with torch.no_grad():
        assert torch.equal(trained.inferer(x, in_memory), _predict(trained, image))


# -------------------------------------------------------------------------------- (a) run / model folders
def test_run_folder_with_a_pickled_model_is_refused(seg_run, run_copy, tmp_path, no_unpickling):
    marker = tmp_path / "PWNED"
    shutil.rmtree(run_copy / "checkpoints")
    (run_copy / "model" / STATE_DICT_FILE).unlink()  # as a model logged before the state dict, or a forged one
    _write_payload(run_copy / "model" / "data" / "model.pth", marker)
    with pytest.raises(UntrustedModelError) as err:
        load_trained(str(run_copy))
    msg = str(err.value)
    assert "\n" not in msg and str(run_copy / "model") in msg and "data/model.pth" in msg
    assert "trust_pickle=True" in msg and "--trust-pickle" in msg and "run" in msg and "code" in msg
    assert not marker.exists()


def test_pickled_model_next_to_the_state_dict_is_never_read(seg_run, run_copy, tmp_path, no_unpickling):
    marker = tmp_path / "PWNED"
    shutil.rmtree(run_copy / "checkpoints")
    _write_payload(run_copy / "model" / "data" / "model.pth", marker)
    load_trained(str(run_copy), trust_pickle=True)  # the weights-only file wins even when pickles are trusted
    assert not marker.exists()


def test_forged_checkpoint_and_state_dict_are_refused(run_copy, tmp_path):
    marker = tmp_path / "PWNED"
    best = next((run_copy / "checkpoints").glob("best_*.pt"))
    _write_payload(best, marker)
    with pytest.raises(UntrustedModelError, match=r"best_.*\.pt holds objects other than tensors \(pickled "
                                                  r"globals: io\.open\).*trust_pickle=True"):
        load_trained(str(run_copy))
    shutil.rmtree(run_copy / "checkpoints")
    _write_payload(run_copy / "model" / STATE_DICT_FILE, marker)
    with pytest.raises(UntrustedModelError, match=r"state_dict\.pt holds objects other than tensors"):
        load_trained(str(run_copy))
    assert not marker.exists()
    with pytest.raises(ValueError, match="not a readable torch weights file"):
        (tmp_path / "t.pt").write_bytes(b"PK\x03\x04 truncated")
        load_weights_file(tmp_path / "t.pt", "x")


def test_trust_pickle_runs_the_payload_and_loads_a_genuine_legacy_model(seg_run, run_copy, tmp_path):
    image = _image(seg_run)
    ref = _predict(load_trained(str(seg_run.output_dir)), image)
    shutil.rmtree(run_copy / "checkpoints")
    (run_copy / "model" / STATE_DICT_FILE).unlink()  # a genuine legacy model: pickled module only
    legacy = load_trained(str(run_copy), trust_pickle=True)
    assert torch.equal(_predict(legacy, image), ref)

    marker = tmp_path / "PWNED"
    _write_payload(run_copy / "model" / "data" / "model.pth", marker)
    with pytest.raises(Exception):  # noqa: B017 - the payload is no model; what matters is that it ran
        load_trained(str(run_copy), trust_pickle=True)
    assert marker.exists()  # the payload is live: the default refusal above is what kept it from running


# ------------------------------------------------------------------------ (b) runs:/ models, net.pretrained
@pytest.fixture
def evil_store(seg_run, tmp_path):
    """A sqlite store with a run that has the EM run's config and a pickled-only model whose pickle is the
    payload, and a run with a genuine pickled-only (legacy) model of a LeNet."""
    import mlflow.pytorch

    uri = f"sqlite:///{tmp_path}/evil.db"
    marker = tmp_path / "PWNED"
    before = mlflow.get_tracking_uri()
    try:
        mlflow.set_tracking_uri(uri)
        exp = mlflow.create_experiment("evil", artifact_location=str(tmp_path / "mlruns"))
        with mlflow.start_run(experiment_id=exp) as run:
            mlflow.log_artifact(str(seg_run.output_dir / "config.resolved.yaml"))
            mlflow.pytorch.log_model(_EvilNet(marker), name="model", pip_requirements=["torch"],
                                     serialization_format="pickle")
        torch.manual_seed(0)
        lenet = LeNet(in_channels=3, num_classes=3)
        with mlflow.start_run(experiment_id=exp) as legacy:
            mlflow.pytorch.log_model(lenet, name="model", pip_requirements=["torch"], serialization_format="pickle")
    finally:
        mlflow.set_tracking_uri(before)
    assert not marker.exists()
    return {"uri": uri, "marker": marker, "evil": f"runs:/{run.info.run_id}/model",
            "legacy": f"runs:/{legacy.info.run_id}/model", "lenet": lenet}


def test_runs_uri_as_pretrained_is_refused_unless_trusted(evil_store):
    loader = functools.partial(load_model_state_dict, tracking_uri=evil_store["uri"])  # as the workflow passes it
    cfg = LeNetNet(name="lenet", in_channels=3, num_classes=2, pretrained=evil_store["evil"])
    with pytest.raises(UntrustedModelError, match=r"MLflow model runs:/.*data/model\.pth.*pretrained_trust_pickle"):
        prepare_net(build_net(cfg), cfg, mlflow_loader=loader)
    assert not evil_store["marker"].exists()

    legacy = LeNetNet(name="lenet", in_channels=3, num_classes=2, pretrained=evil_store["legacy"])
    with pytest.raises(UntrustedModelError):
        prepare_net(build_net(legacy), legacy, mlflow_loader=loader)
    trusted = legacy.model_copy(update={"pretrained_trust_pickle": True})
    net, report = prepare_net(build_net(trusted), trusted, mlflow_loader=loader)  # the legacy path still works
    assert len(report.loaded) == 6 and torch.equal(net.features[0].weight, evil_store["lenet"].features[0].weight)

    evil_trusted = cfg.model_copy(update={"pretrained_trust_pickle": True})
    with pytest.raises(Exception):  # noqa: B017 - the payload is no model; what matters is that it ran
        prepare_net(build_net(evil_trusted), evil_trusted, mlflow_loader=loader)
    assert evil_store["marker"].exists()


def test_runs_uri_served_through_load_trained_is_refused(evil_store, no_unpickling):
    with pytest.raises(UntrustedModelError, match=r"^MLflow model runs:/\S+: the MLflow model has only a pickled"):
        load_trained(evil_store["evil"], evil_store["uri"])
    assert not evil_store["marker"].exists()


# --------------------------------------------------------------------------------------------- (c) export
def test_export_refuses_pickled_models(seg_run, run_copy, evil_store, tmp_path, capsys, no_unpickling):
    marker = evil_store["marker"]
    shutil.rmtree(run_copy / "checkpoints")
    (run_copy / "model" / STATE_DICT_FILE).unlink()
    _write_payload(run_copy / "model" / "data" / "model.pth", marker)
    with pytest.raises(UntrustedModelError):
        export_model(str(run_copy), "torchscript", tmp_path / "a")
    assert export_main([str(run_copy), "--format", "torchscript", "--out", str(tmp_path / "b")]) == 2
    assert export_main([evil_store["evil"], "--format", "onnx", "--out", str(tmp_path / "c"),
                        "--tracking-uri", evil_store["uri"]]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 2 and err.count("--trust-pickle") == 2
    assert not marker.exists() and not (tmp_path / "b" / "model.ts").exists()


def test_export_with_trust_pickle_runs_the_payload(run_copy, tmp_path, monkeypatch):
    marker = tmp_path / "PWNED"
    shutil.rmtree(run_copy / "checkpoints")
    (run_copy / "model" / STATE_DICT_FILE).unlink()
    _write_payload(run_copy / "model" / "data" / "model.pth", marker)
    monkeypatch.setattr("sys.argv", ["x"])
    with pytest.raises(Exception):  # noqa: B017 - the payload is no model; what matters is that it ran
        export_main([str(run_copy), "--format", "torchscript", "--out", str(tmp_path / "b"), "--trust-pickle"])
    assert marker.exists()
