"""The original mini-MIAS PGM films (1024x1024, 8-bit binary P5) through the mammography pipeline's loading path:
discovery, the reader check, the integrity check, and the pipeline's own transforms."""

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from medpipe.config import TransformSpec, validate_config
from medpipe.data.cases import DataError
from medpipe.data.discovery import check_reader_support, discover_classification_cases, image_shape
from medpipe.data.integrity import verify_cases
from medpipe.data.transforms import build_transforms

ROOT = Path(__file__).resolve().parents[2]
FILMS = ["mdb001", "mdb002", "mdb003", "mdb004", "mdb005", "mdb006", "mdb023", "mdb028", "mdb058", "mdb072"]


@pytest.fixture
def pgm_list(tmp_path, datasets):
    """A CSV naming the 10 original PGMs with their labels from image_labels.csv (data.root stays mini_mias)."""
    with open(datasets / "mini_mias" / "image_labels.csv", newline="") as fh:
        labels = {r["refnum"]: r["label"] for r in csv.DictReader(fh)}
    path = tmp_path / "pgm_labels.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["refnum", "file_pgm", "label"])
        for ref in FILMS:
            w.writerow([ref, f"pgm_original/{ref}.pgm", labels[ref]])
    return path


def _mammography(**data):
    d = yaml.safe_load((ROOT / "pipelines" / "mammography.yaml").read_text())
    d["data"].update(data)
    return validate_config(d)


def test_pgm_films_load_through_the_mammography_transforms(datasets, pgm_list):
    from PIL import Image

    cfg = _mammography(list_file=str(pgm_list), image_column="file_pgm")
    cases, classes = discover_classification_cases(cfg.data)
    assert len(cases) == 10 and [c["label"] for c in cases] == [1, 1, 0, 0, 1, 0, 2, 2, 2, 2]
    check_reader_support(cases, {"transforms.val": cfg.transforms.val})  # the pipeline names PILReader
    good, problems = verify_cases(cases)
    assert len(good) == 10 and problems == [] and image_shape(cases[0]["image"]) == (1024, 1024)

    val_tf = build_transforms(cfg.transforms.val, "transforms.val")
    for case in (cases[0], cases[6]):
        out = val_tf(dict(case))["image"]
        assert tuple(out.shape) == (1, 200, 200) and out.dtype == torch.float32
        raw = np.array(Image.open(case["image"]))  # (1024, 1024) uint8, rows top to bottom
        assert raw.shape == (1024, 1024) and raw.dtype == np.uint8
        # Resized(mode=area) of the (H, W) film is its adaptive average pooling; then /255 (ScaleIntensityRanged)
        expected = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(raw).float()[None, None], (200, 200))
        np.testing.assert_allclose(out.numpy()[0], expected[0, 0].numpy() / 255.0, atol=1e-5)
        assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0 and float(out.std()) > 0.05
        # the same film from the bundled 512x512 PNG (a 2x2 box downsample) gives nearly the same input
        png = datasets / "mini_mias" / "png512" / (Path(case["image"]).stem + ".png")
        from_png = val_tf({"image": str(png), "label": case["label"]})["image"]
        assert float((out - from_png).abs().mean()) < 0.01


def test_pgm_without_pil_reader_is_a_clear_error_before_loading(datasets, pgm_list):
    import monai.transforms as mt

    film = str(datasets / "mini_mias" / "pgm_original" / "mdb001.pgm")
    with pytest.raises(Exception):  # why the check exists: MONAI's default choice (ITK) cannot read PGM
        mt.LoadImaged(keys="image")({"image": film})
    specs = [TransformSpec(name="LoadImaged", keys=["image"]),
             TransformSpec(name="EnsureChannelFirstd", keys=["image"], channel_dim="no_channel")]
    with pytest.raises(DataError) as err:
        check_reader_support([{"image": film, "label": 1}], {"transforms.train": specs})
    msg = str(err.value)
    assert "transforms.train[0] LoadImaged" in msg and "mdb001.pgm" in msg and "reader: PILReader" in msg
    with pytest.raises(DataError, match="reader ITKReader"):
        check_reader_support([{"image": film}], {"transforms.val": [TransformSpec(
            name="LoadImaged", keys=["image"], reader="ITKReader")]})
    check_reader_support([{"image": film.replace(".pgm", ".png")}], {"transforms.train": specs})  # PNG: fine

    # through the run's data step: the error comes before any training or tracking
    from medpipe.workflow.skeleton import task_for

    cfg = _mammography(list_file=str(pgm_list), image_column="file_pgm")
    cfg.transforms.train[0] = specs[0]
    with pytest.raises(DataError, match=r"transforms\.train\[0\] LoadImaged"):
        task_for(cfg).discover()


def test_integrity_check_reports_a_truncated_pgm(datasets, tmp_path):
    src = datasets / "mini_mias" / "pgm_original" / "mdb003.pgm"
    data = src.read_bytes()
    cut = tmp_path / "mdb003_truncated.pgm"
    cut.write_bytes(data[: len(data) // 2])  # header intact, half the pixels missing
    empty = tmp_path / "mdb004_empty.pgm"
    empty.write_bytes(b"")
    good = tmp_path / "mdb006.pgm"
    shutil.copy(datasets / "mini_mias" / "pgm_original" / "mdb006.pgm", good)

    with pytest.raises(DataError, match="truncated") as err:
        image_shape(str(cut))
    assert str(cut) in str(err.value)
    cases = [{"image": str(p), "label": 0} for p in (cut, empty, good)]
    kept, problems = verify_cases(cases, "skip")
    assert kept == [cases[2]]
    assert [p["file"] for p in problems] == [str(cut), str(empty)]
    assert "truncated" in problems[0]["reason"] and "empty" in problems[1]["reason"]
    with pytest.raises(DataError, match=r"truncated.*on_bad_image: skip"):
        verify_cases(cases, "error")
