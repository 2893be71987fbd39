"""A run folder written before config schemas were versioned (its ``config.resolved.yaml`` has no
``schema_version``: version 0) is upgraded, resumed and served by today's code.

The config is the real ``config.resolved.yaml`` of an EM run made with medpipe before the change
(``tests/data/fixtures/config_v0_em_unet.resolved.yaml``), pointed at a small copy of the EM data and cut to two
short epochs; the run folder is built as that medpipe left it after an interruption: the v0 config, the manifest,
the MLflow run and the checkpoint of epoch 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from mlflow.tracking import MlflowClient

from medpipe.config import CURRENT_SCHEMA_VERSION, load_config
from medpipe.run import main
from medpipe.runs import RunFolder, find_run
from medpipe.serve.model import load_model
from medpipe.workflow import find_resume, run_pipeline

FIXTURE = Path(__file__).parent / "data" / "fixtures" / "config_v0_em_unet.resolved.yaml"


def _old_config(tmp_path: Path, root: Path, epochs: int) -> dict:
    d = yaml.safe_load(FIXTURE.read_text())
    assert "schema_version" not in d  # written before the change
    d["output_dir"] = str(tmp_path / "artifacts")
    d["data"].update(root=str(root), images="image/*.png", labels="label/*.png", test_images="test/*.png")
    d["data"]["split"].update(val=["3.png"], val_fraction=None)
    for chain in d["transforms"].values():
        for t in chain or []:
            if t["name"] == "RandSpatialCropSamplesd":
                t.update(roi_size=[64, 64], num_samples=2)
    d["net"]["features"] = [4, 4, 8, 16, 32, 4]
    d["train"].update(max_epochs=epochs, batch_size=6, val_interval=1, device="cpu")
    d["infer"].update(roi_size=[128, 128], splits=[])
    d["tracking"].update(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_location=str(tmp_path / "mlruns"))
    return d


def test_a_pre_versioning_run_is_upgraded_resumed_and_served(tmp_path, small_em):
    # the old run, interrupted after epoch 1 of 2: its checkpoint of epoch 1, and the v0 config as written back then
    old = _old_config(tmp_path, small_em, epochs=2)
    first = run_pipeline(load_config_dict(tmp_path, old))
    folder = RunFolder(first.output_dir)
    for name in ("latest_checkpoint_2.pt",):
        (folder.checkpoint_dir / name).unlink()
    folder.metrics_file.unlink()
    MlflowClient(tracking_uri=old["tracking"]["tracking_uri"]).update_run(first.run_id, status="RUNNING")  # killed
    folder.config_file.write_text(yaml.safe_dump(old, sort_keys=False))
    assert [e for e, _ in folder.checkpoint_epochs()] == [1]

    cfg, resume = find_resume(str(folder.path))
    assert cfg.schema_version == CURRENT_SCHEMA_VERSION
    assert cfg.train.max_epochs == 2 and list(cfg.net.features) == [4, 4, 8, 16, 32, 4]
    assert resume.checkpoint.name == "latest_checkpoint_1.pt"

    assert main(["--resume", str(folder.path)]) == 0
    metrics = json.loads(folder.metrics_file.read_text())
    assert [r["epoch"] for r in metrics["history"]["train"]] == [1, 2]
    assert 0.0 <= metrics["final"]["best_val_dice"] <= 1.0
    # the run's own file is left as it was written (the upgrade happens when it is read)
    assert "schema_version" not in yaml.safe_load(folder.config_file.read_text())
    assert find_run(str(folder.path)).load_config().schema_version == CURRENT_SCHEMA_VERSION

    served = load_model(str(folder.path))
    out = served.predict_file(str(small_em / "test" / "0.png"))
    assert out["mask"].shape == (512, 512) and set(np.unique(out["mask"])) <= {0, 1}
    assert out["probabilities"].shape == (2, 512, 512)
    np.testing.assert_allclose(out["probabilities"].sum(0), 1.0, atol=1e-5)


def load_config_dict(tmp_path: Path, d: dict):
    """Validate a config dict through a file, as a run folder's config is read."""
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return load_config(path)
