"""Cross-validation as a protocol: all K folds of one pipeline, one MLflow parent run, one child run per fold.

With ``data.split.kfold: K`` and no ``data.split.fold``, ``python -m medpipe.run`` (and
:func:`medpipe.workflow.run_pipeline`) call :func:`run_cross_validation`:

1. the cases are discovered and integrity-checked once;
2. a test split (predefined, or ``data.split.test_fraction``) is held out once, before the folds; the rest, the
   training pool, is cut into K folds (:func:`medpipe.data.splits.cross_validation_folds`): stratified by class,
   grouped by patient when ``data.group_column`` is set, deterministic given ``data.split.seed``, every pool case
   in exactly one validation fold;
3. an MLflow **parent run** gets the resolved config, ``manifest.json`` (every fold's train / val cases, the test
   cases, the skipped files) and, at the end, the summary metrics ``cv_mean_<metric>`` and ``cv_std_<metric>``
   over folds of every final metric of the folds (e.g. ``cv_mean_test_accuracy``, ``cv_std_best_val_dice``)
   and ``cv_summary.json`` / ``cv_summary.md`` (a table, one row per fold, then mean and standard deviation);
4. each fold k is a normal pipeline run (:func:`medpipe.workflow.skeleton.run_single` with ``data.split.fold = k``) in
   ``<parent dir>/fold_<k>/``, tracked as a **child run** (``mlflow.start_run(nested=True)``, tag ``fold``,
   name ``<name>-fold<k>``); each fold's best model is evaluated on the same held-out test split;
5. with a held-out test split, the fold models' **ensemble** (mean of their class probabilities or softmax maps,
   :mod:`medpipe.workflow.ensemble`) predicts it: ``ensemble_test_<metric>`` with its interval beside the folds'
   in ``cv_summary.md`` / ``cv_summary.json``, in the parent's ``metrics.json`` (``final`` and the ``ensemble``
   section) and in the parent MLflow run.

A fold that crashes ends its child run and the parent run as ``FAILED`` (the parent keeps the summary of the folds
completed before, and the tag ``cv.failed_fold``); the exception is re-raised and later folds are not run.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple


from medpipe.config import PipelineConfig, flatten, resolved_dict
from medpipe.data.cases import resolve_root
from medpipe.data.integrity import manifest_hash
from medpipe.data.loaders import class_counts
from medpipe.data.splits import cross_validation_folds
from medpipe.runs import RunFolder
from medpipe.tracking import Tracker, env_summary, git_commit, library_versions
from medpipe.workflow.data import Discovered
from medpipe.workflow.ensemble import PREFIX as ENSEMBLE_PREFIX
from medpipe.workflow.ensemble import ensemble_test
from medpipe.workflow.result import RunResult
from medpipe.workflow.seg_eval import seg_metric_columns
from medpipe.workflow.skeleton import run_single, task_for

logger = logging.getLogger("medpipe.cv")

__all__ = ["run_cross_validation", "summarize_folds", "fold_config"]


def summarize_folds(fold_metrics: Sequence[Dict[str, float]]) -> Tuple[Dict[str, float], Dict[str, Dict]]:
    """Mean and standard deviation over folds of each final metric.

    Args:
        fold_metrics: one ``{metric: value}`` dict per fold (a fold's :attr:`~medpipe.workflow.result.RunResult.metrics`).

    Returns:
        ``(flat, summary)``: ``flat = {"cv_mean_<m>": mean, "cv_std_<m>": std}`` for the MLflow parent run and
        ``summary = {m: {"mean", "std", "n"}}``. The standard deviation is the sample one (``ddof=1``, the
        spread of a fold's result; 0.0 with a single fold). Non-finite values (e.g. an AUC undefined on a fold)
        are left out and ``n`` counts the folds used; a metric finite on no fold is omitted. Metrics keep the
        order in which they first appear.
    """
    import numpy as np

    keys: List[str] = []
    for m in fold_metrics:
        keys += [k for k in m if k not in keys]
    flat: Dict[str, float] = {}
    summary: Dict[str, Dict] = {}
    for key in keys:
        vals = np.array([float(m[key]) for m in fold_metrics if key in m and math.isfinite(float(m[key]))])
        if vals.size == 0:
            continue
        mean, std = float(vals.mean()), float(vals.std(ddof=1)) if vals.size > 1 else 0.0
        summary[key] = {"mean": mean, "std": std, "n": int(vals.size)}
        flat[f"cv_mean_{key}"], flat[f"cv_std_{key}"] = mean, std
    return flat, summary


def fold_config(cfg: PipelineConfig, fold: int) -> PipelineConfig:
    """The config of fold ``fold``: a deep copy with ``data.split.fold = fold``, run name ``<name>-fold<k>`` and
    the tracking tags ``fold`` and ``cv.kfold`` added."""
    out = cfg.model_copy(deep=True)
    out.data.split.fold = fold
    out.tracking.run_name = f"{cfg.tracking.run_name or cfg.name}-fold{fold}"
    out.tracking.tags = {**cfg.tracking.tags, "fold": str(fold), "cv.kfold": str(cfg.data.split.kfold)}
    return out


def _table_columns(cfg: PipelineConfig, has_test: bool, metrics: Sequence[str]) -> List[str]:
    """The metrics shown per fold in ``cv_summary.md``: the configured metrics on test (or best validation),
    the key validation metric and the best epoch."""
    names = list(cfg.metrics.names or [])
    if cfg.task == "classification" and cfg.num_classes > 2:  # multi-class: macro means
        names = [f"macro_{n}" if n in ("sensitivity", "specificity", "precision", "f1") else n for n in names]
    if cfg.task == "segmentation":  # per label with more than two classes, volumes in mm3
        names = seg_metric_columns(names, cfg.net.out_channels, cfg.metrics.class_names)
    prefix = "test_" if has_test else "best_val_"
    cols = [prefix + n for n in names] + [f"best_val_{cfg.metrics.key_metric}", "best_epoch"]
    seen: List[str] = []
    for c in cols:
        if c in metrics and c not in seen:
            seen.append(c)
    return seen


def _write_summary(cfg: PipelineConfig, out_dir: Path, folds: List[Tuple[int, RunResult, Dict]], flat: Dict,
                   summary: Dict, n_test: int, failed_fold: Optional[int],
                   ensemble: Optional[Dict] = None) -> List[Path]:
    """``cv_summary.json`` (everything) and ``cv_summary.md`` (a table: folds, mean, standard deviation and the
    ensemble of the fold models on the test split)."""
    k = cfg.data.split.kfold
    doc = {"pipeline": cfg.name, "kfold": k, "seed": cfg.data.split.seed, "n_test": n_test,
           "std": "sample standard deviation over folds (ddof=1)", "failed_fold": failed_fold,
           "folds": [{"fold": i, "run_id": r.run_id, "output_dir": str(r.output_dir), **sizes, "metrics": r.metrics}
                     for i, r, sizes in folds],
           "summary": summary, "metrics": flat, "ensemble": ensemble or None}
    (out_dir / "cv_summary.json").write_text(json.dumps(doc, indent=1))
    metric_names = [m for _, r, _ in folds for m in r.metrics]
    cols = _table_columns(cfg, n_test > 0, metric_names)
    lines = [f"# {cfg.name}: {k}-fold cross-validation", ""]
    where = (f"each fold's best checkpoint evaluated on the same held-out test split ({n_test} cases)" if n_test
             else "no held-out test split: validation metrics of the checkpoint each fold selected (optimistic)")
    lines.append(f"Folds stratified{' and grouped by patient' if cfg.data.group_column else ''}, seed "
                 f"{cfg.data.split.seed}; {where}. Standard deviation: sample (ddof=1) over folds.")
    if failed_fold is not None:
        lines += ["", f"**Fold {failed_fold} failed**: the summary covers the {len(folds)} folds before it."]
    lines += ["", "| fold | train | val | " + " | ".join(cols) + " | MLflow run |",
              "|---|---|---|" + "---|" * len(cols) + "---|"]

    def fmt(v) -> str:
        return "n/a" if v is None or not math.isfinite(v) else f"{v:.4f}"

    for i, r, sizes in folds:
        lines.append(f"| {i} | {sizes['n_train']} | {sizes['n_val']} | "
                     + " | ".join(fmt(r.metrics.get(c)) for c in cols) + f" | `{r.run_id or '-'}` |")
    for stat in ("mean", "std"):
        lines.append(f"| **{stat}** | | | " + " | ".join(fmt(summary.get(c, {}).get(stat)) for c in cols) + " | |")
    if ensemble:
        lines.append(_ensemble_row(cols, flat))
        lines += ["", f"Ensemble: {ensemble.get('combination')} of the {ensemble.get('n_models')} fold models on "
                  f"the {ensemble.get('n_test')} test cases; 95 % bootstrap intervals in parentheses."]
    lines.append("")
    (out_dir / "cv_summary.md").write_text("\n".join(lines))
    return [out_dir / "cv_summary.json", out_dir / "cv_summary.md"]


def _ensemble_row(cols: Sequence[str], flat: Dict) -> str:
    """The table row of the ensemble: its value of each ``test_<metric>`` column with its interval."""
    from medpipe.metrics.intervals import format_with_interval

    cells = []
    for c in cols:
        key = ENSEMBLE_PREFIX + c[len("test_"):] if c.startswith("test_") else None
        v = flat.get(key) if key else None
        if v is None or not math.isfinite(v):
            cells.append("n/a" if key else "")
        elif f"{key}_ci_low" in flat:
            cells.append(format_with_interval(v, flat[f"{key}_ci_low"], flat[f"{key}_ci_high"]))
        else:
            cells.append(f"{v:.4f}")
    return "| **ensemble** | | | " + " | ".join(cells) + " | |"


def _run_ensemble(cfg: PipelineConfig, done: List[Tuple[int, RunResult, Dict]], fold_data, test, out_dir: Path,
                  tracker: Tracker) -> Tuple[Dict[str, float], Dict]:
    """The fold models' ensemble on the test split (:func:`medpipe.workflow.ensemble.ensemble_test`), logged to
    the parent run; a failure is logged (tag ``cv.ensemble_error``) and leaves the folds' summary intact."""
    if not test:
        return {}, {}
    try:
        flat, section = ensemble_test(cfg, [r.output_dir for _, r, _ in done], [d.val for d in fold_data], test,
                                      out_dir)
    except Exception as exc:  # the folds' results must survive a failing ensemble
        logger.exception("cross-validation %s: the ensemble of the fold models failed", cfg.name)
        tracker.set_tags({"cv.ensemble_error": f"{type(exc).__name__}: {exc}"[:500]})
        return {}, {"error": f"{type(exc).__name__}: {exc}"}
    tracker.log_metrics(flat)
    return flat, section


def _prepare_folds(cfg: PipelineConfig, parent_cfg: PipelineConfig, out_dir: Path):
    """Discover once, hold out the test split, cut the folds, prepare each fold's data and write the parent's
    ``manifest.json``. Returns ``(discovered, folds, test, fold_cfgs, fold_data, manifest_sha256)``."""
    k = cfg.data.split.kfold
    task = task_for(cfg)
    discovered: Discovered = task.discover()
    folds, test = cross_validation_folds(discovered.cases, cfg.data.split, cfg.task)
    fold_cfgs = [fold_config(parent_cfg, i) for i in range(k)]
    fold_data = [task_for(c).prepare(discovered) for c in fold_cfgs]
    manifest_sha256 = manifest_hash(discovered.cases)  # reads every file's ends: once, for the parent and all folds
    for data in fold_data:
        data.manifest_sha256 = manifest_sha256
    manifest = {"kfold": k, "seed": cfg.data.split.seed, "stratify": cfg.data.split.stratify,
                "grouped_by": cfg.data.group_column, "test": test, "skipped": discovered.problems,
                "fold_of": {c["image"]: i for i, (_, val) in enumerate(folds) for c in val},
                "folds": [{"fold": i, "train": tr, "val": va} for i, (tr, va) in enumerate(folds)]}
    if discovered.classes is not None:
        manifest["classes"] = discovered.classes
    RunFolder(out_dir).write_manifest(manifest)
    return discovered, folds, test, fold_cfgs, fold_data, manifest_sha256


def _parent_tags(cfg: PipelineConfig, out_dir: Path, discovered: Discovered, folds, test,
                 manifest_sha256: str) -> Dict[str, object]:
    """MLflow tags of the parent run: protocol, data sizes, per-fold class counts, versions."""
    classes = discovered.classes
    tags = {"pipeline": cfg.name, "task": cfg.task, "output_dir": str(out_dir.resolve()), "cv.role": "parent",
            "cv.kfold": cfg.data.split.kfold, "git_commit": git_commit(Path(__file__).parent) or "none",
            "dataset.manifest_sha256": manifest_sha256, "dataset.n_pool": len(folds[0][0]) + len(folds[0][1]),
            "dataset.n_test": len(test), "dataset.n_skipped": len(discovered.problems),
            **{f"version.{n}": v for n, v in library_versions().items()}, **env_summary()}
    if classes is not None:
        tags["dataset.classes"] = ",".join(classes)
        tags["dataset.class_counts_test"] = class_counts(test, len(classes)).tolist()
        for i, (_, val) in enumerate(folds):
            tags[f"dataset.class_counts_fold{i}"] = class_counts(val, len(classes)).tolist()
    return tags


def run_cross_validation(cfg: PipelineConfig) -> RunResult:
    """Train and evaluate every fold of ``data.split.kfold``; one MLflow parent run, a child run per fold.

    See the module docstring for the protocol and the artifacts.

    Args:
        cfg: a validated pipeline with ``data.split.kfold`` set (``data.split.fold`` is ignored: all folds run).

    Returns:
        :class:`~medpipe.workflow.result.RunResult` of the parent run: ``metrics`` the summary
        ``{"cv_mean_<metric>", "cv_std_<metric>", "cv_total_seconds"}`` and, with a test split, the fold models'
        ensemble ``ensemble_test_<metric>`` (with ``_ci_low`` / ``_ci_high``), ``folds`` the folds' results in fold
        order (each with its child ``run_id``), ``summary`` ``{metric: {"mean", "std", "n"}}``, ``kfold`` K and
        ``model_uri`` ``None`` (each fold logs its own model).

    Raises:
        ValueError: ``data.split.kfold`` is not set.
        medpipe.data.cases.DataError: bad data, a validation split predefined by the data, or folds that cannot
            be stratified (e.g. a class with fewer cases than folds); nothing is trained or tracked then.
        Any exception of a fold's run: that child run and the parent run are marked ``FAILED``.
    """
    k = cfg.data.split.kfold
    if k is None:
        raise ValueError("run_cross_validation needs data.split.kfold (the number of folds), e.g. kfold: 5")
    t0 = time.time()
    out_dir = RunFolder.create(cfg.output_dir, cfg.tracking.run_name or cfg.name).path
    parent_cfg = cfg.model_copy(deep=True)
    parent_cfg.data.split.fold = None
    resolved = resolved_dict(parent_cfg)
    RunFolder(out_dir).write_config(resolved)
    discovered, folds, test, fold_cfgs, fold_data, sha = _prepare_folds(cfg, parent_cfg, out_dir)

    tracking = parent_cfg.tracking.model_copy(update={"run_name": cfg.tracking.run_name or f"{cfg.name}-cv{k}"})
    tracker = Tracker(tracking, cfg.name)
    done: List[Tuple[int, RunResult, Dict]] = []
    with tracker:
        tracker.log_params(flatten(resolved))
        tracker.set_tags(_parent_tags(cfg, out_dir, discovered, folds, test, sha))
        # the pool the folds are cut from (each fold's run logs its own train / val) and the held-out test split
        tracker.log_datasets(cfg.name, str(resolve_root(cfg.data.root)), sha,
                             {"train": folds[0][0] + folds[0][1], "test": test})
        tracker.log_artifact(RunFolder(out_dir).config_file)
        tracker.log_artifact(RunFolder(out_dir).manifest_file)
        problems_file = RunFolder(out_dir).write_problems(discovered.problems)
        if problems_file is not None:
            tracker.log_artifact(problems_file)
        try:
            for i, (fcfg, data) in enumerate(zip(fold_cfgs, fold_data)):
                logger.info("cross-validation %s: fold %d of %d (%d train / %d val / %d test)", cfg.name, i + 1, k,
                            len(data.train), len(data.val), len(data.test))
                result = run_single(fcfg, out_dir=out_dir / f"fold_{i}", data=data)
                sizes = {"n_train": len(data.train), "n_val": len(data.val), "n_test": len(data.test)}
                done.append((i, result, sizes))
                cols = _table_columns(cfg, bool(test), list(result.metrics))
                tracker.log_metrics({f"fold_{c}": result.metrics[c] for c in cols}, step=i)
        except BaseException:
            failed = len(done)
            logger.error("cross-validation %s: fold %d failed; the parent run is marked FAILED", cfg.name, failed)
            tracker.set_tags({"cv.failed_fold": failed})
            flat, summary = summarize_folds([r.metrics for _, r, _ in done])
            tracker.log_metrics(flat)
            for path in _write_summary(cfg, out_dir, done, flat, summary, len(test), failed):
                tracker.log_artifact(path)
            raise
        flat, summary = summarize_folds([r.metrics for _, r, _ in done])
        ens_flat, ensemble = _run_ensemble(cfg, done, fold_data, test, out_dir, tracker)
        flat.update(ens_flat)
        flat["cv_total_seconds"] = time.time() - t0
        tracker.log_metrics(flat)
        folder = RunFolder(out_dir)
        folder.write_metrics({"final": flat, **({"ensemble": ensemble} if ensemble else {}), "cv_summary": summary})
        tracker.log_artifact(folder.metrics_file)
        for path in _write_summary(cfg, out_dir, done, flat, summary, len(test), None, ensemble):
            tracker.log_artifact(path)
        if (out_dir / "ensemble").is_dir():
            tracker.log_artifact(out_dir / "ensemble", "ensemble")
    return RunResult(out_dir, flat, tracker.run_id, cfg.tracking.tracking_uri if tracker.enabled else None, None,
                     {}, time.time() - t0, folds=[r for _, r, _ in done], summary=summary, kfold=k)
