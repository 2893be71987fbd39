"""Data-loading time vs compute time per training epoch, for several loader settings, on real pipelines.

For each pipeline the training split is discovered and split exactly as ``medpipe.run`` does
(``medpipe.workflow.skeleton.task_for(cfg).prepare()``), the training dataset is built with medpipe's ``build_transforms`` /
``build_dataset`` (the YAML's ``transforms.train`` and ``data.cache``, i.e. ``CacheDataset`` for ``cache: memory``)
and the network, loss and optimizer are the pipeline's own (``build_net``, ``build_loss``, ``build_optimizer``,
plus ``train.grad_clip_norm``). Every loader setting iterates that same dataset:

* ``default``: what ``medpipe.run`` builds from the YAML, ``build_loader(..., cfg.data.num_workers, ...)`` (and
  ``loader=cfg.data.loader`` where the library has that option);
* ``dl0`` / ``dl1`` / ``dl2``: ``monai.data.DataLoader`` with 0 / 1 / 2 worker processes (started anew every epoch);
* ``dl1p`` / ``dl2p``: the same with ``persistent_workers=True``;
* ``thread`` / ``thread_b4``: ``monai.data.ThreadDataLoader`` (``num_workers=0``; the batches are made in one
  background thread of the training process), ``buffer_size`` 1 / 4;
* ``thread_w1``: ``ThreadDataLoader`` over one persistent worker process.

Per epoch it measures

* data time: how long the training loop waits for the next batch, from the end of one optimizer step (or the
  epoch start, which includes starting the loader's workers or buffer thread) until the batch is on the device,
  plus the wait for the loader to finish after the last batch;
* compute time: forward + loss + backward (+ gradient clipping) + optimizer step, on ``--device`` (CPU here); with
  ``dl0``/``default`` nothing else runs during it, so it is the pure compute time, and a larger compute time in
  another setting is what its workers or thread take from the training process;
* loader-only throughput: samples/s of ``--loader-epochs`` more epochs iterated without any compute.

With ``--device cuda`` each batch's copy to the GPU is part of its data time, and with ``data.cache_on_device`` in
the YAML the transforms get ``ToDeviced`` as in ``medpipe.run`` (and the worker-process settings are skipped). The
CUDA path has not been run yet (no GPU where this was written).

The settings take turns epoch by epoch, in an order rotated every round (round 0 is a warm-up and not
counted), so that drift and bursts in the machine's load hit all settings alike. The table shows, per setting,
the minimum (``--stat min``, the default: the epoch least disturbed by other jobs on a shared machine; a cost
that a setting adds to every epoch is in its minimum too) or the median of the data and compute seconds over the
timed epochs, and medians of the individual waits; every epoch's numbers are printed above the table.

``--max-batches N`` trains on a fixed random subset of ``N * batch_size`` training cases so that every epoch is
complete (no early ``break`` that would leave prefetched batches being computed in the background). Because a
short epoch over-weights the wait for its first batch, the last column extrapolates the data fraction to a full
epoch of the pipeline's training split: ``first wait + (B - 1) * median later wait + end wait`` against
``B * compute per batch``.

Usage::

    python benchmarks/bench_data_pipeline.py [--pipelines pipelines/em_unet.yaml pipelines/pneumonia_xray.yaml]
        [--epochs 3] [--max-batches N [N ...]] [--settings default,dl1,dl2,dl1p,dl2p,thread,thread_b4]
        [--stat min|median] [--threads N] [--device cpu] [--set key=value ...]

Prints per pipeline a markdown table: setting, wait for the first batch, median wait for a later batch, data
s/epoch, compute s/epoch, data fraction, train samples/s, loader-only samples/s, the epoch-time ratio to
``default`` and the data fraction extrapolated to a full epoch.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from medpipe.config import load_config
from medpipe.data.loaders import build_dataset, build_loader
from medpipe.data.transforms import build_transforms
from medpipe.engine.optim import build_loss, build_optimizer
from medpipe.engine.trainer import seed_everything
from medpipe.nets import build_net
from medpipe.workflow.skeleton import task_for

ROOT = Path(__file__).resolve().parent.parent

#: name -> (loader class, num_workers, persistent_workers, buffer_size); "default" is medpipe's build_loader.
SETTINGS = {
    "dl0": ("DataLoader", 0, False, None),
    "dl1": ("DataLoader", 1, False, None),
    "dl2": ("DataLoader", 2, False, None),
    "dl1p": ("DataLoader", 1, True, None),
    "dl2p": ("DataLoader", 2, True, None),
    "thread": ("ThreadDataLoader", 0, False, 1),
    "thread_b4": ("ThreadDataLoader", 0, False, 4),
    "thread_w1": ("ThreadDataLoader", 1, True, 1),
}
DEFAULT_SETTINGS = "default,dl1,dl2,dl1p,dl2p,thread,thread_b4"


def make_loader(name: str, dataset, cfg, sample_weights, drop_last: bool):
    """The loader of setting ``name`` over ``dataset``, shuffled and seeded as ``medpipe.run`` does."""
    import monai.data as md

    if name == "default":
        kw = {}
        if "loader" in inspect.signature(build_loader).parameters and hasattr(cfg.data, "loader"):
            kw["loader"] = cfg.data.loader  # data.loader: dataloader | thread, where the library has it
        return build_loader(dataset, cfg.train.batch_size, True, cfg.data.num_workers, cfg.train.seed,
                            sample_weights=sample_weights, drop_last=drop_last, **kw)
    kind, workers, persistent, buffer = SETTINGS[name]
    gen = torch.Generator()
    gen.manual_seed(cfg.train.seed)
    sampler, shuffle = None, True
    if sample_weights is not None:
        sampler = torch.utils.data.WeightedRandomSampler(torch.as_tensor(sample_weights, dtype=torch.double),
                                                         num_samples=len(dataset), replacement=True, generator=gen)
        shuffle = False
    kw = {"batch_size": cfg.train.batch_size, "shuffle": shuffle, "sampler": sampler, "num_workers": workers,
          "generator": gen, "persistent_workers": persistent, "drop_last": drop_last}
    if kind == "ThreadDataLoader":
        return md.ThreadDataLoader(dataset, buffer_size=buffer, **kw)
    return md.DataLoader(dataset, **kw)


class Step:
    """One training step of the pipeline's network, loss and optimizer (as ``SupervisedTrainer`` does it)."""

    def __init__(self, cfg, class_weights, device: torch.device):
        self.device = device
        self.net = build_net(cfg.net).to(device).train()
        self.opt = build_optimizer(cfg.optimizer, self.net.parameters())
        self.loss_fn = build_loss(cfg.loss, class_weights).to(device)
        self.clip = cfg.train.grad_clip_norm

    def to_device(self, batch):
        return (batch["image"].to(self.device, non_blocking=True),
                batch["label"].to(self.device, non_blocking=True))

    def __call__(self, x, y) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.net(x), y)
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.clip)
        self.opt.step()
        self.sync()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def train_epoch(loader, step: Step) -> dict[str, object]:
    """One epoch. Returns per-batch waits (``waits[0]`` includes starting the iterator, the last entry is the
    wait for the loader to finish after the last batch), per-batch compute seconds and the samples seen."""
    waits: list[float] = []
    computes: list[float] = []
    n = 0
    t = time.perf_counter()
    it = iter(loader)  # starts non-persistent workers / the buffer thread: counted as data time
    while True:
        try:
            batch = next(it)
        except StopIteration:
            waits.append(time.perf_counter() - t)
            break
        x, y = step.to_device(batch)
        step.sync()
        t1 = time.perf_counter()
        waits.append(t1 - t)
        step(x, y)
        t = time.perf_counter()
        computes.append(t - t1)
        n += x.shape[0]
    return {"data": sum(waits), "compute": sum(computes), "samples": n, "waits": waits, "computes": computes}


