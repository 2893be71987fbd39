"""Task objects: what differs between segmentation, classification and slide-heatmap runs.

The run skeleton (:mod:`medpipe.workflow.skeleton`) does what every run does (run folder, seeding, DDP, tracker,
loaders, engines, resume) and asks the run's :class:`Task` for the steps that differ, in this order, as MONAI's
``BundleWorkflow`` splits a workflow into ``initialize`` / ``run`` / ``finalize``:

1. :meth:`Task.check_inputs` (before any data is read: e.g. the slides to heatmap exist);
2. :meth:`Task.discover` and :meth:`Task.split` (files -> :class:`~medpipe.workflow.data.PreparedData`);
3. :meth:`Task.train_loader` (shuffling, sampling weights, last-batch policy);
4. :meth:`Task.finish` after training, with the best checkpoint loaded: evaluation, predictions, thresholds,
   plots and the report, returned as one :class:`Outcome` that the skeleton writes (``metrics.json``,
   ``report.md``) and logs.

`medpipe.workflow.skeleton.task_for` picks the task of a config; a new task is a new subclass here, not an ``if`` in shared code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from medpipe.config import PipelineConfig
from medpipe.data.cases import Case
from medpipe.data.discovery import check_reader_support
from medpipe.data.expectations import Expectations, build_expectations
from medpipe.data.integrity import verify_cases
from medpipe.data.loaders import build_dataset, build_loader
from medpipe.workflow.data import Discovered, PreparedData

__all__ = ["Outcome", "RunState", "Task", "best_epoch"]


@dataclass
class RunState:
    """What the skeleton hands a task's :meth:`Task.finish`: the trained run.

    Attributes:
        cfg: the validated pipeline.
        folder: the run folder (:class:`medpipe.runs.RunFolder`).
        data: the prepared cases.
        engines: :class:`medpipe.engine.trainer.Engines`, ``engines.net`` holding the best checkpoint's weights.
        tracker: :class:`medpipe.tracking.Tracker` (disabled on ranks other than 0 and without tracking).
        val_loader: the validation split, whole, batch size ``train.val_batch_size``.
        val_transform: the validation transform chain (for test cases).
        cache_dir: where datasets cache (``data.cache: disk``).
        progress: show progress bars.
        t0: ``time.time()`` when the run started.
        train_seconds: wall time until training ended, seconds.
    """

    cfg: PipelineConfig
    folder: Any
    data: PreparedData
    engines: Any
    tracker: Any
    val_loader: Any
    val_transform: Any
    cache_dir: Path
    progress: bool
    t0: float
    train_seconds: float

    def eval_loader(self, cases, split: str):
        """A loader over ``cases`` with the validation transforms (cached under ``cache_dir/<split>``), batch size
        ``train.val_batch_size``, not shuffled."""
        cfg = self.cfg
        ds = build_dataset(cases, self.val_transform, cfg.data, self.cache_dir / split, self.progress)
        return build_loader(ds, cfg.train.val_batch_size, False, cfg.data.num_workers, cfg.train.seed)

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.time() - self.t0


@dataclass
class Outcome:
    """What a task's finishing step produced.

    Attributes:
        final: scalar metrics (``best_val_<metric>``, ``test_<metric>``, ``best_epoch``, ``train_seconds``, ...),
            logged to MLflow and written as ``metrics.json`` ``final``.
        sections: further top-level entries of ``metrics.json`` (classification: ``classes``, ``threshold``,
            ``val``, ``test``, ...; slides: ``slides``); ``history`` is added by the skeleton.
        report: the text of ``report.md``, or ``None`` (segmentation writes none).
        artifacts: run-folder entries to log to MLflow after ``metrics.json`` (folders keep their name).
        predictions: segmentation: per split the written prediction records.
    """

    final: Dict[str, float]
    sections: Dict[str, Any] = field(default_factory=dict)
    report: Optional[str] = None
    artifacts: List[str] = field(default_factory=lambda: ["plots", "predictions"])
    predictions: Dict[str, List[Dict]] = field(default_factory=dict)


def best_epoch(history: Dict[str, list], key: str) -> int:
    """The epoch of the best validation ``key`` in a run's history (0 when it never validated)."""
    vals = history.get("val", [])
    if not vals:
        return 0
    return max(vals, key=lambda r: r.get(key, float("-inf")))["epoch"]


