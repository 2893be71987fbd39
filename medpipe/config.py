"""Pipeline configuration: pydantic v2 models for the whole pipeline YAML, and loading with precise errors.

``load_config(path)`` reads a YAML file, applies ``--set key=value`` overrides, and validates it against
:class:`PipelineConfig`. Every problem is reported at once in one :class:`ConfigError` that names the file,
the YAML line, the dotted key path, what was found and what was expected, with "did you mean" suggestions for
misspelled keys and names. Unknown keys are errors (``extra="forbid"``), never silently dropped.

A pipeline YAML is data only: registry names, numbers, strings and lists. It cannot carry code, ``$``
expressions or import paths. Transforms are named by their MONAI dictionary-transform class name (e.g.
``ScaleIntensityRanged``) and their keyword arguments are checked against the class signature at validation
time; that check imports ``monai.transforms`` lazily, everything else here needs neither torch nor MONAI.
"""

from __future__ import annotations

import copy
import inspect
import typing
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from typing_extensions import Annotated

from medpipe.registry import did_you_mean

__all__ = [
    "ConfigError",
    "CrossFieldError",
    "PipelineConfig",
    "load_config",
    "validate_config",
    "apply_overrides",
    "TransformSpec",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, validate_default=True)


# ----------------------------------------------------------------------------------------------------- data
class SplitConfig(_Model):
    """How the labelled cases are split into training and validation.

    Exactly one method is used: an explicit ``val`` list of image file names (or paths relative to
    ``data.root``), a random ``val_fraction``, or ``kfold`` folds. Random methods are deterministic given
    ``seed`` (cases are sorted by path before shuffling with ``numpy.random.default_rng``).

    Cross-validation: with ``kfold: K`` and no ``fold``, a run trains all K folds (each case is in exactly one
    validation fold), tracked as one MLflow parent run with a child run per fold, and reports the mean and
    standard deviation over folds of every final metric (:mod:`medpipe.cv`). ``fold: k`` trains fold k only.

    Predefined splits (both tasks): a list file's ``data.split_column`` names each row's split, mapped by
    ``column_values`` (``drop`` leaves the rows out; an unmapped value is an error naming file, line and value); a
    predefined val split replaces ``val``/``val_fraction``/``kfold`` (a warning says so) and cannot be
    cross-validated. Segmentation rows of a predefined test split are never trained or validated on.

    Classification adds: an optional ``test_fraction`` held out first when
    there is no predefined test split, stratification by class (``stratify``) and grouping by
    ``data.group_column`` (no patient in two splits), with scikit-learn's ``StratifiedShuffleSplit``,
    ``StratifiedKFold`` and ``StratifiedGroupKFold`` seeded by ``seed``. A grouped ``val_fraction`` f is
    approximated by one fold of ``round(1 / f)`` group folds. ``test_groups`` names the patients of the test
    split instead (all their rows). The test split is never used for model selection.
    """

    val: Optional[List[str]] = Field(None, description="explicit validation images (file names or relative paths)")
    val_fraction: Optional[float] = Field(None, gt=0, lt=1, description="fraction of cases held out for validation")
    kfold: Optional[int] = Field(None, ge=2, description="number of folds for k-fold cross-validation")
    fold: Optional[int] = Field(None, ge=0, description="with kfold: train only this fold (0-based; its "
                                "cases are the validation split); unset: cross-validate, i.e. train all folds")
    seed: int = Field(0, description="seed of the split's shuffle")
    test_fraction: Optional[float] = Field(None, gt=0, lt=1, description="classification: fraction held out as a "
                                           "test split when the data has no predefined test split")
    stratify: bool = Field(True, description="classification: keep the class ratios in every split")
    column_values: Dict[str, Literal["train", "val", "test", "drop"]] = Field(
        {"train": "train", "val": "val", "test": "test"},
        description="data.split_column value -> split (drop: leave the rows out)")
    test_groups: Optional[List[str]] = Field(
        None, min_length=1, description="classification with data.group_column: these groups (patient ids) "
        "make the test split, all their rows whatever their split_column value (e.g. the patient of a "
        "slide that is scored after training); instead of test_fraction")

    @field_validator("test_groups", mode="before")
    @classmethod
    def _groups_as_str(cls, v: Any) -> Any:
        # patient ids such as 8863 are read from YAML as ints; the CSV column holds them as text
        return [str(g) if isinstance(g, int) and not isinstance(g, bool) else g for g in v] \
            if isinstance(v, list) else v

    @model_validator(mode="after")
    def _one_method(self) -> "SplitConfig":
        chosen = [k for k in ("val", "val_fraction", "kfold") if getattr(self, k) is not None]
        if len(chosen) > 1:
            raise ValueError(f"give only one of val, val_fraction, kfold; found {', '.join(chosen)}")
        if not chosen:
            self.val_fraction = 0.2
            self.__pydantic_fields_set__.discard("val_fraction")  # a default, not the user's choice
        if self.test_fraction is not None and (self.val_fraction or 0) + self.test_fraction >= 1:
            raise ValueError(f"val_fraction + test_fraction must be < 1, found {self.val_fraction} + "
                             f"{self.test_fraction}")
        if self.test_groups is not None and self.test_fraction is not None:
            raise ValueError("give only one of test_groups (named patients) and test_fraction (random patients)")
        if self.fold is not None and self.kfold is None:
            raise ValueError(f"fold={self.fold} needs kfold (the number of folds), e.g. kfold: 5")
        if self.kfold is not None and self.fold is not None and self.fold >= self.kfold:
            raise ValueError(f"fold must be < kfold={self.kfold}, found fold={self.fold}")
        return self


