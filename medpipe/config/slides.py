"""The ``slide_infer`` section: patch-classifier heatmaps of whole slides after training, and their score."""

from __future__ import annotations

from typing import List, Literal, Optional, Tuple, Union

from pydantic import Field, model_validator

from medpipe.config.base import StrictModel

__all__ = ["SlideSpec", "SlideIntensityConfig", "SlideInferConfig"]


class SlideSpec(StrictModel):
    """One slide to infer after training, with its optional patch label mask (for the score)."""

    image: str = Field(..., description="slide file (SVS, TIFF, DICOM WSI, PNG/JPEG), absolute or relative to "
                       "data.root")
    label_mask: Optional[str] = Field(None, description="patch label mask of the same field of view (PNG; "
                                      "background_label / negative_label / positive_label), relative to data.root; "
                                      "without it the slide is inferred but not scored")


class SlideIntensityConfig(StrictModel):
    """Linear intensity mapping of slide windows ``[a_min, a_max] -> [b_min, b_max]`` (as MONAI
    ``ScaleIntensityRange``): required, so that no slide is rescaled silently; it must equal the
    ``ScaleIntensityRanged`` of ``transforms.val`` when that chain has one."""

    a_min: float = Field(..., description="raw value mapped to b_min (0 for uint8 RGB)")
    a_max: float = Field(..., description="raw value mapped to b_max (255 for uint8 RGB)")
    b_min: float = 0.0
    b_max: float = 1.0
    clip: bool = True

    @model_validator(mode="after")
    def _non_empty(self) -> "SlideIntensityConfig":
        if self.a_min == self.a_max:
            raise ValueError(f"a_min == a_max == {self.a_min}: the intensity range is empty")
        return self


class SlideInferConfig(StrictModel):
    """Patch-classifier heatmaps of whole slides after training (classification only), and their score.

    The best network slides over each slide (:func:`medpipe.inference.slide.predict_slide_heatmap`: tile-streamed,
    background skipped by an Otsu tissue mask, output in a Zarr store plus heatmap and overlay PNGs). A window of
    ``roi_size`` pixels at ``level`` is one training patch at the slide's scale (50 for the IDC patches); it is
    scaled by ``intensity`` and, when the network's ``input_size`` differs, resized to it with ``resize_mode``,
    which must be what ``transforms.val`` does to a patch (a ``Resized`` to ``input_size`` with the same
    ``mode``). With a ``label_mask``, the heatmap is scored per ``roi_size`` cell: ROC AUC of ``positive_label``
    vs ``negative_label`` cells (:func:`medpipe.inference.slide_scoring.score_heatmap`; Janowczyk & Madabhushi
    2016), plus sensitivity / specificity / F1 at the run's operating threshold.
    """

    slides: List[SlideSpec] = Field(..., min_length=1, description="slides to infer (and score)")
    roi_size: Union[int, Tuple[int, int]] = Field(..., description="window (h, w) in pixels at `level`: the "
                                                  "training patch size at the slide's scale")
    input_size: Optional[Union[int, Tuple[int, int]]] = Field(
        None, description="network input (h, w) the windows are resized to; default: net.input_size (lenet), "
        "else roi_size")
    resize_mode: Literal["area", "bilinear", "bicubic", "nearest"] = Field(
        "area", description="torch interpolate mode of that resize; must equal the val Resized mode")
    intensity: SlideIntensityConfig = Field(..., description="required: how raw slide values are scaled")
    overlap: float = Field(0.0, ge=0, lt=1, description="window overlap fraction (0: one prediction per patch)")
    mode: Literal["constant", "gaussian"] = Field("constant", description="blending of overlapping windows")
    sigma_scale: float = Field(0.125, gt=0, description="gaussian sigma as a fraction of roi_size")
    sw_batch_size: int = Field(256, ge=1, description="windows per network call")
    tile_size: int = Field(2048, ge=16, description="side of the output tiles processed at once, pixels")
    level: Optional[int] = Field(None, ge=0, description="pyramid level (default 0); or mpp")
    mpp: Optional[float] = Field(None, gt=0, description="resolution in micrometres per pixel instead of level")
    tissue: bool = Field(True, description="skip background windows by an Otsu tissue mask")
    min_tissue: float = Field(0.0, ge=0, lt=1, description="a window runs when its tissue fraction exceeds this")
    tissue_channel: Literal["saturation", "grey"] = Field("saturation", description="tissue mask signal: HSV "
                                                          "saturation (H&E) or darkness (grey, weak stains)")
    tissue_max_size: int = Field(2048, ge=16, description="largest side of the tissue mask, pixels")
    backend: Literal["auto", "openslide", "tifffile", "cucim", "dicom", "pil"] = Field(
        "auto", description="slide reader (medpipe.data.wsi.open_slide); auto picks by file type")
    class_index: int = Field(1, ge=0, description="output class shown in the heatmap and scored (positive)")
    positive_label: int = Field(2, description="label_mask value of positive patches (IDC: 2)")
    negative_label: int = Field(1, description="label_mask value of negative patches (non-IDC: 1)")
    background_label: int = Field(0, description="label_mask value of unannotated pixels (not scored)")
    thumbnail_size: int = Field(1024, ge=16, description="largest side of the heatmap / overlay PNGs")
    alpha: float = Field(0.5, ge=0, le=1, description="overlay opacity at probability 1")

    @model_validator(mode="after")
    def _level_or_mpp(self) -> "SlideInferConfig":
        if self.level is not None and self.mpp is not None:
            raise ValueError("give level or mpp, not both")
        labels = (self.positive_label, self.negative_label, self.background_label)
        if len(set(labels)) != 3:
            raise ValueError(f"positive_label, negative_label and background_label must differ, found {labels}")
        return self
