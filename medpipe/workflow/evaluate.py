"""Re-evaluate a trained run without training it again: its best checkpoint, on the same split, finished by the
same task code as the run itself, with evaluation settings changed (``infer.tta``, ``infer.postprocess``,
``metrics.threshold``, ``metrics.calibration``, intervals, ...).

This is how medpipe measures "the same model, the same cases, with and without" an evaluation option (the effect of
test-time augmentation or post-processing): ``python -m medpipe.evaluate RUN --set infer.tta=true``. The result is
a new run folder (``RUN/evaluations/<time>/`` by default) with its own ``metrics.json``, ``report.md``,
predictions and plots, and a new MLflow run tagged ``medpipe.evaluation_of`` = the source run's id.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from medpipe.config import PipelineConfig, load_config
from medpipe.data.loaders import build_dataset, build_loader
from medpipe.data.transforms import build_transforms
from medpipe.engine.trainer import build_engines
from medpipe.nets import build_net
from medpipe.runs import RunFolder, find_run
from medpipe.tracking import Tracker
from medpipe.workflow.data import check_same_split
from medpipe.workflow.result import RunResult
from medpipe.workflow.skeleton import PipelineRun
from medpipe.workflow.tasks import RunState

logger = logging.getLogger("medpipe.evaluate")

__all__ = ["EVALUATION_SETTINGS", "EvaluationRun", "evaluate_run", "check_evaluation_overrides"]

#: the config keys an evaluation may change (dotted prefixes): what scores, infers and reports, never what was
#: trained or on which cases
EVALUATION_SETTINGS = ("infer.", "metrics.", "report.", "tracking.", "train.device", "train.progress",
                       "train.val_batch_size", "data.cache", "data.num_workers", "data.loader")


def check_evaluation_overrides(overrides: Sequence[str]) -> None:
    """Refuse ``--set`` overrides that would change the trained network or the cases.

    Args:
        overrides: ``KEY=VALUE`` strings.

    Raises:
        ValueError: an override outside :data:`EVALUATION_SETTINGS` (names it and the keys allowed), or one
            without ``=``.
    """
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        key = item.split("=", 1)[0].strip()
        if key == "metrics.key_metric" or not any(key == p or key.startswith(p) for p in EVALUATION_SETTINGS):
            raise ValueError(f"--set {key}: an evaluation re-scores the trained network on its own split, so only "
                             f"{', '.join(p + '*' if p.endswith('.') else p for p in EVALUATION_SETTINGS)} may change "
                             "(not metrics.key_metric, which chose the checkpoint)")


class EvaluationRun(PipelineRun):
    """A :class:`~medpipe.workflow.skeleton.PipelineRun` whose training step loads the source run's best
    checkpoint instead of training; initialisation checks that the cases found now are the source run's
    (``manifest.json``); finishing and finalising are the run's own.

    Args:
        source: the trained run's folder.
        cfg: its config with the evaluation overrides applied.
        out_dir: the new run folder (must not exist).

    Raises:
        FileNotFoundError: the source run has no best checkpoint.
    """

    def __init__(self, source: RunFolder, cfg: PipelineConfig, out_dir: Path) -> None:
        super().__init__(cfg, out_dir)
        self.source = source
        self.checkpoint = source.best_checkpoint()
        if self.checkpoint is None:
            raise FileNotFoundError(f"{source.path}: no best_*.pt checkpoint in {source.checkpoint_dir}; only a "
                                    "finished (or at least once validated) run can be evaluated")

    def initialize(self) -> None:
        """As a run, then: the split must equal the source run's (``manifest.json``)."""
        super().initialize()
        check_same_split(self.data, self.source.manifest_file)

    def log_start(self, tracker: Tracker) -> None:
        """As a run, plus the tags ``medpipe.evaluation_of`` (source MLflow run id) and ``medpipe.checkpoint``."""
        super().log_start(tracker)
        src = self.source.mlflow_run() or {}
        tracker.set_tags({"medpipe.evaluation_of": src.get("run_id", "none"),
                          "medpipe.evaluation_source": str(self.source.path.resolve()),
                          "medpipe.checkpoint": self.checkpoint.name})

    def _network(self, tracker: Tracker) -> torch.nn.Module:
        """The bare network (its weights come from the checkpoint; no pretrained weights are fetched)."""
        return build_net(self.cfg.net)

    def _loaders(self, progress: bool):
        """The validation loader as a run builds it; the training loader (needed to build the engines, never
        run) over one batch of training cases only, uncached."""
        cfg, data = self.cfg, self.data
        val_tf = build_transforms(cfg.transforms.val, "transforms.val", series_uid=cfg.data.series_uid)
        cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else self.folder.path / "cache"
        val_ds = build_dataset(data.val, val_tf, cfg.data, cache_dir / "val", progress)
        val_loader = build_loader(val_ds, cfg.train.val_batch_size, False, cfg.data.num_workers, cfg.train.seed)
        few = data.train[: max(cfg.train.batch_size, 1)]
        train_ds = build_dataset(few, build_transforms(cfg.transforms.train, "transforms.train", series_uid=cfg.data.series_uid),
                                 cfg.data.model_copy(update={"cache": "none"}), cache_dir / "train", False)
        return self.task.train_loader(train_ds, len(few), None), val_loader, val_tf, cache_dir

    def _train(self, tracker: Tracker) -> Optional[RunState]:
        """No training: the engines are built, the source's best weights loaded, its history and epoch count
        restored for the report."""
        cfg, data = self.cfg, self.data
        progress = cfg.train.progress
        train_loader, val_loader, val_tf, cache_dir = self._loaders(progress)
        engines = build_engines(cfg, self._network(tracker), train_loader, val_loader, self.folder.checkpoint_dir,
                                class_weights=data.class_weights, dist=self.dist)
        weights = torch.load(self.checkpoint, map_location=engines.device, weights_only=True)
        engines.net.load_state_dict(weights.get("net", weights))
        self.folder.checkpoint_dir.mkdir(parents=True, exist_ok=True)  # the evaluation folder serves and exports
        shutil.copy2(self.checkpoint, self.folder.checkpoint_dir / self.checkpoint.name)
        history = self.source.read_metrics().get("history") or {"train": [], "val": []}
        tracker.history = history
        engines.trainer.state.epoch = max([int(r.get("epoch", 0)) for r in history.get("train", [])] or [0])
        logger.info("evaluating %s (%s) on %d val / %d test cases", self.source.path, self.checkpoint.name,
                    len(data.val), len(data.test))
        return RunState(cfg, self.folder, data, engines, tracker, val_loader, val_tf, cache_dir, progress, self.t0,
                        0.0)


