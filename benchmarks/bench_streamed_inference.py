"""Benchmark: tile-streamed whole-slide inference and patch extraction on gigapixel-scale real tissue.

What it does, per slide size N (``--sizes``, default 20000 and 60000 pixels square):

1. writes an N x N pyramidal, JPEG-tiled RGB TIFF (levels halved down to < 2048 px, as main IFDs, readable by
   tifffile and OpenSlide) by tiling the real IDC slide region of patient 8863 (Janowczyk & Madabhushi 2016),
   tile by tile from a generator: the image never exists in memory;
2. runs :func:`medpipe.inference.streamed.streamed_sliding_window_inference` with the seed's LeNet (28 x 28
   windows, no overlap, softmax, background skipped by the Otsu tissue mask) into an on-disk Zarr store;
3. reads the tissue patches (28 x 28) with :func:`medpipe.data.patches.iter_patch_arrays` and with MONAI's
   ``PatchWSIDataset`` (OpenSlide backend; and tifffile backend on small sizes only, since MONAI's tifffile
   reader decodes the whole level for every patch).

Each step runs in its own subprocess, which reports its peak resident memory (``ru_maxrss``) and the resident
memory after imports, so peak memory can be compared across sizes. On the smallest size the streamed
inference (all windows) is compared with MONAI's in-memory ``sliding_window_inference`` on the same image
(loaded whole, as a float32 tensor) for speed and memory.

Usage::

    python benchmarks/bench_streamed_inference.py --sizes 4000 8000     # quick
    python benchmarks/bench_streamed_inference.py                       # 20000 and 60000 (long; ~11 GB raw)
"""

from __future__ import annotations

import argparse
import itertools
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
def worker_write(path: str, size: int) -> dict:
    """Write the pyramidal TIFF tile by tile (generator); returns timing and memory."""
    import tifffile

    base = _rss_mb()
    src = _source()
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


def worker_patches(path: str, max_patches: int, monai_tifffile: int) -> dict:
    """Patch extraction throughput: ours (tifffile and openslide backends) vs MONAI PatchWSIDataset."""
    from monai.data import PatchWSIDataset

    from medpipe.data.patches import iter_patch_arrays, iter_patch_records, tissue_mask
    from medpipe.data.wsi import open_slide

    res = {}
    with open_slide(path, "tifffile") as slide:
        t0 = time.perf_counter()
        tissue = tissue_mask(slide)
        recs = list(itertools.islice(iter_patch_records(slide, 28, min_tissue=0.5, tissue=tissue), max_patches))
        res["select_seconds"] = time.perf_counter() - t0
        res["patches"] = len(recs)
    for backend in ("tifffile", "openslide"):
        with open_slide(path, backend) as slide:
            t0 = time.perf_counter()
            checksum = sum(int(a[0, 0, 0]) for _, a in iter_patch_arrays(slide, recs, 28))
            res[f"ours_{backend}_pps"] = len(recs) / (time.perf_counter() - t0)
    data = [{"image": path, "location": [r.y, r.x], "label": 0} for r in recs]
    ds = PatchWSIDataset(data, patch_size=28, patch_level=0, center_location=False, reader="OpenSlide")
    t0 = time.perf_counter()
    check2 = sum(int(ds[i]["image"][0, 0, 0]) for i in range(len(ds)))
    res["monai_openslide_pps"] = len(ds) / (time.perf_counter() - t0)
    res["same_pixels"] = checksum == check2
    if monai_tifffile:
        ds = PatchWSIDataset(data[:monai_tifffile], patch_size=28, patch_level=0, center_location=False,
                             reader="tifffile")
        t0 = time.perf_counter()
        for i in range(len(ds)):
            ds[i]
        res["monai_tifffile_pps"] = len(ds) / (time.perf_counter() - t0)
    res["peak_rss_mb"] = _peak_mb()
    return res


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
    p.add_argument("--max-patches", type=int, default=20000, help="patches read per extraction benchmark")
    p.add_argument("--inmem-size", type=int, default=None, help="size for the in-memory comparison "
                   "(default: the smallest --sizes; skipped if 0)")
    p.add_argument("--tmpdir", default=None, help="where to write slides (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the slides and outputs")
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        kind, *rest = a.worker
        fn = {"write": lambda: worker_write(rest[0], int(rest[1])),
              "infer": lambda: worker_infer(rest[0], rest[1], int(rest[2]), rest[3] == "1", int(rest[4])),
              "inmem": lambda: worker_inmem(rest[0], int(rest[1])),
              "patches": lambda: worker_patches(rest[0], int(rest[1]), int(rest[2]))}[kind]
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
            w = _run(["write", slide, str(n)])
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
            pt = _run(["patches", slide, str(a.max_patches), "3" if n <= 8000 else "0"])
            line = (f"patch extraction ({pt['patches']} tissue patches of 28x28): ours tifffile "
                    f"{pt['ours_tifffile_pps']:.0f} patches/s, ours openslide {pt['ours_openslide_pps']:.0f}, MONAI "
                    f"PatchWSIDataset(OpenSlide) {pt['monai_openslide_pps']:.0f} -> "
                    f"{pt['ours_tifffile_pps'] / pt['monai_openslide_pps']:.1f}x")
            if "monai_tifffile_pps" in pt:
                line += f"; MONAI PatchWSIDataset(tifffile) {pt['monai_tifffile_pps']:.2f} patches/s"
            print(line + f"; same pixels: {pt['same_pixels']}")
            row["patches"] = pt
            rows.append(row)
        skip = [(row["size"], row["streamed_skip"]["peak_rss_mb"]) for row in rows]
        print("\n## peak RSS of streamed inference vs slide size: "
              + ", ".join(f"{n} px: {m:.0f} MiB" for n, m in skip))
        (tmp / "results.json").write_text(json.dumps(rows, indent=1))
    finally:
        if not a.keep and a.tmpdir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
