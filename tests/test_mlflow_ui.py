"""Browser test: ``mlflow ui`` on a store with two finished medpipe runs (real EM images, 1 epoch each), in
headless Debian Chromium (Playwright, as ``tests/serve/test_browser.py``): the link medpipe logs
(:func:`medpipe.tracking.runs_page`) opens the experiment on the runs table (not MLflow's GenAI overview), both
runs are listed with their key metric and their dataset, and the compare view of the two opens.

MLflow 3.17's UI chooses an experiment's first page from its GenAI / Model training switch (URL ``workflowType``,
else the browser's last choice, GenAI by default), not from the experiment-kind tag medpipe sets (checked here
too); hence the link. Screenshots go to ``$MEDPIPE_TEST_ARTIFACTS`` (default ``artifacts/test/mlflow_ui/``).
"""

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import link_em
from tests.serve.test_browser import ARGS, CHROMIUM, _free_port
from tests.test_run_e2e import _cfg_dict


def _require_browser():
    pytest.importorskip("playwright.sync_api", reason="needs playwright (the test extra): pip install 'medpipe[test]'")
    if not os.access(CHROMIUM, os.X_OK):
        reason = (f"BROWSER TEST NOT RUN: no Chromium at {CHROMIUM}. Install Debian's chromium (apt-get install -y "
                  "chromium; .ci/run does this) or set MEDPIPE_CHROMIUM")
        if os.environ.get("CI") and not os.environ.get("MEDPIPE_ALLOW_NO_BROWSER"):
            pytest.fail(reason)
        pytest.skip(reason)


def _wait_for(url: str, server: subprocess.Popen, log: Path, seconds: float = 60) -> None:
    """Until ``url`` answers; fails with the server's log when it exits or does not answer in time."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow ui exited with {server.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"mlflow ui did not answer {url} within {seconds:.0f} s: {log.read_text()[-2000:]}")


def test_mlflow_ui_lists_runs_with_metric_and_compares(tmp_path, datasets):
    _require_browser()
    from mlflow.tracking import MlflowClient
    from playwright.sync_api import expect, sync_playwright

    from medpipe.config import validate_config
    from medpipe.tracking import EXPERIMENT_KIND_TAG, TRAINING_KIND, runs_page
    from medpipe.workflow import run_pipeline

    out = Path(os.environ.get("MEDPIPE_TEST_ARTIFACTS", "artifacts/test")) / "mlflow_ui"
    out.mkdir(parents=True, exist_ok=True)
    raw = _cfg_dict(tmp_path, link_em(tmp_path / "em", datasets, 4, 2), epochs=1)
    uri = raw["tracking"]["tracking_uri"]
    MlflowClient(uri).search_experiments()  # creates the store's tables before the server opens it
    port, log = _free_port(), tmp_path / "mlflow_ui.log"
    with open(log, "w") as fh:  # starts while the runs train
        server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", uri,
                                   "--host", "127.0.0.1", "--port", str(port)], stdout=fh, stderr=subprocess.STDOUT)
    try:
        results = []
        for i in range(2):
            raw["tracking"]["run_name"] = f"em-run-{i}"
            results.append(run_pipeline(validate_config(raw)))
        experiment = MlflowClient(uri).get_experiment(MlflowClient(uri).get_run(results[0].run_id).info.experiment_id)
        assert experiment.tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND
        base = f"http://127.0.0.1:{port}"
        _wait_for(base + "/health", server, log)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            try:
                page = browser.new_page(viewport={"width": 2400, "height": 900})
                page.goto(f"{base}/{runs_page(experiment.experiment_id)}")
                for i in range(2):
                    expect(page.get_by_role("link", name=f"em-run-{i}", exact=True)).to_be_visible(timeout=30_000)
                expect(page.get_by_text("Token Usage")).to_have_count(0)  # not the GenAI overview
                expect(page.get_by_text(f"{experiment.name}", exact=True).first).to_be_visible()
                # the Dataset column: the pipeline's splits, with their contexts
                expect(page.get_by_text("em_tiny (").first).to_be_visible()
                # the key metric, added as a column the way a user does it (MLflow shows attributes by default)
                page.get_by_role("button", name="Columns").click()
                page.get_by_placeholder("Search columns").fill("best_val_dice")
                page.get_by_text("best_val_dice", exact=True).last.click()
                page.keyboard.press("Escape")
                cells = page.locator("[role=gridcell][col-id*='best_val_dice']")
                expect(cells).to_have_count(2)
                shown = sorted(float(t) for t in cells.all_inner_texts())
                assert shown == pytest.approx(sorted(r.metrics["best_val_dice"] for r in results), rel=1e-6)
                page.screenshot(path=str(out / "runs_table.png"))
                for i in range(2):
                    page.locator(".ag-row").filter(has_text=f"em-run-{i}").locator("input.ag-checkbox-input").check()
                page.get_by_role("button", name="Compare").first.click()
                expect(page).to_have_url(re.compile("compare-runs"), timeout=30_000)
                for i in range(2):
                    expect(page.get_by_text(f"em-run-{i}").first).to_be_visible(timeout=30_000)
                expect(page.get_by_text("best_val_dice").first).to_be_visible()
                page.screenshot(path=str(out / "compare.png"), full_page=True)
            finally:
                browser.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)
