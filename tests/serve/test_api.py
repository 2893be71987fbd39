"""API tests with FastAPI's TestClient on real images: PNG/JPEG chest X-rays, the pydicom-data chest radiograph
RG1_UNCI.dcm, pydicom's CT/MR files, EM sections; served predictions equal ``medpipe.run``'s; every bad input."""

import base64
import csv
import glob
import io
import os
import tempfile

import numpy as np
import pytest
from PIL import Image

from tests.serve.models import cxr_files

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'medpipe[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from medpipe.serve.app import ServeSettings, create_app  # noqa: E402
from medpipe.serve.model import load_model, scratch_dir  # noqa: E402


def dicom_file(name):
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} not found (RG1_UNCI.dcm needs the pydicom-data package)"
    return path


@pytest.fixture(scope="module")
def cls_model(cls_run):
    return load_model(cls_run.model_uri, tracking_uri=cls_run.tracking_uri)  # an MLflow runs:/ URI


@pytest.fixture(scope="module")
def seg_model(seg_run):
    return load_model(str(seg_run.output_dir))  # a run's artifact folder


@pytest.fixture(scope="module")
def cls_client(cls_model):
    return TestClient(create_app(cls_model))


@pytest.fixture(scope="module")
def seg_client(seg_model):
    return TestClient(create_app(seg_model))


def post(client, data: bytes, name="x.png", **params):
    return client.post("/predict", files={"file": (name, data, "application/octet-stream")}, params=params)


