"""MLflow models of medpipe runs: logged with a weights-only state dict, loaded back as tensors only.

What is trusted: a model's weights are read with ``torch.load(weights_only=True)`` (tensors, numbers, strings and
containers of them; no object is built, no code runs), and the network they go into is rebuilt by the caller from
its validated ``config.resolved.yaml`` (:func:`medpipe.runs.load_trained`) or is the caller's own network
(``net.pretrained``). Nothing of a model folder is unpickled unless the caller passes ``trust_pickle=True``.

Writing (:func:`log_network`, called by :meth:`medpipe.tracking.Tracker.log_model`):
``mlflow.pytorch.log_model`` writes ``MLmodel``, ``data/model.pth`` (the pickled module, for MLflow's own
``mlflow.pytorch.load_model`` and ``mlflow models serve``) and, through its ``extra_files`` option, the network's
state dict as :data:`STATE_DICT_FILE` (``extra_files/state_dict.pt``, plain ``torch.save`` of ``{name: tensor}``).
MLflow's own code-free format, ``serialization_format="pt2"`` (``torch.export``), was measured and not used: it
needs an input example of one fixed size (BasicUNet and DenseNet121 then refuse any other size: "Guard failed:
x.size()[2] == 64"), adds 1.2 s (tiny BasicUNet) to 2.2 s (DenseNet121 at 64 px) per logged model on 2 CPU cores,
and reading its weights back safely relies on MLflow's private ``_validate_pt2_archive_is_pickle_free``.

Reading (:func:`load_model_state_dict` for transfer learning, :func:`fetch_model_run` for
:func:`medpipe.runs.load_trained`): the model is resolved with :func:`resolve_model_uri` and downloaded with
``mlflow.artifacts.download_artifacts(..., tracking_uri=...)`` (MLflow's process-wide URIs are never changed);
the weights come from :data:`STATE_DICT_FILE`. A model with only a pickled file (logged before medpipe wrote the
state dict) is refused with :class:`UntrustedModelError` unless ``trust_pickle=True``, which loads it with
``mlflow.pytorch.load_model`` (unpickling: it runs whatever code the file holds).

Only :mod:`medpipe.tracking` and this module import ``mlflow``; neither imports torch or MLflow at module level.
"""

from __future__ import annotations

import logging
import pickle
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

logger = logging.getLogger(__name__)

__all__ = ["STATE_DICT_FILE", "PICKLED_MODEL_FILES", "TRUST_HINT", "UntrustedModelError", "load_weights_file",
           "log_network", "resolve_model_uri", "load_model_state_dict", "fetch_model_run"]

#: the weights-only state dict inside a logged model folder (``log_model(extra_files=[...])`` puts it there)
STATE_DICT_FILE = "extra_files/state_dict.pt"
#: the files of a model folder that only unpickling can read (MLflow's pickled module and exported program)
PICKLED_MODEL_FILES = ("data/model.pth", "data/model.pt2")
#: how to opt in, appended to every refusal
TRUST_HINT = ("unpickling runs whatever code the file holds, so load it only if you trust where it came from: "
              "opt in with trust_pickle=True (--trust-pickle for python -m medpipe.serve / medpipe.export, "
              "net.pretrained_trust_pickle: true for net.pretrained)")


class UntrustedModelError(ValueError):
    """A model or weights file can only be read by unpickling it, and the caller did not pass ``trust_pickle``.

    The message is one line: the source, the file, why it is refused and how to opt in (:data:`TRUST_HINT`).
    """


def load_weights_file(path: Union[str, Path], label: str, trust_pickle: bool = False) -> Any:
    """``torch.load`` a weights file with ``weights_only=True`` (tensors and plain containers; no code runs).

    Args:
        path: a ``.pt`` file (a state dict, or a checkpoint dict holding one).
        label: how messages name the source (a run folder, a model URI).
        trust_pickle: when the file holds other objects, unpickle it anyway (``weights_only=False``, logged as a
            warning) instead of refusing it.

    Returns:
        what the file holds, on CPU (e.g. ``{name: tensor}`` or ``{"net": {name: tensor}, ...}``).

    Raises:
        UntrustedModelError: the file holds objects other than tensors and ``trust_pickle`` is false.
        ValueError: the file is not a readable torch file (truncated, not a zip / pickle).
    """
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust_pickle:
            try:  # reads the pickle's opcodes; executes nothing
                names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
            except Exception:  # noqa: BLE001 - not a zip checkpoint: name what torch said instead
                names = [str(err).strip().splitlines()[-1][:120]]
            more = ", ..." if len(names) > 5 else ""
            raise UntrustedModelError(f"{label}: {path} holds objects other than tensors (pickled globals: "
                                      f"{', '.join(names[:5])}{more}), so medpipe does not load it; "
                                      f"{TRUST_HINT}") from None
        logger.warning("%s: unpickling %s with weights_only=False (trust_pickle)", label, path)
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ValueError(f"{label}: {path} is not a readable torch weights file ({err})") from None


def log_network(net, name: str = "model", pip_requirements: Optional[list] = None) -> None:
    """Log ``net`` to the active MLflow run as the model ``name`` with its weights-only state dict.

    Writes ``mlflow.pytorch.log_model(..., serialization_format="pickle", extra_files=[state_dict.pt])``: the
    pickled module for MLflow's own loaders, and :data:`STATE_DICT_FILE` (``{name: CPU tensor}``), the only file
    medpipe reads back without ``trust_pickle``.

    Args:
        net: the ``torch.nn.Module`` (moved to CPU in place, as ``mlflow.pytorch.log_model`` needs).
        name: the model's name (``runs:/<run id>/<name>``).
        pip_requirements: for the MLmodel's environment (given, so MLflow spawns no process to infer them).
    """
    import mlflow.pytorch
    import torch

    net = net.cpu()
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    with tempfile.TemporaryDirectory(prefix="medpipe-state-dict-") as tmp:
        path = Path(tmp) / Path(STATE_DICT_FILE).name
        torch.save(state, path)
        mlflow.pytorch.log_model(net, name=name, pip_requirements=pip_requirements, serialization_format="pickle",
                                 extra_files=[str(path)])


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
    """``(run_id, local folder)`` of a model URI downloaded into ``dst``; a local folder is used as it is.
    Downloading only copies files: nothing is loaded."""
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


