"""MLflow tracking; the only medpipe module that imports ``mlflow``.

One MLflow run per pipeline run. :class:`Tracker` logs the resolved config (artifact and flattened params),
the dataset manifest hash, the git commit, library versions, per-epoch training loss / learning rate and
validation metrics (step = epoch), final metrics, plots, and the best model
(``mlflow.pytorch.log_model``). Used as a context manager, a crash ends the run as ``FAILED`` and keeps
everything already logged.

With tracking disabled (``tracking.enabled: false``) every method is a no-op, so callers need no branches.

Read side: :func:`run_output_dir` (a run id's artifact folder, for ``--resume``), :func:`load_model_state_dict`
(transfer learning) and :func:`fetch_model_run` (:func:`medpipe.runs.load_trained`). They take a tracking URI and
use ``MlflowClient(tracking_uri=..., registry_uri=...)`` and ``mlflow.artifacts.download_artifacts(...,
tracking_uri=...)``: MLflow's process-wide URIs are never changed by reading.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

logger = logging.getLogger(__name__)

__all__ = ["Tracker", "library_versions", "git_commit", "client_for", "run_output_dir", "env_summary",
           "resolve_model_uri", "load_model_state_dict", "fetch_model_run"]

_MAX_PARAM_LEN = 500


def git_commit(path: Path) -> Optional[str]:
    """The commit of the git checkout containing ``path`` (with ``-dirty`` if it has changes), or ``None``."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=path,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def library_versions() -> Dict[str, str]:
    """Versions of Python and the main libraries (as MLflow tags ``version.<name>``)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("medpipe", "torch", "monai", "pytorch-ignite", "numpy", "mlflow", "pydantic", "scikit-image"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


class Tracker:
    """An MLflow run for one pipeline run.

    Args:
        cfg: :class:`medpipe.config.TrackingConfig`.
        pipeline_name: default experiment name.
        resume_run_id: continue this existing run (``--resume``): it is set back to ``RUNNING`` and everything is
            logged into it.

    Example:
        >>> with Tracker(cfg.tracking, cfg.name) as tracker:   # doctest: +SKIP
        ...     tracker.log_params({...}); tracker.attach(engines)
    """

    def __init__(self, cfg, pipeline_name: str, resume_run_id: Optional[str] = None):
        self.cfg = cfg
        self.enabled = bool(cfg.enabled)
        self.resume_run_id = resume_run_id
        self.run_id: Optional[str] = None
        self.experiment_id: Optional[str] = None
        self.parent_run_id: Optional[str] = None
        self.history: Dict[str, list] = {"train": [], "val": []}
        self._experiment = cfg.experiment or pipeline_name
        self._mlflow = None

    # --------------------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> "Tracker":
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.end("FAILED" if exc_type is not None else "FINISHED")
        return False

    def start(self) -> None:
        """Create (or reuse) the experiment and start the run.

        When an MLflow run is already active in this thread (a cross-validation parent run, or the caller's own
        run), the new run is started as its child (``mlflow.start_run(nested=True)``; MLflow sets the tag
        ``mlflow.parentRunId``).
        """
        if not self.enabled:
            return
        import mlflow

        self._mlflow = mlflow
        mlflow.set_tracking_uri(self.cfg.tracking_uri)
        exp = mlflow.get_experiment_by_name(self._experiment)
        if exp is None:
            self.experiment_id = mlflow.create_experiment(self._experiment,
                                                          artifact_location=self.cfg.artifact_location)
        else:
            self.experiment_id = exp.experiment_id
        if self.resume_run_id:
            run = mlflow.start_run(run_id=self.resume_run_id)
            self.run_id, self.experiment_id = run.info.run_id, run.info.experiment_id
            logger.info("MLflow run %s resumed at %s", self.run_id, self.cfg.tracking_uri)
            return
        parent = mlflow.active_run()
        run = mlflow.start_run(experiment_id=self.experiment_id, run_name=self.cfg.run_name,
                               tags=dict(self.cfg.tags), nested=parent is not None)
        self.run_id = run.info.run_id
        self.parent_run_id = parent.info.run_id if parent is not None else None
        logger.info("MLflow run %s in experiment %r at %s", self.run_id, self._experiment, self.cfg.tracking_uri)

    def end(self, status: str = "FINISHED") -> None:
        """End the run with ``FINISHED`` or ``FAILED`` (everything logged so far is kept)."""
        if self._mlflow is not None and self._mlflow.active_run() is not None:
            self._mlflow.end_run(status=status)

    # ------------------------------------------------------------------------------------------ logging
    def log_params(self, params: Dict[str, Any]) -> None:
        """Log flat params; values longer than MLflow's limit are truncated (the full config is an artifact)."""
        if not self.enabled:
            return
        clean = {k: (str(v)[:_MAX_PARAM_LEN]) for k, v in params.items()}
        items = list(clean.items())
        for i in range(0, len(items), 100):
            self._mlflow.log_params(dict(items[i:i + 100]))

    def set_tags(self, tags: Dict[str, Any]) -> None:
        """Set run tags (e.g. ``git_commit``, ``dataset.manifest_sha256``, ``version.torch``)."""
        if self.enabled:
            self._mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_metrics(self, metrics: Dict[str, float], step: Optional[int] = None) -> None:
        """Log numeric metrics (non-finite values are skipped with a warning)."""
        if not self.enabled:
            return
        import math

        good = {}
        for k, v in metrics.items():
            v = float(v)
            if math.isfinite(v):
                good[k] = v
            else:
                logger.warning("metric %s is %s; not logged", k, v)
        if good:
            self._mlflow.log_metrics(good, step=step)

    def log_artifact(self, path: Path, artifact_path: Optional[str] = None) -> None:
        """Upload a file or folder to the run's artifacts."""
        if not self.enabled:
            return
        path = Path(path)
        if path.is_dir():
            self._mlflow.log_artifacts(str(path), artifact_path=artifact_path)
        elif path.is_file():
            self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_model(self, net, name: str = "model") -> Optional[str]:
        """Log the network with ``mlflow.pytorch.log_model``; returns the model URI ``runs:/<id>/<name>``.

        Pip requirements are given explicitly (torch and MONAI versions) so MLflow does not spawn a process to
        infer them.
        """
        if not (self.enabled and self.cfg.log_model):
            return None
        import mlflow.pytorch

        versions = library_versions()
        reqs = [f"torch=={versions['torch'].split('+')[0]}", f"monai=={versions['monai']}"]
        mlflow.pytorch.log_model(net.cpu() if hasattr(net, "cpu") else net, name=name, pip_requirements=reqs,
                                serialization_format="pickle")
        return f"runs:/{self.run_id}/{name}"

    # --------------------------------------------------------------------------------------- engines
    def attach(self, engines) -> None:
        """Log each epoch's training record (loss, samples, learning rate, ...) and validation metrics (as
        ``val_<name>``) with the trainer's epoch as step. :attr:`history` becomes the engines' history
        (:class:`medpipe.engine.resume.History`, restored with the rest on resume), for plots and reports.

        An epoch is logged after its latest checkpoint is written (the handler is registered when training
        starts, after the checkpoint's), so a run killed in between logs that epoch on resume, and a resumed
        epoch is never logged twice: on start, records of the (restored) history that MLflow does not have yet
        are logged first.
        """
        from ignite.engine import Events

        trainer = engines.trainer
        self.history = engines.history.data

        def _log(epoch: int) -> None:
            for rec in self.history["train"]:
                if rec["epoch"] == epoch:
                    self.log_metrics({k: v for k, v in rec.items() if k != "epoch"}, step=epoch)
            for rec in self.history["val"]:
                if rec["epoch"] == epoch:
                    self.log_metrics({f"val_{k}": v for k, v in rec.items() if k != "epoch"}, step=epoch)

        def _epoch(engine):
            _log(engine.state.epoch)

        def _start(engine):
            if self.enabled and self.history["train"]:  # resumed: catch up with the restored history
                logged = self._mlflow.tracking.MlflowClient().get_metric_history(self.run_id, "train_loss")
                last = max((m.step for m in logged), default=0)
                for epoch in sorted({r["epoch"] for r in self.history["train"]}):
                    if epoch > last:
                        _log(epoch)
            if not engine.has_event_handler(_epoch, Events.EPOCH_COMPLETED):
                engine.add_event_handler(Events.EPOCH_COMPLETED, _epoch)

        trainer.add_event_handler(Events.STARTED, _start)


