"""A hostile or careless client cannot block or fool the server (issue 15, item 3 and the serving part of item 2).

FastAPI's TestClient on the tiny real models of ``models.py`` and real images (ISBI-2012 EM sections, pydicom's CT
and MR files); every request is bounded in size and time. A slow prediction is made with a network wrapper that
sleeps before each forward pass.
"""

import dataclasses
import io
import json
import os
import struct
import threading
import time
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'medpipe[serve]'")
import torch  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from medpipe.serve.app import ServeSettings, create_app  # noqa: E402
from medpipe.serve.limits import PIXEL_CAP, PIXEL_FLOOR, default_max_pixels  # noqa: E402
from medpipe.serve.model import ServedModel, load_model  # noqa: E402
from tests.serve.test_api import decode_png_b64, dicom_file, png_bytes, post  # noqa: E402


def big_png(width: int, height: int) -> bytes:
    """A valid all-black 8-bit grey PNG of ``width`` x ``height``, compressed row by row (a 30000 x 30000 image is
    under 1 MB: a decompression bomb)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    comp, row = zlib.compressobj(9), b"\x00" * (width + 1)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def seg_model(seg_run):
    return load_model(str(seg_run.output_dir))


@pytest.fixture(scope="module")
def seg_client(seg_model):
    return TestClient(create_app(seg_model))


@pytest.fixture(scope="module")
def em_image(seg_run):
    """Path of the EM section the run predicted (val ``2.png``, 512 x 512 8-bit) and the run's mask of it."""
    case = next(c for c in seg_run.predictions["val"] if os.path.basename(c["image"]) == "2.png")
    return case["image"], np.asarray(Image.open(seg_run.output_dir / "predictions" / "val" / "2.png"))


# ------------------------------------------------------------------------------------------- pixel limits
def test_default_pixel_limit_is_sized_to_the_model(seg_client, seg_model):
    """The 97 KB 9999 x 9999 PNG was under the old 100 MP default and held the server for 331 s; the default is now
    256 sliding windows of the model (256 x 256 -> 4096 x 4096) and it gets 413 before anything is decoded."""
    limits = seg_client.get("/model").json()["limits"]
    assert limits["max_pixels"] == 256 * 256 * 256 == PIXEL_FLOOR
    assert "infer.roi_size [256, 256]" in limits["max_pixels_rule"]
    data = big_png(9999, 9999)
    assert len(data) < 120_000
    t0 = time.monotonic()
    r = post(seg_client, data, "wide.png")
    assert r.status_code == 413, r.text
    assert "9999 x 9999 = 99980001 pixels; the limit is 16777216" in r.json()["detail"]
    assert "--max-pixels" in r.json()["detail"]
    assert time.monotonic() - t0 < 2.0
    # the rule scales with the model and is capped
    cfg = SimpleNamespace(task="segmentation", net=SimpleNamespace(spatial_dims=2),
                          infer=SimpleNamespace(roi_size=[512, 512]), infer_transforms=lambda: [])
    assert default_max_pixels(cfg)[0] == 256 * 512 * 512
    cfg.infer.roi_size = [1024, 1024]
    assert default_max_pixels(cfg)[0] == PIXEL_CAP


def test_decompression_bomb_gets_413_not_422(seg_client, seg_model):
    """A 30000 x 30000 PNG (900 MP, 0.9 MB) is refused with 413 as docs/serve.md says, whatever the limit; Pillow's
    own DecompressionBombError (above 179 MP) used to turn it into a 422."""
    bomb = big_png(30000, 30000)
    for client in (seg_client, TestClient(create_app(seg_model, ServeSettings(max_pixels=500_000_000)))):
        r = post(client, bomb, "bomb.png")
        assert r.status_code == 413, r.text
        assert "30000 x 30000 = 900000000 pixels" in r.json()["detail"]


