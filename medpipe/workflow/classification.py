"""Classification runs: images with class labels (class folders or a list file), split by patient when a group
column exists; after training the best checkpoint is evaluated on validation (where the operating threshold is
chosen) and on the held-out test split, with ``report.md``, per-image prediction tables and plots."""

from __future__ import annotations

import logging
from typing import Dict, List, Optional

from medpipe.data.cases import DataError
from medpipe.data.discovery import discover_classification_cases
from medpipe.data.loaders import balanced_class_weights, build_loader, inverse_frequency_weights
from medpipe.data.splits import split_classification_cases
from medpipe.engine.evaluation import SplitPredictions, evaluate_classifier, predict_classifier
from medpipe.workflow.data import Discovered, PreparedData
from medpipe.workflow.plots import (plot_confusion, plot_learning_curves, plot_misclassified, plot_reliability,
                                   plot_roc)
from medpipe.workflow.report import classification_report_md, write_predictions_csv
from medpipe.workflow.tasks import Outcome, RunState, Task, best_epoch

logger = logging.getLogger(__name__)

__all__ = ["ClassificationTask"]


class ClassificationTask(Task):
    """Classification (``task: classification``): cases ``{"image": path, "label": class index[, "group"]}``.

    Finishing (:meth:`finish`): class probabilities and logits of the best checkpoint on validation and test (the
    mean over mirrored copies with ``infer.tta``); temperature scaling fitted on validation
    (``metrics.calibration``); the operating threshold (``metrics.threshold``: 0.5, a number, Youden's J or a
    sensitivity / specificity target, chosen on validation) applied unchanged to test; metrics ``best_val_<m>``,
    ``test_<m>`` and ``test_at050_<m>`` (two classes, at 0.5) with 95 % intervals (``metrics.intervals``); ECE and
    the OOD score (``metrics.ood``); ``predictions/<split>.csv``; plots (learning curves, ROC, reliability,
    confusion matrices, misclassified images, Grad-CAM grid); ``report.md``. See
    :func:`medpipe.engine.evaluation.evaluate_classifier`.
    """

    name = "classification"

    def discover(self) -> Discovered:
        """Cases and class names under ``data.root``; reader and integrity checks.

        Raises:
            DataError: the number of classes found differs from ``net.num_classes``.
        """
        cfg = self.cfg
        cases, classes = discover_classification_cases(cfg.data)
        if len(classes) != cfg.net.num_classes:
            raise DataError(f"the data under data.root {cfg.data.root!r} has {len(classes)} classes {classes} "
                            f"but net.num_classes is {cfg.net.num_classes}; set data.classes or net.num_classes")
        cases, problems = self.check_files(cases)
        return Discovered(cases, classes, problems)

    def split(self, discovered: Discovered) -> PreparedData:
        """Train / val / test by ``data.split`` (stratified, grouped by ``data.group_column``), with balanced
        class weights (``loss.class_weights: balanced``) and sampling weights (``data.sampler: weighted``)."""
        cfg, classes = self.cfg, discovered.classes
        train, val, test = split_classification_cases(discovered.cases, cfg.data.split)
        data = PreparedData(discovered.cases, train, val, test, discovered.problems, classes)
        if cfg.loss.class_weights == "balanced":
            data.class_weights = balanced_class_weights(train, classes)
            logger.info("balanced class weights %s", dict(zip(classes, data.class_weights)))
        if cfg.data.sampler == "weighted":
            data.sample_weights = inverse_frequency_weights(train, len(classes))
        return data

    def train_loader(self, dataset, n_cases: int, sample_weights: Optional[List[float]] = None):
        """Shuffled (or weighted-sampled) training batches; the last incomplete batch is dropped when there is
        more than one batch (a last batch of one sample would break batch norm)."""
        cfg = self.cfg
        return build_loader(dataset, cfg.train.batch_size, True, cfg.data.num_workers, cfg.train.seed,
                            sample_weights=sample_weights, loader=cfg.data.loader,
                            drop_last=n_cases > cfg.train.batch_size)

    def partition_weights(self, data: PreparedData, cases: List[Dict]) -> Optional[List[float]]:
        """Weighted sampling under DDP: inverse class frequencies within this rank's share of the training cases."""
        if self.cfg.data.sampler != "weighted":
            return None
        return inverse_frequency_weights(cases, len(data.classes or []))

    def finish(self, state: RunState) -> Outcome:
        """Evaluate the best checkpoint on val (temperature and threshold chosen there) and test; predictions,
        plots (reliability diagram, Grad-CAM grid), report."""
        cfg, engines, data = self.cfg, state.engines, state.data
        splits = self._predict(state)
        m = cfg.metrics
        ev = evaluate_classifier(splits, data.classes, m.threshold, calibration=m.calibration,
                                 calibration_bins=m.calibration_bins, intervals=m.intervals, ood=m.ood,
                                 ood_coverage=m.ood_coverage)
        final: Dict[str, float] = dict(ev["final"])
        final["best_epoch"] = float(best_epoch(state.tracker.history, cfg.metrics.key_metric))
        final["epochs"] = float(engines.trainer.state.epoch)
        final["train_seconds"] = state.train_seconds
        self._write_predictions(state, splits, ev)
        ev["explain_png"] = self._explain(state, splits, ev)
        iv = m.intervals
        sections = {"classes": data.classes, "threshold": ev["threshold"], "threshold_rule": ev["threshold_rule"],
                    "key_metric": cfg.metrics.key_metric, **{n: ev[n] for n in splits}, "at_050": ev["at_050"],
                    "calibration": ev["calibration"],
                    "intervals": {"n_resamples": iv.n_resamples, "confidence_level": iv.confidence_level,
                                  "seed": iv.seed, "method": "percentile bootstrap over cases, stratified by class; "
                                  "AUC also DeLong"}}
        if ev["ood"]:
            sections["ood"] = ev["ood"]
        report = classification_report_md(cfg, data, ev, final, state.tracker.run_id)
        return Outcome(final, sections, report, artifacts=["report.md", "plots", "predictions"])

    def _predict(self, state: RunState) -> Dict[str, SplitPredictions]:
        """Predictions of the best checkpoint on val and (when there is one) test; mirrored copies averaged when
        ``infer.tta``."""
        cfg, engines, data = self.cfg, state.engines, state.data
        amp = bool(cfg.train.amp and engines.device.type == "cuda")
        tta = bool(cfg.infer is not None and cfg.infer.tta)
        kw = dict(amp=amp, tta=tta, tta_axes=cfg.infer.tta_axes if tta else None)
        splits = {"val": predict_classifier(engines.net, state.val_loader, engines.device, **kw)}
        if data.test:
            splits["test"] = predict_classifier(engines.net, state.eval_loader(data.test, "test"), engines.device,
                                                **kw)
        return splits

    def _write_predictions(self, state: RunState, splits: Dict, ev: Dict) -> None:
        """``predictions/<split>.csv`` and the plots of every split."""
        cfg, classes = self.cfg, state.data.classes
        pred_dir, plots = state.folder.predictions_dir, state.folder.plots_dir
        pred_dir.mkdir(parents=True, exist_ok=True)
        thr, ood = ev["threshold"], ev["ood"]
        for name, sp in splits.items():
            probs, preds = ev["probs"][name], ev["preds"][name]
            flags = None if not ood else (ood["score"], ev["ood_scores"][name], ood["threshold"])
            write_predictions_csv(pred_dir / f"{name}.csv", sp, preds, classes, probs=probs, ood=flags)
            plot_confusion(ev[name]["confusion_matrix"], classes, plots / f"confusion_{name}.png",
                           title=f"{cfg.name}: {name} (n={len(sp.labels)})")
            plot_misclassified(sp.images, sp.labels, preds, probs, classes, plots / f"misclassified_{name}.png",
                               cfg.report.max_misclassified, title=f"misclassified, {name}")
        plot_learning_curves(state.tracker.history, plots / "learning_curves.png", cfg.metrics.key_metric, cfg.name)
        plot_roc({n: (sp.labels, ev["probs"][n]) for n, sp in splits.items()}, classes, plots / "roc.png",
                 {n: thr for n in splits})
        calibrated = ev["calibration"]["method"] == "temperature"
        curves = {n: {("before" if calibrated else "softmax"): (sp.labels, sp.probs),
                      **({"after temperature scaling": (sp.labels, ev["probs"][n])} if calibrated else {})}
                  for n, sp in splits.items()}
        plot_reliability(curves, plots / "reliability.png", ev["calibration"]["n_bins"], title=cfg.name)

    def _explain(self, state: RunState, splits: Dict, ev: Dict) -> Optional[str]:
        """``plots/explain_test.png`` (or ``explain_val.png`` without a test split): class-activation heatmaps of
        ``report.explain_samples`` images (``report.explain``); a failure is logged, not fatal.

        Returns:
            The PNG path relative to the run folder, or ``None`` (off, or failed).
        """
        cfg = self.cfg
        if cfg.report.explain == "none" or cfg.report.explain_samples == 0:
            return None
        name = "test" if "test" in splits else "val"
        sp, rel = splits[name], f"plots/explain_{name}.png"
        try:
            from medpipe.workflow.explain_plots import plot_explanations

            plot_explanations(state.engines.net, sp.images, sp.labels, ev["probs"][name], state.data.classes,
                              state.folder.path / rel, kind=cfg.report.explain, layer=cfg.report.explain_layer,
                              transform=state.val_transform, device=state.engines.device,
                              max_images=cfg.report.explain_samples, title=f"{cfg.name}: {name}",
                              preds=ev["preds"][name])
        except Exception as exc:  # an explanation must never cost the run its evaluation
            logger.warning("report.explain: the %s heatmaps of the %s split failed (%s: %s); the run goes on "
                           "without plots/explain_%s.png", cfg.report.explain, name, type(exc).__name__, exc, name)
            return None
        return rel
