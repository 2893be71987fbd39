"""Compare trained runs on the same cases: ``python -m medpipe.compare RUN_A RUN_B [RUN_C ...] [options]``.

Each ``RUN`` is a run folder or an MLflow run id (:func:`medpipe.runs.find_run`), e.g. a run and its re-evaluation
by ``python -m medpipe.evaluate``, or two pipelines trained on the same split. Options::

    -o, --output OUT       folder of the comparison (default artifacts/comparisons/<YYYYmmdd-HHMMSS>)
    --split test|val       the split compared (default: test when every run has test predictions, else val)
    --tracking-uri URI     MLflow store of run ids and of the comparison run (default $MLFLOW_TRACKING_URI, else
                           sqlite:///mlflow.db)
    --resamples N          bootstrap resamples (default 1000); --confidence 0.95; --seed 0
    --no-tracking          write the files only, log nothing to MLflow

Example::

    python -m medpipe.compare artifacts/pneumonia_xray-20261201-090000 artifacts/pneumonia_xray_resnet18-20261201-100000

What it refuses: fewer than two runs, runs of different tasks or classes, a run without ``manifest.json`` or
without predictions for the split, and runs whose cases of the split differ (the message names both runs and the
first differing case: their numbers would not be paired).

What it writes (``OUT/comparison.md``, ``OUT/comparison.json``, and for classification ``OUT/roc.png``), also logged as
a new MLflow run in the experiment ``compare`` (tags name the compared runs):

- Classification (``predictions/<split>.csv`` of each run, each at its own threshold from ``metrics.json``): every
  metric of :func:`medpipe.metrics.flat_classification_metrics` side by side with its interval (value and interval
  from the run's ``metrics.json`` ``final`` when it has ``<prefix><metric>_ci_low/_high``, prefix ``test_`` or
  ``best_val_``; else computed from the predictions, with a stratified percentile bootstrap),
  the AUC with DeLong's interval, for every pair of runs the paired bootstrap difference (later run minus earlier
  run) of every metric with its interval and two-sided p-value, DeLong's test of the two AUCs (two classes), and
  the ROC curves of all runs overlaid in one plot.
- Segmentation (``predictions/<split>_per_case.csv``: ``image`` then one column per metric): the mean of each
  metric over the cases (NaN cases left out) with its interval (or both from ``metrics.json`` as above), and the
  paired bootstrap of the difference of the means for every pair.

Methods: :mod:`medpipe.metrics.intervals` (percentile bootstrap, Efron & Tibshirani 1993; DeLong et al. 1988 with
Sun & Xu 2014, as R's pROC). All runs are resampled with the same case indices (paired). Exit codes: 0 done, 2 bad
arguments or runs that cannot be compared.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
import warnings
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from medpipe.config import ConfigError
from medpipe.logs import configure_cli_logging
from medpipe.metrics import (classification_intervals, classification_metrics, delong_interval, delong_test,
                             flat_classification_metrics, format_with_interval, mean_interval)
from medpipe.metrics.intervals import bootstrap_classification_metrics, difference_summary, resample_indices
from medpipe.runs import RunFolder, default_tracking_uri, find_run, no_nan
from medpipe.tracking import TrackingError

logger = logging.getLogger(__name__)

__all__ = ["compare_runs", "main", "EXPERIMENT", "SPLIT_PREFIX"]

#: MLflow experiment of the comparison runs
EXPERIMENT = "compare"
#: prefix of a split's metrics in ``metrics.json`` ``final``
SPLIT_PREFIX = {"test": "test_", "val": "best_val_"}


@dataclass
class _Run:
    label: str
    source: str
    folder: RunFolder
    task: str
    name: str
    metrics: Dict[str, Any]
    manifest: Optional[Dict[str, Any]]


def _load(sources: Sequence[str], tracking_uri: Optional[str]) -> List[_Run]:
    if len(sources) < 2:
        raise ValueError(f"compare needs at least two runs, got {len(sources)}: {list(sources)}")
    if len(sources) > 26:
        raise ValueError(f"compare takes at most 26 runs (labelled A-Z), got {len(sources)}")
    runs = []
    for k, source in enumerate(sources):
        folder = find_run(str(source), tracking_uri, context=f"compare {source}")
        cfg = folder.load_config()
        runs.append(_Run(chr(ord("A") + k), str(source), folder, cfg.task, cfg.name, folder.read_metrics(),
                         folder.read_manifest()))
    tasks = {r.task for r in runs}
    if len(tasks) > 1:
        raise ValueError("runs of different tasks cannot be compared: " +
                         ", ".join(f"{r.label} {r.folder.path} is {r.task}" for r in runs))
    return runs


def _prediction_file(run: _Run, split: str) -> Path:
    name = f"{split}.csv" if run.task == "classification" else f"{split}_per_case.csv"
    return run.folder.predictions_dir / name


def _choose_split(runs: List[_Run], split: Optional[str]) -> str:
    if split is not None:
        if split not in SPLIT_PREFIX:
            raise ValueError(f"split must be one of {sorted(SPLIT_PREFIX)}, got {split!r}")
        return split
    return "test" if all(_prediction_file(r, "test").is_file() for r in runs) else "val"


def _case_key(case: Any) -> str:
    return json.dumps(case, sort_keys=True)


def _image(case: Any) -> str:
    return str(case["image"]) if isinstance(case, dict) else str(case)


def _same_cases(runs: List[_Run], split: str) -> List[str]:
    """The images of the split (run A's order); ``ValueError`` naming both runs and the first differing case."""
    for r in runs:
        if r.manifest is None:
            raise ValueError(f"run {r.label} ({r.folder.path}) has no manifest.json: its {split} cases are unknown")
        if not r.manifest.get(split):
            raise ValueError(f"run {r.label} ({r.folder.path}) has no {split} cases in its manifest.json")
    ref = runs[0]
    ref_cases = ref.manifest[split]
    ref_keys = [_case_key(c) for c in ref_cases]
    for r in runs[1:]:
        keys = [_case_key(c) for c in r.manifest[split]]
        key_set, ref_set = set(keys), set(ref_keys)
        if key_set == ref_set and len(keys) == len(ref_keys):
            continue
        only_ref = [c for c, k in zip(ref_cases, ref_keys) if k not in key_set]
        only_r = [c for c, k in zip(r.manifest[split], keys) if k not in ref_set]
        first, where = (only_ref[0], f"in {ref.label}'s manifest.json but not in {r.label}'s") if only_ref else \
            ((only_r[0], f"in {r.label}'s manifest.json but not in {ref.label}'s") if only_r else
             (ref_cases[0], "listed a different number of times"))
        raise ValueError(f"runs {ref.label} ({ref.folder.path}) and {r.label} ({r.folder.path}) were evaluated on "
                         f"different {split} cases ({len(ref_keys)} vs {len(keys)}): first differing case {first} is "
                         f"{where}")
    return [_image(c) for c in ref_cases]


def _read_rows(run: _Run, split: str, images: List[str]) -> Dict[str, Dict[str, str]]:
    path = _prediction_file(run, split)
    if not path.is_file():
        raise ValueError(f"run {run.label}: {path} not found; expected the per-case predictions of its {split} split")
    with open(path, newline="") as fh:
        rows = {row["image"]: row for row in csv.DictReader(fh)}
    missing = [i for i in images if i not in rows]
    if missing:
        raise ValueError(f"run {run.label}: {path} has no row for {len(missing)} of the {len(images)} {split} cases "
                         f"of manifest.json, e.g. {missing[0]}")
    return rows


# ------------------------------------------------------------------------------------------ classification
def _classes(run: _Run, rows: Dict[str, Dict[str, str]]) -> List[str]:
    names = run.metrics.get("classes") or (run.manifest or {}).get("classes")
    if not names:
        names = [k[2:] for k in next(iter(rows.values())) if k.startswith("p_")]
    return [str(n) for n in names]


def _threshold(run: _Run, split: str, num_classes: int) -> Optional[float]:
    if num_classes != 2:
        return None
    thr = run.metrics.get("threshold", run.metrics.get("final", {}).get(f"{SPLIT_PREFIX[split]}threshold"))
    return 0.5 if thr is None else float(thr)


def _predictions(runs: List[_Run], split: str, images: List[str]):
    """Labels ``(N,)``, class names, and per run ``(N, C)`` probabilities and its threshold."""
    labels, names, probs, thresholds = None, None, [], []
    for r in runs:
        rows = _read_rows(r, split, images)
        run_names = _classes(r, rows)
        if names is not None and run_names != names:
            raise ValueError(f"runs A and {r.label} have different classes: {names} vs {run_names}")
        names = run_names
        try:
            y = np.array([int(rows[i]["label"]) for i in images], dtype=np.int64)
            p = np.array([[float(rows[i][f"p_{c}"]) for c in names] for i in images], dtype=np.float64)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"run {r.label}: {_prediction_file(r, split)} lacks a label or p_<class> value "
                             f"({exc}); expected the columns of medpipe's predictions CSV") from None
        if labels is not None and not np.array_equal(y, labels):
            raise ValueError(f"runs A and {r.label}: the true labels in {split}.csv differ")
        labels = y
        probs.append(p)
        thresholds.append(_threshold(r, split, len(names)))
    return labels, names, probs, thresholds


