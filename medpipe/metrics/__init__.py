"""Evaluation metrics: segmentation (Dice, pixel accuracy, ISBI-2012 V-Rand / V-Info, the HD95 empty-mask rule)
and classification (confusion matrix, sensitivity / specificity / precision / F1, ROC AUC, Youden threshold).

Modules: :mod:`~medpipe.metrics.segmentation` and :mod:`~medpipe.metrics.classification` (numpy, scikit-image,
scikit-learn; no torch), :mod:`~medpipe.metrics.distance` (torch), :mod:`~medpipe.metrics.arrays` (input checks).
This package never imports ``medpipe.engine``, ``tracking``, ``serve`` or ``run``; the ignite / MONAI handlers that
accumulate these metrics during validation live in :mod:`medpipe.engine.metric_handlers`.
"""

from medpipe.metrics.classification import (
    classification_metrics,
    confusion_matrix,
    flat_classification_metrics,
    mean_cross_entropy,
    select_metric,
    youden_threshold,
)
from medpipe.metrics.distance import EmptyMaskScores, image_diagonal, score_empty_masks
from medpipe.metrics.segmentation import (
    dice_score,
    pixel_accuracy,
    rand_and_info_scores,
    segmentation_metrics,
    v_info,
    v_rand,
)

__all__ = [
    "dice_score",
    "pixel_accuracy",
    "rand_and_info_scores",
    "segmentation_metrics",
    "v_rand",
    "v_info",
    "confusion_matrix",
    "classification_metrics",
    "youden_threshold",
    "select_metric",
    "flat_classification_metrics",
    "mean_cross_entropy",
    "image_diagonal",
    "EmptyMaskScores",
    "score_empty_masks",
]