def loader_only_epoch(loader) -> dict[str, float]:
    """One epoch of iteration without compute: seconds and samples."""
    t = time.perf_counter()
    n = sum(batch["image"].shape[0] for batch in loader)
    return {"seconds": time.perf_counter() - t, "samples": n}


def bench_pipeline(path: str, args, max_batches) -> None:
    cfg = load_config(path, ["train.progress=false", *args.overrides])
    seed_everything(cfg.train.seed)
    device = torch.device(args.device)
    data = task_for(cfg).prepare()
    train_cases = data.train
    sample_weights = data.sample_weights
    n_all = len(train_cases)
    if max_batches:
        n_keep = max_batches * cfg.train.batch_size
        if n_keep < n_all:  # a fixed random subset, so that every epoch is complete
            keep = np.sort(np.random.default_rng(cfg.train.seed).permutation(n_all)[:n_keep])
            train_cases = [train_cases[i] for i in keep]
            if sample_weights is not None:
                sample_weights = [sample_weights[i] for i in keep]
    # as medpipe.run: classification drops a last incomplete batch (batch norm), segmentation keeps it
    drop_last = cfg.task == "classification" and len(train_cases) > cfg.train.batch_size
    bs = cfg.train.batch_size
    full_batches = n_all // bs if cfg.task == "classification" and n_all > bs else -(-n_all // bs)
    n_batches = len(train_cases) // bs if drop_last else -(-len(train_cases) // bs)
    tf = build_transforms(cfg.transforms.train, "transforms.train")
    names = [s.strip() for s in args.settings.split(",") if s.strip()]
    on_device = bool(getattr(cfg.data, "cache_on_device", False)) and device.type == "cuda"
    if on_device:  # as medpipe.run: ToDeviced before the first random transform; CUDA tensors cannot go to workers
        from medpipe.data.transforms import cache_on_device

        tf = cache_on_device(tf, device)
        dropped = [n for n in names if n != "default" and SETTINGS[n][1] > 0]
        names = [n for n in names if n not in dropped]
        if dropped:
            print(f"data.cache_on_device: skipping the worker-process settings {dropped}")
    t = time.perf_counter()
    dataset = build_dataset(train_cases, tf, cfg.data)
    cache_s = time.perf_counter() - t

    step = Step(cfg, data.class_weights, device)
    loaders = {name: make_loader(name, dataset, cfg, sample_weights, drop_last) for name in names}
    if "default" in loaders:
        dl = loaders["default"]
        default_desc = (f"build_loader -> {type(dl).__name__}(num_workers={dl.num_workers}, "
                        f"persistent_workers={dl.persistent_workers})")
    else:
        default_desc = "not run"

    print(f"\n=== {path}  ({cfg.name}, {cfg.task})")
    print(f"device: {device}  torch threads: {torch.get_num_threads()}  CPU cores: {_cores()}  "
          f"train cases: {len(train_cases)} of {n_all}  batch_size: {cfg.train.batch_size}  "
          f"data.cache: {cfg.data.cache} ({type(dataset).__name__}, built in {cache_s:.1f} s)  "
          f"net: {cfg.net.name}  default = {default_desc}")
    print(f"rounds: 1 warm-up + {args.epochs} timed; settings take turns each round, in rotating order", flush=True)

    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for r in range(args.epochs + 1):
        # rotate the order every round, so that no setting always runs first or right after a given one
        for name in names[r % len(names):] + names[:r % len(names)]:
            res = train_epoch(loaders[name], step)
            runs[name].append(res)
            print(f"  round {r}{' (warm-up)' if r == 0 else ''} {name:10s} data {res['data']:7.2f} s  "
                  f"compute {res['compute']:7.2f} s  samples {res['samples']}", flush=True)
    only: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for _ in range(args.loader_epochs):
        for name in names:
            only[name].append(loader_only_epoch(loaders[name]))
    del loaders  # shuts persistent workers down

    agg = min if args.stat == "min" else statistics.median
    rows = []
    for name in names:
        timed = runs[name][1:]
        d = agg(x["data"] for x in timed)
        c = agg(x["compute"] for x in timed)
        n = timed[0]["samples"]
        lo = statistics.median(x["samples"] / x["seconds"] for x in only[name])
        # extrapolation to a full epoch: first-batch wait + steady waits + end wait, per-batch compute
        first = statistics.median(x["waits"][0] for x in timed)
        steady = statistics.median(w for x in timed for w in x["waits"][1:-1]) if n_batches > 1 else 0.0
        end = statistics.median(x["waits"][-1] for x in timed)
        per_batch = agg(x["compute"] / len(x["computes"]) for x in timed)
        full_d = first + (full_batches - 1) * steady + end
        full_f = full_d / (full_d + full_batches * per_batch) if n_batches > 1 else None  # no later wait seen
        rows.append((name, first, steady, d, c, d / (d + c), n / (d + c), lo, d + c, full_f))
    ref_name = "default" if "default" in names else names[0]
    ref = next(row[8] for row in rows if row[0] == ref_name)
    head = (f"| setting | 1st-batch wait s | later waits s/batch | data s/epoch | compute s/epoch | data fraction | "
            f"train samples/s | loader-only samples/s | epoch time / {ref_name} | est. data fraction, full epoch |")
    print()
    print(head)
    print("|" + "---|" * (head.count(" | ") + 1))
    for name, first, steady, d, c, f, sps, lo, e, full_f in rows:
        print(f"| {name} | {first:.3f} | {steady:.3f} | {d:.2f} | {c:.2f} | {f:.1%} | {sps:.1f} | {lo:.1f} | "
              f"{e / ref:.2f} | {'n/a' if full_f is None else f'{full_f:.1%}'} |")
    print(f"({n_batches} batches = {runs[names[0]][1]['samples']} samples per timed epoch; full epoch: "
          f"{full_batches} batches; data and compute: {args.stat} of {args.epochs} timed epochs, waits: medians; "
          f"loader-only: median of "
          f"{args.loader_epochs} epoch(s))", flush=True)


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pipelines", nargs="+",
                    default=[str(ROOT / "pipelines" / "em_unet.yaml"), str(ROOT / "pipelines" / "pneumonia_xray.yaml")])
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per setting (plus one warm-up)")
    ap.add_argument("--loader-epochs", type=int, default=3, help="epochs of loader-only iteration per setting")
    ap.add_argument("--max-batches", type=int, nargs="+", default=None,
                    help="train on a fixed random subset of max_batches * batch_size cases (default: all); one "
                    "value for all pipelines or one per pipeline")
    ap.add_argument("--settings", default=DEFAULT_SETTINGS,
                    help=f"comma-separated, from default,{','.join(SETTINGS)} (default: {DEFAULT_SETTINGS})")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads for the training process (default: torch's own, one per core)")
    ap.add_argument("--stat", choices=["min", "median"], default="min",
                    help="per setting, data and compute s/epoch over the timed epochs: min (least disturbed by other "
                    "jobs on a shared machine; a cost a setting adds to every epoch stays in it) or median")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    unknown = [s for s in args.settings.split(",") if s.strip() and s.strip() not in ("default", *SETTINGS)]
    if unknown:
        ap.error(f"unknown setting(s) {unknown}; choose from default,{','.join(SETTINGS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    caps = args.max_batches or [None]
    if len(caps) not in (1, len(args.pipelines)):
        ap.error(f"--max-batches: give one value or one per pipeline ({len(args.pipelines)}), got {len(caps)}")
    for path, cap in zip(args.pipelines, caps * len(args.pipelines) if len(caps) == 1 else caps):
        bench_pipeline(path, args, cap)


if __name__ == "__main__":
    main()
