"""Pretrained-weight resolution (medpipe.nets.weight_sources) and partial loading (medpipe.nets.pretrained)."""

import functools
import hashlib
import http.server
import json
import socket
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from medpipe.nets.lenet import LeNet
from medpipe.nets.pretrained import (
    LoadReport,
    head_parameter_names,
    load_pretrained,
    plain_names,
)
from medpipe.nets.weight_sources import (
    PretrainedDownloadError,
    default_cache_dir,
    resolve_pretrained,
)

HEAD = ["classifier.4.weight", "classifier.4.bias"]  # LeNet's last dense layer


def _lenet(num_classes=2, seed=0, in_channels=3):
    torch.manual_seed(seed)
    return LeNet(in_channels=in_channels, num_classes=num_classes)


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _assert_same(a: dict, b: dict, names):
    for n in names:
        assert torch.equal(a[n], b[n]), n


class Tiny(nn.Module):
    """A network class outside torch/monai/medpipe, for the pickle allow-list tests."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


# ----------------------------------------------------------------------------------------- local files
def test_matching_weights_load_exactly(tmp_path):
    src, dst = _lenet(seed=0), _lenet(seed=1)
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    assert not torch.equal(src.features[0].weight, dst.features[0].weight)
    report = load_pretrained(dst, path)
    _assert_same(src.state_dict(), dst.state_dict(), src.state_dict())
    assert report.loaded == list(dst.state_dict())
    assert report.shape_mismatch == [] and report.missing == [] and report.unexpected == []
    assert report.n_loaded_values == report.n_net_values == sum(p.numel() for p in dst.parameters())
    assert report.source == str(path)
    assert "loaded 8/8 tensors" in report.summary() and "100.0%" in report.summary()


def test_mismatched_head_is_skipped_and_reported(tmp_path):
    src, dst = _lenet(num_classes=3, seed=0), _lenet(num_classes=2, seed=1)
    head_before = {n: dst.state_dict()[n].clone() for n in HEAD}
    torch.save(src.state_dict(), tmp_path / "w.pt")
    report = load_pretrained(dst, tmp_path / "w.pt")
    assert report.shape_mismatch == [("classifier.4.weight", (3, 500), (2, 500)), ("classifier.4.bias", (3,), (2,))]
    assert sorted(report.reinitialised) == sorted(HEAD)
    _assert_same(head_before, dst.state_dict(), HEAD)  # head kept at its own initialisation
    backbone = [n for n in dst.state_dict() if n not in HEAD]
    assert report.loaded == backbone
    _assert_same(src.state_dict(), dst.state_dict(), backbone)
    summary = report.summary()
    assert "classifier.4.weight (3, 500) in checkpoint vs (2, 500) in net" in summary
    d = json.loads(json.dumps(report.to_dict()))
    assert d["shape_mismatch"][0] == {"name": "classifier.4.weight", "checkpoint_shape": [3, 500],
                                      "net_shape": [2, 500]}
    assert d["source"] == str(tmp_path / "w.pt") and len(d["loaded"]) == 6
    with pytest.raises(ValueError, match=r"strict_shapes.*classifier\.4\.weight"):
        load_pretrained(_lenet(num_classes=2), tmp_path / "w.pt", strict_shapes=True)


def test_exclude_reinitialises_a_matching_head():
    src, dst = _lenet(seed=0), _lenet(seed=1)
    head_before = {n: dst.state_dict()[n].clone() for n in HEAD}
    report = load_pretrained(dst, src.state_dict(), exclude=["classifier.4"])
    assert report.excluded == HEAD and report.source == "<state dict>"
    _assert_same(head_before, dst.state_dict(), HEAD)
    assert torch.equal(dst.features[0].weight, src.features[0].weight)


def test_missing_file_error_names_the_path(tmp_path):
    missing = tmp_path / "nope" / "weights.pt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_pretrained(_lenet(), str(missing))
    with pytest.raises(FileNotFoundError, match="weights.pt"):
        resolve_pretrained(missing)


def test_medpipe_checkpoint_layout(tmp_path):
    """``{"net", "optimizer", "trainer"}`` as the CheckpointSaver of medpipe.engine.trainer writes it."""
    src = _lenet(seed=0)
    opt = torch.optim.Adam(src.parameters(), lr=1e-3)
    src(torch.rand(2, 3, 28, 28)).sum().backward()
    opt.step()
    ckpt = {"net": src.state_dict(), "optimizer": opt.state_dict(),
            "trainer": {"epoch": 3, "iteration": 30, "max_epochs": 10, "epoch_length": 10}}
    torch.save(ckpt, tmp_path / "latest_net=3.pt")
    sd = resolve_pretrained(tmp_path / "latest_net=3.pt")
    assert list(sd) == list(src.state_dict())
    dst = _lenet(seed=1)
    report = load_pretrained(dst, tmp_path / "latest_net=3.pt")
    assert report.unexpected == [] and len(report.loaded) == 8
    _assert_same(src.state_dict(), dst.state_dict(), src.state_dict())


def test_ddp_prefixes_both_ways(tmp_path):
    src = _lenet(seed=0)
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, tmp_path / "ddp.pt")
    dst = _lenet(seed=1)
    assert len(load_pretrained(dst, tmp_path / "ddp.pt").loaded) == 8
    _assert_same(src.state_dict(), dst.state_dict(), src.state_dict())
    wrapped = nn.DataParallel(_lenet(seed=2))  # keys "module.features.0.weight", ...
    report = load_pretrained(wrapped, src.state_dict())
    assert report.loaded[0] == "module.features.0.weight" and not report.missing
    assert torch.equal(wrapped.module.features[0].weight, src.features[0].weight)


def test_missing_and_unexpected_keys_reported():
    src = _lenet(seed=0).state_dict()
    del src["features.0.bias"]
    src["extra.weight"] = torch.zeros(3)
    dst = _lenet(seed=1)
    bias_before = dst.features[0].bias.clone()
    report = load_pretrained(dst, src)
    assert report.missing == ["features.0.bias"] and report.unexpected == ["extra.weight"]
    assert torch.equal(dst.features[0].bias, bias_before)
    assert "missing from checkpoint" in report.summary() and "extra.weight" in report.summary()


def test_nothing_matching_is_an_error(tmp_path):
    torch.save(Tiny().state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other\.pt.*no tensor matches"):
        load_pretrained(_lenet(), tmp_path / "other.pt")
    torch.save({"epoch": 3}, tmp_path / "no_tensors.pt")
    with pytest.raises(ValueError, match="no tensors found"):
        resolve_pretrained(tmp_path / "no_tensors.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="junk.pt"):
        resolve_pretrained(tmp_path / "junk.pt")


def test_whole_pickled_module(tmp_path):
    src = _lenet(seed=0)
    torch.save(src, tmp_path / "lenet_module.pt")  # medpipe/MONAI/torch.nn classes: allow-listed
    dst = _lenet(seed=1)
    assert len(load_pretrained(dst, tmp_path / "lenet_module.pt").loaded) == 8
    _assert_same(src.state_dict(), dst.state_dict(), src.state_dict())

    torch.save(Tiny(), tmp_path / "tiny_module.pt")  # a class outside the allow-list needs trust_pickle
    with pytest.raises(ValueError, match="trust_pickle"):
        resolve_pretrained(tmp_path / "tiny_module.pt")
    assert set(resolve_pretrained(tmp_path / "tiny_module.pt", trust_pickle=True)) == {"fc.weight", "fc.bias"}


def test_malicious_pickle_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"net": {"w": torch.zeros(1)}, "x": _Evil(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="can run code"):
        resolve_pretrained(tmp_path / "evil.pt")
    assert not marker.exists()


def test_local_file_checksum(tmp_path):
    torch.save(_lenet().state_dict(), tmp_path / "w.pt")
    assert len(resolve_pretrained(tmp_path / "w.pt", sha256=_sha(tmp_path / "w.pt"))) == 8
    with pytest.raises(ValueError, match="checksum mismatch"):
        resolve_pretrained(tmp_path / "w.pt", sha256="0" * 64)
    with pytest.raises(ValueError, match="64 hex digits"):
        resolve_pretrained(tmp_path / "w.pt", sha256="abc")


# ------------------------------------------------------------------------------------------------ URLs
def test_file_url_is_cached_once(tmp_path):
    src = _lenet(seed=0)
    path = tmp_path / "remote" / "lenet.pt"
    path.parent.mkdir()
    torch.save(src.state_dict(), path)
    sha, cache = _sha(path), tmp_path / "cache"
    sd = resolve_pretrained(path.as_uri(), cache_dir=cache, sha256=sha)
    _assert_same(src.state_dict(), sd, sd)
    cached = list(cache.iterdir())
    assert [p.name for p in cached] == [f"{sha[:16]}-lenet.pt"]
    path.unlink()  # second call is served from the cache, no download
    assert len(resolve_pretrained(path.as_uri(), cache_dir=cache, sha256=sha)) == 8
    with pytest.raises(ValueError, match="needs a sha256"):
        resolve_pretrained(path.as_uri(), cache_dir=cache)


def test_http_download_checksum_mismatch_and_offline(tmp_path):
    serve = tmp_path / "www"
    serve.mkdir()
    src = _lenet(seed=0)
    torch.save(src.state_dict(), serve / "w.pt")
    handler = functools.partial(_QuietHandler, directory=str(serve))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/w.pt"
        cache = tmp_path / "cache"
        dst = _lenet(seed=1)
        report = load_pretrained(dst, url, sha256=_sha(serve / "w.pt"), cache_dir=cache)
        assert report.source == url and len(report.loaded) == 8
        _assert_same(src.state_dict(), dst.state_dict(), src.state_dict())
        with pytest.raises(ValueError, match=r"checksum mismatch.*w\.pt.*expected sha256 f{64}"):
            resolve_pretrained(url, cache_dir=tmp_path / "cache2", sha256="f" * 64)
        assert list((tmp_path / "cache2").iterdir()) == []  # the bad download is not kept
        with pytest.raises(PretrainedDownloadError, match="404"):
            resolve_pretrained(url.replace("w.pt", "absent.pt"), cache_dir=cache, sha256="f" * 64)
    finally:
        server.shutdown()
        server.server_close()

    with socket.socket() as s:  # a port nothing listens on: "offline"
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/densenet121.pt"
    with pytest.raises(PretrainedDownloadError) as err:
        resolve_pretrained(url, cache_dir=tmp_path / "cache3", sha256="a" * 64, timeout=5)
    msg = str(err.value)
    assert url in msg and "local path" in msg and "download" in msg


def test_unsupported_scheme_and_cache_env(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unsupported URL scheme"):
        resolve_pretrained("s3://bucket/w.pt")
    monkeypatch.setenv("MEDPIPE_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c" / "weights"
    monkeypatch.delenv("MEDPIPE_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "medpipe" / "weights"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass


# ----------------------------------------------------------------------------------------------- MLflow
def test_mlflow_round_trip(tmp_path):
    import mlflow

    from medpipe.config import TrackingConfig
    from medpipe.tracking import Tracker, load_model_state_dict

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = TrackingConfig(tracking_uri=uri, experiment="pretrain", artifact_location=str(tmp_path / "mlruns"))
    src = _lenet(num_classes=3, seed=0)
    with Tracker(cfg, "pretrain") as tracker:  # as a medpipe run logs its best model
        model_uri = tracker.log_model(src)
    assert model_uri == f"runs:/{tracker.run_id}/model"

    with pytest.raises(ValueError, match=r"runs:/.*is an MLflow model.*mlflow_loader=functools\.partial"):
        resolve_pretrained(model_uri)  # medpipe.nets never imports MLflow: the caller passes a loader
    sd = resolve_pretrained(model_uri, mlflow_loader=load_model_state_dict)  # MLflow's current tracking URI
    _assert_same(src.state_dict(), sd, src.state_dict())

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/elsewhere.db")
    dst = _lenet(num_classes=2, seed=1)
    loader = functools.partial(load_model_state_dict, tracking_uri=uri)  # as the workflow passes it
    report = load_pretrained(dst, model_uri, mlflow_loader=loader)
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path}/elsewhere.db"  # restored
    assert [m[0] for m in report.shape_mismatch] == HEAD and len(report.loaded) == 6
    assert report.source == model_uri
    assert torch.equal(dst.features[0].weight, src.features[0].weight)


def test_mlflow_folder_goes_through_the_loader(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "MLmodel").write_text("flavors: {}\n")
    with pytest.raises(ValueError, match="mlflow_loader"):
        resolve_pretrained(folder)
    src = _lenet(seed=0)
    seen = []
    sd = resolve_pretrained(folder, mlflow_loader=lambda u: seen.append(u) or src.state_dict())
    assert seen == [str(folder.resolve())] and len(sd) == 8


# ------------------------------------------------------------------------------------------------- head
def test_head_parameter_names():
    from monai.networks.nets import DenseNet121, resnet18

    assert head_parameter_names(DenseNet121(spatial_dims=2, in_channels=1, out_channels=2)) == [
        "class_layers.out.weight", "class_layers.out.bias"]
    assert head_parameter_names(resnet18(spatial_dims=2, n_input_channels=1, num_classes=2)) == ["fc.weight",
                                                                                               "fc.bias"]
    assert head_parameter_names(_lenet()) == HEAD
    assert head_parameter_names(LeNet(dropout=0.5)) == HEAD
    seq = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2), nn.Softmax(dim=1))
    assert head_parameter_names(seq) == ["2.weight", "2.bias"]
    assert head_parameter_names(nn.DataParallel(_lenet())) == [f"module.{n}" for n in HEAD]
    with pytest.raises(ValueError, match="no nn.Linear"):
        head_parameter_names(nn.Conv2d(1, 2, 3))


def test_plain_names_strip_wrappers_in_order():
    names = ["module._orig_mod.a", "b", "_orig_mod.module.c", "module.d"]
    assert list(plain_names(names).items()) == [("a", names[0]), ("b", "b"), ("c", names[2]), ("d", names[3])]


def test_prepare_net_passes_the_mlflow_loader(tmp_path):
    from medpipe.config import LeNetNet
    from medpipe.nets.factory import build_net, prepare_net

    src = _lenet(num_classes=3, seed=0)
    cfg = LeNetNet(name="lenet", in_channels=3, num_classes=2, init="xavier_uniform", pretrained="runs:/abc/model")
    with pytest.raises(ValueError, match="runs:/abc/model"):
        prepare_net(build_net(cfg), cfg)
    net, report = prepare_net(build_net(cfg), cfg, mlflow_loader=lambda uri: src.state_dict())
    assert report.source == "runs:/abc/model" and len(report.loaded) == 6
    assert torch.equal(net.features[0].weight, src.features[0].weight)


def test_report_defaults():
    r = LoadReport(source="x")
    assert r.to_dict()["loaded"] == [] and "loaded 0/0" in r.summary()