def _split_final(run: _Run, split: str) -> Dict[str, Any]:
    """The run's ``metrics.json`` ``final`` values of ``split``, without their prefix."""
    prefix = SPLIT_PREFIX[split]
    return {k[len(prefix):]: v for k, v in run.metrics.get("final", {}).items() if k.startswith(prefix)}


def _stored_or(final: Dict[str, Any], key: str, value: float, interval) -> Dict[str, Any]:
    low, high = final.get(f"{key}_ci_low"), final.get(f"{key}_ci_high")
    stored = low is not None and high is not None
    return {"value": float(final[key]) if stored and final.get(key) is not None else float(value),
            "low": float(low) if stored else float(interval[0]),
            "high": float(high) if stored else float(interval[1]),
            "interval": "metrics.json" if stored else "bootstrap"}


def _pairs(runs: List[_Run], point: Dict[str, Dict[str, float]], reps: Dict[str, Dict[str, np.ndarray]],
           confidence_level: float) -> List[Dict[str, Any]]:
    out = []
    for a, b in combinations(runs, 2):
        diffs = {k: difference_summary(point[b.label][k] - point[a.label][k], reps[b.label][k] - reps[a.label][k],
                                       confidence_level) for k in point[a.label]}
        out.append({"a": a.label, "b": b.label, "metrics": diffs})
    return out


