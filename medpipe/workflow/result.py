"""The one result type of a run: :class:`RunResult` (a single run, a cross-validation fold, or a whole
cross-validation with its folds)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

__all__ = ["RunResult"]


@dataclass
class RunResult:
    """What a pipeline run produced.

    Attributes:
        output_dir: the run folder (:class:`medpipe.runs.RunFolder` path); a cross-validation's parent folder
            holds the folds' folders ``fold_<k>/``.
        metrics: the final scalar metrics, as written to ``metrics.json`` ``final`` and logged to MLflow (a
            cross-validation: ``cv_mean_<metric>`` / ``cv_std_<metric>`` over folds).
        run_id: the MLflow run (a cross-validation's parent run); ``None`` when tracking is disabled.
        tracking_uri: the MLflow store of ``run_id``.
        model_uri: the logged best model (``runs:/<id>/model``); ``None`` for a cross-validation parent.
        predictions: segmentation: per split (``val``, ``test``) the written prediction records
            (:func:`medpipe.inference.predict.predict_cases`).
        seconds: wall time of the run, seconds.
        folds: a cross-validation: each fold's result, in fold order (each with its child ``run_id``); else empty.
        summary: a cross-validation: ``{metric: {"mean", "std", "n"}}`` over folds; else empty.
        kfold: a cross-validation: the number of folds K; else 0.
    """

    output_dir: Path
    metrics: Dict[str, float]
    run_id: Optional[str] = None
    tracking_uri: Optional[str] = None
    model_uri: Optional[str] = None
    predictions: Dict[str, List[Dict]] = field(default_factory=dict)
    seconds: float = 0.0
    folds: List["RunResult"] = field(default_factory=list)
    summary: Dict[str, Dict[str, float]] = field(default_factory=dict)
    kfold: int = 0
