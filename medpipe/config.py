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
    ``data.root``), a random ``val_fraction``, or ``kfold`` folds with ``fold`` held out. Random methods are
    deterministic given ``seed`` (cases are sorted by path before shuffling with ``numpy.random.default_rng``).
    """

    val: Optional[List[str]] = Field(None, description="explicit validation images (file names or relative paths)")
    val_fraction: Optional[float] = Field(None, gt=0, lt=1, description="fraction of cases held out for validation")
    kfold: Optional[int] = Field(None, ge=2, description="number of folds for k-fold cross-validation")
    fold: int = Field(0, ge=0, description="which fold is the validation fold (0-based), with kfold")
    seed: int = Field(0, description="seed of the split's shuffle")

    @model_validator(mode="after")
    def _one_method(self) -> "SplitConfig":
        chosen = [k for k in ("val", "val_fraction", "kfold") if getattr(self, k) is not None]
        if len(chosen) > 1:
            raise ValueError(f"give only one of val, val_fraction, kfold; found {', '.join(chosen)}")
        if not chosen:
            self.val_fraction = 0.2
        if self.kfold is not None and self.fold >= self.kfold:
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
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes (0: load in the main process)")
    on_bad_image: Literal["error", "skip"] = Field(
        "error", description="an unreadable image or an image/label size mismatch: stop, or report and skip it"
    )
    verify: bool = Field(True, description="read every file once before training to report unreadable ones")

    @model_validator(mode="after")
    def _source(self) -> "DataConfig":
        if self.list_file is None and self.images is None:
            raise ValueError("give `images` (a glob) or `list_file` (CSV/JSON)")
        if self.list_file is not None and (self.images is not None or self.labels is not None):
            raise ValueError("give either `list_file` or `images`/`labels` globs, not both")
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


NetConfig = Annotated[Union[BasicUNetNet], Field(discriminator="name")]


# ---------------------------------------------------------------------------------------- loss, optimizer
class LossConfig(_Model):
    """Loss function (MONAI losses; ``cross_entropy`` is ``torch.nn.CrossEntropyLoss``).

    ``dice_ce``: MONAI ``DiceCELoss`` (Milletari et al. 2016 Dice + cross-entropy) on softmax outputs with
    one-hot labels. ``dice``: MONAI ``DiceLoss``. ``cross_entropy``: class-index labels. ``class_weights``
    weights the cross-entropy term per class.
    """

    name: Literal["dice_ce", "dice", "cross_entropy"] = "dice_ce"
    include_background: bool = True
    lambda_dice: float = Field(1.0, ge=0)
    lambda_ce: float = Field(1.0, ge=0)
    class_weights: Optional[List[float]] = None
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
    amp: bool = Field(False, description="automatic mixed precision; used on CUDA only")
    seed: int = 0
    deterministic: bool = Field(True, description="monai.utils.set_determinism(seed) and deterministic kernels")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto | cpu | cuda | cuda:N")
    grad_clip_norm: Optional[float] = Field(None, gt=0, description="clip the gradient L2 norm to this value")
    early_stop_patience: Optional[int] = Field(None, ge=1, description="stop after N validations without gain")
    progress: bool = Field(True, description="show progress bars")


SegMetric = Literal["dice", "pixel_accuracy", "v_rand", "v_info"]


class MetricsConfig(_Model):
    """Validation metrics. ``key_metric`` selects the best checkpoint (higher is better).

    ``dice``: MONAI ``DiceMetric`` over the foreground classes; ``pixel_accuracy``; ``v_rand`` and ``v_info``:
    the ISBI-2012 foreground-restricted Rand and information-theoretic scores (Arganda-Carreras et al. 2015).
    """

    names: List[SegMetric] = ["dice", "pixel_accuracy"]
    key_metric: SegMetric = "dice"

    @model_validator(mode="after")
    def _key_in_names(self) -> "MetricsConfig":
        if self.key_metric not in self.names:
            raise ValueError(f"key_metric {self.key_metric!r} must be one of names {self.names}")
        return self


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


class TrackingConfig(_Model):
    """MLflow tracking. The default backend store is a local sqlite file (``sqlite:///mlflow.db``)."""

    enabled: bool = True
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: Optional[str] = Field(None, description="default: the pipeline name")
    run_name: Optional[str] = None
    tags: Dict[str, str] = {}
    log_model: bool = Field(True, description="log the best network with mlflow.pytorch.log_model")
    artifact_location: Optional[str] = Field(None, description="artifact root of a new experiment (MLflow default)")


class PipelineConfig(_Model):
    """A whole pipeline: YAML -> data -> network -> engine -> metrics -> tracking -> artifacts."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$")
    task: Literal["segmentation"] = "segmentation"
    output_dir: str = Field("artifacts", description="artifacts go to <output_dir>/<run name>/")
    data: DataConfig
    transforms: TransformsConfig
    net: NetConfig
    loss: LossConfig = Field(default_factory=LossConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    train: TrainConfig
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    infer: InferConfig
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @field_validator("transforms")
    @classmethod
    def _transforms_present(cls, v: TransformsConfig) -> TransformsConfig:
        if not v.train:
            raise ValueError("transforms.train must not be empty (at least LoadImaged)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "PipelineConfig":
        if len(self.infer.roi_size) != self.net.spatial_dims:
            raise ValueError(
                f"infer.roi_size has {len(self.infer.roi_size)} values but net.spatial_dims is "
                f"{self.net.spatial_dims}"
            )
        if self.loss.class_weights is not None and len(self.loss.class_weights) != self.net.out_channels:
            raise ValueError(
                f"loss.class_weights has {len(self.loss.class_weights)} values for "
                f"net.out_channels={self.net.out_channels} classes"
            )
        return self

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
            cur = next((m for m in cur if _tag_of(m) == tag), None)
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
        cur = next((m for m in cur if _tag_of(m) == tag), None)
    if inspect.isclass(cur) and issubclass(cur, BaseModel):
        return list(cur.model_fields)
    return None


def _tag_of(model) -> Any:
    f = getattr(model, "model_fields", {}).get("name")
    if f is None:
        return None
    args = typing.get_args(f.annotation)
    return args[0] if args else None


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
