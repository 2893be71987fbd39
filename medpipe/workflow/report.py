"""Run reports: the one-page ``report.md`` of a classification run, its slide-heatmap section, and the per-case
prediction CSV.

Plain text and CSV only (no torch, no MLflow); the task workflows call these after evaluation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

from medpipe.data.loaders import class_counts

__all__ = ["classification_report_md", "slide_report_md", "write_predictions_csv", "fmt_percent"]


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


def write_predictions_csv(path: Path, sp, preds, classes: List[str]) -> None:
    """One row per case: image, true and predicted class (index and name), class probabilities.

    Args:
        path: the CSV to write.
        sp: split predictions with ``images`` (paths), ``labels`` ``(N,)`` int and ``probs`` ``(N, K)`` float.
        preds: ``(N,)`` int predicted class indices (at the run's operating threshold).
        classes: the ``K`` class names.
    """
    import csv

    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "label", "label_name", "pred", "pred_name"] + [f"p_{c}" for c in classes])
        for img, y, p, prob in zip(sp.images, sp.labels, preds, sp.probs):
            w.writerow([img, int(y), classes[int(y)], int(p), classes[int(p)]] + [f"{v:.6f}" for v in prob])


def fmt_percent(v) -> str:
    """A fraction as a percentage with one decimal (``0.9283`` -> ``"92.8 %"``); ``None``/NaN -> ``"n/a"``."""
    return "n/a" if v is None or v != v else f"{100 * v:.1f} %"


def classification_report_md(cfg, data, ev: Dict, final: Dict, run_id: Optional[str]) -> str:
    """The one-page ``report.md``: metrics (test, and val), threshold, confusion matrix, published anchor.

    Args:
        cfg: the validated :class:`medpipe.config.PipelineConfig`.
        data: the run's prepared data (``train``/``val``/``test`` case lists and ``classes``).
        ev: :func:`medpipe.engine.evaluation.evaluate_classifier` output (``val``/``test`` metric dicts,
            ``threshold``, ``threshold_rule``).
        final: the run's final scalar metrics (``epochs``, ``best_epoch``, ``train_seconds``).
        run_id: the MLflow run id, or ``None`` when not tracked.

    Returns:
        Markdown text.
    """
    main = "test" if "test" in ev else "val"
    res = ev[main]
    binary = len(data.classes) == 2
    thr = ev["threshold"]
    lines = [f"# {cfg.name}: classification report", ""]
    lines.append(f"Net `{cfg.net.name}`, {int(final['epochs'])} epochs, best epoch {int(final['best_epoch'])} "
                 f"by validation `{cfg.metrics.key_metric}`; MLflow run `{run_id or 'not tracked'}`; "
                 f"training {final['train_seconds'] / 60:.1f} min.")
    lines.append("")
    lines.append("| split | cases | " + " | ".join(data.classes) + " |")
    lines.append("|---|---|" + "---|" * len(data.classes))
    for name, part in (("train", data.train), ("val", data.val), ("test", data.test)):
        counts = class_counts(part, len(data.classes)).tolist()
        lines.append(f"| {name} | {len(part)} | " + " | ".join(map(str, counts)) + " |")
    lines.append("")
    if binary:
        lines.append(f"Operating threshold on P({data.classes[1]}): **{thr:.4f}** ({ev['threshold_rule']}"
                     f"{', chosen on the validation split' if ev['threshold_rule'] == 'youden' else ''}). "
                     f"Positive class: {data.classes[1]}.")
    else:
        lines.append("Prediction: the most probable class (argmax); sensitivity, specificity, precision and F1 are "
                     "macro means over classes.")
    if main == "val":
        lines.append("")
        lines.append("**No held-out test split**: the numbers below are on the validation split, which selected "
                     "the checkpoint, and are optimistic.")
    lines += ["", f"## Metrics ({main}, n={res['num_samples']})", ""]
    cols = [main] + (["val"] if main == "test" else [])
    lines.append("| metric | " + " | ".join(cols) + " |")
    lines.append("|---|" + "---|" * len(cols))
    keys = [("accuracy", "accuracy"), ("balanced accuracy", "balanced_accuracy")]
    if binary:
        keys += [("sensitivity (recall)", "sensitivity"), ("specificity", "specificity"),
                 ("precision (PPV)", "precision"), ("F1", "f1"), ("ROC AUC", "roc_auc")]
    else:
        keys += [("macro sensitivity", "macro_sensitivity"), ("macro specificity", "macro_specificity"),
                 ("macro precision", "macro_precision"), ("macro F1", "macro_f1"),
                 ("ROC AUC (one-vs-rest macro)", "macro_roc_auc")]
    for label, key in keys:
        lines.append(f"| {label} | " + " | ".join(fmt_percent(ev[c][key]) for c in cols) + " |")
    lines += ["", f"Per class ({main}):", "", "| class | support | sensitivity | specificity | precision | F1 | AUC |",
              "|---|---|---|---|---|---|---|"]
    for name, v in res["per_class"].items():
        lines.append(f"| {name} | {v['support']} | {fmt_percent(v['sensitivity'])} | {fmt_percent(v['specificity'])} | "
                     f"{fmt_percent(v['precision'])} | {fmt_percent(v['f1'])} | {fmt_percent(v['roc_auc'])} |")
    lines += ["", f"## Confusion matrix ({main}; rows = true, columns = predicted)", "",
              "| true \\ predicted | " + " | ".join(data.classes) + " |", "|---|" + "---|" * len(data.classes)]
    for name, row in zip(data.classes, res["confusion_matrix"]):
        lines.append(f"| {name} | " + " | ".join(map(str, row)) + " |")
    lines += ["", "## Published anchor", ""]
    lines.append(f"> {cfg.report.anchor}" if cfg.report.anchor else "(none given: set `report.anchor` in the YAML)")
    lines += ["", "Plots: `plots/learning_curves.png`, `plots/roc.png`, `plots/confusion_<split>.png`, "
              "`plots/misclassified_<split>.png`; per-case probabilities: `predictions/<split>.csv`.", ""]
    return "\n".join(lines)