def client_for(tracking_uri: str):
    """An ``mlflow.tracking.MlflowClient`` for reading runs back (tests, reports)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def run_output_dir(run_id: str, tracking_uri: str) -> Path:
    """The artifact folder of a medpipe run (its ``output_dir`` tag), for ``--resume <run id>``.

    Raises:
        mlflow.exceptions.MlflowException: no run ``run_id`` at ``tracking_uri``.
        ValueError: the run has no ``output_dir`` tag (not started by ``medpipe.run``).
    """
    run = client_for(tracking_uri).get_run(run_id)
    folder = run.data.tags.get("output_dir")
    if not folder:
        raise ValueError(f"MLflow run {run_id} at {tracking_uri} has no output_dir tag; was it started by "
                         "python -m medpipe.run? Pass its artifact folder to --resume instead")
    return Path(folder)


def env_summary() -> Dict[str, str]:
    """Host facts for run tags: platform, CPU count, CUDA device name if any."""
    out = {"platform": platform.platform(), "cpu_count": str(os.cpu_count())}
    try:
        import torch

        if torch.cuda.is_available():
            out["cuda_device"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return out


# ------------------------------------------------------------------------------------------ read side
def _client(tracking_uri: Optional[str]):
    """A client bound to ``tracking_uri`` for runs, logged models and the model registry (MLflow's current URIs
    when ``None``); never changes MLflow's process-wide URIs."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri) if tracking_uri else MlflowClient()


