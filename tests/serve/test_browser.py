"""Browser test: the page in headless Debian Chromium (driven by Playwright, never `playwright install`) uploads a
real chest X-ray and shows the predicted label and the class probabilities; a screenshot is kept. With the EM
segmenter, a CT slice (pydicom's CT_small.dcm) shows the mask and a "Download DICOM SEG" link whose file is read back.

Screenshots go to ``$MEDPIPE_TEST_ARTIFACTS`` (default ``artifacts/test/serve/``, git-ignored).
"""

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.serve.models import cxr_files

CHROMIUM = os.environ.get("MEDPIPE_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def _require_browser():
    pytest.importorskip("uvicorn", reason="needs the serve extra: pip install 'medpipe[serve]'")
    pytest.importorskip("playwright.sync_api", reason="needs playwright (the test extra): pip install 'medpipe[test]'")
    if not os.access(CHROMIUM, os.X_OK):
        reason = (f"BROWSER TEST NOT RUN: no Chromium at {CHROMIUM}. Install Debian's chromium (apt-get install -y "
                  "chromium; .ci/run does this) or set MEDPIPE_CHROMIUM")
        if os.environ.get("CI") and not os.environ.get("MEDPIPE_ALLOW_NO_BROWSER"):
            pytest.fail(reason)  # CI must run it: .ci/run installs chromium, or says loudly why it could not
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(cls_run):
    yield from _serve(cls_run)


@pytest.fixture(scope="module")
def seg_server(seg_run):
    yield from _serve(seg_run)


def _serve(run):
    """The page of ``run``'s model on a free local port (a generator for a fixture)."""
    _require_browser()
    import uvicorn

    from medpipe.serve.app import create_app
    from medpipe.serve.model import load_model

    port = _free_port()
    app = create_app(load_model(str(run.output_dir)))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start within 30 s"
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def test_page_uploads_xray_and_shows_prediction(server, datasets):
    from playwright.sync_api import expect, sync_playwright

    out = Path(os.environ.get("MEDPIPE_TEST_ARTIFACTS", "artifacts/test/serve"))
    out.mkdir(parents=True, exist_ok=True)
    xray = cxr_files(datasets, "test", "PNEUMONIA", 1, skip=2)[0]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            page.goto(server + "/")
            expect(page.locator("#not-a-device")).to_contain_text("Not a medical device")
            expect(page.locator("#title")).to_have_text("cxr_serve_tiny")
            page.set_input_files("#file-input", str(xray))
            expect(page.locator("body")).to_have_attribute("data-state", "done", timeout=30_000)
            label = page.locator("#label").inner_text()
            assert label in ("NORMAL", "PNEUMONIA")
            bars = page.locator("#bars li")
            expect(bars).to_have_count(2)
            texts = {bars.nth(i).get_attribute("data-cls"): bars.nth(i).locator(".prob").inner_text()
                     for i in range(2)}
            assert set(texts) == {"NORMAL", "PNEUMONIA"}
            probs = {k: float(v.replace("%", "").strip()) for k, v in texts.items()}
            assert sum(probs.values()) == pytest.approx(100.0, abs=0.15)
            assert page.locator("#bars li.top").get_attribute("data-cls") == label
            assert page.locator("#image").evaluate("img => img.naturalWidth") > 0
            page.screenshot(path=str(out / "serve_page_xray.png"), full_page=True)
            # explain: the Grad-CAM heatmap over the image is shown
            expect(page.locator("#explain-label")).to_be_visible()
            page.check("#explain-toggle")
            page.evaluate("document.body.dataset.state = ''")
            page.set_input_files("#file-input", str(cxr_files(datasets, "test", "NORMAL", 1, skip=2)[0]))
            expect(page.locator("body")).to_have_attribute("data-state", "done", timeout=30_000)
            expect(page.locator("#explanation")).to_be_visible()
            assert page.locator("#explanation").evaluate("img => img.naturalWidth") > 0
            page.screenshot(path=str(out / "serve_page_explain.png"), full_page=True)
            # a bad file shows the server's message, and the page keeps working
            page.set_input_files("#file-input", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                                        "buffer": b"not an image"}])
            expect(page.locator("#error")).to_contain_text("Error 415")
            page.screenshot(path=str(out / "serve_page_error.png"), full_page=True)
        finally:
            browser.close()
    assert (out / "serve_page_xray.png").stat().st_size > 10_000


def test_page_segments_dicom_and_downloads_dicom_seg(seg_server, datasets, tmp_path):
    import highdicom as hd
    import pydicom
    from playwright.sync_api import expect, sync_playwright
    from pydicom.data import get_testdata_file

    out = Path(os.environ.get("MEDPIPE_TEST_ARTIFACTS", "artifacts/test/serve"))
    out.mkdir(parents=True, exist_ok=True)
    ct = get_testdata_file("CT_small.dcm")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 800}, accept_downloads=True)
            page.goto(seg_server + "/")
            expect(page.locator("#title")).to_have_text("em_serve_tiny")
            page.set_input_files("#file-input", ct)
            expect(page.locator("body")).to_have_attribute("data-state", "done", timeout=30_000)
            expect(page.locator("#overlay-toggle-label")).to_be_visible()
            link = page.locator("#dicom-seg")
            expect(link).to_be_visible()
            with page.expect_download() as info:
                link.click()
            download = info.value
            assert download.suggested_filename == "CT_small.seg.dcm"
            saved = tmp_path / download.suggested_filename
            download.save_as(saved)
            page.screenshot(path=str(out / "serve_page_dicom_seg.png"), full_page=True)
            # a PNG afterwards: no SEG offered
            page.evaluate("document.body.dataset.state = ''")
            page.set_input_files("#file-input", str(datasets / "isbi2012_em" / "train" / "image" / "0.png"))
            expect(page.locator("body")).to_have_attribute("data-state", "done", timeout=30_000)
            expect(link).to_be_hidden()
        finally:
            browser.close()
    source = pydicom.dcmread(ct)
    seg = hd.seg.segread(str(saved))
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == \
        source.SOPInstanceUID
    pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID], combine_segments=True)
    assert pixels.shape == (1, source.Rows, source.Columns)
