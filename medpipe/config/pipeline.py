"""The whole pipeline (:class:`PipelineConfig`): its sections, the checks that involve several of them, and the
defaults that depend on the task."""

from __future__ import annotations

import math
from typing import Any, List, Literal, Optional, Tuple

from pydantic import Field, field_validator, model_validator

from medpipe.config.base import StrictModel
from medpipe.config.data import DataConfig
from medpipe.config.errors import CrossFieldError
from medpipe.config.evaluation import (CLASSIFICATION_METRICS, NOT_KEY_METRICS, SEGMENTATION_METRICS,
                                       InferConfig, MetricsConfig, ReportConfig)
from medpipe.config.net import CLASSIFICATION_NETS, SEGMENTATION_NETS, NetConfig
from medpipe.config.schema import CURRENT_SCHEMA_VERSION
from medpipe.config.slides import SlideInferConfig
from medpipe.config.tracking import TrackingConfig
from medpipe.config.training import LossConfig, OptimizerConfig, SchedulerConfig, TrainConfig
from medpipe.config.transforms import TransformsConfig, TransformSpec

__all__ = ["PipelineConfig"]


def _pair(v: Any) -> Tuple[int, ...]:
    """``28`` or ``[28, 28]`` -> ``(28, 28)`` (2-D sizes).

    Not ``monai.utils.ensure_tuple_rep(v, 2)``: that keeps floats (``64.0`` -> ``(64.0, 64.0)``, shown as such in
    messages) and raises on a size of another length (a ``Resized`` ``spatial_size`` of ``[50, 50, 3]`` must be
    reported as a mismatch, not crash the check); it would also import torch into config validation.
    """
    return (int(v), int(v)) if isinstance(v, (int, float)) else tuple(int(i) for i in v)


