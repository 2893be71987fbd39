"""``model_card.md``: every run writes one from its own config, manifest and metrics, with the data's licence."""

from __future__ import annotations

import json
from pathlib import Path

from medpipe.config import load_config, validate_config
from medpipe.model_card import data_card, model_card_md
from medpipe.workflow import run_pipeline
from tests.test_run_e2e import _cfg_dict

ROOT = Path(__file__).resolve().parent.parent


def test_a_run_writes_its_model_card(tmp_path, small_em):
    from mlflow.tracking import MlflowClient

    d = _cfg_dict(tmp_path, small_em)
    d["infer"]["splits"] = []
    result = run_pipeline(validate_config(d))
    card = (result.output_dir / "model_card.md").read_text()
    metrics = json.loads((result.output_dir / "metrics.json").read_text())["final"]
    assert "not a medical device" in card
    # computed, not written; one validation image: the bootstrap interval collapses onto the value
    low, high = metrics["best_val_dice_ci_low"], metrics["best_val_dice_ci_high"]
    assert f"| `best_val_dice` | {metrics['best_val_dice']:.4f} | {low:.4f} - {high:.4f} |" in card
    assert "- Cases: 3 train, 1 val, 2 test" in card
    assert "no PROVENANCE.md" in card  # a folder of symlinks: says the licence is not recorded
    assert result.run_id in card
    client = MlflowClient(tracking_uri=d["tracking"]["tracking_uri"])
    assert "model_card.md" in {a.path for a in client.list_artifacts(result.run_id)}


def test_data_card_quotes_the_datasets_provenance(datasets):
    cfg = load_config(ROOT / "pipelines" / "em_unet.yaml")
    lines = data_card(cfg)
    assert any(line.startswith("- Licence:") and "Cardona" in line for line in lines)
    assert any(line.startswith("- Source:") for line in lines)


def test_classifier_card_has_classes_threshold_and_intervals_when_present(datasets):
    cfg = load_config(ROOT / "pipelines" / "pneumonia_xray.yaml")
    metrics = {"final": {"test_roc_auc": 0.93, "test_roc_auc_ci_low": 0.91, "test_roc_auc_ci_high": 0.95,
                         "test_accuracy": 0.8, "best_epoch": 3.0, "epochs": 4.0, "train_seconds": 120.0},
               "threshold": 0.62, "threshold_rule": "youden"}
    manifest = {"train": [{}] * 5, "val": [{}] * 2, "test": [{}] * 3, "skipped": [], "classes": ["NORMAL", "PNEUMONIA"]}
    card = model_card_md(cfg, metrics, manifest, None)
    assert "| `test_roc_auc` | 0.9300 | 0.9100 - 0.9500 |" in card
    assert "| `test_accuracy` | 0.8000 | not computed |" in card
    assert "Classes: NORMAL, PNEUMONIA" in card and "Operating threshold 0.6200 (youden)" in card
    assert "CC BY 4.0" in card  # the Kermany data licence, from its PROVENANCE.md
    assert "[64, 64] pixels" in card and "MLflow run: `not tracked`" in card


def test_card_lists_calibration_ood_and_postprocessing_when_present(datasets):
    cfg = load_config(ROOT / "pipelines" / "pneumonia_xray.yaml", ["data.modality=[CR, DX]"])
    metrics = {"final": {"test_accuracy": 0.8}, "threshold": 0.5, "threshold_rule": "fixed",
               "calibration": {"method": "temperature", "temperature": 1.7,
                               "val": {"ece_before": 0.12, "ece_after": 0.03, "nll_before": 0.5, "nll_after": 0.4},
                               "test": {"ece_before": 0.15, "ece_after": 0.05, "nll_before": 0.6, "nll_after": 0.45}},
               "ood": {"score": "energy", "threshold": -3.25, "coverage": 0.95}}
    card = model_card_md(cfg, metrics)
    assert "T = 1.7000 fitted on validation" in card
    assert "- test: expected calibration error 0.1500 -> 0.0500" in card
    assert "`energy` of the logits; threshold -3.2500" in card and "0.9500 of the validation cases" in card
    assert "Trained for DICOM Modality CR, DX" in card
    plain = model_card_md(cfg, {"final": {}})
    assert "Calibration" not in plain and "Out-of-distribution" not in plain
    seg = load_config(ROOT / "pipelines" / "em_unet.yaml")
    card = model_card_md(seg, {"final": {}, "postprocessing": {"largest_component": [1], "val_dice_before": 0.8,
                                                                "val_dice_after": 0.82}})
    assert "Post-processing chosen on validation" in card and "0.8000 -> 0.8200" in card