class DataConfig(_Model):
    """Where the images are and how they are cached.

    Paths: ``root`` is absolute or relative to the dataset root (``$MEDPIPE_DATA``, default
    ``../shared/datasets``); ``images``, ``labels`` and ``test_images`` are glob patterns relative to
    ``root`` (``**`` allowed). Labels are paired to images by their path relative to the glob's fixed prefix
    with the extension removed (``train/image/3.png`` <-> ``train/label/3.png``). Alternatively ``list_file``
    names a CSV (columns ``image``, ``label``) or JSON (a list of ``{"image": ..., "label": ...}``) with paths
    relative to ``root``.

    Classification: the class of each image comes from the list file's ``label_column`` (class names, e.g.
    ``PNEUMONIA``), or with ``images`` and ``class_from: folder`` from each image's parent folder name (then
    ``test_images`` is a labelled test split). ``split_column`` names predefined splits, ``group_column`` patient
    ids (see :class:`SplitConfig`). An image whose class is not in ``classes`` is an error naming file and value.
    """

    root: str = Field(..., description="dataset folder, absolute or relative to the data root")
    images: Optional[str] = Field(None, description="glob of training/validation images, relative to root")
    labels: Optional[str] = Field(None, description="glob of label images paired to `images` by file stem")
    list_file: Optional[str] = Field(None, description="CSV/JSON list of image/label pairs instead of globs")
    test_images: Optional[str] = Field(None, description="glob of unlabelled images to predict after training")
    split: SplitConfig = Field(default_factory=SplitConfig)
    cache: Literal["none", "memory", "disk"] = Field(
        "memory", description="none: load every epoch; memory: monai CacheDataset; disk: monai PersistentDataset"
    )
    cache_rate: float = Field(1.0, ge=0, le=1, description="fraction of cases cached in memory (cache: memory)")
    cache_dir: Optional[str] = Field(None, description="folder for cache: disk (default <output_dir>/cache)")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes (0: load in the main process); "
                             "re-created every epoch so that their random transforms are re-seeded (exact resume)")
    loader: Literal["dataloader", "thread"] = Field(
        "dataloader", description="monai.data.DataLoader, or ThreadDataLoader (batches prepared in a background "
        "thread while the network computes; see docs/performance.md)")
    cache_on_device: bool = Field(
        False, description="cache: memory: keep the cached tensors on the training device (ToDeviced before the "
        "first random transform), so random transforms run on the GPU; needs num_workers: 0 (use loader: thread); "
        "a no-op on CPU")
    on_bad_image: Literal["error", "skip"] = Field(
        "error", description="an unreadable image or an image/label size mismatch: stop, or report and skip it"
    )
    verify: bool = Field(True, description="read every file once before training to report unreadable ones")
    # classification
    image_column: str = Field("image", description="list_file column (JSON key) holding the image path")
    label_column: str = Field("label", description="list_file column holding the label (a mask path for "
                              "segmentation, a class name for classification)")
    split_column: Optional[str] = Field(None, description="list_file column naming each row's predefined split "
                                        "(train / val / test; see split.column_values); both tasks")
    group_column: Optional[str] = Field(None, description="classification: list_file column with a patient / "
                                        "group id; no group is ever in two splits")
    class_from: Optional[Literal["folder"]] = Field(None, description="classification with `images`: the class "
                                                    "is the name of each image's parent folder")
    classes: Optional[List[str]] = Field(None, min_length=2, description="classification: ordered class names "
                                         "(index = position); default: the sorted names found in the data")
    sampler: Literal["none", "weighted"] = Field("none", description="classification: weighted = "
                                                 "torch WeightedRandomSampler by inverse class frequency")

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, v: Optional[List[str]]) -> Optional[List[str]]:
        if v is not None and len(set(v)) != len(v):
            dup = sorted({c for c in v if v.count(c) > 1})
            raise ValueError(f"class names must be unique, found duplicates {dup}")
        return v

    @model_validator(mode="after")
    def _source(self) -> "DataConfig":
        if self.list_file is None and self.images is None:
            raise ValueError("give `images` (a glob) or `list_file` (CSV/JSON)")
        if self.list_file is not None and (self.images is not None or self.labels is not None):
            raise ValueError("give either `list_file` or `images`/`labels` globs, not both")
        if self.cache_on_device and (self.cache != "memory" or self.num_workers):
            raise ValueError("cache_on_device needs cache: memory and num_workers: 0 (tensors on a GPU cannot be "
                             f"shared with worker processes); found cache: {self.cache}, num_workers: "
                             f"{self.num_workers}")
        return self


