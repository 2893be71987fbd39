"""Command line: ``python -m medpipe.run PIPELINE.yaml [--set key=value ...] [--validate-only]``,
``python -m medpipe.run --resume RUN`` (continue an interrupted run), and under ``torchrun`` distributed
(``torchrun --nproc_per_node N -m medpipe.run PIPELINE.yaml``).

Wires the one flow: YAML -> validated config -> data -> network -> engine -> metrics -> tracking ->
artifacts. Library modules never import this one.

Artifacts of a run go to ``<output_dir>/<run name>/``:
``config.resolved.yaml``, ``manifest.json`` (the split), ``checkpoints/`` (best and latest), ``metrics.json``,
``data_problems.csv`` (only when the integrity check skipped files), and by task:

* segmentation: ``plots/`` (training curves, overlays) and ``predictions/<split>/`` (masks);
* classification: ``report.md`` (one page: test metrics, threshold, confusion matrix, published anchor),
  ``plots/`` (learning curves, ROC, confusion matrices, misclassified examples) and ``predictions/<split>.csv``;
  with ``slide_infer``, ``slides/`` (per slide a Zarr heatmap, heatmap and overlay PNGs; ``slides.json`` with the
  scores), also summarised in ``metrics.json`` and ``report.md``.

Cross-validation (``data.split.kfold`` without ``fold``, :mod:`medpipe.cv`): the run folder holds
``config.resolved.yaml``, ``manifest.json`` (all folds), ``cv_summary.json`` / ``.md`` and one run folder per fold,
``fold_<k>/``, as above.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import yaml

from medpipe.config import ConfigError, PipelineConfig, flatten, load_config, resolved_dict
from medpipe.logs import configure_cli_logging
from medpipe.report import classification_report_md, no_nan, slide_report_md, write_predictions_csv

logger = logging.getLogger("medpipe.run")


@dataclass
class RunResult:
    """What a pipeline run produced."""

    output_dir: Path
    metrics: Dict[str, float]
    run_id: Optional[str] = None
    tracking_uri: Optional[str] = None
    model_uri: Optional[str] = None
    predictions: Dict[str, List[Dict]] = field(default_factory=dict)
    seconds: float = 0.0


def _run_dir(cfg: PipelineConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = cfg.tracking.run_name or cfg.name
    base = Path(cfg.output_dir) / f"{name}-{stamp}"
    out, i = base, 1
    while out.exists():
        out, i = Path(f"{base}-{i}"), i + 1
    return out


@dataclass
class _Data:
    """The cases of a run, split, with what the task adds (class names, loss weights, sampling weights)."""

    cases: List[Dict]
    train: List[Dict]
    val: List[Dict]
    test: List[Dict]
    problems: List[Dict]
    classes: Optional[List[str]] = None
    class_weights: Optional[List[float]] = None
    sample_weights: Optional[List[float]] = None
    manifest_sha256: Optional[str] = None  # when already computed (cross-validation: once for all folds)

    def tags(self) -> Dict[str, object]:
        out: Dict[str, object] = {"dataset.n_train": len(self.train), "dataset.n_val": len(self.val),
                                  "dataset.n_test": len(self.test), "dataset.n_skipped": len(self.problems)}
        if self.classes is not None:
            from medpipe.data.datasets import class_counts

            out["dataset.classes"] = ",".join(self.classes)
            for name, part in (("train", self.train), ("val", self.val), ("test", self.test)):
                out[f"dataset.class_counts_{name}"] = class_counts(part, len(self.classes)).tolist()
        return out


def _discover(cfg: PipelineConfig) -> Tuple[List[Dict], Optional[List[str]], List[Dict]]:
    """Discover the cases, check the readers fit the files, run the integrity check (no torch work).

    Returns:
        ``(cases, class names or None, problems)`` (problems: the integrity check's ``{"file", "reason"}`` rows).
    """
    from medpipe.data import datasets as D

    if cfg.task == "segmentation":
        cases = D.discover_cases(cfg.data)
        classes = None
    else:
        cases, classes = D.discover_classification_cases(cfg.data)
        if len(classes) != cfg.net.num_classes:
            raise D.DataError(f"the data under data.root {cfg.data.root!r} has {len(classes)} classes {classes} "
                              f"but net.num_classes is {cfg.net.num_classes}; set data.classes or net.num_classes")
    D.check_reader_support(cases, {"transforms.train": cfg.transforms.train, "transforms.val": cfg.transforms.val})
    problems: List[Dict] = []
    if cfg.data.verify:
        cases, problems = D.verify_cases(cases, cfg.data.on_bad_image)
    return cases, classes, problems


def _prepare_data(cfg: PipelineConfig,
                  discovered: Optional[Tuple[List[Dict], Optional[List[str]], List[Dict]]] = None) -> _Data:
    """Discover, verify and split the cases of either task (no torch work).

    Args:
        cfg: the pipeline.
        discovered: the result of :func:`_discover` when already done (cross-validation discovers and checks the
            files once, then splits them per fold).
    """
    from medpipe.data import datasets as D

    cases, classes, problems = discovered if discovered is not None else _discover(cfg)
    if cfg.task == "segmentation":
        # a list file's predefined test rows are predicted (infer.splits), never trained or validated on
        train, val, test = D.split_segmentation_cases(cases, cfg.data.split)
        if cfg.data.test_images:
            test = test + [{"image": f} for f in D.discover_images(D.resolve_root(cfg.data.root),
                                                                   cfg.data.test_images)]
        return _Data(cases, train, val, test, problems)
    train, val, test = D.split_classification_cases(cases, cfg.data.split)
    data = _Data(cases, train, val, test, problems, classes)
    if cfg.loss.class_weights == "balanced":
        data.class_weights = D.balanced_class_weights(train, classes)
        logger.info("balanced class weights %s", dict(zip(classes, data.class_weights)))
    if cfg.data.sampler == "weighted":
        data.sample_weights = D.inverse_frequency_weights(train, len(classes))
    return data


def _prepare_on_main(cfg: PipelineConfig, data: Optional[_Data], dist) -> _Data:
    """The split cases: prepared (files read and checked) by rank 0 only and sent to the other ranks; an error
    there is raised on every rank, so no process is left waiting."""
    if not dist.distributed:
        return data if data is not None else _prepare_data(cfg)
    result: object = None
    if dist.is_main:
        try:
            result = data if data is not None else _prepare_data(cfg)
        except Exception as exc:  # sent to the other ranks, then raised here too
            result = exc
    result = dist.broadcast(result)
    if isinstance(result, Exception):
        raise result
    return result  # type: ignore[return-value]


def _partition_weights(cfg: PipelineConfig, data: _Data, cases: List[Dict]) -> Optional[List[float]]:
    """Weighted sampling under DDP: inverse class frequencies within this rank's share of the training cases."""
    if cfg.data.sampler != "weighted":
        return None
    from medpipe.data.datasets import inverse_frequency_weights

    return inverse_frequency_weights(cases, len(data.classes or []))


def _log_run_start(cfg: PipelineConfig, resolved: Dict, data: _Data, out_dir: Path, tracker, dist) -> None:
    """Params, tags, config, manifest and integrity-check table of a new run (rank 0); ``mlflow_run.json`` in the
    artifact folder records the MLflow run for ``--resume <folder>``."""
    from medpipe.data.datasets import manifest_hash
    from medpipe.tracking import env_summary, git_commit, library_versions

    tracker.log_params(flatten(resolved))
    tags = {
        "pipeline": cfg.name, "task": cfg.task, "output_dir": str(out_dir.resolve()),
        "git_commit": git_commit(Path(__file__).parent) or "none",
        "dataset.manifest_sha256": data.manifest_sha256 or manifest_hash(data.cases), **data.tags(),
        **{f"version.{k}": v for k, v in library_versions().items()}, **env_summary(),
    }
    if dist.distributed:
        tags.update({"distributed.world_size": dist.world_size, "distributed.backend": dist.backend})
    tracker.set_tags(tags)
    tracker.log_artifact(out_dir / "config.resolved.yaml")
    tracker.log_artifact(out_dir / "manifest.json")
    problems_file = _write_problems(data.problems, out_dir)
    if problems_file is not None:
        tracker.log_artifact(problems_file)
    if tracker.run_id:
        (out_dir / "mlflow_run.json").write_text(json.dumps(
            {"run_id": tracker.run_id, "experiment_id": tracker.experiment_id,
             "tracking_uri": cfg.tracking.tracking_uri}, indent=1))


def _write_problems(problems: List[Dict], out_dir: Path) -> Optional[Path]:
    """The integrity check's table of bad files as ``data_problems.csv`` (file, reason), or ``None``."""
    if not problems:
        return None
    import csv

    path = out_dir / "data_problems.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "reason"])
        writer.writeheader()
        writer.writerows(problems)
    return path


@dataclass
class ResumeFrom:
    """Where ``--resume`` continues: the run's artifact folder, its latest checkpoint and its MLflow run."""

    output_dir: Path
    checkpoint: Path
    run_id: Optional[str] = None


def find_resume(run: str, tracking_uri: Optional[str] = None) -> Tuple[PipelineConfig, ResumeFrom]:
    """Resolve ``--resume RUN``: an artifact folder (``<output_dir>/<name>-<time>``) or an MLflow run id.

    The pipeline is the run's own ``config.resolved.yaml``; the checkpoint its newest
    ``checkpoints/latest_checkpoint_<epoch>.pt``; the MLflow run the one recorded in ``mlflow_run.json``.

    Args:
        run: folder or run id.
        tracking_uri: where to look a run id up; default ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``
            (the shipped pipelines' store).

    Raises:
        FileNotFoundError: no such folder / run, or the run has no checkpoint yet (it crashed before its first
            epoch ended: start it again instead).
        ValueError: a cross-validation parent folder (resume one of its ``fold_<k>`` folders).
    """
    from medpipe.engine.resume import latest_checkpoint

    folder = Path(run)
    if not folder.is_dir():
        from medpipe.tracking import run_output_dir

        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
        try:
            folder = run_output_dir(run, uri)
        except Exception as exc:  # mlflow raises its own exception types
            raise FileNotFoundError(f"--resume {run}: not a folder, and not a run id in MLflow at {uri} "
                                    f"({exc})") from None
    config_file = folder / "config.resolved.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"--resume {run}: {config_file} not found; expected a medpipe run folder")
    cfg = load_config(config_file)
    if cfg.data.split.kfold is not None and cfg.data.split.fold is None:
        raise ValueError(f"--resume {run}: a cross-validation run; resume one fold folder, e.g. {folder}/fold_0")
    ckpt = latest_checkpoint(folder / "checkpoints")
    if ckpt is None:
        raise FileNotFoundError(f"--resume {run}: no checkpoints/latest_checkpoint_<epoch>.pt in {folder} (the run "
                                "stopped before its first epoch ended); start it again instead")
    run_id = None
    info = folder / "mlflow_run.json"
    if info.is_file():
        run_id = json.loads(info.read_text()).get("run_id")
    return cfg, ResumeFrom(folder, ckpt, run_id)


def _check_same_split(data: "_Data", out_dir: Path) -> None:
    """Resuming: the cases must be those the run started with (``manifest.json``)."""
    from medpipe.data.datasets import DataError

    saved = json.loads((out_dir / "manifest.json").read_text())
    for split in ("train", "val", "test"):
        if saved.get(split, []) != getattr(data, split):
            raise DataError(f"cannot resume {out_dir}: its {split} split (manifest.json, {len(saved.get(split, []))}"
                            f" cases) differs from the data found now ({len(getattr(data, split))} cases); the data "
                            "under data.root changed since the run started")


def run_pipeline(cfg: PipelineConfig, out_dir: Optional[Path] = None, data: Optional[_Data] = None,
                 resume: Optional[ResumeFrom] = None) -> RunResult:
    """Train, evaluate and predict a validated pipeline; track it in MLflow.

    Segmentation: train, re-evaluate the best checkpoint on the validation split, predict masks for
    ``infer.splits``. Classification: train, reload the best checkpoint (chosen on the validation split's key
    metric), choose the operating threshold on the validation split, evaluate validation and the held-out test
    split, and write ``metrics.json``, ``report.md``, ``predictions/<split>.csv`` and the plots.

    With ``data.split.kfold`` and no ``data.split.fold`` this is a cross-validation:
    :func:`medpipe.cv.run_cross_validation` runs every fold and the result is a :class:`medpipe.cv.CVResult`.
    A run started while an MLflow run is active (a cross-validation parent, or the caller's own) is its child.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process calls this; training is distributed data-parallel
    (:mod:`medpipe.engine.distributed`) and rank 0 alone writes artifacts, checkpoints and the MLflow run, then
    evaluates and predicts by itself once training is over.

    Args:
        cfg: the validated pipeline.
        out_dir: the run's artifact folder (created; must not exist); default ``<output_dir>/<name>-<time>``.
        data: the split cases, when already prepared (cross-validation folds); default: discovered, checked and
            split here.
        resume: continue an interrupted run (:func:`find_resume`): its folder, latest checkpoint (network,
            optimizer, scheduler, AMP scaler, epoch, RNG states, history) and MLflow run.

    Raises:
        medpipe.data.datasets.DataError: bad or inconsistent data (names the file).
        Any exception from training; the MLflow run is then marked ``FAILED`` and checkpoints written so far
        stay in ``<run dir>/checkpoints``.
    """
    import torch

    from medpipe.data.datasets import build_dataset, build_loader
    from medpipe.data.transforms import build_transforms
    from medpipe.engine.distributed import init_distributed, partition_cases
    from medpipe.engine.trainer import build_engines, seed_everything
    from medpipe.nets import build_net
    from medpipe.nets.factory import prepare_net
    from medpipe.tracking import Tracker

    if cfg.data.split.kfold is not None and cfg.data.split.fold is None and data is None:
        from medpipe.cv import run_cross_validation

        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("data.split.kfold: a whole cross-validation cannot run under torchrun; run one fold per "
                             "torchrun with --set data.split.fold=<k>")

        return run_cross_validation(cfg)
    t0 = time.time()
    dist = init_distributed(cfg.train.device)
    try:
        if not dist.is_main:  # one voice: rank 0 logs, the others warn
            for name in ("medpipe", "ignite", "monai"):
                logging.getLogger(name).setLevel(logging.WARNING)
        if resume is not None:
            out_dir = resume.output_dir
        elif dist.is_main:
            out_dir = Path(out_dir) if out_dir is not None else _run_dir(cfg)
            out_dir.mkdir(parents=True)
        out_dir = Path(dist.broadcast(str(out_dir) if dist.is_main else None))
        resolved = resolved_dict(cfg)
        if dist.is_main and resume is None:
            (out_dir / "config.resolved.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))

        seed_everything(cfg.train.seed, cfg.train.deterministic)
        _slide_files(cfg)  # a missing slide or mask fails now, not after training
        data = _prepare_on_main(cfg, data, dist)
        if resume is not None:
            _check_same_split(data, out_dir)
        elif dist.is_main:
            manifest = {"train": data.train, "val": data.val, "test": data.test, "skipped": data.problems}
            if data.classes is not None:
                manifest["classes"] = data.classes
            (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))

        # Name the MLflow run after its artifact folder (<name>-<time>); MLflow's random names repeat here because
        # seed_everything has seeded the generator they are drawn from.
        tracker = Tracker(cfg.tracking.model_copy(update={"run_name": cfg.tracking.run_name or out_dir.name,
                                                          "enabled": cfg.tracking.enabled and dist.is_main}),
                          cfg.name, resume_run_id=resume.run_id if resume is not None else None)
        with tracker:
            if resume is None:
                _log_run_start(cfg, resolved, data, out_dir, tracker, dist)

            train_tf = build_transforms(cfg.transforms.train, "transforms.train")
            val_tf = build_transforms(cfg.transforms.val, "transforms.val")
            infer_tf = build_transforms(cfg.infer_transforms(), "transforms.infer") if cfg.task == "segmentation" \
                else None
            if cfg.data.cache_on_device:
                from medpipe.data.transforms import cache_on_device

                train_tf, val_tf = cache_on_device(train_tf, dist.device), cache_on_device(val_tf, dist.device)
            cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else out_dir / "cache"
            progress = cfg.train.progress and dist.is_main
            # under torchrun each rank caches and trains on its own share of the cases
            train_cases = partition_cases(data.train, dist, cfg.data.split.seed, even=True)
            val_cases = partition_cases(data.val, dist, cfg.data.split.seed, even=False)
            train_ds = build_dataset(train_cases, train_tf, cfg.data, cache_dir / "train", progress)
            val_ds = build_dataset(val_cases, val_tf, cfg.data, cache_dir / "val", progress)
            if cfg.task == "segmentation":
                train_loader = build_loader(train_ds, cfg.train.batch_size, True, cfg.data.num_workers,
                                            cfg.train.seed, loader=cfg.data.loader)
            else:  # a last batch of one sample would break batch norm
                weights = data.sample_weights if not dist.distributed else _partition_weights(cfg, data, train_cases)
                train_loader = build_loader(train_ds, cfg.train.batch_size, True, cfg.data.num_workers,
                                            cfg.train.seed, sample_weights=weights, loader=cfg.data.loader,
                                            drop_last=len(train_cases) > cfg.train.batch_size)
            val_loader = build_loader(val_ds, cfg.train.val_batch_size, False, cfg.data.num_workers, cfg.train.seed)

            net = build_net(cfg.net)
            net, load_report = prepare_net(net, cfg.net,
                                           cfg.tracking.tracking_uri if cfg.tracking.enabled else None)
            if load_report is not None and dist.is_main and resume is None:
                logger.info("%s", load_report.summary())
                (out_dir / "pretrained_report.json").write_text(json.dumps(load_report.to_dict(), indent=1))
                tracker.log_artifact(out_dir / "pretrained_report.json")
                tracker.log_metrics({"pretrained_loaded_fraction":
                                     load_report.n_loaded_values / max(load_report.n_net_values, 1)})
            engines = build_engines(cfg, net, train_loader, val_loader, out_dir / "checkpoints",
                                    class_weights=data.class_weights, dist=dist)
            tracker.attach(engines)
            if resume is not None:
                epoch = engines.resume(resume.checkpoint)
                logger.info("resuming %s from %s: epoch %d of %d done", out_dir, resume.checkpoint.name, epoch,
                            cfg.train.max_epochs)
                tracker.set_tags({f"resumed.{int(time.time())}": f"after epoch {epoch}"})
            logger.info("training %s: %d train / %d val cases, %d epochs on %s%s", cfg.name, len(data.train),
                        len(data.val), cfg.train.max_epochs, engines.device,
                        f" x {dist.world_size} processes ({dist.backend})" if dist.distributed else "")
            if resume is not None and engines.trainer.state.epoch >= cfg.train.max_epochs:
                logger.info("all %d epochs were trained before the interruption; evaluating", cfg.train.max_epochs)
            else:
                engines.trainer.run()
            train_seconds = time.time() - t0
            if dist.distributed:
                dist.close()  # every rank; rank 0 evaluates and predicts alone from here on
                if not dist.is_main:
                    return RunResult(out_dir, {}, seconds=time.time() - t0)
                val_ds = build_dataset(data.val, val_tf, cfg.data, cache_dir / "val", progress)
                val_loader = build_loader(val_ds, cfg.train.val_batch_size, False, cfg.data.num_workers,
                                          cfg.train.seed)

            # Final evaluation with the best checkpoint (the one selected on the key validation metric).
            best = engines.best_checkpoint
            if best is not None:
                state = torch.load(best, map_location=engines.device, weights_only=True)
                engines.net.load_state_dict(state.get("net", state))
            final: Dict[str, float] = {}
            predictions: Dict[str, List[Dict]] = {}
            if cfg.task == "segmentation":
                _finish_segmentation(cfg, engines, val_loader, data, infer_tf, out_dir, tracker, final,
                                     predictions, train_seconds, t0)
            else:
                test_loader = None
                if data.test:
                    test_ds = build_dataset(data.test, val_tf, cfg.data, cache_dir / "test", progress)
                    test_loader = build_loader(test_ds, cfg.train.val_batch_size, False, cfg.data.num_workers,
                                               cfg.train.seed)
                doc, report = _finish_classification(cfg, engines, val_loader, test_loader, data, out_dir,
                                                     tracker, final, train_seconds)
                if cfg.slide_infer is not None:
                    threshold = doc["threshold"] if doc["threshold"] is not None else 0.5
                    doc["slides"], section = _finish_slides(cfg, engines.net, engines.device, out_dir, tracker,
                                                            final, threshold)
                    report += section
                final["total_seconds"] = time.time() - t0
                tracker.log_metrics(final)
                (out_dir / "metrics.json").write_text(json.dumps(no_nan({"final": final, **doc}), indent=1))
                (out_dir / "report.md").write_text(report)
                for p in ("metrics.json", "report.md", "plots", "predictions"):
                    tracker.log_artifact(out_dir / p, p if p in ("plots", "predictions") else None)
            model_uri = tracker.log_model(engines.net)
        return RunResult(out_dir, final, tracker.run_id, cfg.tracking.tracking_uri if tracker.enabled else None,
                         model_uri, predictions, time.time() - t0)
    finally:
        dist.close()


def _finish_segmentation(cfg, engines, val_loader, data: _Data, infer_tf, out_dir: Path, tracker, final: Dict,
                         predictions: Dict, train_seconds: float, t0: float) -> None:
    """Re-evaluate the best checkpoint on validation, predict masks, write metrics.json and plots."""
    from medpipe.engine.trainer import build_evaluator
    from medpipe.inference.predict import predict_cases
    from medpipe.inference.sliding import build_inferer
    from medpipe.plots import plot_history, plot_overlays

    final_eval = build_evaluator(cfg, engines.net, val_loader, engines.device)
    final_eval.run()
    final.update({f"best_val_{k}": float(v) for k, v in final_eval.state.metrics.items()})
    final["best_epoch"] = float(_best_epoch(tracker.history, cfg.metrics.key_metric))
    final["train_seconds"] = train_seconds

    inferer = build_inferer(cfg.infer)
    for split in cfg.infer.splits:
        split_cases_ = data.val if split == "val" else data.test
        if not split_cases_:
            continue
        predictions[split] = predict_cases(
            engines.net, split_cases_, infer_tf, inferer, engines.device, out_dir / "predictions" / split,
            cfg.net.out_channels, cfg.infer.output_format, cfg.infer.save_probabilities, cfg.train.progress)
    final["total_seconds"] = time.time() - t0
    tracker.log_metrics(final)
    (out_dir / "metrics.json").write_text(json.dumps({"final": final, "history": tracker.history}, indent=1))

    plots = out_dir / "plots"
    plot_history(tracker.history, plots / "training_curves.png", title=cfg.name)
    if predictions.get("val"):
        plot_overlays(predictions["val"], plots / "val_overlays.png")
    for p in ("metrics.json", "plots", "predictions"):
        tracker.log_artifact(out_dir / p, None if p == "metrics.json" else p)


def _finish_classification(cfg, engines, val_loader, test_loader, data: _Data, out_dir: Path, tracker,
                           final: Dict, train_seconds: float) -> Tuple[Dict, str]:
    """Evaluate the best checkpoint on val (threshold chosen there) and test; write metrics, report, plots."""
    import numpy as np

    from medpipe.engine.evaluation import evaluate_classifier, predict_classifier
    from medpipe.engine.metrics import flat_classification_metrics
    from medpipe.plots import plot_confusion, plot_learning_curves, plot_misclassified, plot_roc

    amp = bool(cfg.train.amp and engines.device.type == "cuda")
    splits = {"val": predict_classifier(engines.net, val_loader, engines.device, amp)}
    if test_loader is not None:
        splits["test"] = predict_classifier(engines.net, test_loader, engines.device, amp)
    ev = evaluate_classifier(splits, data.classes, cfg.metrics.threshold)
    for name in splits:
        final.update(flat_classification_metrics(ev[name], "best_val_" if name == "val" else "test_"))
    final["best_epoch"] = float(_best_epoch(tracker.history, cfg.metrics.key_metric))
    final["epochs"] = float(engines.trainer.state.epoch)
    final["train_seconds"] = train_seconds

    pred_dir, plots = out_dir / "predictions", out_dir / "plots"
    pred_dir.mkdir(parents=True, exist_ok=True)
    thr = ev["threshold"]
    for name, sp in splits.items():
        preds = (sp.probs[:, 1] >= thr).astype(np.int64) if thr is not None else sp.probs.argmax(1)
        write_predictions_csv(pred_dir / f"{name}.csv", sp, preds, data.classes)
        plot_confusion(ev[name]["confusion_matrix"], data.classes, plots / f"confusion_{name}.png",
                       title=f"{cfg.name}: {name} (n={len(sp.labels)})")
        plot_misclassified(sp.images, sp.labels, preds, sp.probs, data.classes, plots / f"misclassified_{name}.png",
                           cfg.report.max_misclassified, title=f"misclassified, {name}")
    plot_learning_curves(tracker.history, plots / "learning_curves.png", cfg.metrics.key_metric, cfg.name)
    plot_roc({n: (sp.labels, sp.probs) for n, sp in splits.items()}, data.classes, plots / "roc.png",
             {n: thr for n in splits})
    doc = {"classes": data.classes, "threshold": thr, "threshold_rule": ev["threshold_rule"],
           "key_metric": cfg.metrics.key_metric, **{n: ev[n] for n in splits}, "history": tracker.history}
    return doc, classification_report_md(cfg, data, ev, final, tracker.run_id)


def _slide_files(cfg: PipelineConfig) -> List[Tuple[Path, Optional[Path]]]:
    """``(slide, label mask or None)`` paths of ``slide_infer.slides``, resolved against ``data.root``.

    Raises:
        FileNotFoundError: a slide or mask file does not exist (names the field and the path).
    """
    if cfg.slide_infer is None:
        return []
    from medpipe.data.datasets import resolve_root

    root = resolve_root(cfg.data.root)
    out = []
    for i, spec in enumerate(cfg.slide_infer.slides):
        paths = []
        for key in ("image", "label_mask"):
            value = getattr(spec, key)
            path = None if value is None else (Path(value) if Path(value).is_absolute() else root / value)
            if path is not None and not path.is_file():
                raise FileNotFoundError(f"slide_infer.slides.{i}.{key}: {path} not found (relative paths are "
                                        f"relative to data.root {root})")
            paths.append(path)
        out.append((paths[0], paths[1]))
    return out


def _finish_slides(cfg: PipelineConfig, net, device, out_dir: Path, tracker, final: Dict,
                   threshold: float) -> Tuple[List[Dict], str]:
    """Heatmap and score every ``slide_infer`` slide with the (best) network.

    Returns the per-slide rows (for ``metrics.json`` ``slides``) and the report section; adds the scalars below to
    ``final``.

    Writes ``slides/<stem>_heatmap.zarr`` (kept on disk, not uploaded), ``slides/<stem>_heatmap.png`` and
    ``slides/<stem>_overlay.png`` (logged under the run's ``slides/`` artifacts) and ``slides/slides.json``.
    Metrics: ``slide_auc`` (mean over scored slides; ROC AUC of positive vs negative label-mask cells),
    ``slide_seconds``, ``slide_tiles_per_second``, and per slide ``slide_<stem>_<metric>``. Sensitivity,
    specificity and F1 of the cells use ``threshold``, the run's operating threshold (0.5 for argmax runs).
    """
    import re

    import numpy as np

    from medpipe.inference.slide import predict_slide_heatmap

    si = cfg.slide_infer
    slide_dir = out_dir / "slides"
    rows, scalars = [], {}
    for slide_path, mask_path in _slide_files(cfg):
        hm = predict_slide_heatmap(
            net, slide_path, roi_size=si.roi_size, out_dir=slide_dir, a_min=si.intensity.a_min,
            a_max=si.intensity.a_max, b_min=si.intensity.b_min, b_max=si.intensity.b_max, clip=si.intensity.clip,
            overlap=si.overlap, mode=si.mode, sigma_scale=si.sigma_scale, sw_batch_size=si.sw_batch_size,
            tile_size=si.tile_size, level=si.level, mpp=si.mpp, input_size=cfg.slide_input_size(),
            resize_mode=si.resize_mode, class_index=si.class_index, tissue=si.tissue, min_tissue=si.min_tissue,
            tissue_channel=si.tissue_channel, tissue_max_size=si.tissue_max_size, backend=si.backend, device=device,
            thumbnail_size=si.thumbnail_size, alpha=si.alpha, progress=cfg.train.progress)
        row = {"slide": str(slide_path), "label_mask": str(mask_path) if mask_path else None, "level": hm.level,
               "shape": list(hm.shape), "windows": hm.n_windows, "windows_run": hm.n_windows_run,
               "tissue_fraction": hm.tissue_fraction, "inference_seconds": hm.inference_seconds,
               "seconds": hm.seconds, "tiles_per_second": hm.tiles_per_second,
               "heatmap_png": str(hm.heatmap_png.relative_to(out_dir)),
               "overlay_png": str(hm.overlay_png.relative_to(out_dir)), "settings": hm.settings}
        if mask_path is not None:
            row["score"] = _score_slide(hm, mask_path, si, threshold)
        rows.append(row)
        tag = re.sub(r"[^A-Za-z0-9_]", "_", slide_path.name.split(".")[0])
        scalars.update({f"slide_{tag}_{k}": v for k, v in row.get("score", {}).items()
                        if not k.startswith("n_") and k != "threshold"})
        scalars[f"slide_{tag}_seconds"] = hm.seconds
        for p in (hm.heatmap_png, hm.overlay_png):
            tracker.log_artifact(p, "slides")
    aucs = [r["score"]["auc"] for r in rows if "score" in r]
    if aucs:
        scalars["slide_auc"] = float(np.mean(aucs))
    scalars["slide_seconds"] = float(sum(r["seconds"] for r in rows))
    scalars["slide_tiles_per_second"] = sum(r["windows_run"] for r in rows) / max(
        sum(r["inference_seconds"] for r in rows), 1e-9)
    final.update(scalars)
    (slide_dir / "slides.json").write_text(json.dumps(no_nan(rows), indent=1))
    tracker.log_artifact(slide_dir / "slides.json", "slides")
    return rows, slide_report_md(rows, threshold, si)


def _score_slide(hm, mask_path: Path, si, threshold: float) -> Dict:
    """Score one heatmap against its label mask over ``roi_size`` cells (coverage = where windows ran)."""
    import numpy as np
    import zarr
    from PIL import Image

    from medpipe.data.datasets import DataError
    from medpipe.inference.slide import score_heatmap

    with Image.open(mask_path) as im:
        mask = np.asarray(im)
    if mask.ndim != 2:
        raise DataError(f"slide_infer label_mask {mask_path}: expected a one-channel label image, found shape "
                        f"{mask.shape} (mode {im.mode})")
    coverage = np.asarray(zarr.open_group(str(hm.zarr_path), mode="r")["weight"]) > 0
    score = score_heatmap(hm.heatmap(), mask, si.roi_size, positive_label=si.positive_label,
                          negative_label=si.negative_label, background_label=si.background_label,
                          threshold=threshold, coverage=coverage)
    logger.info("slide %s: AUC %.4f over %d cells (%d positive, %d negative, %d not inferred)", hm.slide.name,
                score["auc"], score["n_patches"], score["n_pos"], score["n_neg"], score["n_uncovered"])
    return score


def _best_epoch(history: Dict[str, list], key: str) -> int:
    vals = history.get("val", [])
    if not vals:
        return 0
    return max(vals, key=lambda r: r.get(key, float("-inf")))["epoch"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m medpipe.run", description=(
        "Validate, train, evaluate, predict and track a pipeline; --resume continues an interrupted run; under "
        "torchrun (torchrun --nproc_per_node N -m medpipe.run X.yaml) training is distributed data-parallel."))
    p.add_argument("pipeline", nargs="?", help="pipeline YAML file, e.g. pipelines/em_unet.yaml")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its latest checkpoint, logging "
                   "into the same MLflow run: its artifact folder or MLflow run id (its own config is used)")
    p.add_argument("--tracking-uri", help="with --resume RUN_ID: the MLflow store to find the run in (default "
                   "$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.max_epochs=3 (repeatable; values are YAML)")
    p.add_argument("--validate-only", action="store_true", help="validate the pipeline and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point; returns the process exit code (0 ok, 2 invalid config or data)."""
    parser = _parser()
    args = parser.parse_args(argv)
    configure_cli_logging(args.verbose)
    if args.resume is not None and (args.pipeline or args.overrides):
        parser.error("--resume continues a run with its own config.resolved.yaml: give no pipeline and no --set")
    if args.resume is None and not args.pipeline:
        parser.error("a pipeline YAML file (or --resume RUN) is required")
    resume = None
    try:
        if args.resume is not None:
            cfg, resume = find_resume(args.resume, args.tracking_uri)
        else:
            cfg = load_config(args.pipeline, args.overrides)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 2
    if cfg.data.split.kfold is not None and cfg.data.split.fold is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        print("error: data.split.kfold: a whole cross-validation cannot run under torchrun; run one fold per torchrun "
              "with --set data.split.fold=<k>", file=sys.stderr)
        return 2
    if args.validate_only:
        print(f"{args.pipeline or args.resume}: valid ({cfg.name}, task {cfg.task}, net {cfg.net.name})")
        return 0
    from medpipe.data.datasets import DataError

    try:
        result = run_pipeline(cfg, resume=resume)
    except (DataError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 reports
        return 0
    print(f"artifacts: {result.output_dir}")
    for fold in getattr(result, "folds", []):  # cross-validation: one child run per fold
        print(f"  fold {fold.output_dir.name}: {fold.output_dir} (MLflow child run {fold.run_id})")
    for k, v in result.metrics.items():
        print(f"  {k}: {v:.4f}")
    if result.run_id:
        print(f"MLflow run {result.run_id} in {result.tracking_uri}")
        print(f"  open it with: mlflow ui --backend-store-uri {result.tracking_uri}")
        if result.model_uri:
            print(f"  model: {result.model_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