def _compare_classification(runs: List[_Run], split: str, images: List[str], n_resamples: int,
                            confidence_level: float, seed: int) -> Dict[str, Any]:
    labels, names, probs, thresholds = _predictions(runs, split, images)
    idx = resample_indices(len(labels), strata=labels, n_resamples=n_resamples, seed=seed)
    point, reps, table, delong = {}, {}, {}, {}
    for r, p, thr in zip(runs, probs, thresholds):
        flat = flat_classification_metrics(classification_metrics(labels, p, threshold=thr, class_names=names))
        flat.pop("threshold", None)
        point[r.label] = flat
        reps[r.label] = bootstrap_classification_metrics(labels, p, thr, names, idx)
        final = _split_final(r, split)
        if all(f"{m}_ci_low" in final for m in flat):
            computed = {m: (np.nan, np.nan) for m in flat}  # every interval reported by the run itself
        else:
            computed = classification_intervals(labels, p, thr, names, n_resamples=n_resamples,
                                                confidence_level=confidence_level, seed=seed)
        table[r.label] = {m: _stored_or(final, m, v, computed[m]) for m, v in flat.items()}
        if len(names) == 2 and 0 < labels.sum() < len(labels):
            auc, low, high = delong_interval(labels, p[:, 1], confidence_level)
            delong[r.label] = {"auc": auc, "low": low, "high": high}
    pairs = _pairs(runs, point, reps, confidence_level)
    if delong:
        for pair, (a, b) in zip(pairs, combinations(range(len(runs)), 2)):
            pair["delong"] = delong_test(labels, probs[a][:, 1], probs[b][:, 1], confidence_level)
    return {"classes": names, "thresholds": dict(zip([r.label for r in runs], thresholds)), "metrics": table,
            "auc_delong": delong, "differences": pairs, "_curves": (labels, probs)}