class PipelineConfig(StrictModel):
    """A whole pipeline: YAML -> data -> network -> engine -> metrics -> tracking -> artifacts.

    ``task`` decides the rest: ``segmentation`` needs a segmentation net (``basic_unet``) and ``infer`` (sliding
    window); ``classification`` needs a classifier net (``densenet121``, ``resnet18``, ``resnet50``, ``lenet``),
    class labels from ``data.list_file`` or ``data.class_from: folder``, and classification metrics.
    """

    schema_version: int = Field(CURRENT_SCHEMA_VERSION, strict=True, description="version of the config layout "
                                "(medpipe.config.schema), written first in config.resolved.yaml; a file without it "
                                "is version 0 and is upgraded when loaded; pipelines need not set it")
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$")
    task: Literal["segmentation", "classification"] = "segmentation"
    output_dir: str = Field("artifacts", description="artifacts go to <output_dir>/<run name>/")
    data: DataConfig
    transforms: TransformsConfig
    net: NetConfig
    loss: LossConfig = Field(default_factory=LossConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    train: TrainConfig
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    infer: Optional[InferConfig] = Field(None, description="sliding-window inference; required for segmentation")
    slide_infer: Optional[SlideInferConfig] = Field(None, description="classification: heatmaps of whole slides "
                                                    "with the best network, scored against label masks")
    report: ReportConfig = Field(default_factory=ReportConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @field_validator("schema_version")
    @classmethod
    def _current_schema(cls, v: int) -> int:
        if v != CURRENT_SCHEMA_VERSION:
            raise ValueError(f"is {v}; this medpipe validates version {CURRENT_SCHEMA_VERSION} (load the file with "
                             "medpipe.config.load_config or validate_config, which upgrade older versions)")
        return v

    @field_validator("transforms")
    @classmethod
    def _transforms_present(cls, v: TransformsConfig) -> TransformsConfig:
        if not v.train:
            raise ValueError("transforms.train must not be empty (at least LoadImaged)")
        return v

    @property
    def num_classes(self) -> int:
        """Number of classes: ``net.out_channels`` (segmentation) or ``net.num_classes`` (classification)."""
        return self.net.out_channels if self.task == "segmentation" else self.net.num_classes

    @model_validator(mode="after")
    def _consistent(self) -> "PipelineConfig":
        problems: List[Tuple[Tuple[Any, ...], str]] = []
        if self.task == "segmentation":
            self._check_segmentation(problems)
        else:
            self._check_classification(problems)
        if self.slide_infer is not None:
            self._check_slide_infer(problems)
        names, key = self.metrics.names, self.metrics.key_metric
        allowed = SEGMENTATION_METRICS if self.task == "segmentation" else CLASSIFICATION_METRICS
        for i, m in enumerate(names or []):
            if m not in allowed:
                problems.append((("metrics", "names", i), f"{m!r} is not a {self.task} metric; allowed: "
                                 f"{', '.join(allowed)}"))
        if key is not None and key not in allowed:
            problems.append((("metrics", "key_metric"), f"{key!r} is not a {self.task} metric; allowed: "
                             f"{', '.join(allowed)}"))
        if key is None and names and all(m in NOT_KEY_METRICS for m in names):
            problems.append((("metrics", "names"), f"{names} has no higher-is-better metric to select the best "
                             "checkpoint (key_metric); add one, e.g. dice"))
        cn = self.metrics.class_names
        if cn is not None and self.task == "segmentation" and len(cn) != max(self.net.out_channels, 2):
            problems.append((("metrics", "class_names"), f"names {len(cn)} classes but net.out_channels is "
                             f"{self.net.out_channels} (background first, e.g. [background, anterior, posterior])"))
        if self.metrics.threshold != 0.5 and (self.task != "classification" or self.num_classes != 2):
            problems.append((("metrics", "threshold"), "an operating threshold applies to two-class "
                             "classification only (more classes: argmax)"))
        weights = self.loss.class_weights
        if weights == "balanced" and self.task != "classification":
            problems.append((("loss", "class_weights"), "balanced is computed from class labels: classification "
                             "only; give a list of weights for segmentation"))
        elif isinstance(weights, list) and len(weights) != self.num_classes:
            field = "net.out_channels" if self.task == "segmentation" else "net.num_classes"
            problems.append((("loss", "class_weights"), f"has {len(weights)} values for {field}="
                             f"{self.num_classes} classes"))
        problems += [(path, f"is {v}: not a finite number; give a finite value")
                     for path, v in _non_finite(self.model_dump(), ())]  # values of Any-typed fields (net.act)
        if problems:
            raise CrossFieldError(problems)
        # defaults that depend on the task, filled in so that config.resolved.yaml shows them
        if self.task == "segmentation":
            self.loss.name = self.loss.name or "dice_ce"
            self.metrics.names = names or ["dice", "pixel_accuracy"]
            self.metrics.key_metric = key or ("dice" if "dice" in self.metrics.names else next(
                m for m in self.metrics.names if m not in NOT_KEY_METRICS))
        else:
            self.loss.name = self.loss.name or "cross_entropy"
            self.metrics.names = names or list(CLASSIFICATION_METRICS)
            default_key = "auc" if self.num_classes == 2 else "balanced_accuracy"
            self.metrics.key_metric = key or (default_key if default_key in self.metrics.names
                                              else self.metrics.names[0])
        return self

    def _check_segmentation(self, problems: List) -> None:
        if self.net.name not in SEGMENTATION_NETS:
            problems.append((("net", "name"), f"{self.net.name!r} is a classifier; task segmentation needs one of "
                             f"{', '.join(SEGMENTATION_NETS)} (or set task: classification)"))
            return
        if self.infer is None:
            problems.append((("infer",), "required for task segmentation (sliding-window roi_size, overlap, ...)"))
        elif self.infer.roi_size is None:
            problems.append((("infer", "roi_size"), "required for task segmentation (the sliding-window size)"))
        elif len(self.infer.roi_size) != self.net.spatial_dims:
            problems.append((("infer", "roi_size"), f"has {len(self.infer.roi_size)} values but net.spatial_dims "
                             f"is {self.net.spatial_dims}"))
        for key in ("group_column", "class_from", "classes"):
            if getattr(self.data, key) is not None:
                problems.append((("data", key), "is a classification setting; task is segmentation"))
        if self.data.split_column is not None and self.data.list_file is None:
            problems.append((("data", "split_column"), "a column needs data.list_file (a CSV or JSON list)"))
        if self.data.sampler != "none":
            problems.append((("data", "sampler"), "weighted sampling is for classification only"))
        if self.train.compile and self.train.channels_last and self.net.name == "basic_unet":
            problems.append((("train", "compile"), "torch.compile of basic_unet in channels_last fails in torch "
                             "2.13 (inductor mispredicts the strides of replication-pad backward); use one of "
                             "compile or channels_last"))
        if self.train.freeze_backbone_epochs:
            problems.append((("train", "freeze_backbone_epochs"), "is for classifiers with a pretrained "
                             "backbone; task is segmentation"))

    def _check_classification(self, problems: List) -> None:
        if self.net.name not in CLASSIFICATION_NETS:
            problems.append((("net", "name"), f"{self.net.name!r} is a segmentation net; task classification needs "
                             f"one of {', '.join(CLASSIFICATION_NETS)}"))
            return
        d = self.data
        if d.labels is not None:
            problems.append((("data", "labels"), "label images are for segmentation; for classification give "
                             "data.list_file with a label_column, or data.images with class_from: folder"))
        if d.images is not None and d.list_file is None and d.class_from is None:
            problems.append((("data", "images"), "classification from an images glob needs class_from: folder "
                             "(the class is each image's parent folder), or use data.list_file"))
        if d.list_file is not None and d.class_from is not None:
            problems.append((("data", "class_from"), "with data.list_file the class comes from label_column; "
                             "remove class_from"))
        if d.test_images is not None and d.class_from is None:
            problems.append((("data", "test_images"), "for classification, test images need class_from: folder "
                             "(their labels); with a list_file use split_column"))
        if d.list_file is None:
            for key in ("split_column", "group_column"):
                if getattr(d, key) is not None:
                    problems.append((("data", key), "a column needs data.list_file (a CSV or JSON list)"))
        if d.classes is not None and len(d.classes) != self.net.num_classes:
            problems.append((("data", "classes"), f"names {len(d.classes)} classes but net.num_classes is "
                             f"{self.net.num_classes}"))
        if self.loss.name in ("dice", "dice_ce"):
            problems.append((("loss", "name"), f"{self.loss.name} is a segmentation loss; use cross_entropy "
                             "for classification"))
        if self.infer is not None and self.infer.postprocess != "none":
            problems.append((("infer", "postprocess"), "connected-component post-processing is for segmentation; "
                             "a classifier's infer section takes tta and tta_axes only"))
        if self.train.freeze_backbone_epochs and not self.net.pretrained:
            problems.append((("train", "freeze_backbone_epochs"), "freezing the backbone only makes sense "
                             "with pretrained weights: set net.pretrained"))
        if self.train.freeze_backbone_epochs >= self.train.max_epochs:
            problems.append((("train", "freeze_backbone_epochs"), f"{self.train.freeze_backbone_epochs} >= "
                             f"train.max_epochs={self.train.max_epochs}: the backbone would never be fine-tuned"))

    def slide_input_size(self) -> Tuple[int, int]:
        """The network input ``(h, w)`` of slide windows: ``slide_infer.input_size``, else ``net.input_size``
        (lenet), else ``slide_infer.roi_size``."""
        si = self.slide_infer
        if si is None:
            raise ValueError("no slide_infer section")
        if si.input_size is not None:
            return _pair(si.input_size)  # type: ignore[return-value]
        return _pair(getattr(self.net, "input_size", None) or si.roi_size)  # type: ignore[return-value]

    def _check_slide_infer(self, problems: List) -> None:
        """Slide windows must reach the network as the validation patches did: same size, resize, scaling."""
        si = self.slide_infer
        if self.task != "classification":
            problems.append((("slide_infer",), "slide heatmaps come from a patch classifier: task classification "
                             "only (segmentation uses infer)"))
            return
        if self.net.in_channels != 3:
            problems.append((("net", "in_channels"), f"is {self.net.in_channels} but slide_infer reads RGB slide "
                             "windows (3 channels)"))
        if si.class_index >= self.net.num_classes:
            problems.append((("slide_infer", "class_index"), f"{si.class_index} >= net.num_classes="
                             f"{self.net.num_classes}"))
        roi, size = _pair(si.roi_size), self.slide_input_size()
        net_size = getattr(self.net, "input_size", None)
        if net_size is not None and _pair(net_size) != size:
            problems.append((("slide_infer", "input_size"), f"{list(size)} but net.input_size is "
                             f"{list(_pair(net_size))}: the network only accepts that size"))
        val = [t for t in self.transforms.val if "image" in _keys_of(t)]
        resized = [t for t in val if t.name == "Resized"]
        if size != roi:
            good = [t for t in resized if _pair(t.kwargs.get("spatial_size", 0)) == size]
            if not good:
                problems.append((("slide_infer", "roi_size"), f"{list(roi)}-pixel windows are resized to the "
                                 f"network's {list(size)}, but transforms.val has no Resized of image to "
                                 f"spatial_size {list(size)}: patches and slide windows would reach the network at "
                                 f"different scales. Resize the patches the same way, or set roi_size to "
                                 f"{list(size)} (the network's input at the slide's scale)"))
            elif good[0].kwargs.get("mode", "area") != si.resize_mode:
                problems.append((("slide_infer", "resize_mode"), f"{si.resize_mode!r} but transforms.val resizes "
                                 f"patches with mode {good[0].kwargs.get('mode', 'area')!r}"))
        elif any(_pair(t.kwargs.get("spatial_size", 0)) != size for t in resized):
            problems.append((("slide_infer", "roi_size"), f"{list(roi)} windows go to the network unresized, but "
                             f"transforms.val resizes patches: set slide_infer.roi_size to the patch size at the "
                             f"slide's scale and input_size to the Resized spatial_size"))
        scale = next((t for t in val if t.name == "ScaleIntensityRanged"), None)
        if scale is not None:
            kw, it = scale.kwargs, si.intensity
            theirs = (kw.get("a_min"), kw.get("a_max"), kw.get("b_min"), kw.get("b_max"), bool(kw.get("clip", False)))
            ours = (it.a_min, it.a_max, it.b_min, it.b_max, it.clip)
            if tuple(None if v is None else float(v) if not isinstance(v, bool) else v for v in theirs) != ours:
                problems.append((("slide_infer", "intensity"), f"maps [{it.a_min}, {it.a_max}] -> [{it.b_min}, "
                                 f"{it.b_max}] clip={it.clip} but transforms.val ScaleIntensityRanged maps "
                                 f"[{kw.get('a_min')}, {kw.get('a_max')}] -> [{kw.get('b_min')}, {kw.get('b_max')}] "
                                 f"clip={kw.get('clip', False)}: slide windows must be scaled like the patches"))

    def infer_transforms(self) -> List[TransformSpec]:
        """Transforms for unlabelled images: ``transforms.infer`` or ``transforms.val`` without ``label``."""
        if self.transforms.infer is not None:
            return list(self.transforms.infer)
        out = []
        for spec in self.transforms.val:
            kw = spec.kwargs
            keys = kw.get("keys")
            if keys is not None:
                keys = [keys] if isinstance(keys, str) else list(keys)
                if "label" in keys:
                    keys = [k for k in keys if k != "label"]
                    if not keys:
                        continue
                    kw["keys"] = keys
            out.append(TransformSpec(name=spec.name, **kw))
        return out


def _non_finite(value: Any, path: Tuple[Any, ...]) -> List[Tuple[Tuple[Any, ...], float]]:
    """``(key path, value)`` of every NaN or infinite float in plain data. Float fields refuse them already
    (``allow_inf_nan=False``); this finds them in fields that take any value (e.g. ``net.act`` arguments)."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [(path, value)]
    if isinstance(value, dict):
        return [hit for k, v in value.items() for hit in _non_finite(v, path + (k,))]
    if isinstance(value, (list, tuple)):
        return [hit for i, v in enumerate(value) for hit in _non_finite(v, path + (i,))]
    return []


def _keys_of(spec: TransformSpec) -> List[str]:
    keys = spec.kwargs.get("keys", [])
    return [keys] if isinstance(keys, str) else list(keys)