# ----------------------------------------------------------------------------------------------- transforms
class TransformSpec(BaseModel):
    """One MONAI dictionary transform: ``{name: ScaleIntensityRanged, keys: [image], a_min: 0, ...}``.

    ``name`` is the MONAI class name (dictionary transforms only, i.e. subclasses of
    ``monai.transforms.MapTransform``); the remaining keys are its keyword arguments, checked against the
    class's ``__init__`` signature (and, for ``LoadImaged`` with a named ``reader``, that reader's signature).
    """

    model_config = ConfigDict(extra="allow")
    name: str

    @model_validator(mode="after")
    def _check_signature(self) -> "TransformSpec":
        check_transform_args(self.name, self.kwargs)
        return self

    @property
    def kwargs(self) -> Dict[str, Any]:
        """Keyword arguments of the transform (everything but ``name``)."""
        return dict(self.model_extra or {})


def _monai_dict_transforms() -> Dict[str, type]:
    import monai.transforms as mt

    out = {}
    for attr in dir(mt):
        obj = getattr(mt, attr)
        if inspect.isclass(obj) and issubclass(obj, mt.MapTransform) and obj is not mt.MapTransform:
            if attr.endswith("d") or attr.endswith("D"):
                out[attr] = obj
    return out


def _transform_table() -> Dict[str, type]:
    global _TRANSFORMS
    if _TRANSFORMS is None:
        table = _monai_dict_transforms()
        from medpipe.data import transforms as own  # medpipe's own dictionary transforms

        table.update(own.CUSTOM_TRANSFORMS)
        _TRANSFORMS = table
    return _TRANSFORMS


_TRANSFORMS: Optional[Dict[str, type]] = None


def _params(fn) -> Tuple[Dict[str, inspect.Parameter], bool]:
    sig = inspect.signature(fn)
    params = {k: p for k, p in sig.parameters.items() if k != "self"}
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    params = {k: p for k, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return params, var_kw


def check_transform_args(name: str, kwargs: Dict[str, Any]) -> None:
    """Check that ``name`` is an allowed dictionary transform and ``kwargs`` fit its signature.

    Raises:
        ValueError: unknown transform (with the closest name), unknown argument (with the allowed ones),
            or a missing required argument.
    """
    table = _transform_table()
    if name not in table:
        hint = did_you_mean(name, table)
        if not hint and name + "d" in table:
            hint = f" Did you mean '{name}d' (the dictionary version)?"
        raise ValueError(f"unknown transform {name!r}: expected a MONAI dictionary transform class name.{hint}")
    cls = table[name]
    params, var_kw = _params(cls.__init__)
    unknown = [k for k in kwargs if k not in params]
    if unknown and var_kw and name == "LoadImaged" and isinstance(kwargs.get("reader"), str):
        import monai.data as md

        reader_cls = getattr(md, kwargs["reader"], None)
        if reader_cls is None:
            readers = [r for r in dir(md) if r.endswith("Reader") and r != "ImageReader"]
            raise ValueError(
                f"LoadImaged: unknown reader {kwargs['reader']!r}; allowed: {', '.join(readers)}."
                + did_you_mean(kwargs["reader"], readers)
            )
        r_params, r_var_kw = _params(reader_cls.__init__)
        params = {**params, **r_params}
        var_kw = r_var_kw
        unknown = [k for k in kwargs if k not in params]
    if unknown and var_kw:
        # **kwargs are passed on (e.g. to a reader's backend): only flag names that look like typos of a
        # known argument, which would otherwise be passed on and fail later or be ignored.
        unknown = [k for k in unknown if did_you_mean(k, params)]
        var_kw = not unknown
    if unknown and not var_kw:
        allowed = ", ".join(params)
        msgs = [f"{name}: unknown argument {k!r}.{did_you_mean(k, params)} Allowed: {allowed}" for k in unknown]
        raise ValueError("; ".join(msgs))
    missing = [k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in kwargs]
    if missing:
        raise ValueError(f"{name}: missing required argument(s) {', '.join(missing)}")


class TransformsConfig(_Model):
    """MONAI dictionary transform chains.

    ``infer`` (for unlabelled images) defaults to ``val`` with the ``label`` key removed from every transform
    (a transform whose only key is ``label`` is dropped).
    """

    train: List[TransformSpec]
    val: List[TransformSpec]
    infer: Optional[List[TransformSpec]] = None


# --------------------------------------------------------------------------------------------------- nets
class BasicUNetNet(_Model):
    """MONAI ``BasicUNet`` (Falk et al. 2019, "U-Net: deep learning for cell counting, detection, and
    morphometry", Nat. Methods; the 2D/3D U-Net of Ronneberger et al. 2015 with instance norm and LeakyReLU)."""

    name: Literal["basic_unet"]
    spatial_dims: Literal[2, 3] = 2
    in_channels: int = Field(1, ge=1)
    out_channels: int = Field(2, ge=1)
    features: Tuple[int, int, int, int, int, int] = (32, 32, 64, 128, 256, 32)
    act: Union[str, Tuple[str, Dict[str, Any]]] = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True})
    norm: Union[str, Tuple[str, Dict[str, Any]]] = ("instance", {"affine": True})
    bias: bool = True
    dropout: float = Field(0.0, ge=0, lt=1)
    upsample: Literal["deconv", "pixelshuffle", "nontrainable"] = "deconv"
    init: Literal["default", "xavier_uniform", "kaiming_normal"] = Field(
        "default", description="weight initialisation (medpipe.nets.init); default: MONAI's (torch's Kaiming-uniform "
        "convolutions)")