# -------------------------------------------------------------------------------------------- segmentation
def _compare_segmentation(runs: List[_Run], split: str, images: List[str], n_resamples: int,
                          confidence_level: float, seed: int) -> Dict[str, Any]:
    per_run = [_read_rows(r, split, images) for r in runs]
    columns = [c for c in next(iter(per_run[0].values())) if c != "image"]
    common = [c for c in columns if all(c in next(iter(rows.values())) for rows in per_run)]
    if not common:
        raise ValueError(f"the {split}_per_case.csv files share no metric column: {columns}")
    idx = resample_indices(len(images), n_resamples=n_resamples, seed=seed)
    point, reps, table = {}, {}, {}
    for r, rows in zip(runs, per_run):
        final = _split_final(r, split)
        values = {c: np.array([_float(rows[i][c]) for i in images]) for c in common}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a metric NaN on every case (of a resample)
            point[r.label] = {c: float(np.nanmean(v)) for c, v in values.items()}
            reps[r.label] = {c: np.nanmean(v[idx], axis=1) for c, v in values.items()}
        table[r.label] = {c: _stored_or(final, c, point[r.label][c],
                                        mean_interval(v, n_resamples=n_resamples, confidence_level=confidence_level,
                                                      seed=seed)) for c, v in values.items()}
    return {"metrics": table, "differences": _pairs(runs, point, reps, confidence_level)}


def _float(text: str) -> float:
    return float(text) if text not in ("", None) else float("nan")