def _registry_version(client, name: str, ref: str):
    """The model version of ``models:/<name>/<ref>`` (``ref``: a version number, ``latest`` or a stage) or of
    ``models:/<name>@<alias>`` (``ref``: ``@alias``)."""
    if ref.startswith("@"):
        return client.get_model_version_by_alias(name, ref[1:])
    if ref.isdigit():
        return client.get_model_version(name, ref)
    from mlflow.exceptions import MlflowException

    latest = ref.lower() == "latest"
    found = (client.search_model_versions(f"name = '{name}'") if latest
             else client.get_latest_versions(name, stages=[ref]))  # stages are deprecated in MLflow 3
    if not found:
        raise MlflowException(f"registered model {name!r} has no version{'' if latest else ' in stage ' + ref}")
    return max(found, key=lambda mv: int(mv.version))


def _run_model_location(client, run_id: str, path: str) -> Optional[str]:
    """Where the model ``runs:/<run_id>/<path>`` is stored: the artifact location of the MLflow 3 logged model of
    that name from that run (plus any sub-path), or ``None`` when it is a plain run artifact (MLflow 2 layout)."""
    name, _, rest = path.partition("/")
    experiment_id = client.get_run(run_id).info.experiment_id
    token = None
    while True:
        page = client.search_logged_models(experiment_ids=[experiment_id], filter_string=f"name = '{name}'",
                                           page_token=token)
        for model in page:
            if model.source_run_id == run_id:
                return model.artifact_location.rstrip("/") + (f"/{rest}" if rest else "")
        token = page.token
        if not token:
            return None


def resolve_model_uri(uri: str, tracking_uri: Optional[str] = None) -> Tuple[Optional[str], str]:
    """The run that logged a model and where the model's files are stored, through ``MlflowClient``.

    ``mlflow.artifacts.download_artifacts(artifact_uri=..., tracking_uri=...)`` cannot do this for models in
    MLflow 3.x: ``ModelsArtifactRepository`` (``models:/`` and the logged model behind ``runs:/<id>/model``) looks
    the model up through the process-wide registry/tracking URIs, ignoring the ``tracking_uri`` argument (checked
    with MLflow 3.17: "Registered Model with name=... not found" while the global URI points elsewhere).

    Args:
        uri: ``runs:/<run_id>/<name>[/<path>]``, ``models:/<name>/<version>``, ``models:/<name>/latest``,
            ``models:/<name>/<stage>``, ``models:/<name>@<alias>`` or ``models:/<model_id>``; any other URI is
            returned as it is (with run id ``None``).
        tracking_uri: tracking and registry URI (default MLflow's current one).

    Returns:
        ``(run_id or None, location)``: ``location`` is a concrete artifact URI or path for
        ``mlflow.artifacts.download_artifacts(artifact_uri=location, tracking_uri=tracking_uri)``.

    Raises:
        mlflow.exceptions.MlflowException: the run, model or version does not exist.
    """
    client = _client(tracking_uri)
    if uri.startswith("runs:/"):
        run_id, _, path = uri[len("runs:/"):].strip("/").partition("/")
        location = _run_model_location(client, run_id, path)
        return run_id, location or f"runs:/{run_id}/{path}"
    if uri.startswith("models:/"):
        ref = uri[len("models:/"):].strip("/")
        if "/" in ref or "@" in ref:
            name, sep, version = ref.partition("/") if "/" in ref else ref.rpartition("@")
            mv = _registry_version(client, name, version if sep == "/" else "@" + version)
            return mv.run_id, client.get_model_version_download_uri(name, mv.version)
        model = client.get_logged_model(ref)
        return model.source_run_id, model.artifact_location
    return None, uri


