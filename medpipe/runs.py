"""A run folder: what a medpipe run writes, where, and how a trained run is loaded back.

Every run writes one folder ``<output_dir>/<name>-<YYYYmmdd-HHMMSS>`` (:meth:`RunFolder.create`)::

    config.resolved.yaml   the validated config with every default filled in (and schema_version)
    manifest.json          the cases of each split
    mlflow_run.json        the MLflow run it is tracked in (run id, experiment id, tracking URI)
    data_problems.csv      files the integrity check skipped (only when there are some)
    checkpoints/           best_<...>.pt (network weights at the best key metric) and
                           latest_checkpoint_<epoch>.pt (everything needed to resume; the two newest kept)
    metrics.json           final metrics and the per-epoch history
    report.md, plots/, predictions/, slides/

:func:`find_run` turns a folder or an MLflow run id into a :class:`RunFolder` (``--resume``); :func:`load_trained`
rebuilds a trained network with the pipeline's own inference transforms from a folder or an MLflow model URI, as
nnU-Net's ``nnUNetPredictor.initialize_from_trained_model_folder`` does, for :mod:`medpipe.serve` and
:mod:`medpipe.export`.

What :func:`load_trained` trusts: a run folder or a logged model may come from someone else, so nothing in it is
unpickled by default. The network is rebuilt from the validated ``config.resolved.yaml`` (YAML read as data) and
its weights are read with ``torch.load(weights_only=True)`` (tensors only; no code runs) from
``checkpoints/best_*.pt`` or the model's ``extra_files/state_dict.pt``. A model that has only a pickled file (MLflow's
``data/model.pth`` of runs logged before medpipe wrote the state dict) is refused with
:class:`~medpipe.mlflow_models.UntrustedModelError` unless ``trust_pickle=True``.

No torch or MLflow at module level: the loaders import them when called.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import yaml

from medpipe.config import ConfigError, PipelineConfig, load_config
from medpipe.mlflow_models import UntrustedModelError, load_weights_file

logger = logging.getLogger(__name__)

__all__ = ["CONFIG_FILE", "MANIFEST_FILE", "METRICS_FILE", "REPORT_FILE", "MLFLOW_RUN_FILE", "PROBLEMS_FILE",
           "CHECKPOINT_DIR", "PLOTS_DIR", "PREDICTIONS_DIR", "SLIDES_DIR", "BEST_PREFIX", "LATEST_PREFIX",
           "DEFAULT_TRACKING_URI", "MODEL_URI_SCHEMES", "default_tracking_uri", "no_nan", "is_model_uri",
           "checkpoint_epochs", "latest_checkpoint", "best_checkpoint", "RunFolder", "find_run", "TrainedRun",
           "UntrustedModelError", "load_trained"]

CONFIG_FILE = "config.resolved.yaml"
MANIFEST_FILE = "manifest.json"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
MLFLOW_RUN_FILE = "mlflow_run.json"
PROBLEMS_FILE = "data_problems.csv"
CHECKPOINT_DIR = "checkpoints"
PLOTS_DIR = "plots"
PREDICTIONS_DIR = "predictions"
SLIDES_DIR = "slides"
#: file name prefixes of the checkpoints: ``best_<...>.pt`` (weights) and ``latest_checkpoint_<epoch>.pt`` (resume)
BEST_PREFIX = "best"
LATEST_PREFIX = "latest"
#: medpipe's MLflow store when neither the config nor ``$MLFLOW_TRACKING_URI`` names one
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
#: prefixes of the MLflow model URIs :func:`load_trained` accepts
MODEL_URI_SCHEMES = ("runs:/", "models:/")

_LATEST_RE = re.compile(rf"^{LATEST_PREFIX}_checkpoint_(\d+)\.pt$")


def default_tracking_uri(explicit: Optional[str] = None) -> str:
    """The MLflow tracking URI to read runs from: ``explicit``, else ``$MLFLOW_TRACKING_URI``, else
    :data:`DEFAULT_TRACKING_URI` (``sqlite:///mlflow.db``, the shipped pipelines' store)."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def no_nan(x: Any) -> Any:
    """``x`` with every float NaN replaced by ``None``, recursively through dicts and lists (strict JSON has no
    NaN; ``json.dumps`` would write the non-standard ``NaN``)."""
    if isinstance(x, dict):
        return {k: no_nan(v) for k, v in x.items()}
    if isinstance(x, list):
        return [no_nan(v) for v in x]
    if isinstance(x, float) and x != x:
        return None
    return x


def is_model_uri(source: str) -> bool:
    """Whether ``source`` is an MLflow model URI (``runs:/...`` or ``models:/...``) rather than a folder."""
    return str(source).startswith(MODEL_URI_SCHEMES)


# ---------------------------------------------------------------------------------------------- checkpoints
def checkpoint_epochs(checkpoint_dir: Union[str, Path]) -> List[Tuple[int, Path]]:
    """``[(epoch, path)]`` of the ``latest_checkpoint_<epoch>.pt`` files in ``checkpoint_dir``, oldest first.

    Temporary files of an interrupted (atomic) save are not ``.pt`` files and are ignored; a missing folder gives
    ``[]``.
    """
    found = []
    for p in Path(checkpoint_dir).glob(f"{LATEST_PREFIX}_checkpoint_*.pt"):
        m = _LATEST_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(checkpoint_dir: Union[str, Path]) -> Optional[Path]:
    """The ``latest_checkpoint_<epoch>.pt`` with the highest epoch in ``checkpoint_dir``, or ``None``."""
    found = checkpoint_epochs(checkpoint_dir)
    return found[-1][1] if found else None


def best_checkpoint(checkpoint_dir: Union[str, Path]) -> Optional[Path]:
    """The newest (by modification time) ``best_*.pt`` in ``checkpoint_dir``, or ``None``.

    Ignite's ``Checkpoint`` keeps one best file (``n_saved=1``) and replaces it when the key metric improves, so
    the newest is the best.
    """
    hits = sorted(Path(checkpoint_dir).glob(f"{BEST_PREFIX}_*.pt"), key=lambda p: p.stat().st_mtime)
    return hits[-1] if hits else None


def _read_json(path: Path) -> Optional[Any]:
    return json.loads(path.read_text()) if path.is_file() else None


# ---------------------------------------------------------------------------------------------- run folder
@dataclass
class RunFolder:
    """The artifact folder of one run (``<output_dir>/<name>-<YYYYmmdd-HHMMSS>``, or ``fold_<k>`` of a
    cross-validation run).

    Attributes:
        path: the folder.
    """

    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    @classmethod
    def create(cls, output_dir: Union[str, Path], name: str) -> "RunFolder":
        """Create ``<output_dir>/<name>-<YYYYmmdd-HHMMSS>`` (local time), made unique with ``-1``, ``-2``, ...
        when a folder of that name exists already.

        Raises:
            OSError: the folder cannot be created.
        """
        base = Path(output_dir) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        out, i = base, 1
        while out.exists():
            out, i = Path(f"{base}-{i}"), i + 1
        out.mkdir(parents=True)
        return cls(out)

    @property
    def config_file(self) -> Path:
        """``config.resolved.yaml``."""
        return self.path / CONFIG_FILE

    @property
    def manifest_file(self) -> Path:
        """``manifest.json``."""
        return self.path / MANIFEST_FILE

    @property
    def metrics_file(self) -> Path:
        """``metrics.json``."""
        return self.path / METRICS_FILE

    @property
    def report_file(self) -> Path:
        """``report.md``."""
        return self.path / REPORT_FILE

    @property
    def mlflow_run_file(self) -> Path:
        """``mlflow_run.json``."""
        return self.path / MLFLOW_RUN_FILE

    @property
    def problems_file(self) -> Path:
        """``data_problems.csv``."""
        return self.path / PROBLEMS_FILE

    @property
    def checkpoint_dir(self) -> Path:
        """``checkpoints/``."""
        return self.path / CHECKPOINT_DIR

    @property
    def plots_dir(self) -> Path:
        """``plots/``."""
        return self.path / PLOTS_DIR

    @property
    def predictions_dir(self) -> Path:
        """``predictions/``."""
        return self.path / PREDICTIONS_DIR

    @property
    def slides_dir(self) -> Path:
        """``slides/``."""
        return self.path / SLIDES_DIR

    def best_checkpoint(self) -> Optional[Path]:
        """The newest ``checkpoints/best_*.pt`` (see :func:`best_checkpoint`), or ``None``."""
        return best_checkpoint(self.checkpoint_dir)

    def latest_checkpoint(self) -> Optional[Path]:
        """The ``checkpoints/latest_checkpoint_<epoch>.pt`` of the highest epoch, or ``None``."""
        return latest_checkpoint(self.checkpoint_dir)

    def checkpoint_epochs(self) -> List[Tuple[int, Path]]:
        """``[(epoch, path)]`` of ``checkpoints/latest_checkpoint_<epoch>.pt``, oldest first."""
        return checkpoint_epochs(self.checkpoint_dir)

    def load_config(self) -> PipelineConfig:
        """The run's ``config.resolved.yaml`` through :func:`medpipe.config.load_config` (older schema versions
        are upgraded).

        Raises:
            FileNotFoundError: the file does not exist.
            medpipe.config.ConfigError: it does not validate with this medpipe version.
        """
        return load_config(self.config_file)

    def write_config(self, resolved: Dict[str, Any]) -> Path:
        """Write ``config.resolved.yaml`` (``resolved``: :func:`medpipe.config.resolved_dict`, key order kept)."""
        self.config_file.write_text(yaml.safe_dump(resolved, sort_keys=False))
        return self.config_file

    def read_manifest(self) -> Optional[Dict[str, Any]]:
        """``manifest.json`` (``{"train": [case, ...], "val": [...], ...}``), or ``None`` when absent."""
        return _read_json(self.manifest_file)

    def write_manifest(self, doc: Dict[str, Any]) -> Path:
        """Write ``manifest.json`` (JSON, indent 1)."""
        self.manifest_file.write_text(json.dumps(doc, indent=1))
        return self.manifest_file

    def read_metrics(self) -> Dict[str, Any]:
        """``metrics.json`` (``{"final": {...}, "history": {...}, ...}``), or ``{}`` when absent."""
        return _read_json(self.metrics_file) or {}

    def write_metrics(self, doc: Dict[str, Any]) -> Path:
        """Write ``metrics.json`` (JSON, indent 1, NaN written as ``null``: :func:`no_nan`)."""
        self.metrics_file.write_text(json.dumps(no_nan(doc), indent=1))
        return self.metrics_file

    def mlflow_run(self) -> Optional[Dict[str, Any]]:
        """``mlflow_run.json`` (``run_id``, ``experiment_id``, ``tracking_uri``), or ``None`` (not tracked)."""
        return _read_json(self.mlflow_run_file)

    def write_mlflow_run(self, run_id: str, experiment_id: Optional[str], tracking_uri: Optional[str]) -> Path:
        """Record the MLflow run of this folder in ``mlflow_run.json`` (for ``--resume <folder>``)."""
        self.mlflow_run_file.write_text(json.dumps(
            {"run_id": run_id, "experiment_id": experiment_id, "tracking_uri": tracking_uri}, indent=1))
        return self.mlflow_run_file

    def write_problems(self, problems: List[Dict[str, str]]) -> Optional[Path]:
        """The integrity check's bad files as ``data_problems.csv`` (columns ``file``, ``reason``); nothing is
        written and ``None`` returned when ``problems`` is empty."""
        if not problems:
            return None
        import csv

        with open(self.problems_file, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["file", "reason"])
            writer.writeheader()
            writer.writerows(problems)
        return self.problems_file


def find_run(source: str, tracking_uri: Optional[str] = None, context: Optional[str] = None) -> RunFolder:
    """A run's folder from a folder path or an MLflow run id (looked up by its ``output_dir`` tag).

    Args:
        source: ``<output_dir>/<name>-<time>`` or an MLflow run id.
        tracking_uri: where to look a run id up (:func:`default_tracking_uri`).
        context: how error messages start (default ``source``; ``--resume`` passes ``"--resume <source>"``).

    Raises:
        FileNotFoundError: neither an existing folder nor a run id in the store (names both), or the folder has
            no ``config.resolved.yaml``.
    """
    context = context or str(source)
    folder = Path(source)
    if not folder.is_dir():
        from medpipe.tracking import run_output_dir

        uri = default_tracking_uri(tracking_uri)
        try:
            folder = run_output_dir(source, uri)
        except Exception as exc:  # mlflow raises its own exception types
            raise FileNotFoundError(f"{context}: not a folder, and not a run id in MLflow at {uri} "
                                    f"({exc})") from None
    run = RunFolder(folder)
    if not run.config_file.is_file():
        raise FileNotFoundError(f"{context}: {run.config_file} not found; expected a medpipe run folder")
    return run


# ------------------------------------------------------------------------------------------ trained runs
@dataclass
class TrainedRun:
    """A trained pipeline loaded for inference by :func:`load_trained`.

    Attributes:
        cfg: the run's validated resolved config.
        net: the network with the best weights, in eval mode on ``device``; takes ``(B, C, H, W[, D])`` float32.
        transform: the pipeline's inference ``monai.transforms.Compose`` (it starts with ``LoadImaged``).
        inferer: ``monai.inferers.SlidingWindowInferer`` of ``cfg.infer`` for segmenters, else ``None``.
        device: ``torch.device`` of ``net``.
        source: the folder or model URI it was loaded from.
        folder: the :class:`RunFolder`, when loaded from one.
        run_id: the MLflow run id, when known.
        metrics: the run's ``metrics.json`` (``{}`` when absent).
        manifest: the run's ``manifest.json``, or ``None``.
        classes: class names in index order (classifiers), else ``None``.
        threshold: operating threshold on P(class 1) of a two-class classifier, else ``None`` (argmax).
        temperature: the classifier's logit temperature ``T`` (``metrics.json`` ``calibration.temperature``;
            probabilities are ``softmax(logits / T)``, Guo et al. 2017), else ``None`` (plain softmax).
        ood: ``metrics.json`` ``ood`` (``{"score": "energy"|"max_softmax", "threshold", "coverage"}``) of a
            classifier, else ``None``.
        postprocess: a segmenter's post-processing spec (``metrics.json`` ``postprocessing``, for
            :func:`medpipe.inference.postprocess.apply_postprocess`), else ``None``.
    """

    cfg: PipelineConfig
    net: Any
    transform: Any
    inferer: Any
    device: Any
    source: str
    folder: Optional[RunFolder] = None
    run_id: Optional[str] = None
    metrics: Optional[Dict[str, Any]] = None
    manifest: Optional[Dict[str, Any]] = None
    classes: Optional[List[str]] = None
    threshold: Optional[float] = None
    temperature: Optional[float] = None
    ood: Optional[Dict[str, Any]] = None
    postprocess: Optional[Dict[str, Any]] = None

    @property
    def tta(self) -> bool:
        """Whether predictions average mirrored copies (``cfg.infer.tta``; axes ``cfg.infer.tta_axes``)."""
        return bool(self.cfg.infer is not None and self.cfg.infer.tta)


def _from_model_uri(source: str, tracking_uri: Optional[str], trust_pickle: bool):
    """``(cfg, state_dict, metrics, manifest, run_id)`` of an MLflow model URI and the run that logged it."""
    from medpipe.mlflow_models import fetch_model_run

    tmp = Path(tempfile.mkdtemp(prefix="medpipe-model-"))
    try:
        got = fetch_model_run(source, tmp, default_tracking_uri(tracking_uri),
                              files=(CONFIG_FILE, METRICS_FILE, MANIFEST_FILE), trust_pickle=trust_pickle)
        cfg_path = got["files"][CONFIG_FILE]
        if cfg_path is None:
            raise FileNotFoundError(f"MLflow run {got['run_id']} of {source} has no {CONFIG_FILE} artifact; was it "
                                    "logged by medpipe.run?")
        try:
            cfg = load_config(cfg_path)
        except ConfigError as err:  # name the model, not the temporary download
            raise ConfigError(f"{source} ({CONFIG_FILE})", err.problems) from None
        metrics = _read_json(got["files"][METRICS_FILE]) if got["files"][METRICS_FILE] else {}
        manifest = _read_json(got["files"][MANIFEST_FILE]) if got["files"][MANIFEST_FILE] else None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cfg, got["state_dict"], metrics or {}, manifest or None, got["run_id"]


def _from_folder(source: str, trust_pickle: bool):
    """``(run folder, cfg, state_dict, metrics, manifest, run_id)`` of a run folder (or a downloaded MLflow run
    artifact folder with a ``model/`` MLflow model); weights read as tensors only unless ``trust_pickle``."""
    run = RunFolder(Path(source))
    if not run.path.is_dir():
        raise FileNotFoundError(f"model {source!r} is neither an MLflow model URI (runs:/<id>/model, "
                                "models:/<name>/<version>) nor an existing run artifact folder")
    if not run.config_file.is_file():
        raise FileNotFoundError(f"{run.path} has no {CONFIG_FILE}: expected a run folder written by "
                                "medpipe.run (<output_dir>/<run>/)")
    cfg = run.load_config()
    best = run.best_checkpoint()
    if best is not None:
        state = load_weights_file(best, str(run.path), trust_pickle)
        state = state.get("net", state) if isinstance(state, dict) else state
        if not isinstance(state, dict):
            raise ValueError(f"{run.path}: {best} holds {type(state).__name__}, expected a checkpoint "
                             "{'net': state dict} or a state dict")
    elif (run.path / "model" / "MLmodel").is_file():
        from medpipe.mlflow_models import load_model_state_dict

        state = load_model_state_dict(str(run.path / "model"), trust_pickle=trust_pickle)
    else:
        raise FileNotFoundError(f"{run.path} has neither {CHECKPOINT_DIR}/{BEST_PREFIX}_*.pt nor an MLflow model "
                                "in model/")
    info = run.mlflow_run() or {}
    return run, cfg, state, run.read_metrics(), run.read_manifest() or None, info.get("run_id")


def _classes_and_threshold(cfg: PipelineConfig, metrics: Dict, manifest: Optional[Dict], source: str):
    """Class names (``metrics.json``, ``manifest.json``, ``data.classes``, else ``class_<i>``) and the two-class
    operating threshold (``metrics.json`` ``threshold``) of a classifier; ``(None, None)`` for segmenters."""
    if cfg.task != "classification":
        return None, None
    classes = metrics.get("classes") or (manifest or {}).get("classes") or cfg.data.classes
    if not classes:
        classes = [f"class_{i}" for i in range(cfg.net.num_classes)]
        logger.warning("%s: class names not found (metrics.json, manifest.json, data.classes); using %s",
                       source, classes)
    thr = metrics.get("threshold")
    return list(classes), (float(thr) if thr is not None and cfg.net.num_classes == 2 else None)


def _reported(cfg: PipelineConfig, metrics: Dict) -> Tuple[Optional[float], Optional[Dict], Optional[Dict]]:
    """``(temperature, ood, postprocess)`` as the run reported them in ``metrics.json`` (``calibration``, ``ood``,
    ``postprocessing``); ``None`` for each one absent or not of the run's task."""
    if cfg.task != "classification":
        post = metrics.get("postprocessing")
        return None, None, (dict(post) if isinstance(post, dict) else None)
    cal, ood = metrics.get("calibration") or {}, metrics.get("ood")
    temp = cal.get("temperature") if isinstance(cal, dict) else None
    return (float(temp) if temp is not None else None), (dict(ood) if isinstance(ood, dict) else None), None


def load_trained(source: str, tracking_uri: Optional[str] = None, device: str = "cpu",
                 trust_pickle: bool = False) -> TrainedRun:
    """Load a trained pipeline: config, network with its best weights, inference transforms and inferer.

    The network is built from the validated resolved config (:func:`medpipe.nets.build_net`) and its weights are
    read as tensors only (``torch.load(weights_only=True)``): no code from the folder or the model runs unless
    ``trust_pickle`` is set.

    Args:
        source: a run folder (``<output_dir>/<run>/``: weights from the newest ``checkpoints/best_*.pt``, key
            ``net``), a downloaded MLflow run artifact folder (weights from its ``model/`` MLflow model's
            ``extra_files/state_dict.pt``), or an MLflow model URI ``runs:/<run_id>/model``,
            ``models:/<name>/<version>`` or ``models:/<name>@<alias>`` (weights from the logged model's
            ``extra_files/state_dict.pt``; config, metrics and manifest from the artifacts of the run that logged
            it).
        tracking_uri: MLflow tracking and registry URI for model URIs (:func:`default_tracking_uri`); MLflow's
            process-wide URIs are left untouched.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        trust_pickle: unpickle what cannot be read as tensors: a model with only MLflow's pickled
            ``data/model.pth`` (logged before medpipe wrote the state dict), or a checkpoint holding other objects.
            Unpickling runs whatever code the file holds: only for sources you trust.

    Returns:
        :class:`TrainedRun`.

    Raises:
        UntrustedModelError: (a ``ValueError``) the weights can only be read by unpickling and ``trust_pickle`` is
            false; the message names the source and the file and says how to opt in.
        ValueError: a weights file is not a readable torch file or holds no state dict.
        FileNotFoundError: the folder does not exist or has no ``config.resolved.yaml`` or weights; the model's run
            has no ``config.resolved.yaml``.
        medpipe.config.ConfigError: the resolved config does not validate with this medpipe version.
        mlflow.exceptions.MlflowException: the URI cannot be resolved.
        RuntimeError: the weights do not fit the network the config describes.
    """
    import torch

    from medpipe.data.transforms import build_transforms
    from medpipe.inference.sliding import build_inferer
    from medpipe.nets import build_net

    folder, run_id = None, None
    if is_model_uri(source):
        cfg, state, metrics, manifest, run_id = _from_model_uri(source, tracking_uri, trust_pickle)
    else:
        folder, cfg, state, metrics, manifest, run_id = _from_folder(source, trust_pickle)
    classes, threshold = _classes_and_threshold(cfg, metrics, manifest, source)
    temperature, ood, postprocess = _reported(cfg, metrics)
    net = build_net(cfg.net)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise RuntimeError(f"{source}: the weights do not fit net {cfg.net.name!r} of its config: {exc}") from None
    dev = torch.device(device)
    net = net.to(dev).eval()
    transform = build_transforms(cfg.infer_transforms(), "transforms.infer", series_uid=cfg.data.series_uid)
    inferer = build_inferer(cfg.infer) if cfg.task == "segmentation" else None
    return TrainedRun(cfg, net, transform, inferer, dev, source, folder, run_id, metrics, manifest, classes,
                      threshold, temperature, ood, postprocess)
