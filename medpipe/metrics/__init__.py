"""Evaluation metrics: segmentation (Dice, pixel accuracy, the official ISBI-2012 V-Rand / V-Info after border
thinning and their unthinned one-threshold variants; per label for more than two classes: Dice, HD95 and average
surface distance in mm from the voxel spacing, volumes in mm3; the empty-mask rule of the distances)
and classification (confusion matrix, sensitivity / specificity / precision / F1, ROC AUC, Youden threshold).

Modules: :mod:`~medpipe.metrics.segmentation`, :mod:`~medpipe.metrics.isbi2012` (the challenge protocol) and
:mod:`~medpipe.metrics.classification` (numpy, scipy, scikit-image, scikit-learn; no torch),
:mod:`~medpipe.metrics.distance` (HD95 / ASD with spacing, torch and MONAI), :mod:`~medpipe.metrics.perlabel`
(per-class Dice, distances, volumes), :mod:`~medpipe.metrics.arrays` (input checks). This package never imports ``medpipe.engine``, ``tracking``, ``serve`` or ``run``; the ignite / MONAI handlers that
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
from medpipe.metrics.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_curve,
)
from medpipe.metrics.ood import error_detection_auroc, fit_ood_threshold, ood_scores
from medpipe.metrics.intervals import (
    add_intervals,
    bootstrap_interval,
    classification_intervals,
    delong_interval,
    delong_test,
    format_with_interval,
    mean_interval,
    paired_bootstrap_difference,
)
from medpipe.metrics.distance import (
    EmptyMaskScores,
    batch_spacing,
    boundary_distances,
    image_diagonal,
    score_empty_masks,
    spacing_from_affine,
)
from medpipe.metrics.perlabel import label_names, label_volumes, one_hot, per_label_dice, per_label_distances
from medpipe.metrics.segmentation import (
    dice_score,
    pixel_accuracy,
    rand_and_info_scores,
    segmentation_metrics,
    v_info_unthinned,
    v_rand_unthinned,
)
from medpipe.metrics.isbi2012 import isbi2012_score_table, isbi2012_scores

__all__ = [
    "dice_score",
    "pixel_accuracy",
    "rand_and_info_scores",
    "segmentation_metrics",
    "v_rand_unthinned",
    "v_info_unthinned",
    "isbi2012_scores",
    "isbi2012_score_table",
    "confusion_matrix",
    "classification_metrics",
    "youden_threshold",
    "select_metric",
    "flat_classification_metrics",
    "mean_cross_entropy",
    "image_diagonal",
    "EmptyMaskScores",
    "score_empty_masks",
    "batch_spacing",
    "spacing_from_affine",
    "boundary_distances",
    "label_names",
    "one_hot",
    "per_label_dice",
    "per_label_distances",
    "label_volumes",
    "expected_calibration_error",
    "reliability_curve",
    "fit_temperature",
    "apply_temperature",
    "negative_log_likelihood",
    "ood_scores",
    "fit_ood_threshold",
    "error_detection_auroc",
    "bootstrap_interval",
    "mean_interval",
    "classification_intervals",
    "delong_interval",
    "delong_test",
    "paired_bootstrap_difference",
    "add_intervals",
    "format_with_interval",
]
