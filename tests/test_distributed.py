"""Distributed data-parallel training: ``torchrun --nproc_per_node 2 -m medpipe.run`` with the gloo backend on CPU,
on real EM images, against the same pipeline in one process."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from medpipe.config import validate_config
from medpipe.engine.distributed import DistContext, partition_cases
from medpipe.workflow import run_pipeline
from tests.conftest import link_em
from tests.test_run_e2e import _cfg_dict

EPOCHS = 3


@pytest.fixture
def em6(tmp_path, datasets):
    """6 labelled EM images (4 train, 2 val) and one test image, as symlinks."""
    return link_em(tmp_path / "em", datasets, 6, 1)


def _config(tmp_path, root, out):
    d = _cfg_dict(tmp_path, root, epochs=EPOCHS)
    d["output_dir"] = str(tmp_path / out)
    d["data"]["split"] = {"val": ["4.png", "5.png"]}
    d["train"]["batch_size"] = 2
    d["infer"]["splits"] = ["val"]
    d["tracking"]["experiment"] = out
    return d


def test_partition_cases_is_disjoint_and_even():
    cases = [{"image": f"{i}.png"} for i in range(7)]
    parts = [partition_cases(cases, DistContext(rank=r, world_size=2), seed=0, even=True) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == 4  # padded with one repeated case so both ranks step together
    assert {c["image"] for p in parts for c in p} == {c["image"] for c in cases}
    val = [partition_cases(cases, DistContext(rank=r, world_size=2), seed=0, even=False) for r in range(2)]
    assert sorted(c["image"] for p in val for c in p) == sorted(c["image"] for c in cases)  # no repeats
    assert partition_cases(cases, DistContext(), seed=0, even=True) == cases


def test_torchrun_two_gloo_processes_train_like_one(tmp_path, em6):
    from mlflow.tracking import MlflowClient

    d2 = _config(tmp_path, em6, "ddp")
    pipeline = tmp_path / "ddp.yaml"
    pipeline.write_text(yaml.safe_dump(d2))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "medpipe.run", str(pipeline)], capture_output=True, text=True, timeout=900,
                          cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("artifacts: ") == 1  # rank 0 reports

    (folder,) = (tmp_path / "ddp").iterdir()  # one artifact folder, written by rank 0
    assert {p.name for p in (folder / "checkpoints").glob("latest_*.pt")} == {
        f"latest_checkpoint_{EPOCHS - 1}.pt", f"latest_checkpoint_{EPOCHS}.pt"}
    metrics = json.loads((folder / "metrics.json").read_text())
    client = MlflowClient(tracking_uri=d2["tracking"]["tracking_uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["distributed.world_size"] == "2" and run.data.tags["distributed.backend"] == "gloo"

    d1 = _config(tmp_path, em6, "single")
    single = run_pipeline(validate_config(d1))
    (run1,) = client.search_runs([client.get_experiment_by_name("single").experiment_id])

    # the same samples per epoch: 4 training images x 2 random crops, split 2 + 2 over the ranks
    for r in (run, run1):
        samples = client.get_metric_history(r.info.run_id, "train_samples")
        assert [m.value for m in samples] == [8.0] * EPOCHS
    # the model trains: loss falls, and validation (both ranks' images gathered) beats chance on the 2 images
    losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "train_loss"), key=lambda m: m.step)]
    assert losses[-1] < losses[0]
    assert len(metrics["history"]["val"]) == EPOCHS
    assert 0.6 < metrics["final"]["best_val_dice"] <= 1.0
    assert sorted(p.name for p in (folder / "predictions" / "val").glob("*.png")) == ["4.png", "5.png"]
    # per-epoch validation ran on each rank's share (one image each) and gathered both: the best epoch's Dice
    # equals rank 0's final re-evaluation of the best checkpoint on both images alone
    best = max(r["dice"] for r in metrics["history"]["val"])
    assert metrics["final"]["best_val_dice"] == pytest.approx(best, abs=1e-5)
    assert 0.6 < single.metrics["best_val_dice"] <= 1.0