class Task:
    """The steps of a run that depend on the task (see the module docstring). Subclasses set :attr:`name`.

    Args:
        cfg: the validated pipeline.
    """

    name = ""

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg

    def check_inputs(self) -> None:
        """Fail before any work when an input named by the config is missing (default: nothing to check)."""

    def discover(self) -> Discovered:
        """Find the cases under ``data.root``, check the readers fit them and run the integrity check."""
        raise NotImplementedError

    def split(self, discovered: Discovered) -> PreparedData:
        """Split the discovered cases into train / val / test (no torch work)."""
        raise NotImplementedError

    def expectations(self) -> Expectations:
        """What ``transforms.train`` / ``transforms.val`` expect of the files they load: channels (ending in
        ``net.in_channels``) and the ``ScaleIntensityRanged`` window (:mod:`medpipe.data.expectations`)."""
        cfg = self.cfg
        return build_expectations({"transforms.train": cfg.transforms.train, "transforms.val": cfg.transforms.val},
                                  {}, getattr(cfg.net, "in_channels", None),
                                  spatial_dims=getattr(cfg.net, "spatial_dims", None), series_uid=cfg.data.series_uid)

    def check_files(self, cases: List[Case]) -> Tuple[List[Case], List[Dict[str, str]]]:
        """The checks every discovery ends with, before the first epoch: the readers of ``transforms.train`` /
        ``transforms.val`` can read these files, then the integrity check (``data.verify``), which reads each
        file once and compares it with what the transforms expect (:meth:`expectations`): readable, image and
        mask sizes equal, finite values, channels, intensity range, label values. ``data.on_bad_image`` says
        whether a bad file stops the run (all of them named at once) or is skipped (and listed).

        Returns:
            ``(cases kept, problems)``: problems are ``{"file", "reason"}`` rows of skipped files.

        Raises:
            medpipe.data.cases.DataError: a reader cannot read a file type, or bad files with
                ``on_bad_image: error`` (all of them named).
        """
        cfg = self.cfg
        check_reader_support(cases, {"transforms.train": cfg.transforms.train, "transforms.val": cfg.transforms.val})
        if not cfg.data.verify:
            return list(cases), []
        return verify_cases(cases, cfg.data.on_bad_image, self.expectations())

    def prepare(self, discovered: Optional[Discovered] = None) -> PreparedData:
        """:meth:`discover` (unless given: cross-validation discovers once for all folds), then :meth:`split`."""
        return self.split(discovered if discovered is not None else self.discover())

    def train_loader(self, dataset, n_cases: int, sample_weights: Optional[List[float]] = None):
        """The training loader over ``dataset`` (``n_cases`` cases on this rank), shuffled and re-seeded per epoch
        from ``train.seed``."""
        cfg = self.cfg
        return build_loader(dataset, cfg.train.batch_size, True, cfg.data.num_workers, cfg.train.seed,
                            loader=cfg.data.loader)

    def partition_weights(self, data: PreparedData, cases: List[Dict]) -> Optional[List[float]]:
        """Sampling weights of this rank's share ``cases`` of the training cases (default: none)."""
        return None

    def infer_transforms(self):
        """The transform chain for unlabelled images (segmentation predictions), or ``None``."""
        return None

    def finish(self, state: RunState) -> Outcome:
        """Evaluate the best checkpoint and write predictions, plots and the report (see :class:`Outcome`)."""
        raise NotImplementedError