def _download_model(uri: str, dst: Path, tracking_uri: Optional[str]) -> Tuple[Optional[str], str]:
    """``(run_id, local folder)`` of a model URI downloaded into ``dst``; a local folder is used as it is."""
    import mlflow

    if Path(uri).is_dir():
        return None, uri
    run_id, location = resolve_model_uri(uri, tracking_uri)
    if location.startswith("runs:/"):  # a model stored as plain run artifacts
        _, _, path = location[len("runs:/"):].partition("/")
        return run_id, mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(dst),
                                                           tracking_uri=tracking_uri)
    return run_id, mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(dst),
                                                       tracking_uri=tracking_uri)


def _state_dict_of(local_model: str) -> Dict[str, Any]:
    import mlflow.pytorch

    model = mlflow.pytorch.load_model(local_model, map_location="cpu")
    logger.info("loaded MLflow model %s (%s)", local_model, type(model).__name__)
    return model.state_dict()


def load_model_state_dict(uri: str, tracking_uri: Optional[str] = None) -> Dict[str, Any]:
    """The state dict of a PyTorch model logged to MLflow, for transfer learning.

    The model is resolved with :func:`resolve_model_uri`, downloaded to a temporary folder with
    ``mlflow.artifacts.download_artifacts`` and loaded from there, so MLflow's process-wide tracking and registry
    URIs are never changed.

    Args:
        uri: an MLflow model URI, e.g. ``runs:/<run_id>/model`` (as returned by :meth:`Tracker.log_model`),
            ``models:/<name>/<version>``, ``models:/<name>@<alias>``, or a local MLflow model folder.
        tracking_uri: tracking (and registry) URI to resolve ``runs:/`` / ``models:/`` against, e.g.
            ``sqlite:///mlflow.db``; default MLflow's current one (``MLFLOW_TRACKING_URI``).

    Returns:
        ``model.state_dict()`` of ``mlflow.pytorch.load_model`` (tensors on CPU).

    Raises:
        mlflow.exceptions.MlflowException: the run, model or artifact does not exist (re-raised with the URI and
            tracking URI in the message).

    Note:
        ``mlflow.pytorch.load_model`` unpickles the model (its class must be importable): load models only from
        tracking servers you trust.
    """
    import tempfile

    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        with tempfile.TemporaryDirectory(prefix="medpipe-mlflow-model-") as tmp:
            return _state_dict_of(_download_model(uri, Path(tmp), tracking_uri)[1])
    except MlflowException as err:
        raise MlflowException(
            f"cannot load MLflow model {uri!r} (tracking URI {tracking_uri or mlflow.get_tracking_uri()}): "
            f"{err.message}"
        ) from err


def fetch_model_run(uri: str, dst: Path, tracking_uri: Optional[str] = None,
                    files: tuple = ("config.resolved.yaml", "metrics.json")) -> Dict[str, Any]:
    """The run behind a logged model: its id, some of its artifacts (downloaded), and the model's state dict.

    Used by :func:`medpipe.runs.load_trained` to rebuild a network with the pipeline it was trained with.
    MLflow's process-wide URIs are never changed (see :func:`load_model_state_dict`).

    Args:
        uri: ``runs:/<run_id>/<name>``, ``models:/<name>/<version>`` or ``models:/<name>@<alias>``.
        dst: folder the artifacts (and the model, under ``model/``) are downloaded into (created).
        tracking_uri: tracking and registry URI, e.g. ``sqlite:///mlflow.db``; default MLflow's current one.
        files: run artifacts to download (a missing one is reported as ``None``).

    Returns:
        ``{"run_id": str, "files": {name: Path | None}, "state_dict": dict}``.

    Raises:
        mlflow.exceptions.MlflowException: the model or its run cannot be resolved (the message names the URI and
            the tracking URI).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    where = f"tracking URI {tracking_uri or mlflow.get_tracking_uri()}"
    try:
        run_id, local_model = _download_model(uri, dst / "model", tracking_uri)
    except MlflowException as err:
        raise MlflowException(f"cannot resolve MLflow model {uri!r} ({where}): {err.message}") from err
    if not run_id:
        raise MlflowException(f"MLflow model {uri!r} has no source run; medpipe needs the run's "
                              "config.resolved.yaml")
    found: Dict[str, Optional[Path]] = {}
    for name in files:
        try:
            found[name] = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name,
                                                                   dst_path=str(dst), tracking_uri=tracking_uri))
        except (MlflowException, OSError):
            found[name] = None
    try:
        state = _state_dict_of(local_model)
    except MlflowException as err:
        raise MlflowException(f"cannot load MLflow model {uri!r} ({where}): {err.message}") from err
    return {"run_id": run_id, "files": found, "state_dict": state}