def png_bytes(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def decode_png_b64(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def run_csv(run, split):
    with open(run.output_dir / "predictions" / f"{split}.csv") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------------------ health, model
def test_health_and_model(cls_client, seg_client, cls_run, seg_run):
    h = cls_client.get("/health").json()
    assert h["status"] == "ok" and h["pipeline"] == "cxr_serve_tiny" and h["task"] == "classification"
    m = cls_client.get("/model").json()
    assert m["classes"] == ["NORMAL", "PNEUMONIA"] and m["net"] == "resnet18" and m["run_id"] == cls_run.run_id
    assert m["metrics"]["test_accuracy"] == pytest.approx(cls_run.metrics["test_accuracy"])
    assert m["threshold"] == pytest.approx(m["metrics"]["best_val_threshold"])
    assert m["input"]["in_channels"] == 1 and m["input"]["transforms"][0]["name"] == "LoadImaged"
    assert m["limits"]["max_upload_bytes"] == 20 * 1024 * 1024
    s = seg_client.get("/model").json()
    assert s["task"] == "segmentation" and s["classes"] is None and s["num_classes"] == 2
    assert s["sliding_window"]["roi_size"] == [256, 256]
    assert s["metrics"]["best_val_dice"] == pytest.approx(seg_run.metrics["best_val_dice"])
    assert "/predict" in cls_client.get("/openapi.json").json()["paths"]
    assert cls_client.get("/docs").status_code == 200


# ----------------------------------------------------------------------------------- equal to medpipe.run
def test_classifier_equals_the_runs_evaluation_on_jpeg(cls_client, cls_run):
    """Probabilities and labels equal what medpipe.run's evaluation wrote (predictions/<split>.csv)."""
    rows = run_csv(cls_run, "val") + run_csv(cls_run, "test")
    assert len(rows) >= 4
    for row in rows:
        with open(row["image"], "rb") as fh:
            r = post(cls_client, fh.read(), os.path.basename(row["image"]))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["input"]["format"] == "jpeg"
        for cls in ("NORMAL", "PNEUMONIA"):
            assert body["probabilities"][cls] == pytest.approx(float(row[f"p_{cls}"]), abs=2e-6)
        if abs(body["probabilities"]["PNEUMONIA"] - body["threshold"]) > 1e-5:  # a Youden threshold is a val score
            assert body["label"] == row["pred_name"]
        assert body["label"] == ("PNEUMONIA" if body["probabilities"]["PNEUMONIA"] >= body["threshold"] else "NORMAL")
        assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)


def test_classifier_png_equals_jpeg_of_same_pixels(cls_client, datasets):
    """A PNG holding the decoded pixels of a real X-ray JPEG gives the same prediction as the JPEG."""
    jpeg = cxr_files(datasets, "test", "PNEUMONIA", 1, skip=3)[0]
    data = jpeg.read_bytes()
    pixels = np.asarray(Image.open(jpeg))
    r_jpeg = post(cls_client, data, jpeg.name).json()
    r_png = post(cls_client, png_bytes(pixels), "x.png").json()
    assert r_png["input"]["format"] == "png" and r_png["input"]["width"] == pixels.shape[1]
    assert r_png["probabilities"]["PNEUMONIA"] == pytest.approx(r_jpeg["probabilities"]["PNEUMONIA"], abs=1e-6)
    assert r_png["label"] == r_jpeg["label"]


def test_segmenter_mask_equals_the_runs_mask(seg_client, seg_run):
    """The served mask of an EM section equals the mask medpipe.run wrote for it, pixel for pixel."""
    for split, name in (("val", "2.png"),):
        src = seg_run.output_dir / "predictions" / split / name
        image = next(c["image"] for c in seg_run.predictions[split] if os.path.basename(c["image"]) == name)
        with open(image, "rb") as fh:
            r = post(seg_client, fh.read(), name, preview="true")
        assert r.status_code == 200, r.text
        body = r.json()
        mask = decode_png_b64(body["mask_png"])
        expected = np.asarray(Image.open(src))
        assert mask.shape == expected.shape == (512, 512)
        assert np.array_equal(mask, expected)
        fg = int((expected > 0).sum())
        assert body["area"]["foreground_pixels"] == fg and body["area"]["per_class"]["1"]["pixels"] == fg
        assert body["area"]["foreground_fraction"] == pytest.approx(fg / expected.size)
        assert body["area"]["foreground_mm2"] is None and body["input"]["pixel_spacing_mm"] is None
        assert decode_png_b64(body["preview_png"]).shape == (512, 512)


# ----------------------------------------------------------------------------------------------- DICOM
def test_dicom_chest_radiograph_rg1_unci(cls_client):
    """RG1_UNCI.dcm (pydicom-data): CR, MONOCHROME1, 1955 x 1841, window 15000/30000, Pixel Spacing 0\\0."""
    with open(dicom_file("RG1_UNCI.dcm"), "rb") as fh:
        r = post(cls_client, fh.read(), "RG1_UNCI.dcm", preview="true")
    assert r.status_code == 200, r.text
    body = r.json()
    inp = body["input"]
    assert inp["format"] == "dicom" and (inp["width"], inp["height"]) == (1841, 1955)
    assert inp["dicom"]["photometric_interpretation"] == "MONOCHROME1" and inp["dicom"]["inverted"] is True
    assert inp["dicom"]["voi"].startswith("window center 15000")
    assert inp["pixel_spacing_mm"] is None  # the file says 0\0: unknown, not zero
    assert body["label"] in ("NORMAL", "PNEUMONIA")
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert decode_png_b64(body["preview_png"]).shape == (1024, int(round(1841 * 1024 / 1955)))


def test_dicom_rendering_window_and_inversion():
    """The 8-bit rendering follows the DICOM window formula and inverts MONOCHROME1 (checked by hand)."""
    import pydicom

    from medpipe.serve.images import dicom_to_uint8

    ds = pydicom.dcmread(dicom_file("RG1_UNCI.dcm"))
    raw = ds.pixel_array.astype(np.float64)
    out, info = dicom_to_uint8(ds)
    c, w = 15000.0, 30000.0  # PS3.3 C.11.2.1.2.1, linear, output range 0 .. 2**15 - 1 scaled to 0..255
    expected = np.clip((raw - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    assert np.abs((255 - out.astype(np.float64)) / 255 - expected).max() <= 0.6 / 255 + 1e-9
    assert out.dtype == np.uint8 and info["inverted"] is True
    mr = pydicom.dcmread(dicom_file("MR_small.dcm"))  # MONOCHROME2, window 600/1600, no inversion
    out_mr, info_mr = dicom_to_uint8(mr)
    assert "inverted" not in info_mr and np.corrcoef(out_mr.ravel(), mr.pixel_array.ravel())[0, 1] > 0.95


@pytest.mark.parametrize("name,spacing", [("CT_small.dcm", 0.661468), ("MR_small.dcm", 0.3125)])
def test_dicom_ct_mr_area_in_mm2(seg_client, name, spacing):
    with open(dicom_file(name), "rb") as fh:
        r = post(seg_client, fh.read(), name)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["input"]["pixel_spacing_mm"] == pytest.approx([spacing, spacing])
    mask = decode_png_b64(body["mask_png"])
    assert mask.shape == (body["input"]["height"], body["input"]["width"])
    fg = int((mask > 0).sum())
    assert body["area"]["foreground_pixels"] == fg
    assert body["area"]["foreground_mm2"] == pytest.approx(fg * spacing * spacing)


def test_dicom_ct_to_classifier(cls_client):
    with open(dicom_file("CT_small.dcm"), "rb") as fh:
        r = post(cls_client, fh.read(), "CT_small.dcm")
    assert r.status_code == 200 and r.json()["input"]["dicom"]["modality"] == "CT"


# ------------------------------------------------------------------------------------------- bad input
def _leftovers():
    return set(glob.glob(os.path.join(scratch_dir(), "medpipe-upload-*"))) | set(
        glob.glob(os.path.join(tempfile.gettempdir(), "medpipe-upload-*")))


def test_bad_inputs_get_clear_4xx_and_server_keeps_serving(seg_client, cls_client, datasets):
    before = _leftovers()
    good = cxr_files(datasets, "test", "NORMAL", 1, skip=5)[0].read_bytes()

    r = post(cls_client, b"patient,finding\n1,none\n", "notes.csv")
    assert r.status_code == 415 and "expected a PNG, JPEG or DICOM" in r.json()["detail"]

    r = post(cls_client, good[: len(good) // 3], "cut.jpeg")  # truncated JPEG
    assert r.status_code == 422 and "corrupt or truncated JPEG" in r.json()["detail"]

    png = png_bytes(np.zeros((64, 64), np.uint8))
    r = post(cls_client, png[:8] + b"\x00" * 200, "broken.png")  # PNG signature, garbage body
    assert r.status_code == 422 and "corrupt or truncated PNG" in r.json()["detail"]

    r = post(cls_client, b"\x00" * 128 + b"DICM" + b"\x02\x00" * 40, "broken.dcm")
    assert r.status_code == 422 and "DICOM" in r.json()["detail"]

    with open(dicom_file("emri_small.dcm"), "rb") as fh:  # 10 frames
        r = post(cls_client, fh.read(), "emri_small.dcm")
    assert r.status_code == 422 and "frames" in r.json()["detail"]

    r = post(cls_client, b"", "empty.png")
    assert r.status_code == 422 and "empty" in r.json()["detail"]

    r = cls_client.post("/predict", content=good, headers={"content-type": "image/jpeg"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]

    r = cls_client.post("/predict", files={"image": ("x.jpeg", good, "image/jpeg")})  # misnamed field
    assert r.status_code == 422 and "field 'file'" in r.json()["detail"]

    r = post(cls_client, good + b"\x00" * (21 * 1024 * 1024), "huge.jpeg")  # over the default 20 MB
    assert r.status_code == 413 and "limit of 20971520 bytes" in r.json()["detail"]

    rgb = np.asarray(Image.open(cxr_files(datasets, "train", "NORMAL", 1)[0]).convert("RGB"))[:256, :256]
    r = post(seg_client, png_bytes(np.ascontiguousarray(rgb)), "colour.png")  # the EM U-Net takes 1 channel
    assert r.status_code == 422 and "wrong channel count" in r.json()["detail"]
    assert "expects 1 channel(s)" in r.json()["detail"]

    # still serving, and nothing was left on disk
    r = post(cls_client, good, "good.jpeg")
    assert r.status_code == 200 and r.json()["label"] in ("NORMAL", "PNEUMONIA")
    h = cls_client.get("/health").json()
    assert h["status"] == "ok" and h["rejected"] >= 8
    assert _leftovers() == before


def test_upload_limit_is_configurable_and_pixels_bounded(cls_model, datasets):
    client = TestClient(create_app(cls_model, ServeSettings(max_upload_bytes=1_000_000, max_pixels=10_000_000)))
    with open(dicom_file("RG1_UNCI.dcm"), "rb") as fh:
        big = fh.read()  # 7.2 MB
    r = post(client, big, "RG1_UNCI.dcm")
    assert r.status_code == 413 and "limit of 1000000 bytes" in r.json()["detail"]
    small = png_bytes(np.zeros((4000, 3000), np.uint8))  # 12 MP, compresses to a few kB
    assert len(small) < 1_000_000
    r = post(client, small, "wide.png")
    assert r.status_code == 413 and "12000000 pixels" in r.json()["detail"]


def test_keep_uploads_when_configured(cls_run, datasets, tmp_path):
    model = load_model(str(cls_run.output_dir), keep_uploads=str(tmp_path / "kept"))
    client = TestClient(create_app(model))
    assert post(client, cxr_files(datasets, "test", "NORMAL", 1)[0].read_bytes(), "a.jpeg").status_code == 200
    assert len(list((tmp_path / "kept").glob("medpipe-upload-*.jpeg"))) == 1


def test_page_is_served(cls_client):
    r = cls_client.get("/")
    assert r.status_code == 200 and "Not a medical device" in r.text
    assert cls_client.get("/static/app.js").status_code == 200
    assert cls_client.get("/static/style.css").status_code == 200


@pytest.mark.parametrize("channel_dim", [None, -1])
def test_serves_the_shipped_pneumonia_pipeline_config(tmp_path, datasets, channel_dim):
    """pipelines/pneumonia_xray.yaml takes the channel layout from the file (then ToGrayscaled), so grey PNG and
    DICOM uploads load as they are. The same pipeline written for colour files only (``channel_dim: -1``) gets
    grey uploads retried as three equal channels. Either way a grey picture gives the prediction of the same
    picture stored as RGB."""
    import json
    from pathlib import Path

    import torch
    import yaml

    from medpipe.config import load_config, resolved_dict
    from medpipe.nets import build_net

    pipeline = Path(__file__).resolve().parents[2] / "pipelines" / "pneumonia_xray.yaml"
    if not pipeline.is_file():
        pytest.skip("pipelines/pneumonia_xray.yaml not present")
    overrides = [] if channel_dim is None else [f"transforms.val.1.channel_dim={channel_dim}"]
    cfg = load_config(pipeline, overrides)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.resolved.yaml").write_text(yaml.safe_dump(resolved_dict(cfg), sort_keys=False))
    torch.manual_seed(0)
    torch.save({"net": build_net(cfg.net).state_dict()}, run / "checkpoints" / "best_key_metric=0.5.pt")
    (run / "metrics.json").write_text(json.dumps({"final": {}, "classes": ["NORMAL", "PNEUMONIA"],
                                                  "threshold": 0.5}))
    client = TestClient(create_app(load_model(str(run))))
    jpeg = cxr_files(datasets, "test", "NORMAL", 1, skip=7)[0]
    r_jpeg = post(client, jpeg.read_bytes(), jpeg.name).json()
    assert "converted" not in r_jpeg["input"] and r_jpeg["label"] in ("NORMAL", "PNEUMONIA")
    grey = np.asarray(Image.open(jpeg).convert("L"))
    r_png = post(client, png_bytes(grey), "grey.png").json()
    converted = channel_dim is not None
    assert ("converted" in r_png["input"]) == converted
    if converted:
        assert r_png["input"]["converted"].startswith("grey -> RGB")
    rgb = np.asarray(Image.open(jpeg).convert("RGB"))
    r_rgb = post(client, png_bytes(rgb), "rgb.png").json()
    assert r_png["probabilities"]["PNEUMONIA"] == pytest.approx(r_rgb["probabilities"]["PNEUMONIA"], abs=1e-5)
    with open(dicom_file("RG1_UNCI.dcm"), "rb") as fh:
        r_dcm = post(client, fh.read(), "RG1_UNCI.dcm")
    assert r_dcm.status_code == 200, r_dcm.text
    if converted:
        assert r_dcm.json()["input"]["converted"].startswith("grey -> RGB")
    else:
        assert "converted" not in r_dcm.json()["input"]


def test_registered_model_uri_serves_the_same_prediction(cls_run, cls_model, datasets):
    """``models:/<name>/<version>`` resolves to the run (config, metrics) and weights of ``runs:/<id>/model``."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    try:
        mlflow.set_tracking_uri(cls_run.tracking_uri)
        version = mlflow.register_model(cls_run.model_uri, "cxr_serve_tiny").version
    finally:
        mlflow.set_tracking_uri(previous)
    model = load_model(f"models:/cxr_serve_tiny/{version}", tracking_uri=cls_run.tracking_uri)
    assert model.trained.run_id == cls_run.run_id and model.trained.classes == ["NORMAL", "PNEUMONIA"]
    data = cxr_files(datasets, "test", "PNEUMONIA", 1, skip=9)[0].read_bytes()
    a = TestClient(create_app(model)).post("/predict", files={"file": ("a.jpeg", data)}).json()
    b = TestClient(create_app(cls_model)).post("/predict", files={"file": ("a.jpeg", data)}).json()
    assert a["probabilities"] == b["probabilities"] and a["label"] == b["label"]
    with pytest.raises(Exception, match="cxr_missing"):
        load_model("models:/cxr_missing/1", tracking_uri=cls_run.tracking_uri)
