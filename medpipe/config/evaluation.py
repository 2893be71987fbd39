"""Evaluation sections: ``metrics`` (names, key metric, operating threshold), ``report`` and ``infer``
(sliding-window inference)."""

from __future__ import annotations

import typing
from typing import List, Literal, Optional, Tuple, Union

from pydantic import Field, field_validator, model_validator
from typing_extensions import Annotated

from medpipe.config.base import StrictModel

__all__ = ["SegMetric", "ClsMetric", "SEGMENTATION_METRICS", "CLASSIFICATION_METRICS", "LOWER_IS_BETTER_METRICS",
           "MetricsConfig", "ReportConfig", "InferConfig"]

#: segmentation metric names (see :class:`MetricsConfig`)
SegMetric = Literal["dice", "pixel_accuracy", "v_rand", "v_info", "hd95"]
#: classification metric names (see :class:`MetricsConfig`)
ClsMetric = Literal["accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity", "precision", "f1"]
SEGMENTATION_METRICS: Tuple[str, ...] = typing.get_args(SegMetric)
CLASSIFICATION_METRICS: Tuple[str, ...] = typing.get_args(ClsMetric)
#: metrics where lower is better (distances); they are reported but cannot be ``key_metric``
LOWER_IS_BETTER_METRICS: Tuple[str, ...] = ("hd95",)


class MetricsConfig(StrictModel):
    """Validation metrics. ``key_metric`` selects the best checkpoint (higher is better).

    Segmentation (default ``[dice, pixel_accuracy]``, key ``dice``): ``dice``: MONAI ``DiceMetric`` over the
    foreground classes; ``pixel_accuracy``; ``v_rand`` and ``v_info``: the ISBI-2012 foreground-restricted Rand and
    information-theoretic scores (Arganda-Carreras et al. 2015); ``hd95``: the 95th-percentile symmetric Hausdorff
    distance between predicted and true foreground boundaries (MONAI ``HausdorffDistanceMetric``, percentile 95,
    foreground classes, mean over images), in **pixels** (no spacing is applied); lower is better, so it cannot be
    ``key_metric``. An image whose prediction or ground truth is empty (but not both) scores the image diagonal
    (the largest possible distance; MONAI would give NaN, silently dropped from its mean); both empty scores NaN and
    is left out of the mean; either case is logged
    (:class:`medpipe.engine.metric_handlers.HD95Metric`).

    Classification (default all seven; key ``auc`` for two classes, threshold-free and insensitive to class
    imbalance, else ``balanced_accuracy``, the mean recall of Brodersen et al. 2010): ``accuracy``,
    ``balanced_accuracy``, ``auc`` (ROC AUC; one-vs-rest macro mean for more than two classes),
    ``sensitivity`` (recall), ``specificity``, ``precision``, ``f1``. With two classes the last four are those of
    the positive class (index 1, the second of ``data.classes``) at threshold 0.5; with more classes they are
    unweighted macro means over classes. The validation loss (unweighted cross-entropy) is always computed too.
    Definitions: :func:`medpipe.metrics.classification_metrics`. A class never predicted has precision 0
    (scikit-learn ``zero_division=0``; a warning is logged).
    """

    names: Optional[List[Union[SegMetric, ClsMetric]]] = Field(None, description="default: by task (see above)")
    key_metric: Optional[Union[SegMetric, ClsMetric]] = Field(None, description="default: by task (see above)")
    threshold: Union[Literal["youden"], Annotated[float, Field(gt=0, lt=1)]] = Field(
        0.5, description="classification, two classes: final operating threshold on P(class 1): a probability, "
        "or youden = maximise sensitivity + specificity - 1 on the validation split (Youden 1950), then applied "
        "unchanged to the test split. Per-epoch validation metrics always use 0.5")

    @field_validator("key_metric")
    @classmethod
    def _key_higher_is_better(cls, v: Optional[str]) -> Optional[str]:
        if v in LOWER_IS_BETTER_METRICS:
            raise ValueError(f"{v!r} is lower-is-better (a distance in pixels), but key_metric selects the "
                             "checkpoint with the highest value; use a higher-is-better metric such as dice and keep "
                             f"{v} in metrics.names")
        return v

    @model_validator(mode="after")
    def _key_in_names(self) -> "MetricsConfig":
        if self.key_metric is not None and self.names is not None and self.key_metric not in self.names:
            raise ValueError(f"key_metric {self.key_metric!r} must be one of names {self.names}")
        return self


class ReportConfig(StrictModel):
    """The one-page ``report.md`` of a classification run."""

    anchor: Optional[str] = Field(None, description="published result to quote beside the measured test metrics")
    max_misclassified: int = Field(16, ge=0, description="misclassified examples shown in the plot grid")


class InferConfig(StrictModel):
    """Sliding-window inference (``monai.inferers.SlidingWindowInferer``) for validation and prediction.

    Windows of ``roi_size`` pixels overlap by ``overlap`` (fraction); overlapping outputs are blended with a
    gaussian (``sigma_scale`` of the window size) or constant importance map.
    """

    roi_size: List[int] = Field(..., min_length=2, max_length=3)
    sw_batch_size: int = Field(4, ge=1)
    overlap: float = Field(0.25, ge=0, lt=1)
    mode: Literal["gaussian", "constant"] = "gaussian"
    sigma_scale: float = Field(0.125, gt=0)
    padding_mode: Literal["constant", "reflect", "replicate", "circular"] = "constant"
    splits: List[Literal["val", "test"]] = ["val", "test"]
    output_format: Literal["png", "nifti"] = "png"
    save_probabilities: bool = Field(False, description="also save foreground probability maps (.npy float32)")
