"""Training throughput (images/s) of MONAI BasicUNet: medpipe's engine with its GPU options vs a hand-written loop.

Each variant trains a 2D BasicUNet (1 -> 2 channels, ``net.features`` of ``pipelines/em_unet_gpu.yaml``, i.e. MONAI's
default width, unless ``--features``) with Dice + cross-entropy and AdamW on real EM images of the ISBI-2012 set
(``isbi2012_em/train/image`` and ``label`` under ``$MEDPIPE_DATA``, default ``../shared/datasets``), read through the
pipeline's validation transforms, cut into non-overlapping ``--size`` tiles (mirror-padded when ``--size`` exceeds
512) and stacked into batches once, in device memory: the numbers are compute (forward, loss, backward, optimizer
step and, for medpipe, its per-iteration engine work), not data loading or augmentation.

Variants (``--variants``; names are ``plain`` or ``medpipe`` followed by any of ``-amp``, ``-cl``, ``-compile``):

- ``plain``: a hand-written MONAI / PyTorch loop (``BasicUNet``, ``DiceCELoss(to_onehot_y=True, softmax=True)``,
  ``torch.optim.AdamW``; per batch ``zero_grad`` / forward / loss / ``backward`` / ``step``), float32: the baseline.
- ``medpipe``: the ``SupervisedTrainer`` that ``medpipe.engine.trainer.build_engines`` builds from
  ``pipelines/em_unet_gpu.yaml`` (``--set`` overrides applied; ``train.amp`` off unless ``-amp``), with all its
  handlers (epoch loss, data re-seeding, stats, LR schedule); validation never runs, and the epoch-end checkpoint
  is written after the timed iterations.
- ``-amp``: ``torch.autocast`` in ``--amp-dtype`` (float16 with a ``GradScaler``, or bfloat16; the plain loop scales
  float16 only, MONAI's trainer scales both) on CUDA. Elsewhere it trains in float32, as medpipe does, and the
  table says ``float32 (AMP is CUDA-only)``.
- ``-cl``: network and input batches in channels-last memory format (``train.channels_last``).
- ``-compile``: ``torch.compile(net, dynamic=False)`` (``train.compile``), fed plain tensors of one static shape;
  the compilation happens in the warm-up. medpipe refuses ``compile`` with ``channels_last`` for basic_unet
  (torch 2.13 inductor fails on its padding backward), so ``-cl-compile`` is not offered. Inductor's
  ``layout_optimization`` is off for every compiled variant, plain too, as ``build_engines`` sets it.

Both sides read the same batches through a ``torch.utils.data.DataLoader`` (``batch_size=None``) over the
preloaded device tensors. A variant is built, runs ``--warmup`` untimed iterations, then ``--repeats`` blocks of
``--iters`` timed iterations (``torch.cuda.synchronize()`` at each block boundary on CUDA; medpipe's blocks are
delimited in ignite ``ITERATION_COMPLETED`` handlers attached after medpipe's own), and is freed before the next.
The table gives, per variant: precision, img/s and ms/iter of the median block, peak GPU memory
(``torch.cuda.max_memory_allocated`` since the variant was built, the preloaded batches included; CUDA only), the
ratio to the first variant run of ``plain`` (else the first variant) and, for a medpipe variant, the ratio to the
plain variant with the same options (the engine's overhead; 1.00 = none).

Usage::

    python benchmarks/bench_gpu_unet.py [--device auto|cpu|cuda] [--batch-size 8] [--size 512] [--iters 20]
        [--warmup 5] [--repeats 3] [--variants plain medpipe ...] [--features 32 32 64 128 256 32]
        [--amp-dtype float16|bfloat16] [--cudnn-benchmark] [--set key=value ...]

    # on a GPU machine (the numbers worth quoting: GPU numbers must come from a GPU, not from this script on CPU)
    python benchmarks/bench_gpu_unet.py --device cuda
    # quick check on CPU
    python benchmarks/bench_gpu_unet.py --device cpu --size 128 --batch-size 2 --iters 2 --warmup 1 \\
        --repeats 1 --features 8 8 16 32 64 8 --variants plain medpipe plain-amp-cl medpipe-amp-cl

cuDNN flags are those a medpipe run sets (``seed_everything(train.seed, train.deterministic)``: MONAI's
``set_determinism`` makes cuDNN deterministic without autotuning) for every variant; ``--cudnn-benchmark`` turns
autotuning on (and determinism off) for all of them.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medpipe.config import load_config
from medpipe.data.discovery import discover_cases
from medpipe.data.transforms import build_transforms
from medpipe.engine.trainer import build_engines, resolve_device, seed_everything
from medpipe.nets import build_net

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = ROOT / "pipelines" / "em_unet_gpu.yaml"
DEFAULT_VARIANTS = ["plain", "medpipe", "plain-amp", "medpipe-amp", "plain-amp-cl", "medpipe-amp-cl",
                    "plain-amp-compile", "medpipe-amp-compile"]
OPTIONS = ("amp", "cl", "compile")


def parse_variant(name: str) -> dict:
    side, *opts = name.split("-")
    if side not in ("plain", "medpipe") or any(o not in OPTIONS for o in opts) or len(set(opts)) != len(opts):
        raise SystemExit(f"unknown variant {name!r}: plain or medpipe, then any of -amp, -cl, -compile")
    if "cl" in opts and "compile" in opts:
        raise SystemExit(f"variant {name!r}: medpipe refuses compile with channels_last for basic_unet "
                         "(torch 2.13 inductor fails on its padding backward)")
    return {"name": name, "side": side, "amp": "amp" in opts, "cl": "cl" in opts, "compile": "compile" in opts}


def load_batches(cfg, size: int, batch_size: int, device: torch.device) -> list:
    """The pipeline's labelled cases through its validation transforms (image in [0, 1], label 0/1, float32,
    ``(1, H, W)``), cut into ``size`` tiles, stacked into ``{"image", "label"}`` batches on ``device``; the tiles
    are used in order, cycling to fill the last batch."""
    tf = build_transforms(cfg.transforms.val)
    tiles = []
    for case in discover_cases(cfg.data):
        item = tf({"image": case["image"], "label": case["label"]})
        pair = [np.asarray(item[k], dtype=np.float32) for k in ("image", "label")]
        h, w = pair[0].shape[-2:]
        if h < size or w < size:  # mirror-pad up to the tile size
            pad = ((0, 0), (0, max(size - h, 0)), (0, max(size - w, 0)))
            pair = [np.pad(a, pad, mode="symmetric") for a in pair]
            h, w = pair[0].shape[-2:]
        for y in range(0, h - size + 1, size):
            for x in range(0, w - size + 1, size):
                tiles.append([torch.from_numpy(np.ascontiguousarray(a[:, y:y + size, x:x + size])) for a in pair])
    n_batches = -(-len(tiles) // batch_size)
    batches = []
    for b in range(n_batches):
        idx = [(b * batch_size + j) % len(tiles) for j in range(batch_size)]
        batches.append({"image": torch.stack([tiles[i][0] for i in idx]).to(device),
                        "label": torch.stack([tiles[i][1] for i in idx]).to(device)})
    return batches


class _Cycle(torch.utils.data.Dataset):
    """``length`` items cycling over the preloaded batches (one epoch = the whole measurement)."""

    def __init__(self, batches: list, length: int) -> None:
        self.batches, self.length = batches, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        return self.batches[i % len(self.batches)]


def make_loader(batches: list, length: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(_Cycle(batches, length), batch_size=None, shuffle=False, num_workers=0)


class _Marks:
    """Timestamps after iteration ``warmup``, ``warmup + iters``, ... (synchronised on CUDA) -> block seconds."""

    def __init__(self, device: torch.device, warmup: int, iters: int) -> None:
        self.device, self.warmup, self.iters, self.t = device, warmup, iters, []

    def after(self, iteration: int) -> None:
        if iteration >= self.warmup and (iteration - self.warmup) % self.iters == 0:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.t.append(time.perf_counter())

    def blocks(self) -> list:
        return [b - a for a, b in zip(self.t, self.t[1:])]


def run_plain(v: dict, cfg, loader, device: torch.device, marks: _Marks) -> None:
    """The hand-written loop: MONAI network and loss, torch optimizer, torch AMP."""
    from monai.losses import DiceCELoss
    from monai.networks.nets import BasicUNet

    nc = cfg.net
    net = BasicUNet(spatial_dims=nc.spatial_dims, in_channels=nc.in_channels, out_channels=nc.out_channels,
                    features=tuple(nc.features)).to(device)
    fmt = torch.channels_last if v["cl"] else None
    if fmt is not None:
        net = net.to(memory_format=fmt)
    train_net = torch.compile(net, dynamic=False) if v["compile"] else net
    oc = cfg.optimizer
    opt = torch.optim.AdamW(net.parameters(), lr=oc.lr, betas=oc.betas, weight_decay=oc.weight_decay)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True).to(device)
    amp = v["amp"] and device.type == "cuda"
    dtype = getattr(torch, cfg.train.amp_dtype)
    scaler = torch.amp.GradScaler("cuda") if amp and dtype == torch.float16 else None
    train_net.train()
    for i, batch in enumerate(loader, 1):
        x, y = batch["image"].to(device), batch["label"].to(device)
        if fmt is not None:
            x = x.contiguous(memory_format=fmt)
        opt.zero_grad(set_to_none=False)  # as SupervisedTrainer (optim_set_to_none=False)
        with torch.autocast("cuda", dtype=dtype, enabled=amp):
            loss = loss_fn(train_net(x), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        marks.after(i)


def run_medpipe(v: dict, cfg_overrides: list, loader, marks: _Marks) -> None:
    """medpipe's trainer from the GPU pipeline with this variant's train options; one epoch = the measurement."""
    from ignite.engine import Events

    cfg = load_config(PIPELINE, [*cfg_overrides, f"train.amp={str(v['amp']).lower()}",
                                 f"train.channels_last={str(v['cl']).lower()}",
                                 f"train.compile={str(v['compile']).lower()}"])
    with tempfile.TemporaryDirectory() as tmp:
        engines = build_engines(cfg, build_net(cfg.net), loader, loader, Path(tmp) / "ckpt")

        @engines.trainer.on(Events.ITERATION_COMPLETED)  # after medpipe's own iteration handlers
        def _mark(engine):
            marks.after(engine.state.iteration)

        engines.trainer.run()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--size", type=int, default=512, help="square tile side (divisible by 16)")
    ap.add_argument("--iters", type=int, default=20, help="timed iterations per block")
    ap.add_argument("--warmup", type=int, default=5, help="untimed iterations first (compilation included)")
    ap.add_argument("--repeats", type=int, default=3, help="timed blocks per variant (the median is reported)")
    ap.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, metavar="VARIANT")
    ap.add_argument("--features", type=int, nargs=6, default=None, metavar="F",
                    help="BasicUNet features (default: the pipeline's)")
    ap.add_argument("--amp-dtype", default="float16", choices=["float16", "bfloat16"])
    ap.add_argument("--cudnn-benchmark", action="store_true",
                    help="cuDNN autotuning on, determinism off (all variants)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="pipeline override key=value")
    args = ap.parse_args()
    if args.size % 16:
        ap.error("--size must be divisible by 16 (BasicUNet's four 2x down-samplings)")
    if min(args.batch_size, args.iters, args.warmup, args.repeats) < 1:
        ap.error("--batch-size, --iters, --warmup and --repeats must be >= 1")
    variants = [parse_variant(name) for name in args.variants]

    try:
        device = resolve_device(args.device)
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None
    total = args.warmup + args.iters * args.repeats
    overrides = [f"train.device={device.type}", "train.progress=false", "train.max_epochs=1",
                 f"train.val_interval={10 ** 6}", f"train.batch_size={args.batch_size}",
                 f"train.amp_dtype={args.amp_dtype}"]
    if args.features:
        overrides.append(f"net.features=[{', '.join(map(str, args.features))}]")
    overrides += args.overrides
    cfg = load_config(PIPELINE, overrides)
    if cfg.net.name != "basic_unet" or cfg.loss.name not in (None, "dice_ce") or cfg.optimizer.name != "adamw":
        raise SystemExit("the hand-written loop is BasicUNet + DiceCELoss + AdamW; keep net, loss and optimizer")
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = True, False
    if any(v["compile"] for v in variants):
        import torch._inductor.config as inductor_config

        inductor_config.layout_optimization = False  # what build_engines sets for train.compile: same for both

    batches = load_batches(cfg, args.size, args.batch_size, device)
    data_mib = sum(t.numel() * t.element_size() for b in batches for t in b.values()) / 2 ** 20
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device} ({name})  torch {torch.__version__}  net: BasicUNet features "
          f"{list(cfg.net.features)}  batch: {args.batch_size} x 1 x {args.size} x {args.size}")
    print(f"data: {len(batches)} batches of real EM tiles preloaded on {device} ({data_mib:.0f} MiB)  "
          f"warm-up {args.warmup} + {args.repeats} x {args.iters} timed iterations per variant  "
          f"cudnn deterministic={torch.backends.cudnn.deterministic} benchmark={torch.backends.cudnn.benchmark}")

    rows = []
    for v in variants:
        torch.manual_seed(cfg.train.seed)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        marks = _Marks(device, args.warmup, args.iters)
        loader = make_loader(batches, total)
        t0 = time.perf_counter()
        if v["side"] == "plain":
            run_plain(v, cfg, loader, device, marks)
        else:
            run_medpipe(v, overrides, loader, marks)
        wall = time.perf_counter() - t0
        blocks = marks.blocks()
        assert len(blocks) == args.repeats, (v["name"], len(marks.t))
        block = statistics.median(blocks)
        precision = "float32"
        if v["amp"]:
            precision = args.amp_dtype if cuda else "float32 (AMP is CUDA-only)"
        rows.append({**v, "precision": precision, "img_s": args.batch_size * args.iters / block,
                     "ms": 1000 * block / args.iters, "wall": wall,
                     "peak": torch.cuda.max_memory_allocated(device) / 2 ** 20 if cuda else None})
        r = rows[-1]
        print(f"  {v['name']}: {r['img_s']:.2f} img/s  ({', '.join(f'{1000 * b / args.iters:.1f}' for b in blocks)}"
              f" ms/iter per block; {wall:.1f} s with warm-up)", flush=True)
        gc.collect()
        if v["compile"]:
            torch._dynamo.reset()
        if cuda:
            torch.cuda.empty_cache()

    base = next((r for r in rows if r["name"] == "plain"), rows[0])
    plain = {(r["amp"], r["cl"], r["compile"]): r for r in rows if r["side"] == "plain"}
    print(f"\n{'variant':<22} {'precision':<27} {'img/s':>9} {'ms/iter':>9} {'peak MiB':>9} "
          f"{'ratio':>7} {'mp/plain':>9}")
    for r in rows:
        twin = plain.get((r["amp"], r["cl"], r["compile"])) if r["side"] == "medpipe" else None
        peak = f"{r['peak']:.0f}" if r["peak"] is not None else "-"
        ratio = f"{twin['ms'] / r['ms']:.3f}" if twin else "-"
        print(f"{r['name']:<22} {r['precision']:<27} {r['img_s']:>9.2f} {r['ms']:>9.1f} {peak:>9} "
              f"{r['img_s'] / base['img_s']:>7.2f} {ratio:>9}")
    print(f"ratio: img/s / {base['name']}'s img/s; mp/plain: a medpipe variant's img/s / the plain loop's with the "
          "same options (1.00 = no engine overhead)")


if __name__ == "__main__":
    main()
