"""Training-epoch time of the EM pipeline: medpipe's engine vs a plain hand-written MONAI loop.

Both sides use the same network (built from the pipeline's ``net``), the same cached dataset and transforms
(``transforms.train``), batch size, loss, optimizer and device, in the same process. medpipe's side is the
``SupervisedTrainer`` that ``medpipe.run`` builds, with all its handlers (epoch loss, LR schedule, latest
checkpoint every epoch, stats), minus validation and progress bar, which a plain loop does not have either.
The two sides alternate epoch by epoch to cancel drift; the first epoch of each is a warm-up and not counted.

Usage::

    python benchmarks/bench_em_epoch.py [PIPELINE.yaml] [--epochs 4] [--set key=value ...]

Prints the median seconds per epoch of each side and the overhead ratio (goal: <= 1.05).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from medpipe.config import load_config
from medpipe.data.discovery import discover_cases
from medpipe.data.loaders import build_dataset, build_loader
from medpipe.data.splits import split_cases
from medpipe.data.transforms import build_transforms
from medpipe.engine.optim import build_loss, build_optimizer
from medpipe.engine.trainer import build_engines, seed_everything
from medpipe.nets import build_net

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pipeline", nargs="?", default=str(ROOT / "pipelines" / "em_unet.yaml"))
    ap.add_argument("--epochs", type=int, default=4, help="timed epochs per side (plus one warm-up)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()

    cfg = load_config(args.pipeline, ["train.progress=false", f"train.max_epochs={args.epochs + 1}",
                                      f"train.val_interval={10 ** 6}", *args.overrides])
    seed_everything(cfg.train.seed)
    cases = discover_cases(cfg.data)
    train_cases, val_cases = split_cases(cases, cfg.data.split)
    tf = build_transforms(cfg.transforms.train)
    dataset = build_dataset(train_cases, tf, cfg.data)
    val_ds = build_dataset(val_cases[:1], build_transforms(cfg.transforms.val), cfg.data)

    # --- medpipe: the engine run.py builds (validation interval beyond the run: never validates)
    tmp = tempfile.TemporaryDirectory()
    engines = build_engines(cfg, build_net(cfg.net), build_loader(dataset, cfg.train.batch_size, True),
                            build_loader(val_ds, 1, False), Path(tmp.name) / "ckpt")
    device = engines.device

    # --- plain MONAI/PyTorch loop with the same parts
    net = build_net(cfg.net).to(device)
    opt = build_optimizer(cfg.optimizer, net.parameters())
    loss_fn = build_loss(cfg.loss).to(device)
    loader = build_loader(dataset, cfg.train.batch_size, True)

    def plain_epoch() -> float:
        t = time.perf_counter()
        net.train()
        for batch in loader:
            x, y = batch["image"].to(device), batch["label"].to(device)
            opt.zero_grad(set_to_none=False)
            loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    epoch_times = []
    from ignite.engine import Events

    @engines.trainer.on(Events.EPOCH_STARTED)
    def _t0(engine):
        engine.state.bench_t0 = time.perf_counter()

    def _t1(engine):
        if device.type == "cuda":
            torch.cuda.synchronize()
        epoch_times.append(time.perf_counter() - engine.state.bench_t0)
        plain.append(plain_epoch())  # alternate: one plain epoch after each medpipe epoch

    @engines.trainer.on(Events.STARTED)
    def _last(engine):  # after the latest checkpoint, which medpipe registers when training starts
        engine.add_event_handler(Events.EPOCH_COMPLETED, _t1)

    plain: list = []
    engines.trainer.run()
    med = statistics.median(epoch_times[1:])
    ref = statistics.median(plain[1:])
    n_samples = len(dataset) * _samples_per_case(cfg)
    print(f"pipeline: {args.pipeline}  device: {device}  train cases: {len(train_cases)}  "
          f"samples/epoch: {n_samples}  batch_size: {cfg.train.batch_size}  threads: {torch.get_num_threads()}")
    print(f"medpipe SupervisedTrainer  s/epoch: {med:.3f}  (epochs: {', '.join(f'{t:.2f}' for t in epoch_times)})")
    print(f"plain MONAI loop           s/epoch: {ref:.3f}  (epochs: {', '.join(f'{t:.2f}' for t in plain)})")
    print(f"overhead ratio medpipe/plain: {med / ref:.3f}  (goal <= 1.05)")


def _samples_per_case(cfg) -> int:
    for spec in cfg.transforms.train:
        if "num_samples" in spec.kwargs:
            return int(spec.kwargs["num_samples"])
    return 1


if __name__ == "__main__":
    main()
