"""Training throughput of one process vs ``torchrun`` DDP processes on the same pipeline (gloo on CPU, nccl on GPUs).

Runs ``python -m medpipe.run PIPELINE`` once as a single process and once as
``torchrun --standalone --nproc_per_node N -m medpipe.run PIPELINE`` (training only: no validation, no prediction,
no tracking), reads the per-epoch ``train_samples`` and ``epoch_seconds`` that medpipe records in
``metrics.json``, and prints the median training samples per second over the epochs after the first (warm-up),
per process count, with the speed-up ratio. Both runs see the same samples per epoch (the cases are partitioned over
the ranks), which the script checks.

On CPU the processes share the machine's cores (each DDP rank gets ``cores / N`` threads), so this measures the
cost of the gradient all-reduce and of the data-parallel split, not extra hardware; on a multi-GPU node each rank
has its own GPU.

Usage::

    python benchmarks/bench_ddp.py [PIPELINE.yaml] [--nproc 2] [--epochs 4] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(pipeline: str, nproc: int, epochs: int, out: Path, overrides) -> dict:
    sets = [f"train.max_epochs={epochs}", "train.val_interval=100000", "infer.splits=[]", "tracking.enabled=false",
            "train.progress=false", f"output_dir={out}", *overrides]
    cmd = [sys.executable, "-m", "medpipe.run", pipeline]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "medpipe.run", pipeline]
    for s in sets:
        cmd += ["--set", s]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    history = json.loads((folder / "metrics.json").read_text())["history"]["train"]
    timed = history[1:] or history
    return {"nproc": nproc, "samples": [r["train_samples"] for r in history],
            "samples_per_s": statistics.median(r["train_samples"] / r["epoch_seconds"] for r in timed),
            "epoch_s": statistics.median(r["epoch_seconds"] for r in timed), "wall_s": time.time() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pipeline", nargs="?", default=str(ROOT / "pipelines" / "em_unet.yaml"))
    ap.add_argument("--nproc", type=int, default=2, help="DDP processes to compare with one")
    ap.add_argument("--epochs", type=int, default=4, help="epochs per run (the first is a warm-up)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, args.nproc):
            out = Path(tmp) / f"n{n}"
            out.mkdir()
            rows.append(_run(args.pipeline, n, args.epochs, out, args.overrides))
    if rows[0]["samples"] != rows[1]["samples"]:
        sys.exit(f"samples per epoch differ: {rows[0]['samples']} vs {rows[1]['samples']}")
    base = rows[0]["samples_per_s"]
    print(f"pipeline {args.pipeline}, {args.epochs} epochs ({args.epochs - 1} timed), "
          f"{rows[0]['samples'][0]:.0f} samples/epoch, {os.cpu_count()} CPU cores")
    print(f"{'processes':>9} {'samples/s':>10} {'s/epoch':>8} {'wall s':>7} {'ratio':>6}")
    for r in rows:
        print(f"{r['nproc']:>9} {r['samples_per_s']:>10.2f} {r['epoch_s']:>8.2f} {r['wall_s']:>7.1f} "
              f"{r['samples_per_s'] / base:>6.2f}")


if __name__ == "__main__":
    main()
