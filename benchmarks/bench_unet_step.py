"""CPU cost of one 2D U-Net training step: nnU-Net's topology against compact candidates and MONAI's BasicUNet.

Why ``medpipe.plan``'s compact 2D network (``medpipe/plan/rules.py``, ``COMPACT_STAGES``) has BasicUNet's widths
(b, b, 2b, 4b, 8b): the full-resolution stages dominate a CPU step, not the deep 512-channel ones. Times forward +
cross-entropy + backward + AdamW step on one batch of ``--batch`` random 1 x ``--size`` x ``--size`` patches (random
values: the cost does not depend on them), median of ``--repeats`` after one warm-up, on ``--threads`` threads, and
prints seconds per step and the ratio to BasicUNet (the baseline, measured in the same run).

Usage::

    .venv/bin/python benchmarks/bench_unet_step.py [--batch 32] [--size 256] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time


def candidates():
    """``{name: network}``: nnU-Net's 7-stage topology for a 256 px patch at medpipe's CPU widths, two compact
    5-stage DynUNets, and BasicUNet as the hand-written pipelines use it."""
    from monai.networks.nets import BasicUNet, DynUNet

    def dyn(filters, norm=("instance", {"affine": True})):
        strides = [[1, 1]] + [[2, 2]] * (len(filters) - 1)
        return DynUNet(2, 1, 2, kernel_size=[[3, 3]] * len(filters), strides=strides, upsample_kernel_size=strides[1:],
                       filters=filters, norm_name=norm, deep_supervision=True, deep_supr_num=2)

    return {
        "DynUNet nnU-Net topology 16-32-64-128-256-512-512": dyn([16, 32, 64, 128, 256, 512, 512]),
        "DynUNet 5 stages 16-32-64-128-128": dyn([16, 32, 64, 128, 128]),
        "DynUNet 5 stages 16-16-32-64-128 (plan's compact)": dyn([16, 16, 32, 64, 128]),
        "BasicUNet 16-16-32-64-128 (hand-written EM, lungs)": BasicUNet(2, 1, 2, features=(16, 16, 32, 64, 128, 16)),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 1, args.size, args.size)
    y = torch.randint(0, 2, (args.batch, args.size, args.size))
    seconds = {}
    for name, net in candidates().items():
        opt = torch.optim.AdamW(net.parameters(), 1e-3)
        times = []
        for _ in range(args.repeats + 1):
            t0 = time.perf_counter()
            out = net(x)
            out = out[:, 0] if out.dim() == x.dim() + 1 else out  # deep supervision: the main head
            loss = torch.nn.functional.cross_entropy(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        seconds[name] = statistics.median(times[1:])
    base = seconds["BasicUNet 16-16-32-64-128 (hand-written EM, lungs)"]
    for name, s in seconds.items():
        print(f"{name:55s} {s:6.2f} s/step  {s / base:4.2f}x BasicUNet")
    return seconds


if __name__ == "__main__":
    main()