class _ClassifierNet(_Model):
    """Fields shared by the image classifiers: input ``(B, in_channels, H, W[, D])`` -> logits
    ``(B, num_classes)``, plus weight initialisation and transfer learning."""

    spatial_dims: Literal[2, 3] = 2
    in_channels: int = Field(1, ge=1)
    num_classes: int = Field(2, ge=2, description="number of classes (the network's output channels)")
    init: Literal["default", "xavier_uniform", "kaiming_normal"] = Field(
        "default", description="weight initialisation (medpipe.nets.init), applied before `pretrained`")
    pretrained: Optional[str] = Field(
        None, description="weights to start from: a .pt/.pth file or medpipe checkpoint, an MLflow model URI "
        "(runs:/<id>/model), or an https:// URL with `pretrained_sha256`; tensors whose name and shape match are "
        "loaded, the rest (e.g. a head of another class count) keeps `init`")
    pretrained_sha256: Optional[str] = Field(None, pattern=r"^[0-9a-fA-F]{64}$",
                                             description="SHA-256 of the `pretrained` file (required for URLs)")


class DenseNet121Net(_ClassifierNet):
    """MONAI ``DenseNet121`` (Huang et al., "Densely connected convolutional networks", CVPR 2017): dense blocks
    of (6, 12, 24, 16) layers, growth rate 32, batch norm; ``num_classes`` is MONAI's ``out_channels``. The
    pneumonia X-ray default (the CheXNet backbone, Rajpurkar et al. 2017)."""

    name: Literal["densenet121"]
    init_features: int = Field(64, ge=1)
    growth_rate: int = Field(32, ge=1)
    bn_size: int = Field(4, ge=1)
    dropout_prob: float = Field(0.0, ge=0, lt=1, description="dropout after each dense layer")


class ResNetNet(_ClassifierNet):
    """MONAI ``ResNet`` via ``resnet18`` (basic blocks [2, 2, 2, 2]) or ``resnet50`` (bottlenecks [3, 4, 6, 3])
    (He et al., "Deep residual learning for image recognition", CVPR 2016); ``in_channels`` is MONAI's
    ``n_input_channels``. ``conv1_t_stride`` defaults to 2 as in He et al. (MONAI's default is 1, which
    quadruples the cost of every later layer on 2D images)."""

    name: Literal["resnet18", "resnet50"]
    conv1_t_size: int = Field(7, ge=1, description="kernel size of the first convolution")
    conv1_t_stride: int = Field(2, ge=1, description="stride of the first convolution")
    no_max_pool: bool = Field(False, description="skip the max-pool after the first convolution")
    shortcut_type: Literal["A", "B"] = Field("B", description="A: zero-padded identity, B: 1x1 conv projection")
    widen_factor: float = Field(1.0, gt=0)


class LeNetNet(_ClassifierNet):
    """medpipe ``LeNet`` (LeCun et al. 1998, the histopathology seed's variant): two conv 5x5 / ReLU / max-pool
    blocks of 20 and 50 filters, dense 500, dense ``num_classes``; only accepts ``input_size`` inputs."""

    name: Literal["lenet"]
    spatial_dims: Literal[2] = 2
    in_channels: int = Field(3, ge=1)
    input_size: Union[int, Tuple[int, int]] = Field(28, description="patch size in pixels, H or (H, W)")
    padding: int = Field(2, ge=0, description="2 = 'same' 5x5 convolutions (the seed's Keras model); 0 = valid")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout before the last dense layer")


