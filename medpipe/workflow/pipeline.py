"""``run_pipeline``: one entry point for a validated pipeline, a single run or a whole cross-validation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from medpipe.config import PipelineConfig
from medpipe.workflow.cv import run_cross_validation
from medpipe.workflow.data import PreparedData
from medpipe.workflow.resume import ResumeFrom
from medpipe.workflow.result import RunResult
from medpipe.workflow.skeleton import run_single

__all__ = ["run_pipeline", "is_cross_validation"]


def is_cross_validation(cfg: PipelineConfig) -> bool:
    """Whether ``cfg`` asks for a whole cross-validation (``data.split.kfold`` without ``data.split.fold``)."""
    return cfg.data.split.kfold is not None and cfg.data.split.fold is None


def run_pipeline(cfg: PipelineConfig, out_dir: Optional[Path] = None, data: Optional[PreparedData] = None,
                 resume: Optional[ResumeFrom] = None) -> RunResult:
    """Train, evaluate and predict a validated pipeline; track it in MLflow.

    Segmentation: train, re-evaluate the best checkpoint on the validation split, predict masks for
    ``infer.splits``. Classification: train, reload the best checkpoint (chosen on the validation split's key
    metric), choose the operating threshold on the validation split, evaluate validation and the held-out test
    split, and write ``metrics.json``, ``report.md``, ``predictions/<split>.csv`` and the plots (see
    :mod:`medpipe.workflow.tasks`).

    With ``data.split.kfold`` and no ``data.split.fold`` this is a cross-validation
    (:func:`medpipe.workflow.cv.run_cross_validation`): the result's ``folds`` hold each fold's result.
    A run started while an MLflow run is active (a cross-validation parent, or the caller's own) is its child.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process calls this; training is distributed data-parallel
    (:mod:`medpipe.engine.distributed`) and rank 0 alone writes artifacts, checkpoints and the MLflow run, then
    evaluates and predicts by itself once training is over.

    Args:
        cfg: the validated pipeline.
        out_dir: the run folder (created; must not exist); default ``<output_dir>/<name>-<time>``.
        data: the split cases, when already prepared; default: discovered, checked and split here.
        resume: continue an interrupted run (:func:`medpipe.workflow.resume.find_resume`): its folder, latest
            checkpoint (network, optimizer, scheduler, AMP scaler, epoch, RNG states, history) and MLflow run.

    Returns:
        :class:`~medpipe.workflow.result.RunResult`.

    Raises:
        ValueError: a whole cross-validation under ``torchrun``.
        medpipe.data.cases.DataError: bad or inconsistent data (names the file).
        Any exception from training; the MLflow run is then marked ``FAILED`` and checkpoints written so far
        stay in ``<run folder>/checkpoints``.
    """
    if is_cross_validation(cfg) and data is None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("data.split.kfold: a whole cross-validation cannot run under torchrun; run one fold per "
                             "torchrun with --set data.split.fold=<k>")
        return run_cross_validation(cfg)
    return run_single(cfg, out_dir, data, resume)
