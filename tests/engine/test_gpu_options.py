"""The GPU-path options (channels-last, torch.compile, AMP settings, ThreadDataLoader, caching on the device) run on
CPU too, and train to the same numbers as the plain path where they should. Real EM images."""

import json

import pytest
import torch

from medpipe.config import validate_config
from medpipe.workflow import run_pipeline
from tests.test_run_e2e import _cfg_dict


def _config(tmp_path, root, out, **train):
    d = _cfg_dict(tmp_path, root, epochs=2)
    d["output_dir"] = str(tmp_path / out)
    d["tracking"]["enabled"] = False
    d["infer"]["splits"] = []
    d["train"].update(train)
    return d


def _history(result):
    return json.loads((result.output_dir / "metrics.json").read_text())["history"]


def test_channels_last_thread_loader_and_device_cache_match_the_plain_path(tmp_path, small_em, monkeypatch):
    import medpipe.workflow.skeleton as S  # where the run skeleton looks build_engines up

    seen = {}
    build = S.build_engines

    def spy(*args, **kwargs):
        engines = build(*args, **kwargs)
        seen["engines"] = engines
        return engines

    monkeypatch.setattr(S, "build_engines", spy)
    plain = run_pipeline(validate_config(_config(tmp_path, small_em, "plain")))
    d = _config(tmp_path, small_em, "fast", channels_last=True, amp=True, amp_dtype="bfloat16")
    d["data"].update(loader="thread", cache_on_device=True)
    fast = run_pipeline(validate_config(d))

    engines = seen["engines"]
    conv = [p for p in engines.net.parameters() if p.ndim == 4]
    assert conv and all(p.is_contiguous(memory_format=torch.channels_last) for p in conv)
    assert not engines.trainer.amp  # AMP is CUDA-only: float32 on CPU
    from monai.data import ThreadDataLoader
    from monai.transforms import ToDeviced

    assert isinstance(engines.trainer.data_loader, ThreadDataLoader)
    assert any(isinstance(t, ToDeviced) for t in engines.trainer.data_loader.dataset.transform.transforms)
    # same seed, same samples: the memory layout changes float summation order only
    for a, b in zip(_history(plain)["train"], _history(fast)["train"]):
        assert a["train_samples"] == b["train_samples"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
    assert fast.metrics["best_val_dice"] == pytest.approx(plain.metrics["best_val_dice"], abs=5e-3)


def test_compile_trains_on_cpu(tmp_path, small_em, monkeypatch):
    import medpipe.workflow.skeleton as S  # where the run skeleton looks build_engines up

    seen = {}
    build = S.build_engines

    def spy(*args, **kwargs):
        seen["engines"] = build(*args, **kwargs)
        return seen["engines"]

    monkeypatch.setattr(S, "build_engines", spy)
    d = _config(tmp_path, small_em, "compiled", compile=True)
    d["train"]["max_epochs"] = 1
    result = run_pipeline(validate_config(d))
    assert isinstance(seen["engines"].trainer.network, torch._dynamo.eval_frame.OptimizedModule)
    loss = _history(result)["train"][0]["train_loss"]
    assert 0 < loss < 5
    # the checkpoint holds the plain network's weights (no "_orig_mod." prefix from torch.compile)
    best = torch.load(next((result.output_dir / "checkpoints").glob("best_*.pt")), weights_only=True)
    assert not any(k.startswith("_orig_mod") for k in best)


def test_cache_on_device_needs_memory_cache_and_no_workers(tmp_path, small_em):
    from medpipe.config import ConfigError

    d = _config(tmp_path, small_em, "x")
    d["data"].update(cache_on_device=True, num_workers=2)
    with pytest.raises((ConfigError, ValueError), match="cache_on_device needs cache: memory and num_workers: 0"):
        validate_config(d)