SEGMENTATION_NETS = ("basic_unet",)
CLASSIFICATION_NETS = ("densenet121", "resnet18", "resnet50", "lenet")

NetConfig = Annotated[Union[BasicUNetNet, DenseNet121Net, ResNetNet, LeNetNet], Field(discriminator="name")]


# ---------------------------------------------------------------------------------------- loss, optimizer
class LossConfig(_Model):
    """Loss function (MONAI losses; ``cross_entropy`` is ``torch.nn.CrossEntropyLoss``).

    ``dice_ce``: MONAI ``DiceCELoss`` (Milletari et al. 2016 Dice + cross-entropy) on softmax outputs with
    one-hot labels. ``dice``: MONAI ``DiceLoss``. ``cross_entropy``: class-index labels. The default ``name``
    depends on the task: ``dice_ce`` for segmentation, ``cross_entropy`` for classification.
    ``class_weights`` weights the cross-entropy term per class: a list (one weight per class) or, for
    classification, ``balanced``: ``n / (C * n_c)`` from the training split's class counts ``n_c``
    (King & Zeng 2001; scikit-learn's ``class_weight="balanced"``).
    """

    name: Optional[Literal["dice_ce", "dice", "cross_entropy"]] = Field(
        None, description="default: dice_ce (segmentation), cross_entropy (classification)")
    include_background: bool = True
    lambda_dice: float = Field(1.0, ge=0)
    lambda_ce: float = Field(1.0, ge=0)
    class_weights: Optional[Union[Literal["balanced"], List[float]]] = Field(
        None, description="per-class weights of the cross-entropy, or balanced (classification)")
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class OptimizerConfig(_Model):
    """Optimizer (``torch.optim``): Adam (Kingma & Ba 2015), AdamW (Loshchilov & Hutter 2019) or SGD."""

    name: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, description="sgd only")
    nesterov: bool = Field(False, description="sgd only")
    betas: Tuple[float, float] = Field((0.9, 0.999), description="adam/adamw only")


class SchedulerConfig(_Model):
    """Learning-rate schedule, stepped once per epoch.

    ``cosine``: cosine annealing to ``min_lr`` over ``max_epochs`` (Loshchilov & Hutter 2017) after
    ``warmup_epochs`` of linear warm-up; ``step``: multiply by ``gamma`` every ``step_size`` epochs;
    ``plateau``: multiply by ``gamma`` when the key validation metric has not improved for ``patience``
    validations.
    """

    name: Literal["none", "cosine", "step", "plateau"] = "none"
    warmup_epochs: int = Field(0, ge=0)
    min_lr: float = Field(0.0, ge=0)
    step_size: int = Field(10, ge=1)
    gamma: float = Field(0.1, gt=0, le=1)
    patience: int = Field(5, ge=0)


class TrainConfig(_Model):
    """Training loop settings (``monai.engines.SupervisedTrainer``)."""

    max_epochs: int = Field(..., ge=1)
    batch_size: int = Field(4, ge=1)
    val_interval: int = Field(1, ge=1, description="validate every N epochs")
    val_batch_size: int = Field(1, ge=1)
    amp: bool = Field(False, description="automatic mixed precision (torch.autocast); used on CUDA only, "
                      "elsewhere training stays float32")
    amp_dtype: Literal["float16", "bfloat16"] = Field(
        "float16", description="autocast dtype with amp: float16 (any CUDA GPU; gradients scaled by GradScaler) "
        "or bfloat16 (Ampere and newer; float32's range, no scaling needed)")
    channels_last: bool = Field(False, description="network weights and input batches in channels-last memory "
                                "format (NHWC / NDHWC), faster convolutions on tensor-core GPUs")
    compile: bool = Field(False, description="torch.compile the training network (static shapes, plain-tensor "
                          "inputs; validation runs uncompiled); the first epoch pays the compilation time. Not "
                          "with channels_last for basic_unet (torch 2.13 inductor fails on its padding backward)")
    seed: int = 0
    deterministic: bool = Field(True, description="deterministic cuDNN kernels without autotuning; false: "
                                "cudnn.benchmark autotuning (faster on GPUs, not bitwise reproducible)")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto | cpu | cuda | cuda:N")
    grad_clip_norm: Optional[float] = Field(None, gt=0, description="clip the gradient L2 norm to this value")
    early_stop_patience: Optional[int] = Field(None, ge=1, description="stop after N validations without gain")
    progress: bool = Field(True, description="show progress bars")
    freeze_backbone_epochs: int = Field(0, ge=0, description="transfer learning: train only the classifier head "
                                        "for the first N epochs, then all layers (classification)")