def test_server_pixel_limit_applies_above_and_below_pillows(seg_model, em_image, monkeypatch):
    """The server's limit is the one that applies: with Pillow's process-wide limit below the image (here 1000
    pixels, standing for the 89 MP default under a --max-pixels of 300 MP) the image is still served, and Pillow's
    limit is the same afterwards; with Pillow's limit off, the server's own still refuses."""
    path, run_mask = em_image
    data = open(path, "rb").read()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    client = TestClient(create_app(seg_model, ServeSettings(max_pixels=1_000_000)))
    r = post(client, data, "2.png", preview="true")
    assert r.status_code == 200, r.text
    assert Image.MAX_IMAGE_PIXELS == 1000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert np.array_equal(decode_png_b64(r.json()["mask_png"]), run_mask)
    r = post(TestClient(create_app(seg_model, ServeSettings(max_pixels=100_000))), data, "2.png")
    assert r.status_code == 413 and "512 x 512 = 262144 pixels; the limit is 100000" in r.json()["detail"]


# ------------------------------------------------------------------------------------------- /model paths
def test_model_reveals_no_absolute_server_paths(seg_client, seg_run):
    body = seg_client.get("/model").json()
    texts = []

    def walk(value):
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str):
            texts.append(value)

    walk(body)
    assert body["source"] == seg_run.output_dir.name
    assert not [t for t in texts if os.path.isabs(t) or t.startswith("~")]
    whole = json.dumps(body) + json.dumps(seg_client.get("/openapi.json").json())
    assert str(seg_run.output_dir.parent) not in whole and "/tmp/" not in whole


# ------------------------------------------------------------------------------------------------- DICOM
@pytest.mark.parametrize("name,field,value", [("CT_small.dcm", "RescaleSlope", "NaN"),
                                              ("CT_small.dcm", "RescaleSlope", "inf"),
                                              ("CT_small.dcm", "RescaleIntercept", "-inf"),
                                              ("MR_small.dcm", "WindowWidth", "NaN")])
def test_dicom_with_non_finite_rendering_field_gets_422(seg_client, name, field, value):
    """A real DICOM whose rescale or window is NaN/inf rendered as a black image and was predicted on."""
    import warnings

    import pydicom

    ds = pydicom.dcmread(dicom_file(name))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns that NaN/inf is not a valid DS
        setattr(ds, field, value)
        ds.save_as(buf)
    r = post(seg_client, buf.getvalue(), name)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert f"DICOM field {field}" in detail and "expected a finite number" in detail


# ------------------------------------------------------------------------------------------- bit depth
def test_16_bit_png_for_an_8_bit_pipeline_gets_422(seg_client, em_image):
    """The EM section stored as 16 bits (x 257, 0..65535) gave another mask (87 % vs 28 % foreground): the pipeline
    scales 0..255 and clips. Refused, naming what is expected; the same grey levels in a 16-bit file are served
    and give the run's mask."""
    path, run_mask = em_image
    pixels = np.asarray(Image.open(path))
    assert pixels.dtype == np.uint8
    r = post(seg_client, png_bytes(pixels.astype(np.uint16) * 257), "em16.png")
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "16-bit" in detail and "expects 8-bit images with values 0..255" in detail
    assert "ScaleIntensityRanged a_min=0, a_max=255" in detail
    r = post(seg_client, png_bytes(pixels.astype(np.uint16)), "em16_same_levels.png")
    assert r.status_code == 200, r.text
    assert np.array_equal(decode_png_b64(r.json()["mask_png"]), run_mask)


# ------------------------------------------------------------------------------ slow predictions, the queue
class SlowNet(torch.nn.Module):
    """The real network, sleeping ``delay`` seconds before each forward pass; ``started`` is set at the first,
    ``calls`` counts them."""

    def __init__(self, net, delay: float):
        super().__init__()
        self.net, self.delay, self.started, self.calls = net, delay, threading.Event(), 0

    def forward(self, x):
        self.started.set()
        self.calls += 1
        time.sleep(self.delay)
        return self.net(x)


def slow_model(model: ServedModel, delay: float) -> ServedModel:
    return ServedModel(dataclasses.replace(model.trained, net=SlowNet(model.trained.net, delay)))


