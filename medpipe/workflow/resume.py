"""``--resume RUN``: where an interrupted run continues (its folder, latest checkpoint and MLflow run)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from medpipe.config import PipelineConfig
from medpipe.runs import find_run
from medpipe.tracking import run_status

logger = logging.getLogger(__name__)

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
    ``mlflow_run.json``, or a new one (``ResumeFrom.run_id`` ``None``) when the store no longer has it.

    Args:
        run: folder or run id.
        tracking_uri: where to look a run id up; default ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``
            (:func:`medpipe.runs.default_tracking_uri`).

    Raises:
        FileNotFoundError: no such folder / run, or the run has no checkpoint yet (it crashed before its first
            epoch ended: start it again instead).
        ValueError: a cross-validation parent folder (resume one of its ``fold_<k>`` folders); a run that finished
            (``metrics.json`` written, or its MLflow run FINISHED); a copy of a run folder whose MLflow run belongs to
            the original folder.
        medpipe.tracking.TrackingError: the MLflow store cannot be read.
        medpipe.config.ConfigError: the run's config does not validate.
    """
    folder = find_run(run, tracking_uri, context=f"--resume {run}")
    cfg = folder.load_config()
    if cfg.data.split.kfold is not None and cfg.data.split.fold is None:
        raise ValueError(f"--resume {run}: a cross-validation run; resume one fold folder, e.g. {folder.path}/fold_0")
    if folder.metrics_file.is_file():
        raise ValueError(f"--resume {run}: the run finished ({folder.metrics_file} is written); resuming would log its "
                         "final metrics and model a second time: start a new run instead")
    ckpt = folder.latest_checkpoint()
    if ckpt is None:
        raise FileNotFoundError(f"--resume {run}: no checkpoints/latest_checkpoint_<epoch>.pt in {folder.path} (the "
                                "run stopped before its first epoch ended); start it again instead")
    info = folder.mlflow_run() or {}
    run_id = info.get("run_id") if cfg.tracking.enabled else None
    if run_id:
        run_id = _check_mlflow_run(run, folder.path, run_id, info.get("tracking_uri") or cfg.tracking.tracking_uri)
    return cfg, ResumeFrom(folder.path, ckpt, run_id)


def _check_mlflow_run(run: str, folder: Path, run_id: str, tracking_uri: str) -> Optional[str]:
    """The MLflow run to log into: ``run_id`` when the store has it and it belongs to ``folder``; ``None`` (a new
    MLflow run, which gets the full config, params, tags and history) when the store lost it.

    Raises:
        ValueError: the MLflow run belongs to another folder (``folder`` is a copy: resuming would log into, and on
            failure mark, the original's run) or has finished.
        medpipe.tracking.TrackingError: the store cannot be read.
    """
    status = run_status(run_id, tracking_uri)
    if status is None:
        logger.warning("--resume %s: MLflow run %s is not in the store %s (deleted?); continuing into a new MLflow run "
                       "with the full config, params and history", run, run_id, tracking_uri)
        return None
    owner = status.get("output_dir")
    if owner and Path(owner).resolve() != Path(folder).resolve():
        raise ValueError(f"--resume {run}: its MLflow run {run_id} belongs to the run folder {owner}; this folder is a "
                         "copy, and resuming it would log into (and on failure mark FAILED) the original's run. Resume "
                         f"the original, or delete {Path(folder) / 'mlflow_run.json'} to continue this copy into a new "
                         "MLflow run")
    if status.get("status") == "FINISHED":
        raise ValueError(f"--resume {run}: MLflow run {run_id} has finished; resuming would log its final metrics and "
                         "model a second time: start a new run instead")
    return run_id