SegMetric = Literal["dice", "pixel_accuracy", "v_rand", "v_info", "hd95"]
ClsMetric = Literal["accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity", "precision", "f1"]
SEGMENTATION_METRICS: Tuple[str, ...] = typing.get_args(SegMetric)
CLASSIFICATION_METRICS: Tuple[str, ...] = typing.get_args(ClsMetric)
#: metrics where lower is better (distances); they are reported but cannot be ``key_metric``
LOWER_IS_BETTER_METRICS: Tuple[str, ...] = ("hd95",)


class MetricsConfig(_Model):
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
    Definitions: :func:`medpipe.engine.metrics.classification_metrics`. A class never predicted has precision 0
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


class ReportConfig(_Model):
    """The one-page ``report.md`` of a classification run."""

    anchor: Optional[str] = Field(None, description="published result to quote beside the measured test metrics")
    max_misclassified: int = Field(16, ge=0, description="misclassified examples shown in the plot grid")


class InferConfig(_Model):
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


class SlideSpec(_Model):
    """One slide to infer after training, with its optional patch label mask (for the score)."""

    image: str = Field(..., description="slide file (SVS, TIFF, DICOM WSI, PNG/JPEG), absolute or relative to "
                       "data.root")
    label_mask: Optional[str] = Field(None, description="patch label mask of the same field of view (PNG; "
                                      "background_label / negative_label / positive_label), relative to data.root; "
                                      "without it the slide is inferred but not scored")


class SlideIntensityConfig(_Model):
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


