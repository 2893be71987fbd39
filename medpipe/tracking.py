"""MLflow tracking; with :mod:`medpipe.mlflow_models` (models: logging and tensors-only loading) the only medpipe
modules that import ``mlflow``.

One MLflow run per pipeline run. :class:`Tracker` logs the resolved config (artifact and flattened params),
the dataset manifest hash, the git commit, library versions, the train / val / test splits as MLflow dataset
inputs (:meth:`Tracker.log_datasets`), per-epoch training loss / learning rate and validation metrics
(step = epoch), final metrics, plots, and the best model (``mlflow.pytorch.log_model`` with a signature, an input
example and a weights-only ``extra_files/state_dict.pt``; registered when ``tracking.register_model`` is set).
Used as a context manager, a crash ends the run as ``FAILED`` and keeps everything already logged.

Experiments medpipe creates carry MLflow 3's experiment-kind tag for model training (:data:`EXPERIMENT_KIND_TAG`
= :data:`TRAINING_KIND`, the value MLflow's UI writes when a user marks an experiment "model training"); an
existing experiment without the tag gets it. MLflow 3.17's UI itself opens an experiment by its GenAI / Model
training switch instead: :func:`runs_page` is the link that opens the runs table (it is logged when a run starts).

With tracking disabled (``tracking.enabled: false``) every method is a no-op, so callers need no branches.

Read side: :func:`run_output_dir` (a run id's artifact folder, for ``--resume``), :func:`load_model_state_dict`
(transfer learning) and :func:`fetch_model_run` (:func:`medpipe.runs.load_trained`; both defined in
:mod:`medpipe.mlflow_models`, re-exported here, tensors only unless ``trust_pickle``). They take a tracking URI and
use ``MlflowClient(tracking_uri=..., registry_uri=...)`` and ``mlflow.artifacts.download_artifacts(...,
tracking_uri=...)``: MLflow's process-wide URIs are never changed by reading.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Dict, Optional

logger = logging.getLogger(__name__)

__all__ = ["Tracker", "TrackingError", "run_status", "library_versions", "git_commit", "client_for", "run_output_dir",
           "env_summary", "runs_page", "split_digest", "EXPERIMENT_KIND_TAG", "TRAINING_KIND",
           "resolve_model_uri", "load_model_state_dict", "fetch_model_run"]

_MAX_PARAM_LEN = 500

#: MLflow 3's experiment-kind tag and its model-training value (what the UI's kind selector writes)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"
#: MLflow's limit on a dataset digest (characters)
_MAX_DIGEST = 36


def runs_page(experiment_id: str) -> str:
    """The MLflow UI page of an experiment's runs table, relative to the UI's address.

    MLflow 3.17's UI picks an experiment's first page from its GenAI / Model training switch (the URL's
    ``workflowType``, else the browser's last choice, GenAI by default), not from the experiment's
    :data:`EXPERIMENT_KIND_TAG`; this link asks for model training, so it opens on the runs table.
    """
    return f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def split_digest(manifest_sha256: str, split: str, cases) -> str:
    """The MLflow dataset digest of one split: SHA-256 over the manifest hash, the split's name and its cases
    (file base names, labels, groups; in image order), cut to MLflow's 36 characters.

    The manifest hash (:func:`medpipe.data.integrity.manifest_hash`, the run tag ``dataset.manifest_sha256``)
    fingerprints the files' contents; this adds which cases the split holds, so two runs share a dataset in
    MLflow exactly when they trained (validated, tested) on the same cases of the same files.
    """
    import hashlib
    import json

    h = hashlib.sha256(f"{manifest_sha256}\n{split}\n".encode())
    for case in sorted(cases, key=lambda c: str(c.get("image", ""))):
        entry = {k: os.path.basename(v) if isinstance(v, str) and k not in ("group", "split") else v
                 for k, v in case.items()}
        h.update(json.dumps(entry, sort_keys=True, default=str).encode() + b"\n")
    return h.hexdigest()[:_MAX_DIGEST]


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


class TrackingError(RuntimeError):
    """The MLflow store failed (unreachable, read-only, deleted, full) while a run was being tracked.

    The message is one line: the store, what was being logged, and the store's own first line of error. The run
    folder and its checkpoints are unaffected: ``python -m medpipe.run --resume <run folder>`` continues once the
    store works again (into the same MLflow run, or into a new one when the store lost it). ``one_line``: the
    engine logs no traceback for it.
    """

    one_line = True


def _guarded(what: str):
    """Decorator for :class:`Tracker` writes: an MLflow failure becomes one :class:`TrackingError` (the long
    SQLAlchemy / HTTP chain stays in the ``__cause__`` for ``--verbose`` logs) and the tracker stops writing."""

    def wrap(method):
        @functools.wraps(method)
        def guarded(self, *args, **kwargs):
            if self.broken is not None:
                raise TrackingError(self.broken)
            try:
                return method(self, *args, **kwargs)
            except (KeyboardInterrupt, TrackingError):
                raise
            except Exception as exc:  # mlflow, SQLAlchemy, requests and OS errors alike
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                self.broken = (f"MLflow store {self.cfg.tracking_uri}: {what} failed ({type(exc).__name__}: {first}); "
                               "the run folder and its checkpoints are kept: fix the store, then continue with "
                               "python -m medpipe.run --resume <run folder>")
                raise TrackingError(self.broken) from exc

        return guarded

    return wrap


class Tracker:
    """An MLflow run for one pipeline run.

    Every write goes through :func:`_guarded`: if the store fails mid-run (unwritable, deleted, full), the call
    raises :class:`TrackingError` with one line, later writes are not attempted, and the run is not marked at the
    end (the store cannot take it); the caller's run folder keeps its checkpoints for ``--resume``.

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
        self.broken: Optional[str] = None  # the TrackingError message once the store failed

    # --------------------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> "Tracker":
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.end("FAILED" if exc_type is not None else "FINISHED")
        return False

    @_guarded("starting the run")
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
                                                          artifact_location=self.cfg.artifact_location,
                                                          tags={EXPERIMENT_KIND_TAG: TRAINING_KIND})
        else:
            self.experiment_id = exp.experiment_id
            if EXPERIMENT_KIND_TAG not in exp.tags:  # an experiment of an older medpipe; a kind set by hand stays
                mlflow.MlflowClient().set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
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
        logger.info("MLflow run %s in experiment %r at %s (runs table: mlflow ui --backend-store-uri %s, then "
                    "/%s)", self.run_id, self._experiment, self.cfg.tracking_uri, self.cfg.tracking_uri,
                    runs_page(self.experiment_id))

    def end(self, status: str = "FINISHED") -> None:
        """End the run with ``FINISHED`` or ``FAILED`` (everything logged so far is kept). When the store cannot take
        the status (it failed: :attr:`broken`), the run still ends in this process and a warning says so."""
        if self._mlflow is None or self._mlflow.active_run() is None:
            return
        try:  # MLflow pops its active run first, then writes the status: the run ends here even if the store fails
            self._mlflow.end_run(status=status)
        except Exception as exc:  # the store failed (again): the run folder is complete, --resume continues
            logger.warning("MLflow run %s could not be marked %s (%s: %s)", self.run_id, status, type(exc).__name__,
                           (str(exc).strip().splitlines() or [""])[0][:300])

    # ------------------------------------------------------------------------------------------ logging
    @_guarded("logging params")
    def log_params(self, params: Dict[str, Any]) -> None:
        """Log flat params; values longer than MLflow's limit are truncated (the full config is an artifact)."""
        if not self.enabled:
            return
        clean = {k: (str(v)[:_MAX_PARAM_LEN]) for k, v in params.items()}
        items = list(clean.items())
        for i in range(0, len(items), 100):
            self._mlflow.log_params(dict(items[i:i + 100]))

    @_guarded("setting tags")
    def set_tags(self, tags: Dict[str, Any]) -> None:
        """Set run tags (e.g. ``git_commit``, ``dataset.manifest_sha256``, ``version.torch``)."""
        if self.enabled:
            self._mlflow.set_tags({k: str(v) for k, v in tags.items()})

    @_guarded("logging metrics")
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

    @_guarded("logging an artifact")
    def log_artifact(self, path: Path, artifact_path: Optional[str] = None) -> None:
        """Upload a file or folder to the run's artifacts."""
        if not self.enabled:
            return
        path = Path(path)
        if path.is_dir():
            self._mlflow.log_artifacts(str(path), artifact_path=artifact_path)
        elif path.is_file():
            self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    @_guarded("logging the datasets")
    def log_datasets(self, name: str, source: str, manifest_sha256: str, splits: Dict[str, list]) -> None:
        """Log each non-empty split as an MLflow dataset input of the run (``mlflow.data.from_pandas`` of its case
        table: one row per case), with the split as context (``train`` / ``val`` / ``test``), so the runs table's
        Dataset column and the lineage show it.

        Args:
            name: the dataset's name (the pipeline's).
            source: where the data is: the data root folder.
            manifest_sha256: the manifest hash; each split's digest is :func:`split_digest` of it, and the full
                hash is the input tag ``medpipe.manifest_sha256``.
            splits: ``{"train": cases, "val": cases, "test": cases}`` (case dicts; empty splits are skipped).
        """
        if not self.enabled:
            return
        import mlflow.data
        import pandas as pd

        from mlflow.data.dataset_source_registry import get_registered_sources, resolve_dataset_source

        # MLflow registers its local-folder source twice (URI schemes "" and "file") and warns that the folder
        # "can be interpreted in multiple ways"; both are the same class of source, so the first is named here
        local = [c for c in get_registered_sources() if c.__name__ == "LocalArtifactDatasetSource"][:1]
        where = resolve_dataset_source(str(source), candidate_sources=local or None)
        datasets, contexts, tags = [], [], []
        for split, cases in splits.items():
            if not cases:
                continue
            table = pd.DataFrame([dict(c) for c in cases])
            datasets.append(mlflow.data.from_pandas(table, source=where, name=name,
                                                    digest=split_digest(manifest_sha256, split, cases),
                                                    targets="label" if "label" in table else None))
            contexts.append(split)
            tags.append({"medpipe.manifest_sha256": manifest_sha256})
        if datasets:
            self._mlflow.log_inputs(datasets=datasets, contexts=contexts, tags_list=tags)

    @_guarded("logging the model")
    def log_model(self, net, name: str = "model", example=None) -> Optional[str]:
        """Log the network as an MLflow model with a signature, an input example and its weights-only state dict
        (:func:`medpipe.mlflow_models.log_network`: ``extra_files/state_dict.pt``, the file medpipe reads back;
        the model itself as MLflow's ``pt2`` where that serves every input size, else pickled), and register it
        when ``register_model`` is set. Tags ``model.serialization`` (and ``model.pickle_reason``).

        Pip requirements are given explicitly (torch and MONAI versions) so MLflow does not spawn a process to
        infer them.

        Args:
            net: the trained network.
            name: the model's name in the run.
            example: :func:`medpipe.mlflow_models.network_example` ``(1, C, *spatial)`` float32, or ``None``.

        Returns:
            The model URI ``runs:/<id>/<name>``, or ``None`` when tracking or ``log_model`` is off.
        """
        if not (self.enabled and self.cfg.log_model):
            return None
        from medpipe.mlflow_models import log_network

        versions = library_versions()
        fmt, reason, model_uri = log_network(net, name, [f"torch=={versions['torch'].split('+')[0]}",
                                              f"monai=={versions['monai']}"], example)
        self._mlflow.set_tags({"model.serialization": fmt, **({"model.pickle_reason": reason[:500]} if reason else {})})
        uri = f"runs:/{self.run_id}/{name}"
        if self.cfg.register_model:
            self._register(model_uri)
        return uri

    def _register(self, uri: str) -> None:
        """Register the logged model ``uri`` (``models:/<model id>``) as a new version of ``register_model``, with
        the run's metrics (latest values) as version tags; the run gets the tag ``model.registered``
        (``<name>/<version>``)."""
        metrics = self._mlflow.MlflowClient().get_run(self.run_id).data.metrics
        version = self._mlflow.register_model(uri, self.cfg.register_model,
                                              tags={k: str(v) for k, v in sorted(metrics.items())})
        self._mlflow.set_tag("model.registered", f"{version.name}/{version.version}")
        logger.info("model registered as %s version %s (models:/%s/%s)", version.name, version.version, version.name,
                    version.version)

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


