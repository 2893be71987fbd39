"""Run reports: the one-page ``report.md`` of a classification run, its slide-heatmap section, and the per-case
prediction CSV.

Plain text and CSV only (no torch, no MLflow); the task workflows call these after evaluation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

from medpipe.data.loaders import class_counts

__all__ = ["classification_report_md", "slide_report_md", "write_predictions_csv", "fmt_percent", "fmt_interval"]


def slide_report_md(rows: List[Dict], threshold: float, si) -> str:
    """The ``## Slide heatmaps`` section appended to ``report.md``."""
    lines = ["", "## Slide heatmaps", "",
             f"Windows of {si.roi_size} pixels at level {rows[0]['level']}, overlap {si.overlap}, {si.mode} "
             f"blending, resized to the network input {rows[0]['settings']['input_size']}, intensity "
             f"{rows[0]['settings']['intensity']}; background skipped: {si.tissue}. Each label-mask cell is scored by "
             f"its mean P(class {si.class_index}); AUC of label {si.positive_label} vs {si.negative_label} cells, "
             f"sensitivity / specificity / F1 at the run's threshold {threshold:.4f}.", "",
             "| slide | size (h x w) | windows run / all | cells (pos / neg) | AUC | sensitivity | specificity | "
             "balanced accuracy | F1 | seconds | windows/s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sc = r.get("score")
        cells = f"{sc['n_patches']} ({sc['n_pos']} / {sc['n_neg']})" if sc else "not scored"
        m = [fmt_percent(sc[k]) if sc else "n/a" for k in ("auc", "sensitivity", "specificity", "balanced_accuracy", "f1")]
        lines.append(f"| {Path(r['slide']).name} | {r['shape'][0]} x {r['shape'][1]} | {r['windows_run']} / "
                     f"{r['windows']} | {cells} | " + " | ".join(m) + f" | {r['seconds']:.1f} | "
                     f"{r['tiles_per_second']:.0f} |")
    lines.append("")
    for r in rows:
        lines.append(f"![{Path(r['slide']).name} overlay]({r['overlay_png']})")
    lines.append("")
    return "\n".join(lines)


def write_predictions_csv(path: Path, sp, preds, classes: List[str], probs=None, ood=None) -> None:
    """One row per case: image, true and predicted class (index and name), class probabilities, raw logits and,
    with an OOD score, the score and whether it is above the validation threshold.

    Args:
        path: the CSV to write.
        sp: split predictions with ``images`` (paths), ``labels`` ``(N,)`` int, ``probs`` ``(N, K)`` float and
            ``logits`` ``(N, K)`` float or ``None``.
        preds: ``(N,)`` int predicted class indices (at the run's operating threshold).
        classes: the ``K`` class names.
        probs: ``(N, K)`` probabilities to write as ``p_<class>`` (the reported ones, e.g. temperature-scaled);
            default ``sp.probs``.
        ood: ``(kind, (N,) scores, threshold)``: adds columns ``ood_<kind>`` and ``ood_flag`` (1 = above).
    """
    import csv

    probs = sp.probs if probs is None else probs
    logits = getattr(sp, "logits", None)
    head = ["image", "label", "label_name", "pred", "pred_name"] + [f"p_{c}" for c in classes]
    head += [f"logit_{c}" for c in classes] if logits is not None else []
    head += [f"ood_{ood[0]}", "ood_flag"] if ood else []
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(head)
        for i, (img, y, p, prob) in enumerate(zip(sp.images, sp.labels, preds, probs)):
            row = [img, int(y), classes[int(y)], int(p), classes[int(p)]] + [f"{v:.6f}" for v in prob]
            row += [f"{v:.6f}" for v in logits[i]] if logits is not None else []
            row += [f"{ood[1][i]:.6f}", int(ood[1][i] > ood[2])] if ood else []
            w.writerow(row)


def fmt_percent(v) -> str:
    """A fraction as a percentage with one decimal (``0.9283`` -> ``"92.8 %"``); ``None``/NaN -> ``"n/a"``."""
    return "n/a" if v is None or v != v else f"{100 * v:.1f} %"


def fmt_interval(value, interval: Optional[tuple], percent: bool = True) -> str:
    """``value (low-high)`` (:func:`medpipe.metrics.intervals.format_with_interval`), or the value alone when
    there is no interval; percentages for fractions."""
    if value is None or value != value:
        return "n/a"
    if not interval:
        return fmt_percent(value) if percent else f"{value:.3f}"
    from medpipe.metrics.intervals import format_with_interval

    return format_with_interval(value, interval[0], interval[1], percent=percent)


#: report rows (label, key of a classification_metrics result, flat name of its interval)
_BINARY_ROWS = [("accuracy", "accuracy", "accuracy"), ("balanced accuracy", "balanced_accuracy", "balanced_accuracy"),
                ("sensitivity (recall)", "sensitivity", "sensitivity"), ("specificity", "specificity", "specificity"),
                ("precision (PPV)", "precision", "precision"), ("F1", "f1", "f1"), ("ROC AUC", "roc_auc", "auc")]
_MULTI_ROWS = _BINARY_ROWS[:2] + [("macro sensitivity", "macro_sensitivity", "macro_sensitivity"),
                                  ("macro specificity", "macro_specificity", "macro_specificity"),
                                  ("macro precision", "macro_precision", "macro_precision"),
                                  ("macro F1", "macro_f1", "macro_f1"),
                                  ("ROC AUC (one-vs-rest macro)", "macro_roc_auc", "macro_auc")]


def _flat_class(name: str) -> str:
    """A class name as in the flat metric names of :func:`medpipe.metrics.flat_classification_metrics`."""
    return "".join(ch if ch.isalnum() or ch in "_-." else "_" for ch in str(name))


def _split_table(data, ev: Dict) -> List[str]:
    """Cases per split and class."""
    lines = ["| split | cases | " + " | ".join(data.classes) + " |", "|---|---|" + "---|" * len(data.classes)]
    for name, part in (("train", data.train), ("val", data.val), ("test", data.test)):
        counts = class_counts(part, len(data.classes)).tolist()
        lines.append(f"| {name} | {len(part)} | " + " | ".join(map(str, counts)) + " |")
    return lines + [""]


def _operating_point(cfg, data, ev: Dict) -> List[str]:
    """How predictions are made: threshold, calibration, test-time augmentation."""
    cal, thr, rule = ev["calibration"], ev["threshold"], ev["threshold_rule"]
    scaled = f" the temperature-scaled (T = {cal['temperature']:.3f})" if cal["method"] == "temperature" else ""
    if len(data.classes) == 2:
        chosen = ", chosen on the validation split" if not rule.replace(".", "", 1).isdigit() else ""
        lines = [f"Operating threshold on{scaled} P({data.classes[1]}): **{thr:.4f}** ({rule}{chosen}), applied "
                 f"unchanged to the test split. Positive class: {data.classes[1]}. Test metrics are given at this "
                 "threshold and at 0.5."]
    else:
        lines = ["Prediction: the most probable class (argmax); sensitivity, specificity, precision and F1 are "
                 "macro means over classes."]
    if cfg.infer is not None and cfg.infer.tta:
        axes = cfg.infer.tta_axes if cfg.infer.tta_axes is not None else "all spatial axes"
        lines.append(f"Test-time augmentation: probabilities are the mean softmax over the mirrored copies along "
                     f"{axes}.")
    iv = cfg.metrics.intervals
    if iv.n_resamples > 0:
        lines.append(f"Intervals: {100 * iv.confidence_level:g} % percentile bootstrap over cases ({iv.n_resamples} "
                     f"resamples, stratified by class, seed {iv.seed}; threshold and temperature fixed); two-class "
                     "ROC AUC also DeLong's interval.")
    return lines


def _metric_table(data, ev: Dict, main: str) -> List[str]:
    """The main metrics with intervals: main split at the operating point (and at 0.5), validation."""
    cols = [(main, ev[main], ev["intervals"].get(main))]
    if main in ev.get("at_050", {}):
        cols.append((f"{main} at 0.5", ev["at_050"][main], ev["intervals"].get("at_050")))
    if main == "test":
        cols.append(("val", ev["val"], ev["intervals"].get("val")))
    lines = ["| metric | " + " | ".join(c[0] for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for label, key, flat in _BINARY_ROWS if len(data.classes) == 2 else _MULTI_ROWS:
        lines.append(f"| {label} | " + " | ".join(fmt_interval(res[key], (iv or {}).get(flat)) for _, res, iv in cols)
                     + " |")
    delong = [(iv or {}).get("auc_delong") for _, _, iv in cols]
    if any(delong):
        lines.append("| ROC AUC, DeLong interval | " + " | ".join(
            fmt_interval(res["roc_auc"], d) if d else "n/a" for (_, res, _), d in zip(cols, delong)) + " |")
    return lines


def _per_class_table(ev: Dict, main: str) -> List[str]:
    """Per-class metrics of the main split, with intervals."""
    iv = ev["intervals"].get(main) or {}
    lines = [f"Per class ({main}):", "", "| class | support | sensitivity | specificity | precision | F1 | AUC |",
             "|---|---|---|---|---|---|---|"]
    for name, v in ev[main]["per_class"].items():
        c = _flat_class(name)
        cells = [fmt_interval(v[k], iv.get(f"{c}_{k}")) for k in ("sensitivity", "specificity", "precision", "f1")]
        cells.append(fmt_interval(v["roc_auc"], iv.get(f"{c}_auc")))
        lines.append(f"| {name} | {v['support']} | " + " | ".join(cells) + " |")
    return lines


def _calibration_lines(ev: Dict) -> List[str]:
    """Expected calibration error and NLL per split (before / after temperature scaling)."""
    cal, splits = ev["calibration"], [n for n in ("test", "val") if n in ev["calibration"]]
    lines = ["## Calibration", ""]
    if cal["method"] == "temperature":
        lines += [f"Temperature scaling (Guo et al. 2017): T = {cal['temperature']:.4f}, fitted on the validation "
                  f"logits (minimum NLL). ECE: top-label, {cal['n_bins']} equal-width bins.", "",
                  "| split | ECE before | ECE after | NLL before | NLL after |", "|---|---|---|---|---|"]
        for n in splits:
            c = cal[n]
            lines.append(f"| {n} | {fmt_percent(c['ece_before'])} | {fmt_percent(c['ece_after'])} | "
                         f"{c['nll_before']:.4f} | {c['nll_after']:.4f} |")
    else:
        lines += [f"Not recalibrated (`metrics.calibration: none`). ECE: top-label, {cal['n_bins']} equal-width bins "
                  "(Guo et al. 2017).", "", "| split | ECE | NLL |", "|---|---|---|"]
        for n in splits:
            lines.append(f"| {n} | {fmt_percent(cal[n]['ece'])} | {cal[n]['nll']:.4f} |")
    return lines + ["", "Reliability diagram: `plots/reliability.png`. The ECE has no bootstrap interval: its binned "
                    "estimator is biased upwards on resampled (duplicated) cases.", ""]


def _ood_lines(ev: Dict) -> List[str]:
    """The out-of-distribution score, its validation threshold, flagged fractions and error AUROC."""
    ood = ev.get("ood")
    if not ood:
        return ["## Inputs out of distribution", "", "No score (`metrics.ood: none`).", ""]
    ref = "Liu et al. 2020, -logsumexp(logits)" if ood["score"] == "energy" else \
        "Hendrycks & Gimpel 2017, 1 - max softmax"
    lines = ["## Inputs out of distribution", "",
             f"Score `{ood['score']}` ({ref}; higher = more unusual) of the raw logits; threshold {ood['threshold']:.4f}"
             f" = the {100 * ood['coverage']:g} % quantile of the validation scores. A case above it is flagged "
             "(column `ood_flag` of `predictions/<split>.csv`). Error AUROC: how well the score separates "
             "misclassified from correct cases (0.5 = not at all).", "",
             "| split | cases flagged | error AUROC |", "|---|---|---|"]
    for n in ("test", "val"):
        if n in ood:
            iv = ev["intervals"].get(n) or {}
            lines.append(f"| {n} | {ood[n]['n_flagged']}: {fmt_interval(ood[n]['flagged_fraction'], iv.get('ood_flagged'))}"
                         f" | {fmt_interval(ood[n]['error_auroc'], iv.get('ood_error_auroc'))} |")
    return lines + [""]


def classification_report_md(cfg, data, ev: Dict, final: Dict, run_id: Optional[str]) -> str:
    """The one-page ``report.md``: metrics with intervals (test at the operating point and at 0.5, and val),
    threshold, calibration, out-of-distribution score, confusion matrix, explanations, published anchor.

    Args:
        cfg: the validated :class:`medpipe.config.PipelineConfig`.
        data: the run's prepared data (``train``/``val``/``test`` case lists and ``classes``).
        ev: :func:`medpipe.engine.evaluation.evaluate_classifier` output (``val``/``test`` metric dicts,
            ``at_050``, ``threshold``, ``threshold_rule``, ``calibration``, ``ood``, ``intervals``), optionally
            ``explain_png`` (a run-relative path).
        final: the run's final scalar metrics (``epochs``, ``best_epoch``, ``train_seconds``).
        run_id: the MLflow run id, or ``None`` when not tracked.

    Returns:
        Markdown text.
    """
    ev = {"intervals": {}, "at_050": {}, **ev}
    main = "test" if "test" in ev else "val"
    res = ev[main]
    lines = [f"# {cfg.name}: classification report", "",
             f"Net `{cfg.net.name}`, {int(final['epochs'])} epochs, best epoch {int(final['best_epoch'])} "
             f"by validation `{cfg.metrics.key_metric}`; MLflow run `{run_id or 'not tracked'}`; "
             f"training {final['train_seconds'] / 60:.1f} min.", ""]
    lines += _split_table(data, ev) + _operating_point(cfg, data, ev)
    if main == "val":
        lines += ["", "**No held-out test split**: the numbers below are on the validation split, which selected "
                  "the checkpoint, and are optimistic."]
    lines += ["", f"## Metrics ({main}, n={res['num_samples']})", ""] + _metric_table(data, ev, main)
    lines += [""] + _per_class_table(ev, main) + [""]
    if "calibration" in ev:
        lines += _calibration_lines(ev)
    lines += _ood_lines(ev)
    lines += [f"## Confusion matrix ({main}; rows = true, columns = predicted)", "",
              "| true \\ predicted | " + " | ".join(data.classes) + " |", "|---|" + "---|" * len(data.classes)]
    for name, row in zip(data.classes, res["confusion_matrix"]):
        lines.append(f"| {name} | " + " | ".join(map(str, row)) + " |")
    if ev.get("explain_png"):
        lines += ["", f"## Explanations ({cfg.report.explain})", "", f"![class-activation heatmaps]({ev['explain_png']})"]
    lines += ["", "## Published anchor", ""]
    lines.append(f"> {cfg.report.anchor}" if cfg.report.anchor else "(none given: set `report.anchor` in the YAML)")
    lines += ["", "Plots: `plots/learning_curves.png`, `plots/roc.png`, `plots/reliability.png`, "
              "`plots/confusion_<split>.png`, `plots/misclassified_<split>.png`; per-case probabilities and OOD "
              "scores: `predictions/<split>.csv`.", ""]
    return "\n".join(lines)