# ------------------------------------------------------------------------------------------------ output
def _plot_rocs(labels: np.ndarray, probs: List[np.ndarray], thresholds: List[Optional[float]], runs: List[_Run],
               names: List[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = plt.subplots(figsize=(5.6, 5.2))
    classes = [1] if len(names) == 2 else list(range(len(names)))
    styles = ["-", "--", "-.", ":"]
    for k, (r, p) in enumerate(zip(runs, probs)):
        for j, c in enumerate(classes):
            pos = labels == c
            if pos.all() or not pos.any():
                continue
            fpr, tpr, _ = roc_curve(pos, p[:, c])
            cls = "" if len(names) == 2 else f", {names[c]}"
            ax.plot(fpr, tpr, styles[j % 4], color=f"C{k}",
                    label=f"{r.label} {r.name}{cls} (AUC {roc_auc_score(pos, p[:, c]):.3f})")
        if thresholds[k] is not None and 0 < labels.sum() < len(labels):  # the run's operating point
            pred = p[:, 1] >= thresholds[k]
            ax.plot([pred[labels == 0].mean()], [pred[labels == 1].mean()], "o", color=f"C{k}")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="1 - specificity (FPR)", ylabel="sensitivity (TPR)", xlim=(0, 1), ylim=(0, 1.01),
           title=f"ROC (n={len(labels)}; dots: each run's threshold)" if len(names) == 2 else f"ROC (n={len(labels)})")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _p_text(p: float, n_resamples: int) -> str:
    """A bootstrap p-value; 0 (no resample on the other side) is shown as ``< 1 / n_resamples``."""
    return "n/a" if p != p else (f"< {1 / n_resamples:.2g}" if p == 0 else f"{p:.3g}")


def _markdown(doc: Dict[str, Any]) -> str:
    cl = f"{100 * doc['confidence_level']:g} %"
    lines = [f"# Run comparison: {doc['task']}, {doc['split']} split ({doc['n_cases']} cases)", "",
             "| run | folder | pipeline | MLflow run | threshold |", "|---|---|---|---|---|"]
    for r in doc["runs"]:
        thr = doc.get("thresholds", {}).get(r["label"])
        lines.append(f"| {r['label']} | `{r['folder']}` | {r['pipeline']} | {r['mlflow_run_id'] or 'not tracked'} | "
                     f"{'n/a' if thr is None else f'{thr:.4f}'} |")
    labels = [r["label"] for r in doc["runs"]]
    lines += ["", f"## Metrics ({cl} intervals)", "", "| metric | " + " | ".join(labels) + " |",
              "|---|" + "---|" * len(labels)]
    for m in doc["metrics"][labels[0]]:
        cells = [doc["metrics"][k][m] for k in labels]
        lines.append(f"| {m} | " + " | ".join(format_with_interval(c["value"], c["low"], c["high"]) for c in cells)
                     + " |")
    if doc.get("auc_delong"):
        lines.append("| AUC (DeLong interval) | " + " | ".join(
            format_with_interval(d["auc"], d["low"], d["high"]) for d in (doc["auc_delong"][k] for k in labels)) + " |")
    for pair in doc["differences"]:
        a, b = pair["a"], pair["b"]
        lines += ["", f"## {b} minus {a} (paired bootstrap, {cl} interval, two-sided p)", "",
                  "| metric | difference | p |", "|---|---|---|"]
        for m, d in pair["metrics"].items():
            lines.append(f"| {m} | {format_with_interval(d['difference'], d['low'], d['high'])} | "
                         f"{_p_text(d['p_value'], doc['n_resamples'])} |")
        if "delong" in pair:
            t = pair["delong"]
            diff = format_with_interval(t["difference"], t["low"], t["high"])
            lines += ["", f"DeLong's test, AUC {b} minus {a}: {diff}, z = {t['z']:.3f}, p = {t['p_value']:.3g} "
                      f"(AUC {a} {t['auc_a']:.3f}, {b} {t['auc_b']:.3f})."]
    lines += ["", "## Method", "",
              f"Percentile bootstrap over cases, {doc['n_resamples']} resamples, seed {doc['seed']}"
              f"{', stratified by true class' if doc['task'] == 'classification' else ''}; every run is resampled "
              "with the same cases (paired). p: twice the share of resampled differences on the other side of 0. "
              "Intervals marked `metrics.json` in comparison.json were reported by the run itself. "
              + ("Each run's metrics are at its own threshold (metrics.json); AUC intervals and tests by DeLong et al. "
                 "(1988), as R's pROC." if doc["task"] == "classification" else
                 "Means over cases, NaN cases left out."), ""]
    if doc["files"].get("roc"):
        lines += ["![ROC curves](roc.png)", ""]
    return "\n".join(lines)


def _log_to_mlflow(doc: Dict[str, Any], out: Path, files: List[Path], tracking_uri: str) -> Optional[str]:
    from medpipe.config.tracking import TrackingConfig
    from medpipe.tracking import Tracker

    labels = " vs ".join(f"{r['label']}={r['pipeline']}" for r in doc["runs"])
    cfg = TrackingConfig(tracking_uri=tracking_uri, experiment=EXPERIMENT, run_name=f"{doc['split']}: {labels}")
    metrics: Dict[str, float] = {}
    for label, table in doc["metrics"].items():
        metrics.update({f"{label}_{m}": v["value"] for m, v in table.items()})
    for pair in doc["differences"]:
        for m, d in pair["metrics"].items():
            key = f"{pair['b']}_minus_{pair['a']}_{m}"
            metrics.update({key: d["difference"], f"{key}_ci_low": d["low"], f"{key}_ci_high": d["high"],
                            f"{key}_p": d["p_value"]})
        if "delong" in pair:
            metrics[f"{pair['b']}_minus_{pair['a']}_auc_delong_p"] = pair["delong"]["p_value"]
    with Tracker(cfg, EXPERIMENT) as tracker:
        tracker.set_tags({"output_dir": str(out.resolve()), "compare.split": doc["split"], "compare.task": doc["task"],
                          **{f"compare.run_{r['label']}": r["mlflow_run_id"] or r["folder"] for r in doc["runs"]}})
        tracker.log_params({"split": doc["split"], "n_cases": doc["n_cases"], "n_resamples": doc["n_resamples"],
                            "confidence_level": doc["confidence_level"], "seed": doc["seed"],
                            **{f"run_{r['label']}": r["folder"] for r in doc["runs"]}})
        tracker.log_metrics(metrics)
        for f in files:
            tracker.log_artifact(f)
        return tracker.run_id


def compare_runs(sources: Sequence[str], split: Optional[str] = None, out_dir: Optional[Path] = None,
                 tracking_uri: Optional[str] = None, *, n_resamples: int = 1000, confidence_level: float = 0.95,
                 seed: int = 0, track: bool = True) -> Dict[str, Any]:
    """Compare runs evaluated on the same cases and write ``comparison.md``, ``comparison.json`` (and ``roc.png``).

    Args:
        sources: two or more run folders or MLflow run ids; the first is ``A``, then ``B``, ``C``, ...
        split: ``"test"`` or ``"val"``; ``None``: test when every run has test predictions, else val.
        out_dir: the comparison's folder (created); default ``artifacts/comparisons/<YYYYmmdd-HHMMSS>``.
        tracking_uri: MLflow store of run ids and of the comparison run (:func:`medpipe.runs.default_tracking_uri`).
        n_resamples: bootstrap resamples (paired: the same case indices for every run).
        confidence_level: two-sided coverage of every interval.
        seed: seed of the resampling.
        track: log the comparison as a new MLflow run in the experiment :data:`EXPERIMENT`.

    Returns:
        The content of ``comparison.json``: ``task``, ``split``, ``n_cases``, ``runs`` (``label``, ``source``,
        ``folder``, ``pipeline``, ``mlflow_run_id``), ``metrics`` (``{label: {metric: {value, low, high,
        interval}}}``), ``differences`` (per pair ``a``, ``b``, ``metrics`` ``{metric: {difference (b - a), low,
        high, p_value}}`` and, for two classes, ``delong`` from :func:`medpipe.metrics.delong_test`), for
        classification also ``classes``, ``thresholds`` and ``auc_delong``; plus ``files`` and ``mlflow_run_id``.

    Raises:
        ValueError: fewer than two runs, different tasks / classes / cases, missing manifest or predictions.
        FileNotFoundError: a source is neither a run folder nor a run id (:func:`medpipe.runs.find_run`).
        medpipe.config.ConfigError: a run's ``config.resolved.yaml`` does not validate.
        medpipe.tracking.TrackingError: the MLflow store failed (the files are written first).
    """
    uri = default_tracking_uri(tracking_uri)
    runs = _load(sources, tracking_uri)
    split = _choose_split(runs, split)
    images = _same_cases(runs, split)
    compare = _compare_classification if runs[0].task == "classification" else _compare_segmentation
    result = compare(runs, split, images, n_resamples, confidence_level, seed)
    curves = result.pop("_curves", None)
    out = Path(out_dir) if out_dir is not None else Path("artifacts") / "comparisons" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    doc: Dict[str, Any] = {
        "task": runs[0].task, "split": split, "n_cases": len(images), "n_resamples": int(n_resamples),
        "confidence_level": float(confidence_level), "seed": int(seed),
        "runs": [{"label": r.label, "source": r.source, "folder": str(r.folder.path), "pipeline": r.name,
                  "mlflow_run_id": (r.folder.mlflow_run() or {}).get("run_id")} for r in runs],
        **result, "files": {}}
    files = [out / "comparison.md", out / "comparison.json"]
    if curves is not None:
        files.append(_plot_rocs(*curves, [result["thresholds"][r.label] for r in runs], runs, result["classes"],
                                out / "roc.png"))
        doc["files"]["roc"] = str(files[-1])
    doc["files"].update(markdown=str(files[0]), json=str(files[1]))
    files[0].write_text(_markdown(doc))
    doc["mlflow_run_id"] = None
    files[1].write_text(json.dumps(no_nan(doc), indent=1))
    if track:
        doc["mlflow_run_id"] = _log_to_mlflow(doc, out, files, uri)
        files[1].write_text(json.dumps(no_nan(doc), indent=1))
    logger.info("comparison of %d runs on %d %s cases written to %s", len(runs), len(images), split, out)
    return doc


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m medpipe.compare", description=(
        "Compare trained runs on the same cases: metrics with intervals, paired bootstrap differences, DeLong's "
        "test, overlaid ROC curves; logged to MLflow."))
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder or MLflow run id (two or more)")
    p.add_argument("-o", "--output", help="comparison folder (default artifacts/comparisons/<time>)")
    p.add_argument("--split", choices=sorted(SPLIT_PREFIX), help="split compared (default test, else val)")
    p.add_argument("--tracking-uri", help="MLflow store of run ids and of the comparison run")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence level (default 0.95)")
    p.add_argument("--seed", type=int, default=0, help="seed of the resampling (default 0)")
    p.add_argument("--no-tracking", action="store_true", help="write the files only")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point; returns the process exit code (0 ok, 2 bad arguments or runs that cannot be compared)."""
    args = _parser().parse_args(argv)
    configure_cli_logging(args.verbose)
    try:
        doc = compare_runs(args.runs, args.split, Path(args.output) if args.output else None, args.tracking_uri,
                           n_resamples=args.resamples, confidence_level=args.confidence, seed=args.seed,
                           track=not args.no_tracking)
    except (ConfigError, FileNotFoundError, ValueError, TrackingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"comparison: {doc['files']['markdown']}")
    if doc["mlflow_run_id"]:
        print(f"MLflow run {doc['mlflow_run_id']} in experiment {EXPERIMENT!r} at "
              f"{default_tracking_uri(args.tracking_uri)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