def _state_dict_of(local_model: str, label: str, trust_pickle: bool) -> Dict[str, Any]:
    """The state dict of a downloaded model folder: :data:`STATE_DICT_FILE` read as tensors only; a model without
    it is unpickled with ``mlflow.pytorch.load_model`` only when ``trust_pickle``, else refused."""
    folder = Path(local_model)
    weights = folder / STATE_DICT_FILE
    if weights.is_file():
        state = load_weights_file(weights, label, trust_pickle)
        if not isinstance(state, dict) or not state:
            raise ValueError(f"{label}: {STATE_DICT_FILE} holds {type(state).__name__}, expected a state dict "
                             "{name: tensor}")
        return state
    pickled = [f for f in PICKLED_MODEL_FILES if (folder / f).is_file()]
    if not (folder / "MLmodel").is_file() or not pickled:
        raise FileNotFoundError(f"{label}: no MLflow model with weights in it (expected {STATE_DICT_FILE}, "
                                f"written by medpipe's Tracker.log_model)")
    if not trust_pickle:
        raise UntrustedModelError(f"{label}: the MLflow model has only a pickled file ({pickled[0]}) and no "
                                  f"weights-only {STATE_DICT_FILE} (models logged by medpipe before the state "
                                  f"dict was added, or by other tools), so medpipe does not load it; {TRUST_HINT}")
    import mlflow.pytorch

    logger.warning("%s: unpickling MLflow model %s (trust_pickle)", label, folder / pickled[0])
    model = mlflow.pytorch.load_model(str(folder), map_location="cpu")
    return model.state_dict()


def load_model_state_dict(uri: str, tracking_uri: Optional[str] = None, trust_pickle: bool = False
                          ) -> Dict[str, Any]:
    """The state dict of a PyTorch model logged to MLflow, for transfer learning (``net.pretrained``).

    The model is resolved with :func:`resolve_model_uri`, downloaded to a temporary folder with
    ``mlflow.artifacts.download_artifacts`` and read from there (MLflow's process-wide tracking and registry URIs
    are never changed): the weights-only :data:`STATE_DICT_FILE` with ``torch.load(weights_only=True)``.

    Args:
        uri: an MLflow model URI, e.g. ``runs:/<run_id>/model`` (as returned by
            :meth:`medpipe.tracking.Tracker.log_model`), ``models:/<name>/<version>``, ``models:/<name>@<alias>``,
            or a local MLflow model folder.
        tracking_uri: tracking (and registry) URI to resolve ``runs:/`` / ``models:/`` against, e.g.
            ``sqlite:///mlflow.db``; default MLflow's current one (``MLFLOW_TRACKING_URI``).
        trust_pickle: a model with only a pickled file (no :data:`STATE_DICT_FILE`) is unpickled with
            ``mlflow.pytorch.load_model`` instead of refused. Unpickling runs any code the file holds.

    Returns:
        ``{name: tensor}`` on CPU.

    Raises:
        UntrustedModelError: the model can only be read by unpickling and ``trust_pickle`` is false (names the
            URI, the file and how to opt in).
        FileNotFoundError: the folder holds no model weights at all.
        mlflow.exceptions.MlflowException: the run, model or artifact does not exist (re-raised with the URI and
            tracking URI in the message).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        with tempfile.TemporaryDirectory(prefix="medpipe-mlflow-model-") as tmp:
            return _state_dict_of(_download_model(uri, Path(tmp), tracking_uri)[1], f"MLflow model {uri}",
                                  trust_pickle)
    except MlflowException as err:
        raise MlflowException(
            f"cannot load MLflow model {uri!r} (tracking URI {tracking_uri or mlflow.get_tracking_uri()}): "
            f"{err.message}"
        ) from err


def fetch_model_run(uri: str, dst: Path, tracking_uri: Optional[str] = None,
                    files: tuple = ("config.resolved.yaml", "metrics.json"), trust_pickle: bool = False
                    ) -> Dict[str, Any]:
    """The run behind a logged model: its id, some of its artifacts (downloaded), and the model's state dict.

    Used by :func:`medpipe.runs.load_trained` to rebuild a network with the pipeline it was trained with.
    MLflow's process-wide URIs are never changed (see :func:`load_model_state_dict`).

    Args:
        uri: ``runs:/<run_id>/<name>``, ``models:/<name>/<version>`` or ``models:/<name>@<alias>``.
        dst: folder the artifacts (and the model, under ``model/``) are downloaded into (created).
        tracking_uri: tracking and registry URI, e.g. ``sqlite:///mlflow.db``; default MLflow's current one.
        files: run artifacts to download (a missing one is reported as ``None``).
        trust_pickle: see :func:`load_model_state_dict`.

    Returns:
        ``{"run_id": str, "files": {name: Path | None}, "state_dict": {name: tensor}}``.

    Raises:
        UntrustedModelError: see :func:`load_model_state_dict`.
        FileNotFoundError: the model holds no weights.
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
        state = _state_dict_of(local_model, f"MLflow model {uri}", trust_pickle)
    except MlflowException as err:
        raise MlflowException(f"cannot load MLflow model {uri!r} ({where}): {err.message}") from err
    return {"run_id": run_id, "files": found, "state_dict": state}