def run_status(run_id: str, tracking_uri: str) -> Optional[Dict[str, Optional[str]]]:
    """``{"status": "RUNNING" | "FINISHED" | "FAILED" | "KILLED", "output_dir": tag or None}`` of an MLflow run, or
    ``None`` when the store has no such run (e.g. the store was deleted and re-created empty).

    Raises:
        TrackingError: the store cannot be read (one line naming it).
    """
    from mlflow.exceptions import MlflowException

    try:
        run = client_for(tracking_uri).get_run(run_id)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise TrackingError(f"MLflow store {tracking_uri}: reading run {run_id} failed "
                            f"({(str(exc).strip().splitlines() or [''])[0][:300]})") from exc
    except Exception as exc:  # SQLAlchemy / OS errors of an unreadable store
        raise TrackingError(f"MLflow store {tracking_uri}: reading run {run_id} failed ({type(exc).__name__}: "
                            f"{(str(exc).strip().splitlines() or [''])[0][:300]})") from exc
    return {"status": run.info.status, "output_dir": run.data.tags.get("output_dir")}


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
# MLflow models are read (tensors only) by medpipe.mlflow_models; re-exported here for existing callers
from medpipe.mlflow_models import fetch_model_run, load_model_state_dict, resolve_model_uri  # noqa: E402
