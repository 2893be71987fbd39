"""Benchmark: tile-streamed whole-slide inference on gigapixel-scale real tissue: peak memory and speed.

What it does, per slide size N (``--sizes``, default 20000 and 60000 pixels square):

1. writes an N x N pyramidal, JPEG-tiled RGB TIFF (levels halved down to < 2048 px, as main IFDs, readable by
   tifffile and OpenSlide) by repeating the real IDC slide region of patient 8863 (Janowczyk & Madabhushi 2016),
   tile by tile from a generator: the image never exists in memory. ``--tissue-blocks k`` puts the region in
   one of every k x k region-sized cells and white glass in the others (a sparser, more slide-like layout,
   which also bounds the run time: the network runs on tissue only);
2. runs :func:`medpipe.inference.streamed.streamed_sliding_window_inference` with the seed's LeNet (28 x 28
   windows, no overlap, softmax, background skipped by the Otsu tissue mask) into an on-disk Zarr store, and
   renders the heatmap thumbnail;
3. on one size that fits in memory (``--inmem-size``), runs every window both streamed and with MONAI's
   in-memory ``sliding_window_inference`` (the level loaded whole as a float32 tensor) for the speed and
   memory ratio.

Each step runs in its own subprocess, which reports its peak resident memory (``ru_maxrss``) and the resident
memory after imports, so peak memory can be compared across sizes. Patch extraction throughput is measured by
``benchmarks/bench_patch_extraction.py``.

Usage::

    python benchmarks/bench_streamed_inference.py --sizes 4096 --inmem-size 4096          # quick (~2 min)
    nice -n 10 python benchmarks/bench_streamed_inference.py --sizes 20000 60000 --inmem-size 8192 \
        --tissue-blocks 2                                                                  # see docs/wsi.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TILE = 256
PERIOD_MULTIPLE = 64  # the source region is cropped to a multiple of 2**levels, so every level is periodic


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def _source() -> np.ndarray:
    from PIL import Image

    from medpipe.paths import data_root

    path = data_root() / "idc_breast_histopathology/reconstructed_region/patient8863_mosaic.jpg"
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    h, w = (arr.shape[0] // PERIOD_MULTIPLE) * PERIOD_MULTIPLE, (arr.shape[1] // PERIOD_MULTIPLE) * PERIOD_MULTIPLE
    return arr[:h, :w]


# ------------------------------------------------------------------------------------------------ workers
def _layout(src: np.ndarray, blocks: int) -> np.ndarray:
    """The repeating unit of the slide: the real region in the top-left cell of a ``blocks x blocks`` grid of
    region-sized cells, the other cells white glass (``blocks=1``: the region repeated edge to edge)."""
    if blocks <= 1:
        return src
    unit = np.full((src.shape[0] * blocks, src.shape[1] * blocks, 3), 255, np.uint8)
    unit[: src.shape[0], : src.shape[1]] = src
    return unit


def worker_write(path: str, size: int, blocks: int = 1) -> dict:
    """Write the pyramidal TIFF tile by tile (generator); returns timing and memory."""
    import tifffile

    base = _rss_mb()
    src = _layout(_source(), blocks)
    t0 = time.perf_counter()
    n_tiles = 0
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        level, k = size, 0
        while True:
            f = 2**k
            period = src.reshape(src.shape[0] // f, f, src.shape[1] // f, f, 3).mean(axis=(1, 3)).astype(np.uint8)

            def tiles(n=level, p=period):
                for y in range(0, n, TILE):
                    ys = (y + np.arange(TILE)) % p.shape[0]
                    for x in range(0, n, TILE):
                        yield p[np.ix_(ys, (x + np.arange(TILE)) % p.shape[1])]

            tw.write(tiles(), shape=(level, level, 3), dtype=np.uint8, tile=(TILE, TILE), photometric="rgb",
                     compression="jpeg", compressionargs={"level": 90}, subfiletype=1 if k else 0, metadata=None)
            n_tiles += (-(-level // TILE)) ** 2
            if level < 2048 or f * 2 > PERIOD_MULTIPLE:
                break
            level, k = level // 2, k + 1
    return {"seconds": time.perf_counter() - t0, "tiles": n_tiles, "levels": k + 1,
            "file_mb": os.path.getsize(path) / 2**20, "base_rss_mb": base, "peak_rss_mb": _peak_mb()}


def _lenet():
    import torch

    from medpipe.nets.lenet import LeNet

    torch.manual_seed(0)
    return LeNet(in_channels=3, num_classes=2, input_size=28).eval()


def worker_infer(path: str, out: str, batch: int, tissue: bool, tile: int) -> dict:
    """Streamed LeNet inference over the whole slide into Zarr."""
    import monai.data.utils  # noqa: F401 - imported before timing and the base RSS, as in the in-memory run
    import torch
    import zarr  # noqa: F401

    from medpipe.data.patches import tissue_mask
    from medpipe.data.wsi import open_slide
    from medpipe.inference.streamed import render_heatmap, streamed_sliding_window_inference

    net = _lenet()
    base = _rss_mb()
    with open_slide(path, "tifffile") as slide:
        t0 = time.perf_counter()
        mask = tissue_mask(slide) if tissue else None
        t_mask = time.perf_counter() - t0
        g = streamed_sliding_window_inference(
            slide, net, 28, sw_batch_size=batch, overlap=0.0, mode="constant", out=out, tile_size=tile,
            chunk_size=512, intensity_scale=1 / 255, activation="softmax", tissue=mask,
        )
        secs = time.perf_counter() - t0
        t1 = time.perf_counter()
        render_heatmap(out, Path(out).with_suffix(".png"), channel=1, max_size=1024, slide=slide)
        t_heat = time.perf_counter() - t1
    return {"seconds": secs, "mask_seconds": t_mask, "heatmap_seconds": t_heat,
            "windows": g.attrs["n_windows"], "windows_run": g.attrs["n_windows_run"],
            "threads": torch.get_num_threads(), "base_rss_mb": base, "peak_rss_mb": _peak_mb()}


def worker_inmem(path: str, batch: int) -> dict:
    """MONAI sliding_window_inference on the whole level 0 loaded in memory (the baseline)."""
    import tifffile
    import torch
    from monai.inferers import sliding_window_inference

    net = _lenet()
    base = _rss_mb()
    t0 = time.perf_counter()
    img = tifffile.imread(path, level=0)  # (H, W, 3) uint8, whole
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() * (1 / 255)
    del img
    t_load = time.perf_counter() - t0

    def painted(w):  # the same window painting as the streamed path
        return torch.softmax(net(w), 1)[:, :, None, None].repeat(1, 1, 28, 28)

    with torch.inference_mode():
        out = sliding_window_inference(x, 28, batch, painted, overlap=0.0, mode="constant")
    secs = time.perf_counter() - t0
    n = (x.shape[2] // 28 + (x.shape[2] % 28 > 0)) * (x.shape[3] // 28 + (x.shape[3] % 28 > 0))
    return {"seconds": secs, "load_seconds": t_load, "windows": n, "out_shape": list(out.shape),
            "base_rss_mb": base, "peak_rss_mb": _peak_mb()}


# ------------------------------------------------------------------------------------------------ driver
def _run(args: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--worker", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if res.returncode != 0:
        raise RuntimeError(f"worker {args[0]} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[20000, 60000], help="slide sides in pixels")
    p.add_argument("--batch", type=int, default=512, help="sw_batch_size")
    p.add_argument("--tile", type=int, default=2048, help="streamed tile size")
    p.add_argument("--tissue-blocks", type=int, default=1, help="the real region fills 1 of every k x k "
                   "region-sized cells (the rest is white glass); 1 = region repeated edge to edge")
    p.add_argument("--inmem-size", type=int, default=None, help="size for the in-memory comparison "
                   "(default: the smallest --sizes; skipped if 0)")
    p.add_argument("--tmpdir", default=None, help="where to write slides (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the slides and outputs")
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        kind, *rest = a.worker
        fn = {"write": lambda: worker_write(rest[0], int(rest[1]), int(rest[2])),
              "infer": lambda: worker_infer(rest[0], rest[1], int(rest[2]), rest[3] == "1", int(rest[4])),
              "inmem": lambda: worker_inmem(rest[0], int(rest[1]))}[kind]
        print(json.dumps(fn()))
        return 0

    tmp = Path(a.tmpdir or tempfile.mkdtemp(prefix="medpipe_bench_"))
    tmp.mkdir(parents=True, exist_ok=True)
    inmem_size = min(a.sizes) if a.inmem_size is None else a.inmem_size
    sizes = sorted(set(a.sizes) | ({inmem_size} if inmem_size else set()))
    print(f"# streamed inference benchmark: sizes {sizes}, LeNet 28x28 windows, batch {a.batch}, tile {a.tile}, "
          f"{os.cpu_count()} CPUs, slides in {tmp}")
    rows = []
    try:
        for n in sizes:
            slide = str(tmp / f"idc_tiled_{n}.tif")
            w = _run(["write", slide, str(n), str(a.tissue_blocks)])
            print(f"\n## {n} x {n} px ({n * n * 3 / 2**30:.2f} GiB RGB raw)")
            print(f"write: {w['levels']} levels, {w['tiles']} tiles of {TILE}, {w['file_mb']:.0f} MiB JPEG, "
                  f"{w['seconds']:.1f} s, peak RSS {w['peak_rss_mb']:.0f} MiB")
            r = _run(["infer", slide, str(tmp / f"pred_{n}.zarr"), str(a.batch), "1", str(a.tile)])
            print(f"streamed (tissue skip): {r['windows_run']}/{r['windows']} windows run, {r['seconds']:.1f} s "
                  f"({r['windows_run'] / r['seconds']:.0f} windows/s, mask {r['mask_seconds']:.1f} s), peak RSS "
                  f"{r['peak_rss_mb']:.0f} MiB (after imports {r['base_rss_mb']:.0f}), heatmap "
                  f"{r['heatmap_seconds']:.1f} s")
            row = {"size": n, "streamed_skip": r, "write": w}
            if n == inmem_size:
                full = _run(["infer", slide, str(tmp / f"predfull_{n}.zarr"), str(a.batch), "0", str(a.tile)])
                mem = _run(["inmem", slide, str(a.batch)])
                wps_s, wps_m = full["windows_run"] / full["seconds"], mem["windows"] / mem["seconds"]
                print(f"streamed (all windows): {full['windows_run']} windows, {full['seconds']:.1f} s "
                      f"({wps_s:.0f} windows/s), peak RSS {full['peak_rss_mb']:.0f} MiB")
                print(f"MONAI in-memory sliding_window_inference: {mem['windows']} windows, {mem['seconds']:.1f} s "
                      f"(load {mem['load_seconds']:.1f} s; {wps_m:.0f} windows/s), peak RSS "
                      f"{mem['peak_rss_mb']:.0f} MiB")
                print(f"ratio streamed/in-memory: speed {wps_s / wps_m:.2f}x, peak RSS "
                      f"{full['peak_rss_mb'] / mem['peak_rss_mb']:.2f}x")
                row.update(streamed_all=full, inmem=mem)
            rows.append(row)
        skip = [(row["size"], row["streamed_skip"]) for row in rows if row["size"] in a.sizes]
        print("\n## streamed inference (tissue skip) vs slide size")
        for n, r in skip:
            print(f"{n} px: {r['windows_run']} windows in {r['seconds']:.1f} s = "
                  f"{r['windows_run'] / r['seconds']:.0f} tiles/s, peak RSS {r['peak_rss_mb']:.0f} MiB "
                  f"(+{r['peak_rss_mb'] - r['base_rss_mb']:.0f} over imports)")
        if len(skip) > 1:
            (n0, r0), (n1, r1) = skip[0], skip[-1]
            print(f"ratio {n1} / {n0} px: area {(n1 / n0) ** 2:.1f}x, windows run "
                  f"{r1['windows_run'] / r0['windows_run']:.1f}x, time {r1['seconds'] / r0['seconds']:.1f}x, "
                  f"tiles/s {(r1['windows_run'] / r1['seconds']) / (r0['windows_run'] / r0['seconds']):.2f}x, "
                  f"peak RSS {r1['peak_rss_mb'] / r0['peak_rss_mb']:.2f}x")
        (tmp / "results.json").write_text(json.dumps(rows, indent=1))
    finally:
        if not a.keep and a.tmpdir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
