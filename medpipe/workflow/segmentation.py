"""Segmentation runs: image/label pairs, a split into train / val (/ test), and after training the best
checkpoint re-evaluated on validation and masks predicted for ``infer.splits``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

from medpipe.data.cases import Case, resolve_root
from medpipe.data.discovery import discover_cases, discover_images
from medpipe.data.expectations import Expectations, build_expectations
from medpipe.data.splits import split_segmentation_cases
from medpipe.data.transforms import build_transforms
from medpipe.engine.trainer import build_evaluator
from medpipe.inference.predict import predict_cases
from medpipe.inference.sliding import build_inferer
from medpipe.workflow.data import Discovered, PreparedData
from medpipe.workflow.plots import plot_history, plot_overlays
from medpipe.workflow.tasks import Outcome, RunState, Task, best_epoch

logger = logging.getLogger(__name__)

__all__ = ["SegmentationTask", "SegmentationDiscovered"]


@dataclass
class SegmentationDiscovered(Discovered):
    """The discovered cases of a segmentation run, with the unlabelled ``data.test_images`` checked together
    with them (before training), to be predicted only.

    Attributes:
        unlabelled: cases ``{"image": path}`` of ``data.test_images`` that passed the integrity check.
    """

    unlabelled: List[Case] = field(default_factory=list)


class SegmentationTask(Task):
    """Segmentation (``task: segmentation``): cases ``{"image": path, "label": path}``.

    Finishing (:meth:`finish`): the best checkpoint is re-evaluated on the validation split (``best_val_<metric>``
    for every ``metrics.names``), masks are predicted with the sliding window of ``infer`` for each split of
    ``infer.splits`` into ``predictions/<split>/``, and ``plots/training_curves.png`` and
    ``plots/val_overlays.png`` (image / ground truth / prediction) are drawn.
    """

    name = "segmentation"

    def expectations(self) -> Expectations:
        """What the chains expect of the files: ``transforms.train`` / ``val`` of image/label pairs (channels,
        ``ScaleIntensityRanged`` window, label values through ``MapLabelValued`` ending in
        ``0..net.out_channels-1``), and the inference chain of unlabelled images."""
        cfg = self.cfg
        n_classes = max(cfg.net.out_channels, 2)  # one output channel: a binary mask {0, 1}
        return build_expectations({"transforms.train": cfg.transforms.train, "transforms.val": cfg.transforms.val},
                                  {"transforms.infer": cfg.infer_transforms()}, cfg.net.in_channels, n_classes,
                                  f"net.out_channels {cfg.net.out_channels}")

    def _test_image_cases(self) -> List[Case]:
        """``{"image": path}`` of every ``data.test_images`` file (none without the setting)."""
        cfg = self.cfg
        if not cfg.data.test_images:
            return []
        return [{"image": f} for f in discover_images(resolve_root(cfg.data.root), cfg.data.test_images)]

    def discover(self) -> Discovered:
        """Image/label pairs under ``data.root`` (``data.images`` + ``data.labels`` globs or a list file) and the
        unlabelled ``data.test_images``; reader check and one integrity check of them all (``data.verify``), so
        a bad test image is found before training."""
        labelled, unlabelled = discover_cases(self.cfg.data), self._test_image_cases()
        kept, problems = self.check_files(labelled + unlabelled)
        ok = {id(c) for c in kept}
        return SegmentationDiscovered([c for c in labelled if id(c) in ok], None, problems,
                                      [c for c in unlabelled if id(c) in ok])

    def _unlabelled(self, discovered: Discovered) -> Tuple[List[Case], List[Dict[str, str]]]:
        """The checked test images of ``discovered``, or (a :class:`Discovered` made elsewhere) found and checked
        now, still before training."""
        if isinstance(discovered, SegmentationDiscovered):
            return discovered.unlabelled, []
        return self.check_files(self._test_image_cases())

    def split(self, discovered: Discovered) -> PreparedData:
        """Train / val (/ test) by ``data.split``; a list file's predefined test rows and ``data.test_images``
        (unlabelled) are predicted (``infer.splits``), never trained or validated on."""
        cfg = self.cfg
        train, val, test = split_segmentation_cases(discovered.cases, cfg.data.split)
        unlabelled, problems = self._unlabelled(discovered)
        return PreparedData(discovered.cases, train, val, test + unlabelled, discovered.problems + problems)

    def infer_transforms(self):
        """``transforms.infer`` (default: ``transforms.val`` without the ``label`` key)."""
        return build_transforms(self.cfg.infer_transforms(), "transforms.infer")

    def finish(self, state: RunState) -> Outcome:
        """Re-evaluate the best checkpoint on validation, predict masks, draw the plots."""
        cfg, engines, data = self.cfg, state.engines, state.data
        final_eval = build_evaluator(cfg, engines.net, state.val_loader, engines.device)
        final_eval.run()
        final = {f"best_val_{k}": float(v) for k, v in final_eval.state.metrics.items()}
        final["best_epoch"] = float(best_epoch(state.tracker.history, cfg.metrics.key_metric))
        final["train_seconds"] = state.train_seconds

        inferer, infer_tf, predictions = build_inferer(cfg.infer), self.infer_transforms(), {}
        for split in cfg.infer.splits:
            cases = data.val if split == "val" else data.test
            if cases:
                predictions[split] = predict_cases(
                    engines.net, cases, infer_tf, inferer, engines.device, state.folder.predictions_dir / split,
                    cfg.net.out_channels, cfg.infer.output_format, cfg.infer.save_probabilities, cfg.train.progress,
                    pipeline_name=cfg.name, run_id=state.tracker.run_id)
        plots = state.folder.plots_dir
        plot_history(state.tracker.history, plots / "training_curves.png", title=cfg.name)
        if predictions.get("val"):
            plot_overlays(predictions["val"], plots / "val_overlays.png")
        return Outcome(final, predictions=predictions)