class SlideInferConfig(_Model):
    """Patch-classifier heatmaps of whole slides after training (classification only), and their score.

    The best network slides over each slide (:func:`medpipe.inference.slide.predict_slide_heatmap`: tile-streamed,
    background skipped by an Otsu tissue mask, output in a Zarr store plus heatmap and overlay PNGs). A window of
    ``roi_size`` pixels at ``level`` is one training patch at the slide's scale (50 for the IDC patches); it is
    scaled by ``intensity`` and, when the network's ``input_size`` differs, resized to it with ``resize_mode``,
    which must be what ``transforms.val`` does to a patch (a ``Resized`` to ``input_size`` with the same
    ``mode``). With a ``label_mask``, the heatmap is scored per ``roi_size`` cell: ROC AUC of ``positive_label``
    vs ``negative_label`` cells (:func:`medpipe.inference.slide.score_heatmap`; Janowczyk & Madabhushi 2016), plus
    sensitivity / specificity / F1 at the run's operating threshold.
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


def _pair(v: Any) -> Tuple[int, ...]:
    """``28`` or ``[28, 28]`` -> ``(28, 28)`` (2-D sizes)."""
    return (int(v), int(v)) if isinstance(v, (int, float)) else tuple(int(i) for i in v)


class TrackingConfig(_Model):
    """MLflow tracking. The default backend store is a local sqlite file (``sqlite:///mlflow.db``)."""

    enabled: bool = True
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: Optional[str] = Field(None, description="default: the pipeline name")
    run_name: Optional[str] = None
    tags: Dict[str, str] = {}
    log_model: bool = Field(True, description="log the best network with mlflow.pytorch.log_model")
    artifact_location: Optional[str] = Field(None, description="artifact root of a new experiment (MLflow default)")


class CrossFieldError(ValueError):
    """Problems that involve several config fields, each tied to the key path it is reported at.

    Raised inside :class:`PipelineConfig` validation; :func:`validate_config` turns each problem into a
    :class:`ConfigError` entry with that path's YAML line.

    Attributes:
        problems: ``[(key_path_tuple, message), ...]``.
    """

    def __init__(self, problems: List[Tuple[Tuple[Any, ...], str]]):
        self.problems = problems
        super().__init__("; ".join(f"{'.'.join(map(str, p))}: {m}" for p, m in problems))


class PipelineConfig(_Model):
    """A whole pipeline: YAML -> data -> network -> engine -> metrics -> tracking -> artifacts.

    ``task`` decides the rest: ``segmentation`` needs a segmentation net (``basic_unet``) and ``infer`` (sliding
    window); ``classification`` needs a classifier net (``densenet121``, ``resnet18``, ``resnet50``, ``lenet``),
    class labels from ``data.list_file`` or ``data.class_from: folder``, and classification metrics.
    """

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
        if key is None and names and all(m in LOWER_IS_BETTER_METRICS for m in names):
            problems.append((("metrics", "names"), f"{names} has no higher-is-better metric to select the best "
                             "checkpoint (key_metric); add one, e.g. dice"))
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
        if problems:
            raise CrossFieldError(problems)
        # defaults that depend on the task, filled in so that config.resolved.yaml shows them
        if self.task == "segmentation":
            self.loss.name = self.loss.name or "dice_ce"
            self.metrics.names = names or ["dice", "pixel_accuracy"]
            self.metrics.key_metric = key or ("dice" if "dice" in self.metrics.names else next(
                m for m in self.metrics.names if m not in LOWER_IS_BETTER_METRICS))
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


def _keys_of(spec: TransformSpec) -> List[str]:
    keys = spec.kwargs.get("keys", [])
    return [keys] if isinstance(keys, str) else list(keys)


# ----------------------------------------------------------------------------------------------- loading
class ConfigError(ValueError):
    """A pipeline file failed to load or validate.

    Attributes:
        source: the file (or ``"<string>"``).
        problems: list of ``(key_path, line, message)``; ``line`` is 1-based or ``None``.
    """

    def __init__(self, source: str, problems: List[Tuple[str, Optional[int], str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {len(problems)} problem{'s' if len(problems) != 1 else ''}:"]
        for path, line, msg in problems:
            where = f"line {line}, " if line else ""
            lines.append(f"  - {where}{path or '<top>'}: {msg}")
        super().__init__("\n".join(lines))


class _DuplicateKey(Exception):
    pass


def _line_map(text: str) -> Dict[Tuple[Any, ...], int]:
    """Map each key path in a YAML document to the 1-based line where its key (or list item) starts."""
    lines: Dict[Tuple[Any, ...], int] = {}
    root = yaml.compose(text, Loader=yaml.SafeLoader)

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for k, v in node.value:
                key = k.value
                if key in seen:
                    raise _DuplicateKey((path + (key,), k.start_mark.line + 1))
                seen.add(key)
                lines[path + (key,)] = k.start_mark.line + 1
                walk(v, path + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines[path + (i,)] = v.start_mark.line + 1
                walk(v, path + (i,))

    if root is not None:
        walk(root, ())
    return lines


def _set_path(data: Dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur: Any = data
    for i, k in enumerate(keys[:-1]):
        if isinstance(cur, list):
            cur = cur[int(k)]
            continue
        if k not in cur or cur[k] is None:
            cur[k] = {}
        cur = cur[k]
        if not isinstance(cur, (dict, list)):
            raise ValueError(f"--set {dotted}: {'.'.join(keys[: i + 1])} is a {type(cur).__name__}, not a mapping")
    last = keys[-1]
    if isinstance(cur, list):
        cur[int(last)] = value
    else:
        cur[last] = value


def apply_overrides(data: Dict[str, Any], overrides: Optional[List[str]]) -> Dict[str, Any]:
    """Return a copy of ``data`` with ``key.path=value`` overrides applied (values parsed as YAML).

    Example: ``["train.max_epochs=3", "infer.roi_size=[128,128]", "transforms.train.2.prob=0.3"]``.

    Raises:
        ValueError: an override without ``=`` or through a non-mapping.
    """
    data = copy.deepcopy(data)
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"--set expects key.path=value, found {item!r}")
        key, raw = item.split("=", 1)
        _set_path(data, key.strip(), yaml.safe_load(raw))
    return data


def _unwrap(tp):
    """Strip Optional/Annotated; return (origin-free type or tuple of union members)."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin is Union:
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        return members[0] if len(members) == 1 else tuple(members)
    return tp


def _allowed_keys(path: Tuple[Any, ...], data: Any) -> Optional[List[str]]:
    """Field names of the model that holds ``path[-1]``, following ``data`` to pick union members."""
    cur: Any = PipelineConfig
    node = data
    for key in path[:-1]:
        cur = _unwrap(cur)
        if isinstance(cur, tuple):  # union of models: pick by `name`
            tag = node.get("name") if isinstance(node, dict) else None
            cur = next((m for m in cur if tag in _tags_of(m)), None)
            if cur is None:
                return None
        if inspect.isclass(cur) and issubclass(cur, BaseModel):
            if key not in cur.model_fields:
                return None
            cur = cur.model_fields[key].annotation
        elif typing.get_origin(cur) in (list, List) and isinstance(key, int):
            cur = typing.get_args(cur)[0]
        else:
            return None
        node = node[key] if isinstance(node, (dict, list)) else None
    cur = _unwrap(cur)
    if isinstance(cur, tuple):
        tag = node.get("name") if isinstance(node, dict) else None
        cur = next((m for m in cur if tag in _tags_of(m)), None)
    if inspect.isclass(cur) and issubclass(cur, BaseModel):
        return list(cur.model_fields)
    return None


def _tags_of(model) -> Tuple[Any, ...]:
    """The discriminator values (``name`` literals) of a union member model, e.g. ``("resnet18", "resnet50")``."""
    f = getattr(model, "model_fields", {}).get("name")
    if f is None:
        return ()
    return typing.get_args(f.annotation)


def _data_path(loc: Tuple[Any, ...], data: Any) -> Tuple[Any, ...]:
    """Drop pydantic's union-tag elements from ``loc`` so that it follows the YAML structure."""
    out = []
    node = data
    for key in loc:
        if isinstance(node, dict) and key in node:
            node = node[key]
            out.append(key)
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
            out.append(key)
        elif isinstance(node, dict) and isinstance(key, str) and key not in node and key != "name" and (
            node.get("name") == key
        ):
            continue  # discriminator tag inserted by pydantic
        else:
            out.append(key)
            node = None
    return tuple(out)


def _line_for(path: Tuple[Any, ...], lines: Dict[Tuple[Any, ...], int]) -> Optional[int]:
    for n in range(len(path), 0, -1):
        if path[:n] in lines:
            return lines[path[:n]]
    return None


def _format_error(err: Dict[str, Any], data: Any) -> Tuple[Tuple[Any, ...], str]:
    path = _data_path(tuple(err["loc"]), data)
    etype = err["type"]
    if etype == "extra_forbidden":
        allowed = _allowed_keys(path, data) or []
        msg = f"unknown key {path[-1]!r}." + did_you_mean(str(path[-1]), allowed)
        if allowed:
            msg += f" Allowed keys: {', '.join(allowed)}"
        return path, msg
    if etype == "union_tag_invalid":
        ctx = err.get("ctx", {})
        tag = ctx.get("tag")
        expected = [t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",")]
        return path + ("name",), f"unknown name {tag!r}; allowed: {', '.join(expected)}." + did_you_mean(
            str(tag), expected
        )
    if etype == "union_tag_not_found":
        return path, "missing `name` (it selects the component)"
    if etype == "missing":
        return path, "required key is missing"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if "input" in err and etype not in ("model_type", "dict_type") and not isinstance(err["input"], (dict, list)):
        msg += f" (found {err['input']!r})"
    return path, msg


def validate_config(data: Any, source: str = "<string>", lines: Optional[Dict] = None) -> PipelineConfig:
    """Validate a parsed pipeline mapping.

    Args:
        data: the mapping from ``yaml.safe_load``.
        source: file name used in error messages.
        lines: key path -> YAML line map from the file (for error messages).

    Raises:
        ConfigError: listing every problem at once, each with its key path and line.
    """
    lines = lines or {}
    if not isinstance(data, dict):
        raise ConfigError(source, [("", 1, f"expected a mapping at the top level, found {type(data).__name__}")])
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            cross = (err.get("ctx") or {}).get("error")
            if isinstance(cross, CrossFieldError):
                for path, msg in cross.problems:
                    problems.append((".".join(str(p) for p in path), _line_for(path, lines), msg))
                continue
            path, msg = _format_error(err, data)
            problems.append((".".join(str(p) for p in path), _line_for(path, lines), msg))
        problems.sort(key=lambda p: (p[1] is None, p[1] or 0))
        raise ConfigError(source, problems) from None


def load_config(path: Union[str, Path], overrides: Optional[List[str]] = None) -> PipelineConfig:
    """Read, override and validate a pipeline YAML file.

    Args:
        path: the pipeline file.
        overrides: ``key.path=value`` strings (``--set`` on the command line), values parsed as YAML.

    Returns:
        The validated :class:`PipelineConfig`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ConfigError: YAML syntax error, duplicate key, or any validation problem, all listed with lines.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pipeline file {path} not found")
    text = path.read_text()
    try:
        lines = _line_map(text)
        data = yaml.safe_load(text)
    except _DuplicateKey as dup:
        key_path, line = dup.args[0]
        raise ConfigError(str(path), [(".".join(map(str, key_path)), line, "duplicate key")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(str(path), [("", line, f"YAML syntax error: {getattr(exc, 'problem', exc)}")]) from None
    try:
        data = apply_overrides(data, overrides)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ConfigError(str(path), [("", None, f"bad override: {exc}")]) from None
    return validate_config(data, str(path), lines)


def resolved_dict(cfg: PipelineConfig) -> Dict[str, Any]:
    """The fully resolved config (defaults filled in) as plain data, for ``config.resolved.yaml``."""
    return cfg.model_dump(mode="json")


def flatten(d: Any, prefix: str = "") -> Dict[str, Any]:
    """Flatten nested dicts/lists to ``{"a.b.0.c": value}`` (for MLflow params)."""
    out: Dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(d, list) and d and any(isinstance(x, (dict, list)) for x in d):
        for i, v in enumerate(d):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = d
    return out
