"""The ensemble of a cross-validation's fold models on its held-out test split.

After the K folds of :func:`medpipe.workflow.cv.run_cross_validation`, each fold's best checkpoint (loaded with
:func:`medpipe.runs.load_trained`) predicts every test case and the predictions are averaged with equal weights,
as nnU-Net ensembles its five fold models (Isensee et al. 2021: mean of the softmax outputs):

* classification: the mean of the K models' class probabilities (each with test-time mirroring when
  ``infer.tta``). The operating threshold (``metrics.threshold``) and the temperature (``metrics.calibration``)
  are chosen on the pooled **out-of-fold** validation predictions (each pool case predicted by the fold model that
  did not train on it) and applied unchanged to the ensemble's test probabilities, so the test split still
  decides nothing; metrics and intervals by :func:`medpipe.engine.evaluation.evaluate_classifier`;
* segmentation: the mean of the K softmax maps on the original grid, its argmax the mask (no post-processing:
  each fold chose its own), scored per case as a single run's test split (:mod:`medpipe.workflow.seg_eval`).

The result is ``ensemble_test_<metric>`` (with ``_ci_low`` / ``_ci_high``) for the parent run and the
``ensemble`` section of its ``metrics.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from medpipe.config import PipelineConfig
from medpipe.data.loaders import build_dataset, build_loader
from medpipe.data.transforms import build_transforms
from medpipe.engine.evaluation import SplitPredictions, evaluate_classifier, predict_classifier
from medpipe.engine.trainer import resolve_device
from medpipe.inference.predict import predict_case
from medpipe.metrics.intervals import add_intervals
from medpipe.runs import load_trained
from medpipe.workflow.seg_eval import SplitScores, case_scores, label_and_spacing, summarize_split, write_per_case_csv

logger = logging.getLogger("medpipe.cv")

__all__ = ["PREFIX", "mean_predictions", "ensemble_test"]

#: prefix of the ensemble's flat metrics
PREFIX = "ensemble_test_"


def mean_predictions(members: Sequence[SplitPredictions]) -> SplitPredictions:
    """The equal-weight ensemble of classifiers' predictions on the same cases (same loader order).

    Args:
        members: one :class:`SplitPredictions` per model, with logits.

    Returns:
        :class:`SplitPredictions`: ``probs`` the mean of the members' probabilities, ``logits`` the mean of their
        logits (for OOD scores), ``tta_logits`` ``(M, N, C)`` every member's logits (all its mirrored copies with
        test-time augmentation, each member the same number), so that a temperature ``T`` gives the mean of
        ``softmax(logits / T)`` over members (:meth:`SplitPredictions.calibrated`).

    Raises:
        ValueError: no member, or members whose cases or labels differ.
    """
    if not members:
        raise ValueError("mean_predictions: no member to ensemble")
    first = members[0]
    for i, m in enumerate(members[1:], 1):
        if list(m.images) != list(first.images) or not np.array_equal(m.labels, first.labels):
            raise ValueError(f"mean_predictions: member {i} predicted other cases (or labels) than member 0")
    views = [m.tta_logits if m.tta_logits is not None else m.logits[None] for m in members]
    return SplitPredictions(list(first.images), first.labels, np.mean([m.probs for m in members], axis=0),
                            np.mean([m.logits for m in members], axis=0), np.concatenate(views, axis=0))


def _classifier_loader(cfg: PipelineConfig, cases: List[Dict], val_tf):
    """An uncached, unshuffled loader over ``cases`` with the validation transforms."""
    ds = build_dataset(cases, val_tf, cfg.data.model_copy(update={"cache": "none"}))
    return build_loader(ds, cfg.train.val_batch_size, False, cfg.data.num_workers, cfg.train.seed)


def _classification(cfg: PipelineConfig, fold_dirs: Sequence[Path], fold_vals: Sequence[List[Dict]],
                    test: List[Dict], device) -> Tuple[Dict[str, float], Dict[str, Any]]:
    """Flat metrics and section of a classifier ensemble (module docstring)."""
    val_tf = build_transforms(cfg.transforms.val, "transforms.val", series_uid=cfg.data.series_uid)
    tta = bool(cfg.infer is not None and cfg.infer.tta)
    kw = dict(amp=bool(cfg.train.amp and device.type == "cuda"), tta=tta,
              tta_axes=cfg.infer.tta_axes if tta else None)
    test_loader = _classifier_loader(cfg, test, val_tf)
    members, oof, classes = [], [], None
    for folder, val in zip(fold_dirs, fold_vals):
        trained = load_trained(str(folder), device=str(device))
        classes = trained.classes
        members.append(predict_classifier(trained.net, test_loader, device, **kw))
        oof.append(predict_classifier(trained.net, _classifier_loader(cfg, val, val_tf), device, **kw))
    pooled = SplitPredictions(
        sum((list(p.images) for p in oof), []), np.concatenate([p.labels for p in oof]),
        np.concatenate([p.probs for p in oof]), np.concatenate([p.logits for p in oof]),
        np.concatenate([p.tta_logits for p in oof], axis=1) if tta else None)
    m = cfg.metrics
    ev = evaluate_classifier({"val": pooled, "test": mean_predictions(members)}, classes, m.threshold,
                             calibration=m.calibration, calibration_bins=m.calibration_bins, intervals=m.intervals)
    flat = {f"ensemble_{k}": float(v) for k, v in ev["final"].items() if k.startswith("test_")}
    section = {"threshold": ev["threshold"], "threshold_rule": ev["threshold_rule"] + " on the pooled out-of-fold "
               "validation predictions", "calibration": ev["calibration"], "test": ev["test"],
               "at_050": ev["at_050"].get("test")}
    return flat, section


def _segmentation(cfg: PipelineConfig, fold_dirs: Sequence[Path], test: List[Dict], device,
                  out_dir: Path) -> Tuple[Dict[str, float], Dict[str, Any]]:
    """Flat metrics and section of a segmentation ensemble (module docstring)."""
    val_tf = build_transforms(cfg.transforms.val, "transforms.val", series_uid=cfg.data.series_uid)
    runs = [load_trained(str(folder), device=str(device)) for folder in fold_dirs]
    tta = dict(tta=bool(cfg.infer.tta), tta_axes=cfg.infer.tta_axes)
    names, k = list(cfg.metrics.names), cfg.net.out_channels
    scores = SplitScores()
    for case in test:
        prob = np.mean([predict_case(r.net, case, r.transform, r.inferer, device, **tta) for r in runs], axis=0)
        label, spacing = label_and_spacing(case, val_tf)
        scores.add(case["image"], case_scores(prob, prob.argmax(0), label, names, k, spacing=spacing,
                                              class_names=cfg.metrics.class_names))
    values, cis, columns, official = summarize_split(scores, names, cfg.metrics.intervals)
    flat = {f"{PREFIX}{n}": float(v) for n, v in values.items()}
    add_intervals(flat, cis, PREFIX)
    csv_path = write_per_case_csv(out_dir / "ensemble" / "test_per_case.csv", scores.images, columns)
    section = {"test": values, "per_case": str(csv_path.relative_to(out_dir)), "postprocessing": "none"}
    if official:
        section["isbi2012"] = official
    return flat, section


def ensemble_test(cfg: PipelineConfig, fold_dirs: Sequence[Path], fold_vals: Sequence[List[Dict]],
                  test: List[Dict], out_dir: Path) -> Tuple[Dict[str, float], Dict[str, Any]]:
    """Predict the held-out test split with the mean of the fold models and score it (module docstring).

    Args:
        cfg: the cross-validation's pipeline.
        fold_dirs: each fold's run folder (``fold_<k>/``, with ``checkpoints/best_*.pt``), in fold order.
        fold_vals: each fold's validation cases (classification: the out-of-fold predictions).
        test: the held-out test cases; segmentation scores only those with a ``label``.
        out_dir: the cross-validation's folder (segmentation writes ``ensemble/test_per_case.csv`` there).

    Returns:
        ``(flat, section)``: ``flat`` ``{"ensemble_test_<metric>": value, ... "_ci_low", "_ci_high"}`` (and for
        two classes ``ensemble_test_at050_<metric>``); ``section`` the ``metrics.json`` ``ensemble`` entry
        (``n_models``, ``members``, ``combination``, the test metrics, and for classifiers the threshold and
        calibration chosen out of fold). ``({}, {})`` when there is no (labelled) test case.

    Raises:
        FileNotFoundError: a fold has no best checkpoint.
    """
    device = resolve_device(cfg.train.device)
    if cfg.task == "segmentation":
        test = [c for c in test if "label" in c]
    if not test or not fold_dirs:
        return {}, {}
    logger.info("cross-validation %s: ensemble of %d fold models on %d test cases", cfg.name, len(fold_dirs),
                len(test))
    if cfg.task == "classification":
        flat, section = _classification(cfg, fold_dirs, fold_vals, test, device)
        combination = "mean of the fold models' class probabilities"
    else:
        flat, section = _segmentation(cfg, fold_dirs, test, device, out_dir)
        combination = "mean of the fold models' softmax maps, argmax"
    head = {"n_models": len(fold_dirs), "members": [str(Path(d).name) for d in fold_dirs],
            "combination": combination + (" (each with test-time mirroring)" if cfg.infer is not None
                                          and cfg.infer.tta else ""), "n_test": len(test)}
    return flat, {**head, **section}
