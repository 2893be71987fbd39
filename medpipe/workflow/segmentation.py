"""Segmentation runs: image/label pairs, a split into train / val (/ test), and after training the best
checkpoint re-evaluated on validation and masks predicted for ``infer.splits``."""

from __future__ import annotations

import logging

from medpipe.data.cases import resolve_root
from medpipe.data.discovery import discover_cases, discover_images
from medpipe.data.splits import split_segmentation_cases
from medpipe.data.transforms import build_transforms
from medpipe.engine.trainer import build_evaluator
from medpipe.inference.predict import predict_cases
from medpipe.inference.sliding import build_inferer
from medpipe.workflow.data import Discovered, PreparedData
from medpipe.workflow.plots import plot_history, plot_overlays
from medpipe.workflow.tasks import Outcome, RunState, Task, best_epoch

logger = logging.getLogger(__name__)

__all__ = ["SegmentationTask"]


class SegmentationTask(Task):
    """Segmentation (``task: segmentation``): cases ``{"image": path, "label": path}``.

    Finishing (:meth:`finish`): the best checkpoint is re-evaluated on the validation split (``best_val_<metric>``
    for every ``metrics.names``), masks are predicted with the sliding window of ``infer`` for each split of
    ``infer.splits`` into ``predictions/<split>/``, and ``plots/training_curves.png`` and
    ``plots/val_overlays.png`` (image / ground truth / prediction) are drawn.
    """

    name = "segmentation"

    def discover(self) -> Discovered:
        """Image/label pairs under ``data.root`` (``data.images`` + ``data.labels`` globs or a list file), reader
        check, integrity check (``data.verify``)."""
        cfg = self.cfg
        cases, problems = self.check_files(discover_cases(cfg.data))
        return Discovered(cases, None, problems)

    def split(self, discovered: Discovered) -> PreparedData:
        """Train / val (/ test) by ``data.split``; a list file's predefined test rows and ``data.test_images``
        (unlabelled) are predicted (``infer.splits``), never trained or validated on."""
        cfg = self.cfg
        train, val, test = split_segmentation_cases(discovered.cases, cfg.data.split)
        if cfg.data.test_images:
            test = test + [{"image": f} for f in discover_images(resolve_root(cfg.data.root), cfg.data.test_images)]
        return PreparedData(discovered.cases, train, val, test, discovered.problems)

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
                    cfg.net.out_channels, cfg.infer.output_format, cfg.infer.save_probabilities, cfg.train.progress)
        plots = state.folder.plots_dir
        plot_history(state.tracker.history, plots / "training_curves.png", title=cfg.name)
        if predictions.get("val"):
            plot_overlays(predictions["val"], plots / "val_overlays.png")
        return Outcome(final, predictions=predictions)