def test_health_answers_and_full_queue_gets_503_while_a_prediction_runs(seg_model, em_image):
    """One slow prediction (3 forward passes of 0.5 s) holds the model; /health answers at once on the same event
    loop, a second upload gets 503 with Retry-After (queue of 0) without waiting, and the first one completes."""
    path, run_mask = em_image
    data = open(path, "rb").read()
    model = slow_model(seg_model, 0.5)
    results = []
    with TestClient(create_app(model, ServeSettings(max_queue=0, timeout_s=20))) as client:
        worker = threading.Thread(target=lambda: results.append(post(client, data, "2.png")))
        worker.start()
        assert model.net.started.wait(10)
        t0 = time.monotonic()
        h = client.get("/health")
        assert h.status_code == 200 and h.json()["in_flight"] == 1 and time.monotonic() - t0 < 0.4
        t0 = time.monotonic()
        r = post(client, data, "2.png")
        assert time.monotonic() - t0 < 0.4
        assert r.status_code == 503 and "server busy" in r.json()["detail"]
        assert int(r.headers["Retry-After"]) >= 1
        worker.join(30)
        assert results and results[0].status_code == 200, results and results[0].text
        assert np.array_equal(decode_png_b64(results[0].json()["mask_png"]), run_mask)
        h = client.get("/health").json()
        assert h["in_flight"] == 0 and h["busy"] == 1 and h["predictions"] == 1


def test_prediction_past_the_time_limit_gets_503_and_frees_the_model(seg_model, em_image):
    """With 0.7 s per forward pass and a 1 s limit the prediction is stopped at the third pass: 503 naming the
    limit, well before the 2.1 s it would take, and the model is free again."""
    data = open(em_image[0], "rb").read()
    model = slow_model(seg_model, 0.7)
    client = TestClient(create_app(model, ServeSettings(timeout_s=1.0)))
    t0 = time.monotonic()
    r = post(client, data, "2.png")
    elapsed = time.monotonic() - t0
    assert r.status_code == 503, r.text
    assert "limit of 1 s (--timeout-s)" in r.json()["detail"] and "between network windows" in r.json()["detail"]
    assert elapsed < 2.0, elapsed
    # stopped before the third forward pass (on a loaded machine the first pass alone may pass the limit)
    assert 1 <= model.net.calls <= 2
    assert not model._lock.locked() and client.get("/health").json()["in_flight"] == 0


def test_slow_upload_gets_408_and_frees_its_place(seg_model):
    """A client that sends its headers and then trickles the body (uvicorn on 127.0.0.1, a raw socket) holds a
    place in the queue only until the time limit: 408, and the next request is admitted."""
    import socket

    uvicorn = pytest.importorskip("uvicorn")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(seg_model, ServeSettings(max_queue=0, timeout_s=1.0))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 20
        while not srv.started and time.time() < deadline:
            time.sleep(0.05)
        assert srv.started
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                         b"Content-Length: 100000\r\n\r\n--b\r\n")
            t0 = time.monotonic()
            answer = b""
            conn.settimeout(0.1)
            while b"\r\n\r\n" not in answer and time.monotonic() - t0 < 5:
                try:
                    conn.sendall(b"x")  # one byte at a time, never finishing
                    answer += conn.recv(65536)
                except socket.timeout:
                    continue
                except OSError:  # the server answered and closed: read what it sent
                    conn.settimeout(2)
                    try:
                        answer += conn.recv(65536)
                    except OSError:
                        pass
                    break
            assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
            assert time.monotonic() - t0 < 3.0
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
            assert json.loads(resp.read())["in_flight"] == 0
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


def test_trust_pickle_is_passed_through_only_when_asked(monkeypatch, capsys):
    """``python -m medpipe.serve --trust-pickle`` reaches ``runs.load_trained``; without it, tensors only."""
    import medpipe.serve.model as served
    from medpipe.serve.__main__ import main

    seen = []

    def fake_load_trained(source, tracking_uri=None, device="cpu", trust_pickle=False):
        seen.append(trust_pickle)
        raise FileNotFoundError(f"{source}: stop here")

    monkeypatch.setattr(served, "load_trained", fake_load_trained)
    assert main(["run-folder", "--trust-pickle"]) == 2
    assert main(["run-folder"]) == 2
    assert seen == [True, False] and "stop here" in capsys.readouterr().err
