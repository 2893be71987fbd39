"""Pipeline configuration: pydantic v2 models for the whole pipeline YAML, and loading with precise errors.

``load_config(path)`` reads a YAML file, applies ``--set key=value`` overrides, upgrades an older layout
(``schema_version``, :mod:`medpipe.config.schema`) and validates it against :class:`PipelineConfig`. Every problem
is reported at once in one :class:`ConfigError` that names the file, the YAML line, the dotted key path, what was
found and what was expected, with "did you mean" suggestions for misspelled keys and names. Unknown keys are
errors (``extra="forbid"``), never silently dropped.

A pipeline YAML is data only: registry names, numbers, strings and lists. It cannot carry code, ``$``
expressions or import paths. Transforms are named by their MONAI dictionary-transform class name (e.g.
``ScaleIntensityRanged``) and their keyword arguments are checked against the class signature at validation
time; that check imports ``monai.transforms`` lazily, everything else here needs neither torch nor MONAI.

Modules, one per section: :mod:`~medpipe.config.data`, :mod:`~medpipe.config.transforms`,
:mod:`~medpipe.config.net`, :mod:`~medpipe.config.training`, :mod:`~medpipe.config.evaluation`,
:mod:`~medpipe.config.slides`, :mod:`~medpipe.config.tracking`; the whole pipeline and its cross-field checks in
:mod:`~medpipe.config.pipeline`; :mod:`~medpipe.config.loading`, :mod:`~medpipe.config.errors` and
:mod:`~medpipe.config.schema`. ``python -m medpipe.config.doc`` writes the reference page.
"""

from medpipe.config.base import StrictModel
from medpipe.config.data import DataConfig, SplitConfig
from medpipe.config.errors import ConfigError, CrossFieldError
from medpipe.config.evaluation import (CLASSIFICATION_METRICS, LOWER_IS_BETTER_METRICS, SEGMENTATION_METRICS,
                                       ClsMetric, InferConfig, MetricsConfig, ReportConfig, SegMetric)
from medpipe.config.loading import apply_overrides, flatten, load_config, resolved_dict, validate_config
from medpipe.config.net import (CLASSIFICATION_NETS, SEGMENTATION_NETS, BasicUNetNet, DenseNet121Net, DynUNetNet, LeNetNet,
                                NetConfig, ResNetNet)
from medpipe.config.pipeline import PipelineConfig
from medpipe.config.schema import CURRENT_SCHEMA_VERSION, upgrade_config_dict
from medpipe.config.slides import SlideInferConfig, SlideIntensityConfig, SlideSpec
from medpipe.config.tracking import TrackingConfig
from medpipe.config.training import LossConfig, OptimizerConfig, SchedulerConfig, TrainConfig
from medpipe.config.transforms import TransformsConfig, TransformSpec, check_transform_args, transform_table

__all__ = [
    # loading
    "ConfigError", "CrossFieldError", "PipelineConfig", "load_config", "validate_config", "apply_overrides",
    "resolved_dict", "flatten",
    # schema versions
    "CURRENT_SCHEMA_VERSION", "upgrade_config_dict",
    # sections
    "StrictModel", "DataConfig", "SplitConfig", "TransformSpec", "TransformsConfig", "check_transform_args",
    "transform_table", "NetConfig", "BasicUNetNet", "DynUNetNet", "DenseNet121Net", "ResNetNet", "LeNetNet", "SEGMENTATION_NETS",
    "CLASSIFICATION_NETS", "LossConfig", "OptimizerConfig", "SchedulerConfig", "TrainConfig", "SegMetric",
    "ClsMetric", "SEGMENTATION_METRICS", "CLASSIFICATION_METRICS", "LOWER_IS_BETTER_METRICS", "MetricsConfig",
    "ReportConfig", "InferConfig", "SlideSpec", "SlideIntensityConfig", "SlideInferConfig", "TrackingConfig",
]
