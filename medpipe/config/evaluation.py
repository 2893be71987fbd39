"""Evaluation sections: ``metrics`` (names, key metric, operating threshold), ``report`` and ``infer``
(sliding-window inference)."""

from __future__ import annotations

import re
import typing
from typing import List, Literal, Optional, Tuple, Union

from pydantic import Field, field_validator, model_validator
from typing_extensions import Annotated

from medpipe.config.base import StrictModel

__all__ = ["SegMetric", "ClsMetric", "SEGMENTATION_METRICS", "CLASSIFICATION_METRICS", "LOWER_IS_BETTER_METRICS",
           "NOT_KEY_METRICS", "ThresholdTarget", "IntervalsConfig", "MetricsConfig", "ReportConfig", "InferConfig"]

#: segmentation metric names (see :class:`MetricsConfig`)
SegMetric = Literal["dice", "pixel_accuracy", "v_rand", "v_info", "v_rand_unthinned", "v_info_unthinned", "hd95",
                    "asd", "volume"]
#: classification metric names (see :class:`MetricsConfig`)
ClsMetric = Literal["accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity", "precision", "f1"]
SEGMENTATION_METRICS: Tuple[str, ...] = typing.get_args(SegMetric)
CLASSIFICATION_METRICS: Tuple[str, ...] = typing.get_args(ClsMetric)
#: metrics where lower is better (distances); they are reported but cannot be ``key_metric``
LOWER_IS_BETTER_METRICS: Tuple[str, ...] = ("hd95", "asd")
#: metrics that cannot select the best checkpoint: the distances and ``volume`` (a size, not a score)
NOT_KEY_METRICS: Tuple[str, ...] = LOWER_IS_BETTER_METRICS + ("volume",)


class ThresholdTarget(StrictModel):
    """An operating point a clinician asks for: the highest threshold on P(class 1) whose **validation**
    sensitivity is at least ``sensitivity`` (or specificity at least ``specificity``); exactly one is set. The
    threshold is then applied unchanged to the test split, whose sensitivity / specificity are reported with
    intervals (they may fall below the target: the test split never influences the choice)."""

    sensitivity: Optional[float] = Field(None, gt=0, le=1, description="minimum validation sensitivity")
    specificity: Optional[float] = Field(None, gt=0, le=1, description="minimum validation specificity")

    @model_validator(mode="after")
    def _exactly_one(self) -> "ThresholdTarget":
        if (self.sensitivity is None) == (self.specificity is None):
            raise ValueError("set exactly one of sensitivity or specificity, e.g. {sensitivity: 0.95}")
        return self


class IntervalsConfig(StrictModel):
    """Confidence intervals of every reported validation / test metric: a percentile bootstrap over cases
    (images; stratified by class for classification), seeded; AUC also gets DeLong's interval
    (DeLong et al. 1988, with the fast algorithm of Sun & Xu 2014)."""

    n_resamples: int = Field(1000, ge=0, description="bootstrap resamples (0: no intervals; otherwise at least 100)")
    confidence_level: float = Field(0.95, gt=0, lt=1, description="two-sided coverage of every interval")
    seed: int = Field(0, description="seed of the bootstrap resampling")

    @field_validator("n_resamples")
    @classmethod
    def _enough(cls, v: int) -> int:
        if 0 < v < 100:
            raise ValueError(f"{v} resamples give unstable interval ends; use 0 (no intervals) or at least 100")
        return v


