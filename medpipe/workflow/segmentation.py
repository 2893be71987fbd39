"""Segmentation runs: image/label pairs, a split into train / val (/ test), and after training the best
checkpoint re-evaluated on validation and masks predicted for ``infer.splits``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

from medpipe.data.cases import Case, resolve_root
from medpipe.data.discovery import discover_cases, discover_images
from medpipe.data.expectations import Expectations, build_expectations
from medpipe.data.splits import split_segmentation_cases
from medpipe.data.transforms import build_transforms
from medpipe.inference.postprocess import apply_postprocess, choose_postprocess
from medpipe.inference.predict import predict_case, predict_cases
from medpipe.inference.sliding import build_inferer
from medpipe.metrics.intervals import add_intervals
from medpipe.workflow.data import Discovered, PreparedData
from medpipe.workflow.plots import plot_history, plot_orthogonal_overlays, plot_overlays
from medpipe.workflow.seg_eval import SplitScores, case_scores, label_and_spacing, summarize_split, write_per_case_csv
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

    Finishing (:meth:`finish`), with the best checkpoint: the validation cases are predicted on their original
    grid (sliding window of ``infer``; with ``infer.tta`` the mean softmax over mirrored copies,
    :func:`medpipe.inference.tta.tta_softmax`); with ``infer.postprocess: auto`` the largest-component
    post-processing is chosen on them by nnU-Net's rule (:func:`medpipe.inference.postprocess.choose_postprocess`;
    ``metrics.json`` ``postprocessing``) and applied to every mask written. Every labelled case of validation and
    of the predicted test split is scored (:mod:`medpipe.workflow.seg_eval`): ``predictions/<split>_per_case.csv``
    (one column per ``metrics.names``), ``best_val_<metric>`` / ``test_<metric>`` the means of those columns
    (official ``v_rand`` / ``v_info``: best threshold of the mean over cases) with bootstrap intervals
    (``metrics.intervals``: ``<metric>_ci_low`` / ``_ci_high``). Masks are written for each split of
    ``infer.splits`` into ``predictions/<split>/``; ``plots/training_curves.png`` and ``plots/val_overlays.png``
    (image / ground truth / prediction) are drawn.
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
                                  f"net.out_channels {cfg.net.out_channels}", spatial_dims=cfg.net.spatial_dims,
                                  series_uid=cfg.data.series_uid)

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
        return build_transforms(self.cfg.infer_transforms(), "transforms.infer",
                                series_uid=self.cfg.data.series_uid)

    def finish(self, state: RunState) -> Outcome:
        """Predict validation (and the ``infer.splits``) with the best checkpoint, choose the post-processing on
        validation, score every labelled case, write masks, per-case tables and plots (see the class docstring)."""
        cfg, engines, data = self.cfg, state.engines, state.data
        names, k = list(cfg.metrics.names), cfg.net.out_channels
        infer_tf, inferer = self.infer_transforms(), build_inferer(cfg.infer)
        predict = dict(tta=bool(cfg.infer.tta), tta_axes=cfg.infer.tta_axes)
        val_probs = [predict_case(engines.net, c, infer_tf, inferer, engines.device, **predict) for c in data.val]
        val_grid = [label_and_spacing(c, state.val_transform) for c in data.val]  # (label, spacing in mm)
        val_labels = [lab for lab, _ in val_grid]
        cls = cfg.metrics.class_names
        spec = None
        if cfg.infer.postprocess == "auto" and data.val:
            spec = choose_postprocess([(p.argmax(0), t) for p, t in zip(val_probs, val_labels)], k)
        final: Dict[str, float] = {}
        sections: Dict[str, Any] = {"postprocessing": spec} if spec is not None else {}
        val = SplitScores()
        for case, prob, (label, spacing) in zip(data.val, val_probs, val_grid):
            val.add(case["image"], case_scores(prob, apply_postprocess(prob.argmax(0), spec), label, names, k,
                                               spacing=spacing, class_names=cls))
        self._report_split(state, "val", "best_val_", val, final, sections)
        final["best_epoch"] = float(best_epoch(state.tracker.history, cfg.metrics.key_metric))
        final["train_seconds"] = state.train_seconds

        write = dict(num_classes=k, output_format=cfg.infer.output_format,
                     save_probabilities=cfg.infer.save_probabilities, progress=cfg.train.progress,
                     pipeline_name=cfg.name, run_id=state.tracker.run_id, postprocess=spec,
                     series_uid=cfg.data.series_uid, **predict)
        predictions: Dict[str, List[Dict]] = {}
        out = state.folder.predictions_dir
        if "val" in cfg.infer.splits and data.val:
            predictions["val"] = predict_cases(engines.net, data.val, infer_tf, inferer, engines.device, out / "val",
                                               probabilities=val_probs, **write)
        del val_probs
        if "test" in cfg.infer.splits and data.test:
            test = SplitScores()

            def score(case: Dict, prob, mask) -> None:
                if "label" in case:
                    label, spacing = label_and_spacing(case, state.val_transform)
                    test.add(case["image"], case_scores(prob, mask, label, names, k, spacing=spacing,
                                                        class_names=cls))

            predictions["test"] = predict_cases(engines.net, data.test, infer_tf, inferer, engines.device,
                                                out / "test", on_case=score, **write)
            if test.images:
                self._report_split(state, "test", "test_", test, final, sections)
        plots = state.folder.plots_dir
        plot_history(state.tracker.history, plots / "training_curves.png", title=cfg.name)
        if predictions.get("val"):
            if cfg.net.spatial_dims == 3:
                plot_orthogonal_overlays(predictions["val"], plots / "val_orthogonal.png", max_cases=3,
                                         class_names=cls)
            else:
                plot_overlays(predictions["val"], plots / "val_overlays.png")
        iv = cfg.metrics.intervals
        sections["intervals"] = {"n_resamples": iv.n_resamples, "confidence_level": iv.confidence_level,
                                 "seed": iv.seed, "method": "percentile bootstrap over cases (images); official "
                                 "v_rand/v_info: the maximum over thresholds recomputed in every resample"}
        return Outcome(final, sections, predictions=predictions)

    def _report_split(self, state: RunState, split: str, prefix: str, scores: SplitScores, final: Dict[str, float],
                      sections: Dict[str, Any]) -> None:
        """Means (``<prefix><metric>``) and intervals into ``final``, ``predictions/<split>_per_case.csv``, the
        official ISBI thresholds and the post-processing's Dice into ``sections``."""
        cfg = self.cfg
        if not scores.images:
            return
        values, cis, columns, official = summarize_split(scores, cfg.metrics.names, cfg.metrics.intervals)
        final.update({f"{prefix}{m}": float(v) for m, v in values.items()})
        add_intervals(final, cis, prefix)
        write_per_case_csv(state.folder.predictions_dir / f"{split}_per_case.csv", scores.images, columns)
        if official:
            sections.setdefault("isbi2012", {})[split] = official
        logger.info("%s: %s over %d cases", split, ", ".join(f"{m} {v:.4f}" for m, v in values.items()),
                    len(scores.images))
