import csv
import subprocess
import sys

import numpy as np
import pytest
import torch

from medpipe.data.patches import (
    PatchDataset,
    extract_patches,
    grid_patch_coordinates,
    iter_patch_records,
    read_manifest,
    tissue_mask,
)
from medpipe.data.patches.__main__ import main
from medpipe.data.wsi import open_slide, read_region
from medpipe.paths import PROJECT_ROOT


@pytest.fixture(scope="module")
def kidney(datasets):
    with open_slide(datasets / "wsi_samples/kidney-48-5.tif") as s:
        yield s


@pytest.fixture(scope="module")
def idc(datasets):
    root = datasets / "idc_breast_histopathology"
    with open_slide(root / "reconstructed_region/patient8863_mosaic.jpg") as s:
        yield s, root


def test_grid_coordinates_and_stride(kidney):
    shape = kidney.level_dimensions[0]  # (901, 1493)
    c = grid_patch_coordinates(shape, 28)
    assert c.shape == (32 * 53, 2) and c.dtype == np.int64
    assert tuple(c[0]) == (0, 0) and tuple(c[1]) == (0, 28) and tuple(c[53]) == (28, 0)
    assert c[:, 0].max() + 28 <= 901 and c[:, 1].max() + 28 <= 1493
    c2 = grid_patch_coordinates(shape, (28, 28), stride=(14, 20))
    assert len(np.unique(c2[:, 0])) == (901 - 28) // 14 + 1 and np.all(np.diff(np.unique(c2[:, 1])) == 20)
    c3 = grid_patch_coordinates(shape, 28, drop_incomplete=False)
    assert len(c3) == 33 * 54
    with pytest.raises(ValueError, match="stride"):
        grid_patch_coordinates(shape, 28, stride=0)


def test_tissue_filter_drops_background(kidney):
    mask, ds = tissue_mask(kidney)
    assert mask.dtype == bool and ds == 1.0 and 0 < mask.mean() < 0.01  # a small fragment on glass
    kept = extract_patches(kidney, 28, min_tissue=0.5, tissue=(mask, ds))
    everything = extract_patches(kidney, 28, min_tissue=0)
    assert len(everything) == 32 * 53 and 0 < len(kept) < 20
    assert all(r.tissue >= 0.5 for r in kept) and all(r.tissue is None for r in everything)

    def saturation(r):
        p = read_region(kidney, (r.y, r.x), (28, 28)).astype(float)
        return ((p.max(0) - p.min(0)) / np.maximum(p.max(0), 1)).mean()

    dropped = [r for r in everything if (r.y, r.x) not in {(k.y, k.x) for k in kept}][::50]
    assert min(saturation(r) for r in kept) > 2 * max(np.median([saturation(r) for r in dropped]), 0.01)


def test_labels_from_mask_match_idc_csv(idc):
    slide, root = idc
    mask = root / "reconstructed_region/patient8863_patch_label_mask.png"
    recs = extract_patches(slide, 50, min_tissue=0, label_mask=mask, ignore_labels=(0,))
    assert len(recs) == 979  # every patch of patient 8863 in the mosaic, background dropped
    by_pos = {(r.x, r.y): r.label for r in recs}
    with open(root / "labels.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["patient_id"] == "8863"]
    assert rows and all(by_pos[(int(r["x"]) - 1, int(r["y"]) - 1)] == int(r["label_idc"]) + 1 for r in rows)
    centre = extract_patches(slide, 50, min_tissue=0, label_mask=mask, label_rule="centre", ignore_labels=(0,))
    assert [(r.x, r.y, r.label) for r in centre] == [(r.x, r.y, r.label) for r in recs]


def test_random_patches_deterministic(idc):
    slide, _ = idc
    tissue = tissue_mask(slide, max_size=512)
    a = list(iter_patch_records(slide, 28, random=40, seed=7, tissue=tissue))
    b = list(iter_patch_records(slide, 28, random=40, seed=7, tissue=tissue))
    c = list(iter_patch_records(slide, 28, random=40, seed=8, tissue=tissue))
    assert len(a) == 40 and a == b and a != c
    assert all(r.tissue >= 0.5 and r.x % 28 == 0 and r.y % 28 == 0 for r in a)
    assert a == sorted(a, key=lambda r: (r.y, r.x)) and len({(r.x, r.y) for r in a}) == 40


def test_manifest_and_dataset(idc, tmp_path):
    slide, root = idc
    mask = root / "reconstructed_region/patient8863_patch_label_mask.png"
    recs = extract_patches(slide, 50, out_dir=tmp_path, min_tissue=0.3, label_mask=mask, random=25, seed=1)
    rows = read_manifest(tmp_path / "manifest.csv")
    assert rows == recs and len(rows) == 25
    from PIL import Image

    first = np.asarray(Image.open(tmp_path / rows[0].path))
    np.testing.assert_array_equal(first, read_region(slide, (rows[0].y, rows[0].x), (50, 50)).transpose(1, 2, 0))
    ds = PatchDataset(slide.path, rows, 50)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
    assert batch["image"].shape == (5, 3, 50, 50) and batch["image"].dtype == torch.uint8
    assert batch["label"].tolist() == [r.label for r in rows[:5]]


def test_cli(datasets, tmp_path, capsys):
    slide = datasets / "wsi_samples/kidney-48-5.tif"
    cmd = [sys.executable, "-m", "medpipe.data.patches", str(slide), "--patch-size", "28", "--stride", "28",
           "--level", "0", "--out", str(tmp_path), "--min-tissue", "0.5", "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    rows = read_manifest(tmp_path / "manifest.csv")
    assert 0 < len(rows) < 20 and f"{len(rows)} patches" in res.stdout
    assert all((tmp_path / r.path).is_file() and r.path.startswith("unlabelled/") for r in rows)
    assert main([str(slide), "--level", "4", "--out", str(tmp_path / "bad")]) == 2
    assert "level 4 is out of range" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.svs"), "--out", str(tmp_path / "bad")]) == 2
    assert "missing.svs" in capsys.readouterr().err


@pytest.mark.parametrize("level,random", [(0, 60), (1, None), (1, 30)])
def test_banded_reads_equal_single_patch_reads(datasets, level, random):
    from medpipe.data.patches import iter_patch_arrays

    with open_slide(datasets / "wsi_samples/tcga-cr-7395-01a-01-ts1.svs", "tifffile") as s:  # JPEG 2000 tiles
        recs = list(iter_patch_records(s, 64, level=level, min_tissue=0.3, random=random, seed=3))
        pairs = list(iter_patch_arrays(s, recs, 64, max_pixels=300_000))  # several bands
        assert [r for r, _ in pairs] == recs and len(recs) > 20
        for r, arr in pairs[:: max(1, len(pairs) // 25)]:
            np.testing.assert_array_equal(arr, read_region(s, (r.y, r.x), (64, 64), level, fill=255))


def test_random_sampling_of_huge_grids_is_uniform(idc, monkeypatch):
    import medpipe.data.patches.records as patches

    slide, _ = idc
    monkeypatch.setattr(patches, "_PERMUTE_MAX", 10)  # force the rejection-sampling path on a small slide
    recs = list(iter_patch_records(slide, 10, min_tissue=0, random=300, seed=0))
    assert len(recs) == 300 and len({(r.x, r.y) for r in recs}) == 300
    ys = np.array([r.y for r in recs]) / slide.level_dimensions[0][0]
    assert 0.4 < ys.mean() < 0.6 and ys.max() > 0.9  # not the top rows only