def evaluate_run(source: str, overrides: Optional[List[str]] = None, out_dir: Optional[Path] = None,
                 tracking_uri: Optional[str] = None) -> RunResult:
    """Re-evaluate a trained run's best checkpoint with changed evaluation settings.

    Args:
        source: a run folder or an MLflow run id (:func:`medpipe.runs.find_run`).
        overrides: ``KEY=VALUE`` config overrides, limited to :data:`EVALUATION_SETTINGS`
            (e.g. ``["infer.tta=true", "infer.postprocess=auto"]``).
        out_dir: the new run folder; default ``<source>/evaluations/<YYYYmmdd-HHMMSS>``.
        tracking_uri: the MLflow store holding ``source`` when it is a run id.

    Returns:
        The evaluation's :class:`~medpipe.workflow.result.RunResult` (``metrics``: its final metrics).

    Raises:
        ValueError: an override that would change the network or the data.
        FileNotFoundError: no such run, or it has no best checkpoint.
        medpipe.config.ConfigError: the config with the overrides does not validate.
        medpipe.data.cases.DataError: the cases found now differ from the run's ``manifest.json``.
    """
    overrides = list(overrides or [])
    check_evaluation_overrides(overrides)
    folder = find_run(source, tracking_uri, context=f"evaluate {source}")
    cfg = load_config(folder.config_file, overrides)
    if cfg.data.split.kfold is not None and cfg.data.split.fold is None:
        raise ValueError(f"{folder.path} is a whole cross-validation; evaluate one fold's folder (its fold_* runs)")
    out = Path(out_dir) if out_dir is not None else folder.path / "evaluations" / time.strftime("%Y%m%d-%H%M%S")
    out.parent.mkdir(parents=True, exist_ok=True)
    result = EvaluationRun(folder, cfg, out).execute()
    (out / "evaluation.json").write_text(json.dumps({"source": str(folder.path.resolve()), "overrides": overrides,
                                                     "checkpoint": folder.best_checkpoint().name}, indent=1))
    return result
