"""The run skeleton: what every run does, whatever its task.

:class:`PipelineRun` follows MONAI's ``BundleWorkflow`` (``initialize`` / ``run`` / ``finalize``):

* :meth:`~PipelineRun.initialize`: process group (``torchrun``), run folder and ``config.resolved.yaml``,
  seeding, the task's input check, the data (prepared by rank 0, sent to the others), ``manifest.json``;
* :meth:`~PipelineRun.run`: MLflow run, datasets and loaders (each rank its share under DDP), network and
  pretrained weights, engines, resume, training; then the best checkpoint is loaded and the task finishes
  (:meth:`medpipe.workflow.tasks.Task.finish`);
* :meth:`~PipelineRun.finalize`: ``metrics.json`` and ``report.md`` written once, artifacts and the model logged.

Run-folder names come from :mod:`medpipe.runs`; the task-specific steps from :mod:`medpipe.workflow.tasks`.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Dict, Optional

import torch

from medpipe.config import PipelineConfig, flatten, resolved_dict
from medpipe.data.cases import resolve_root
from medpipe.data.integrity import manifest_hash
from medpipe.data.loaders import build_dataset, build_loader
from medpipe.data.transforms import build_transforms, cache_on_device
from medpipe.engine.distributed import DistContext, init_distributed, partition_cases
from medpipe.engine.trainer import build_engines, seed_everything
from medpipe.nets import build_net
from medpipe.nets.factory import prepare_net
from medpipe.model_card import write_model_card
from medpipe.runs import RunFolder, no_nan
from medpipe.mlflow_models import network_example
from medpipe.tracking import Tracker, env_summary, git_commit, library_versions, load_model_state_dict
from medpipe.workflow.classification import ClassificationTask
from medpipe.workflow.data import PreparedData, check_same_split, manifest_doc
from medpipe.workflow.resume import ResumeFrom
from medpipe.workflow.result import RunResult
from medpipe.workflow.segmentation import SegmentationTask
from medpipe.workflow.slides import SlideHeatmapTask
from medpipe.workflow.tasks import Outcome, RunState, Task

logger = logging.getLogger("medpipe.run")

__all__ = ["PipelineRun", "run_single", "task_for"]

#: a full disk, a read-only or forbidden folder, a quota
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT})

TASKS = {"segmentation": SegmentationTask, "classification": ClassificationTask}


def task_for(cfg: PipelineConfig) -> Task:
    """The :class:`~medpipe.workflow.tasks.Task` of ``cfg``: segmentation, classification, or slide heatmaps
    (classification with ``slide_infer``).

    Raises:
        ValueError: an unknown task (config validation admits none).
    """
    if cfg.task == "classification" and cfg.slide_infer is not None:
        return SlideHeatmapTask(cfg)
    if cfg.task not in TASKS:
        raise ValueError(f"task: unknown task {cfg.task!r}; expected one of {sorted(TASKS)}")
    return TASKS[cfg.task](cfg)


class PipelineRun:
    """One training run of a validated pipeline (not a whole cross-validation: see :mod:`medpipe.workflow.cv`).

    Args:
        cfg: the validated pipeline.
        out_dir: the run folder to create (must not exist); default ``<output_dir>/<name>-<time>``.
        data: the split cases when already prepared (cross-validation folds); default: discovered, checked and
            split by the task.
        resume: continue an interrupted run (:func:`medpipe.workflow.resume.find_resume`).

    Example:
        >>> run = PipelineRun(cfg)                     # doctest: +SKIP
        >>> result = run.execute()                     # initialize(), run(), finalize()
    """

    def __init__(self, cfg: PipelineConfig, out_dir: Optional[Path] = None, data: Optional[PreparedData] = None,
                 resume: Optional[ResumeFrom] = None) -> None:
        self.cfg, self.task, self.resume = cfg, task_for(cfg), resume
        self._out_dir, self.data = out_dir, data
        self.t0 = time.time()
        self.dist: Optional[DistContext] = None
        self.folder: Optional[RunFolder] = None
        self.resolved: Dict = {}

    def execute(self) -> RunResult:
        """Initialize, train and finish; the process group is closed however it ends.

        Raises:
            medpipe.data.cases.DataError: bad or inconsistent data (names the file).
            Any exception from training: the MLflow run is then marked ``FAILED`` and checkpoints written so far
            stay in ``<run folder>/checkpoints``.
        """
        self.dist = init_distributed(self.cfg.train.device)
        try:
            self.initialize()
            return self.run()
        except OSError as exc:  # a full disk or read-only folder: name where, when the OS did not
            if exc.filename is None and exc.errno in WRITE_ERRNOS and self.folder is not None:
                exc.filename = str(self.folder.path)
            raise
        finally:
            self.dist.close()

    # ------------------------------------------------------------------------------------------- initialize
    def initialize(self) -> None:
        """Run folder, resolved config, seeding, input check, data and manifest (see the module docstring)."""
        cfg, dist = self.cfg, self.dist
        if not dist.is_main:  # one voice: rank 0 logs, the others warn
            for name in ("medpipe", "ignite", "monai"):
                logging.getLogger(name).setLevel(logging.WARNING)
        path = None
        if self.resume is not None:
            path = self.resume.output_dir
        elif dist.is_main:
            if self._out_dir is not None:
                path = Path(self._out_dir)
                path.mkdir(parents=True)
            else:
                path = RunFolder.create(cfg.output_dir, cfg.tracking.run_name or cfg.name).path
        self.folder = RunFolder(Path(dist.broadcast(str(path) if dist.is_main else None)))
        self.resolved = resolved_dict(cfg)
        if dist.is_main and self.resume is None:
            self.folder.write_config(self.resolved)

        seed_everything(cfg.train.seed, cfg.train.deterministic)
        self.task.check_inputs()
        self.data = self._prepare_on_main()
        if self.resume is not None:
            check_same_split(self.data, self.folder.manifest_file)
        elif dist.is_main:
            self.folder.write_manifest(manifest_doc(self.data))

    def _prepare_on_main(self) -> PreparedData:
        """The split cases: prepared (files read and checked) by rank 0 only and sent to the other ranks; an error
        there is raised on every rank, so no process is left waiting."""
        dist, data = self.dist, self.data
        if not dist.distributed:
            return data if data is not None else self.task.prepare()
        result: object = None
        if dist.is_main:
            try:
                result = data if data is not None else self.task.prepare()
            except Exception as exc:  # sent to the other ranks, then raised here too
                result = exc
        result = dist.broadcast(result)
        if isinstance(result, Exception):
            raise result
        return result  # type: ignore[return-value]

    # ------------------------------------------------------------------------------------------------- run
    def _tracker(self) -> Tracker:
        """The MLflow run, named after the run folder (MLflow's random names repeat here, because
        ``seed_everything`` seeded the generator they are drawn from); enabled on rank 0 only."""
        cfg = self.cfg
        update = {"run_name": cfg.tracking.run_name or self.folder.path.name,
                  "enabled": cfg.tracking.enabled and self.dist.is_main}
        return Tracker(cfg.tracking.model_copy(update=update), cfg.name,
                       resume_run_id=self.resume.run_id if self.resume is not None else None)

    def log_start(self, tracker: Tracker) -> None:
        """Params, tags, config, manifest, the splits as MLflow dataset inputs and the integrity table of a new run
        (rank 0); ``mlflow_run.json`` in the run folder records the MLflow run for ``--resume <folder>``."""
        cfg, data, folder, dist = self.cfg, self.data, self.folder, self.dist
        tracker.log_params(flatten(self.resolved))
        sha = data.manifest_sha256 or (manifest_hash(data.cases) if tracker.enabled else "")
        tags = {
            "pipeline": cfg.name, "task": cfg.task, "output_dir": str(folder.path.resolve()),
            "git_commit": git_commit(Path(__file__).parent) or "none",
            "dataset.manifest_sha256": sha, **data.tags(),
            **{f"version.{k}": v for k, v in library_versions().items()}, **env_summary(),
        }
        if dist.distributed:
            tags.update({"distributed.world_size": dist.world_size, "distributed.backend": dist.backend})
        tracker.set_tags(tags)
        tracker.log_datasets(cfg.name, str(resolve_root(cfg.data.root)), sha,
                             {"train": data.train, "val": data.val, "test": data.test})
        tracker.log_artifact(folder.config_file)
        tracker.log_artifact(folder.manifest_file)
        problems_file = folder.write_problems(data.problems)
        if problems_file is not None:
            tracker.log_artifact(problems_file)
        self._log_fingerprint(tracker)
        if tracker.run_id:
            folder.write_mlflow_run(tracker.run_id, tracker.experiment_id, cfg.tracking.tracking_uri)

    def _log_fingerprint(self, tracker: Tracker) -> None:
        """``report.fingerprint`` (medpipe.plan's dataset fingerprint) copied to ``fingerprint.json`` in the run
        folder and logged; a missing file is a warning naming it (the fingerprint documents, it does not steer)."""
        src = self.cfg.report.fingerprint
        if not src:
            return
        if not Path(src).is_file():
            logger.warning("report.fingerprint %s: no such file; the run goes on without it", src)
            return
        dst = self.folder.path / "fingerprint.json"
        shutil.copyfile(src, dst)
        tracker.log_artifact(dst)

    def run(self) -> RunResult:
        """Train (or continue training), then finish with the best checkpoint; see the module docstring."""
        with self._tracker() as tracker:
            if self.resume is None or self.resume.run_id is None:  # new, or resumed into a new MLflow run
                self.log_start(tracker)
            state = self._train(tracker)
            if state is None:  # a rank other than 0 under DDP: rank 0 evaluates alone
                return RunResult(self.folder.path, {}, seconds=time.time() - self.t0)
            outcome = self.task.finish(state)
            model_uri = self.finalize(outcome, tracker, state)
        cfg = self.cfg
        return RunResult(self.folder.path, outcome.final, tracker.run_id,
                         cfg.tracking.tracking_uri if tracker.enabled else None, model_uri, outcome.predictions,
                         time.time() - self.t0)

    def _loaders(self, progress: bool):
        """Transforms, datasets and loaders of this rank's share of the training and validation cases."""
        cfg, dist, data = self.cfg, self.dist, self.data
        train_tf = build_transforms(cfg.transforms.train, "transforms.train", series_uid=cfg.data.series_uid)
        val_tf = build_transforms(cfg.transforms.val, "transforms.val", series_uid=cfg.data.series_uid)
        if cfg.data.cache_on_device:
            train_tf, val_tf = cache_on_device(train_tf, dist.device), cache_on_device(val_tf, dist.device)
        cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else self.folder.path / "cache"
        # under torchrun each rank caches and trains on its own share of the cases
        train_cases = partition_cases(data.train, dist, cfg.data.split.seed, even=True)
        val_cases = partition_cases(data.val, dist, cfg.data.split.seed, even=False)
        train_ds = build_dataset(train_cases, train_tf, cfg.data, cache_dir / "train", progress)
        val_ds = build_dataset(val_cases, val_tf, cfg.data, cache_dir / "val", progress)
        weights = data.sample_weights if not dist.distributed else self.task.partition_weights(data, train_cases)
        train_loader = self.task.train_loader(train_ds, len(train_cases), weights)
        val_loader = build_loader(val_ds, cfg.train.val_batch_size, False, cfg.data.num_workers, cfg.train.seed)
        return train_loader, val_loader, val_tf, cache_dir

    def _network(self, tracker: Tracker) -> torch.nn.Module:
        """The network, initialised and with its pretrained weights (``pretrained_report.json`` logged)."""
        cfg = self.cfg
        uri = cfg.tracking.tracking_uri if cfg.tracking.enabled else None
        net, report = prepare_net(build_net(cfg.net), cfg.net,
                                  mlflow_loader=functools.partial(load_model_state_dict, tracking_uri=uri))
        if report is not None and self.dist.is_main and self.resume is None:
            logger.info("%s", report.summary())
            path = self.folder.path / "pretrained_report.json"
            path.write_text(json.dumps(report.to_dict(), indent=1))
            tracker.log_artifact(path)
            tracker.log_metrics({"pretrained_loaded_fraction": report.n_loaded_values / max(report.n_net_values, 1)})
        return net

    def _train(self, tracker: Tracker) -> Optional[RunState]:
        """Loaders, network, engines, resume and training; ``None`` on ranks other than 0 under DDP."""
        cfg, dist, data, resume = self.cfg, self.dist, self.data, self.resume
        progress = cfg.train.progress and dist.is_main
        train_loader, val_loader, val_tf, cache_dir = self._loaders(progress)
        engines = build_engines(cfg, self._network(tracker), train_loader, val_loader, self.folder.checkpoint_dir,
                                class_weights=data.class_weights, dist=dist)
        tracker.attach(engines)
        if resume is not None:
            epoch = engines.resume(resume.checkpoint)
            logger.info("resuming %s from %s: epoch %d of %d done", self.folder.path, resume.checkpoint.name, epoch,
                        cfg.train.max_epochs)
            tracker.set_tags({f"resumed.{int(time.time())}": f"after epoch {epoch}"})
        logger.info("training %s: %d train / %d val cases, %d epochs on %s%s", cfg.name, len(data.train),
                    len(data.val), cfg.train.max_epochs, engines.device,
                    f" x {dist.world_size} processes ({dist.backend})" if dist.distributed else "")
        if resume is not None and engines.trainer.state.epoch >= cfg.train.max_epochs:
            logger.info("all %d epochs were trained before the interruption; evaluating", cfg.train.max_epochs)
        else:
            engines.trainer.run()
        train_seconds = time.time() - self.t0
        if dist.distributed:
            dist.close()  # every rank; rank 0 evaluates and predicts alone from here on
            if not dist.is_main:
                return None
            val_ds = build_dataset(data.val, val_tf, cfg.data, cache_dir / "val", progress)
            val_loader = build_loader(val_ds, cfg.train.val_batch_size, False, cfg.data.num_workers, cfg.train.seed)
        best = engines.best_checkpoint  # the checkpoint selected on the key validation metric
        if best is not None:
            weights = torch.load(best, map_location=engines.device, weights_only=True)
            engines.net.load_state_dict(weights.get("net", weights))
        return RunState(cfg, self.folder, data, engines, tracker, val_loader, val_tf, cache_dir, progress, self.t0,
                        train_seconds)

    # -------------------------------------------------------------------------------------------- finalize
    def finalize(self, outcome: Outcome, tracker: Tracker, state: RunState) -> Optional[str]:
        """Write ``metrics.json`` (``final``, the task's sections, ``history``), ``report.md`` and ``model_card.md``
        (:mod:`medpipe.model_card`) once; log the final metrics, the artifacts and the best model.

        Returns:
            The logged model's URI, or ``None`` (tracking or model logging disabled).
        """
        outcome.final["total_seconds"] = time.time() - self.t0
        tracker.log_metrics(outcome.final)
        doc = {"final": outcome.final, **outcome.sections, "history": tracker.history}
        self.folder.write_metrics(doc)
        tracker.log_artifact(self.folder.metrics_file)
        card = write_model_card(self.folder.path, self.cfg, no_nan(doc), manifest_doc(self.data), tracker.run_id)
        tracker.log_artifact(card)
        if outcome.report is not None:
            self.folder.report_file.write_text(outcome.report)
        for name in outcome.artifacts:
            path = self.folder.path / name
            tracker.log_artifact(path, name if path.is_dir() else None)
        roi = self.cfg.infer.roi_size if self.cfg.task == "segmentation" and self.cfg.infer else None
        return tracker.log_model(state.engines.net, example=network_example(state.val_loader.dataset, roi))


def run_single(cfg: PipelineConfig, out_dir: Optional[Path] = None, data: Optional[PreparedData] = None,
               resume: Optional[ResumeFrom] = None) -> RunResult:
    """Train, evaluate and predict one run of a validated pipeline (a cross-validation fold is one); tracked in
    MLflow. See :class:`PipelineRun` for the arguments and errors."""
    return PipelineRun(cfg, out_dir, data, resume).execute()
