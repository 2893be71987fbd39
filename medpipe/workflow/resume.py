"""``--resume RUN``: where an interrupted run continues (its folder, latest checkpoint and MLflow run)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from medpipe.config import PipelineConfig
from medpipe.runs import find_run

__all__ = ["ResumeFrom", "find_resume"]


@dataclass
class ResumeFrom:
    """Where ``--resume`` continues.

    Attributes:
        output_dir: the run folder.
        checkpoint: its newest ``checkpoints/latest_checkpoint_<epoch>.pt``.
        run_id: the MLflow run recorded in ``mlflow_run.json`` (``None`` when the run was not tracked).
    """

    output_dir: Path
    checkpoint: Path
    run_id: Optional[str] = None


def find_resume(run: str, tracking_uri: Optional[str] = None) -> Tuple[PipelineConfig, ResumeFrom]:
    """Resolve ``--resume RUN``: a run folder (``<output_dir>/<name>-<time>``) or an MLflow run id.

    The pipeline is the run's own ``config.resolved.yaml`` (upgraded when written by an older medpipe); the
    checkpoint its newest ``checkpoints/latest_checkpoint_<epoch>.pt``; the MLflow run the one recorded in
    ``mlflow_run.json``.

    Args:
        run: folder or run id.
        tracking_uri: where to look a run id up; default ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``
            (:func:`medpipe.runs.default_tracking_uri`).

    Raises:
        FileNotFoundError: no such folder / run, or the run has no checkpoint yet (it crashed before its first
            epoch ended: start it again instead).
        ValueError: a cross-validation parent folder (resume one of its ``fold_<k>`` folders).
        medpipe.config.ConfigError: the run's config does not validate.
    """
    folder = find_run(run, tracking_uri, context=f"--resume {run}")
    cfg = folder.load_config()
    if cfg.data.split.kfold is not None and cfg.data.split.fold is None:
        raise ValueError(f"--resume {run}: a cross-validation run; resume one fold folder, e.g. {folder.path}/fold_0")
    ckpt = folder.latest_checkpoint()
    if ckpt is None:
        raise FileNotFoundError(f"--resume {run}: no checkpoints/latest_checkpoint_<epoch>.pt in {folder.path} (the "
                                "run stopped before its first epoch ended); start it again instead")
    info = folder.mlflow_run()
    return cfg, ResumeFrom(folder.path, ckpt, info.get("run_id") if info else None)
