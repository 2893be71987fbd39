"""``python -m medpipe.evaluate``: a trained run re-scored without training, on its own split."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from medpipe.config import validate_config
from medpipe.data.cases import DataError
from medpipe.evaluate import main
from medpipe.workflow import run_pipeline
from medpipe.workflow.evaluate import check_evaluation_overrides, evaluate_run
from tests.test_run_e2e import _cfg_dict


@pytest.fixture(scope="module")
def trained(tmp_path_factory, datasets):
    from tests.conftest import link_em

    tmp = tmp_path_factory.mktemp("evaluate")
    root = link_em(tmp / "em", datasets, 4, 1)
    d = _cfg_dict(tmp, root, epochs=1)
    d["metrics"] = {"names": ["dice", "pixel_accuracy"], "key_metric": "dice"}
    result = run_pipeline(validate_config(d))
    return result, root, tmp


def test_same_checkpoint_same_numbers_and_overrides_applied(trained, tmp_path):
    from mlflow.tracking import MlflowClient

    result, _, tmp = trained
    same = evaluate_run(str(result.output_dir), [], out_dir=tmp_path / "same")
    # the same weights on the same cases give the run's own final numbers
    assert same.metrics["best_val_dice"] == pytest.approx(result.metrics["best_val_dice"], abs=1e-6)
    assert same.metrics["best_epoch"] == result.metrics["best_epoch"]
    assert list((tmp_path / "same" / "checkpoints").glob("best_*.pt"))  # the folder serves and exports
    changed = evaluate_run(str(result.output_dir), ["infer.overlap=0.5", "infer.mode=constant"],
                           out_dir=tmp_path / "changed")
    resolved = yaml.safe_load((tmp_path / "changed" / "config.resolved.yaml").read_text())
    assert resolved["infer"]["overlap"] == 0.5 and resolved["infer"]["mode"] == "constant"
    doc = json.loads((tmp_path / "changed" / "evaluation.json").read_text())
    assert doc["overrides"] == ["infer.overlap=0.5", "infer.mode=constant"]
    run = MlflowClient(f"sqlite:///{tmp}/mlflow.db").get_run(changed.run_id)
    assert run.data.tags["medpipe.evaluation_of"] == result.run_id
    assert "best_val_dice" in run.data.metrics


def test_refuses_training_settings_and_changed_data(trained, tmp_path):
    result, root, _ = trained
    with pytest.raises(ValueError, match="net.features"):
        check_evaluation_overrides(["net.features=[8,8,16,32,64,8]"])
    with pytest.raises(ValueError, match="key_metric"):
        check_evaluation_overrides(["metrics.key_metric=pixel_accuracy"])
    check_evaluation_overrides(["infer.tta=true", "metrics.intervals.n_resamples=0", "train.device=cpu"])
    assert main([str(result.output_dir), "--set", "train.max_epochs=5"]) == 2
    links = {p: os.readlink(p) for p in (root / "image" / "0.png", root / "label" / "0.png")}
    for p in links:
        os.unlink(p)
    try:
        with pytest.raises(DataError, match="differs"):
            evaluate_run(str(result.output_dir), [], out_dir=tmp_path / "x")
    finally:  # restore the data root for the other tests of the module
        for p, target in links.items():
            os.symlink(target, p)