class MetricsConfig(StrictModel):
    """Validation metrics. ``key_metric`` selects the best checkpoint (higher is better).

    Segmentation (default ``[dice, pixel_accuracy]``, key ``dice``): ``dice``: MONAI ``DiceMetric`` over the
    foreground classes; ``pixel_accuracy``; ``v_rand`` and ``v_info``: the ISBI-2012 challenge scores as its
    leaderboard ranks them (Arganda-Carreras et al. 2015): foreground-restricted Rand and information-theoretic scores
    after thinning the predicted membranes, the best over the cell-probability thresholds 0.0, 0.1, ..., 0.9
    (:func:`medpipe.metrics.isbi2012_scores`); ``v_rand_unthinned`` / ``v_info_unthinned``: the same scores of the
    argmax mask, without thinning, at one threshold (what medpipe called ``v_rand`` / ``v_info`` until December 2026); ``hd95``: the 95th-percentile symmetric Hausdorff
    distance between predicted and true foreground boundaries (MONAI ``HausdorffDistanceMetric``, percentile 95,
    foreground classes, mean over images) in **mm** from the voxel spacing of each case (NIfTI / DICOM headers; in
    **pixels** for PNG / TIFF inputs, whose spacing is 1); ``asd``: the average symmetric surface distance (Heimann
    et al. 2009; MONAI ``SurfaceDistanceMetric(symmetric=True)``), in mm likewise; both are lower-is-better, so they
    cannot be ``key_metric``. An image whose prediction or ground truth is empty (but not both) scores the image
    diagonal in mm (the largest possible distance; MONAI would give NaN, silently dropped from its mean); both empty
    scores NaN and is left out of the mean; either case is logged
    (:class:`medpipe.engine.metric_handlers.HD95Metric`). ``volume``: the predicted and true volume of each
    foreground class in mm3 (voxel count times the voxel volume; final evaluation only, not a key metric).
    With more than two classes every metric is also reported per foreground class (``dice_<class>``,
    ``hd95_<class>``, ``asd_<class>``, named by ``class_names``), and ``dice`` / ``hd95`` / ``asd`` are the mean over
    the foreground classes of each case.

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
    threshold: Union[Literal["youden"], Annotated[float, Field(gt=0, lt=1)], ThresholdTarget] = Field(
        0.5, description="classification, two classes: final operating threshold on P(class 1): a probability, "
        "youden = maximise sensitivity + specificity - 1 on the validation split (Youden 1950), or a target "
        "{sensitivity: 0.95} / {specificity: 0.9} met on the validation split; applied unchanged to the test split, "
        "whose metrics are reported at 0.5 and at this point. Per-epoch validation metrics always use 0.5")
    class_names: Optional[List[str]] = Field(
        None, min_length=2, description="segmentation: one name per class, background first (e.g. [background, "
        "anterior, posterior]), used in the per-class metric keys (dice_anterior, best_val_hd95_posterior, ...); "
        "default class_1, class_2, ...")
    intervals: IntervalsConfig = Field(default_factory=IntervalsConfig)
    calibration: Literal["none", "temperature"] = Field(
        "none", description="classification: temperature = scale the logits by one temperature fitted on the "
        "validation split (minimum negative log-likelihood, Guo et al. 2017), applied to test, exports and the "
        "served model; expected calibration error and reliability diagrams are reported before and after")
    calibration_bins: int = Field(15, ge=2, description="equal-width confidence bins of the expected calibration "
                                  "error and the reliability diagram (Guo et al. 2017 use 15)")
    ood: Literal["energy", "max_softmax", "none"] = Field(
        "energy", description="classification: out-of-distribution score of every prediction: energy = "
        "-logsumexp(logits) (Liu et al. 2020) or max_softmax = 1 - max probability (Hendrycks & Gimpel 2017); "
        "higher = more unusual; its threshold is fitted on the validation split (see ood_coverage)")
    ood_coverage: float = Field(0.95, gt=0, lt=1, description="fraction of validation cases whose OOD score is "
                                "below the threshold (scored in distribution)")

    @field_validator("key_metric")
    @classmethod
    def _key_higher_is_better(cls, v: Optional[str]) -> Optional[str]:
        if v in LOWER_IS_BETTER_METRICS:
            raise ValueError(f"{v!r} is lower-is-better (a distance in mm or pixels), but key_metric selects the "
                             "checkpoint with the highest value; use a higher-is-better metric such as dice and keep "
                             f"{v} in metrics.names")
        if v in NOT_KEY_METRICS:
            raise ValueError(f"{v!r} is a size, not a score, and cannot select the best checkpoint; use a "
                             f"higher-is-better metric such as dice and keep {v} in metrics.names")
        return v

    @field_validator("class_names")
    @classmethod
    def _class_names(cls, v: Optional[List[str]]) -> Optional[List[str]]:
        if v is None:
            return v
        bad = [n for n in v if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", n)]
        if bad:
            raise ValueError(f"{bad} cannot be part of a metric key; use letters, digits, '_', '.', '-' "
                             "(e.g. [background, anterior, posterior])")
        if len(set(v)) != len(v):
            raise ValueError(f"names must be distinct, got {v}")
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
    explain: Literal["none", "gradcam", "gradcampp"] = Field(
        "gradcam", description="classification: class-activation heatmaps of sample test images (MONAI GradCAM, "
        "Selvaraju et al. 2017, or GradCAMpp, Chattopadhay et al. 2018) in plots/explain_test.png and MLflow")
    explain_samples: int = Field(8, ge=0, description="test images in the explanation grid")
    explain_layer: Optional[str] = Field(None, description="target layer of the heatmaps (a module name of the "
                                         "network, e.g. features.denseblock4); default: the last convolutional block")
    fingerprint: Optional[str] = Field(None, description="dataset fingerprint JSON written by medpipe.plan (path "
                                       "relative to the working directory): copied into the run folder and logged "
                                       "to MLflow with the run")


class InferConfig(StrictModel):
    """Sliding-window inference (``monai.inferers.SlidingWindowInferer``) for validation and prediction.

    Windows of ``roi_size`` pixels overlap by ``overlap`` (fraction); overlapping outputs are blended with a
    gaussian (``sigma_scale`` of the window size) or constant importance map.
    """

    roi_size: Optional[List[int]] = Field(None, min_length=2, max_length=3, description="window size in pixels "
                                          "(voxels); required for segmentation")
    sw_batch_size: int = Field(4, ge=1)
    overlap: float = Field(0.25, ge=0, lt=1)
    mode: Literal["gaussian", "constant"] = "gaussian"
    sigma_scale: float = Field(0.125, gt=0)
    padding_mode: Literal["constant", "reflect", "replicate", "circular"] = "constant"
    splits: List[Literal["val", "test"]] = ["val", "test"]
    output_format: Literal["png", "nifti"] = "png"
    save_probabilities: bool = Field(False, description="also save foreground probability maps (.npy float32)")
    tta: bool = Field(False, description="test-time augmentation: average the softmax over mirrored copies along "
                      "every combination of tta_axes (2^n passes; nnU-Net's mirroring), for segmentation and "
                      "classification, in final evaluation, prediction, serving and export")
    tta_axes: Optional[List[int]] = Field(None, description="spatial axes mirrored by tta (0-based: 0 = H, 1 = W, "
                                          "2 = D); default all")
    postprocess: Literal["none", "auto"] = Field(
        "none", description="segmentation: auto = keep only the largest connected component, per class or of all "
        "foreground together, where that raised the validation Dice (nnU-Net's rule); the choice is stored in the "
        "run (metrics.json postprocessing) and applied at prediction, serving and export")
