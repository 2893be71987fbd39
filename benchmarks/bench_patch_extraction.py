"""Benchmark: patch extraction throughput (patches/s), medpipe vs MONAI's patch datasets, on the same real slide.

For each slide (default: the two real SVS files of ``wsi_samples``, JPEG and JPEG 2000 tiles; or any slide given
with ``--slides``), patch size ``--patch`` at level 0, patches read to ``(C, h, w)`` arrays and touched
(a checksum), no writing:

- **medpipe** :func:`medpipe.data.patches.iter_patch_records` + :func:`~medpipe.data.patches.iter_patch_arrays`:
  Otsu tissue mask on a thumbnail, grid patches with >= 50 % tissue, read in bands; with the ``tifffile`` and
  ``openslide`` backends. Time includes the tissue mask and the patch selection.
- **medpipe** :class:`~medpipe.data.patches.PatchDataset` (one read per item, the ``DataLoader`` path).
- **MONAI** ``PatchWSIDataset`` (``reader="OpenSlide"``, and ``"tifffile"`` on the first ``--monai-tifffile``
  patches only: MONAI's tifffile reader decodes the whole level for every patch) on the same tissue
  locations, so its pixels can be compared with ours.
- **MONAI** ``MaskedPatchWSIDataset`` (``reader="OpenSlide"``, ``mask_level`` = the coarsest level): it
  computes its own Otsu (HSV saturation) mask and yields one patch centred on every mask pixel, a different
  (denser) sampling: time = building the dataset + reading the first ``--max-patches`` patches.
- **MONAI** ``GridPatchDataset`` + ``PatchIter`` on level 0 loaded whole with ``WSIReader`` (OpenSlide): every
  grid patch, no tissue filter; time includes the load.

Usage::

    nice -n 10 python benchmarks/bench_patch_extraction.py                 # ~2 min on 2 cores
    python benchmarks/bench_patch_extraction.py --slides my.svs --patch 50
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _timed(fn):
    t0 = time.perf_counter()
    n, checksum = fn()
    return n, time.perf_counter() - t0, checksum


def bench_slide(path: Path, patch: int, max_patches: int, monai_tifffile: int) -> dict:
    import torch
    from monai.data import GridPatchDataset, MaskedPatchWSIDataset, PatchIter, PatchWSIDataset, WSIReader

    from medpipe.data.patches import PatchDataset, iter_patch_arrays, iter_patch_records, tissue_mask
    from medpipe.data.wsi import open_slide

    res: dict = {"slide": path.name}
    with open_slide(path, "openslide") as s:  # warm-up: imports (skimage, MONAI readers) and file caches
        tissue_mask(s)
        PatchWSIDataset([{"image": str(path), "location": [0, 0], "label": 0}], patch_size=patch, patch_level=0,
                        center_location=False, reader="OpenSlide")[0]
    recs_by_backend = {}
    for backend in ("tifffile", "openslide"):
        def ours(backend=backend):
            t0 = time.perf_counter()
            with open_slide(path, backend) as s:
                recs = list(iter_patch_records(s, patch, min_tissue=0.5, tissue=tissue_mask(s)))
                recs_by_backend[backend] = recs
                res[f"ours_{backend}_select_s"] = time.perf_counter() - t0
                return len(recs), sum(int(a[:, patch // 2, patch // 2].sum()) for _, a in iter_patch_arrays(s, recs, patch))

        res[f"ours_{backend}"] = _timed(ours)
    recs = recs_by_backend["tifffile"]
    res["shape"] = open_slide(path, "tifffile").level_dimensions[0]
    sub = recs[:max_patches]

    def ours_dataset():
        ds = PatchDataset(path, sub, patch, backend="openslide")
        return len(ds), sum(int(ds[i]["image"][:, patch // 2, patch // 2].sum()) for i in range(len(ds)))

    res["ours_dataset_openslide"] = _timed(ours_dataset)

    def monai_patch(reader, n):
        data = [{"image": str(path), "location": [r.y, r.x], "label": 0} for r in sub[:n]]
        ds = PatchWSIDataset(data, patch_size=patch, patch_level=0, center_location=False, reader=reader)
        return len(ds), sum(int(torch.as_tensor(ds[i]["image"])[:, patch // 2, patch // 2].sum()) for i in range(len(ds)))

    res["monai_patchwsi_openslide"] = _timed(lambda: monai_patch("OpenSlide", len(sub)))
    if monai_tifffile:
        res["monai_patchwsi_tifffile"] = _timed(lambda: monai_patch("tifffile", monai_tifffile))

    def monai_masked():
        reader = WSIReader(backend="openslide")
        mask_level = reader.get_level_count(reader.read(str(path))) - 1
        ds = MaskedPatchWSIDataset([{"image": str(path)}], patch_size=patch, patch_level=0, mask_level=mask_level,
                                   reader="OpenSlide")
        res["monai_masked_total_patches"] = len(ds)
        n = min(len(ds), max_patches)
        return n, sum(int(torch.as_tensor(ds[i]["image"])[:, patch // 2, patch // 2].sum()) for i in range(n))

    res["monai_masked_openslide"] = _timed(monai_masked)

    def monai_grid():
        reader = WSIReader(backend="openslide")
        img, _ = reader.get_data(reader.read(str(path)), level=0)  # (C, H, W) uint8, whole level
        ds = GridPatchDataset([img], PatchIter(patch_size=(patch, patch)), with_coordinates=True)
        n, checksum = 0, 0
        for p, _coords in ds:
            n += 1
            checksum += int(torch.as_tensor(p)[:, patch // 2, patch // 2].sum())
        return n, checksum

    res["monai_grid_openslide"] = _timed(monai_grid)
    return res


def main() -> int:
    from medpipe.paths import data_root

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slides", nargs="+", default=None, help="slide files (default: the two real SVS samples)")
    p.add_argument("--patch", type=int, default=28, help="patch side, pixels at level 0 (the seed's 28)")
    p.add_argument("--max-patches", type=int, default=3000, help="patches read by the per-item datasets")
    p.add_argument("--monai-tifffile", type=int, default=10, help="patches read by MONAI's tifffile reader")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    samples = data_root() / "wsi_samples"
    slides = [Path(s) for s in a.slides] if a.slides else [samples / "CMU-1-Small-Region.svs",
                                                            samples / "tcga-cr-7395-01a-01-ts1.svs"]
    import torch

    print(f"# patch extraction benchmark: {a.patch}x{a.patch} patches at level 0, {os.cpu_count()} CPUs, "
          f"torch threads {torch.get_num_threads()}")
    for path in slides:
        r = bench_slide(path, a.patch, a.max_patches, a.monai_tifffile)
        print(f"\n## {r['slide']} ({r['shape'][0]} x {r['shape'][1]} px)")
        base_n, base_s, base_c = r["ours_tifffile"]
        rows = [
            ("medpipe iter_patch_arrays, tifffile (mask + select + read)", "ours_tifffile"),
            ("medpipe iter_patch_arrays, openslide (mask + select + read)", "ours_openslide"),
            ("medpipe PatchDataset[i], openslide", "ours_dataset_openslide"),
            ("MONAI PatchWSIDataset, OpenSlide", "monai_patchwsi_openslide"),
            ("MONAI PatchWSIDataset, tifffile", "monai_patchwsi_tifffile"),
            ("MONAI MaskedPatchWSIDataset, OpenSlide (own mask + read)", "monai_masked_openslide"),
            ("MONAI GridPatchDataset, whole level via OpenSlide (all grid)", "monai_grid_openslide"),
        ]
        ref_pps = base_n / base_s
        for label, key in rows:
            if key not in r:
                continue
            n, s, _ = r[key]
            print(f"{label:64s} {n:7d} patches {s:7.2f} s {n / s:9.0f} patches/s  "
                  f"(medpipe tifffile / this: {ref_pps / (n / s):6.1f}x)")
        print(f"medpipe tissue mask + grid selection: tifffile {r['ours_tifffile_select_s']:.2f} s, openslide "
              f"{r['ours_openslide_select_s']:.2f} s (included above); reading only: tifffile "
              f"{base_n / (base_s - r['ours_tifffile_select_s']):.0f} patches/s, openslide "
              f"{r['ours_openslide'][0] / (r['ours_openslide'][1] - r['ours_openslide_select_s']):.0f} patches/s")
        print(f"MaskedPatchWSIDataset generates {r['monai_masked_total_patches']} patch locations (one per mask "
              f"pixel); medpipe's tissue grid {base_n}")
        same = r["ours_dataset_openslide"][2] == r["monai_patchwsi_openslide"][2]
        print(f"same pixels, medpipe PatchDataset vs MONAI PatchWSIDataset (first {a.max_patches}): {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
