"""MLflow models of medpipe runs: logged with a weights-only state dict, loaded back as tensors only.

What is trusted: a model's weights are read with ``torch.load(weights_only=True)`` (tensors, numbers, strings and
containers of them; no object is built, no code runs), and the network they go into is rebuilt by the caller from
its validated ``config.resolved.yaml`` (:func:`medpipe.runs.load_trained`) or is the caller's own network
(``net.pretrained``). Nothing of a model folder is unpickled unless the caller passes ``trust_pickle=True``.

Writing (:func:`log_network`, called by :meth:`medpipe.tracking.Tracker.log_model`): ``mlflow.pytorch.log_model``
writes ``MLmodel`` with a signature (``(-1, C, -1, -1)`` float32 -> ``(-1, out_channels, -1, -1)`` or
``(-1, num_classes)``) and an input example of the shape the network is fed (:func:`network_example`), the model
itself, and, through its ``extra_files`` option, the network's state dict as :data:`STATE_DICT_FILE`
(``extra_files/state_dict.pt``, plain ``torch.save`` of ``{name: tensor}``), the only file medpipe reads back.
The model itself is MLflow's code-free ``serialization_format="pt2"`` (``torch.export``) where the exported
program serves every input size the network serves (:func:`pt2_refusal` checks it at logging time: classifiers
such as ResNet-18 and DenseNet121), and the pickled module ``data/model.pth`` where it does not (BasicUNet: its
exported program refuses sizes that are not multiples of 16, which the module pads; MLflow's warning that pickle
can run code on load stays, as medpipe itself never unpickles it). Measured on 2 CPU cores (table in
:func:`log_network`): pt2 costs 1.3 s (ResNet-18) to 3.8 s (EM BasicUNet) per logged model instead of 0.1-0.5 s,
0.5 s instead of 0.02 s to load, and about the same file size; with a fixed-size example (as before this check)
it refused every other input size and batch.

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
from typing import Any, Dict, Optional, Sequence, Tuple, Union

logger = logging.getLogger(__name__)

__all__ = ["STATE_DICT_FILE", "PICKLED_MODEL_FILES", "TRUST_HINT", "UntrustedModelError", "load_weights_file",
           "log_network", "network_example", "pt2_refusal", "resolve_model_uri", "load_model_state_dict",
           "fetch_model_run"]

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


def network_example(dataset, roi_size: Optional[Sequence[int]] = None):
    """One network input of the shape the network really gets, for the logged model's signature and example.

    Args:
        dataset: the validation dataset (MONAI); its first item's ``"image"`` (``(C, *spatial)``, after the
            validation transforms; a list of samples gives its first) sets the channels and, for classifiers, the
            spatial size.
        roi_size: segmentation: the sliding-window size (``infer.roi_size``), which is what the network is fed;
            ``None`` for classifiers (the whole transformed image).

    Returns:
        float32 zeros ``(1, C, *roi_size)`` or ``(1, C, H, W)`` (numpy), or ``None`` when the dataset is empty or
        its items have no ``"image"``. Zeros: the example documents the shape and keeps ``input_example.json``
        small (a window of real pixels written as JSON is 5-20 times larger).
    """
    import numpy as np

    if dataset is None or len(dataset) == 0:
        return None
    item = dataset[0]
    item = item[0] if isinstance(item, (list, tuple)) else item
    image = item.get("image") if isinstance(item, dict) else None
    if image is None or len(getattr(image, "shape", ())) < 2:
        return None
    spatial = tuple(int(r) for r in roi_size) if roi_size is not None else tuple(int(d) for d in image.shape[1:])
    return np.zeros((1, int(image.shape[0]), *spatial), dtype=np.float32)


def _first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (at most 160 characters)."""
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:160]}"


def pt2_refusal(net, example) -> Optional[str]:
    """Why MLflow's ``serialization_format="pt2"`` cannot stand in for ``net``, or ``None`` when it can.

    ``net`` is exported as MLflow does it (``torch.export`` with ``Dim.AUTO`` on the batch and spatial dimensions,
    from a batch of 2 because a size-1 dimension is always specialised), and the exported program is run beside
    ``net`` on batches of 1 and 3 and on a size one pixel larger in every spatial dimension. A size the network
    itself refuses is skipped; a size ``net`` accepts and the exported program refuses (BasicUNet pads sizes that
    are not a multiple of 16; its export does not), or outputs that differ by more than 1e-4, is the reason.

    The answer is kept per architecture (``repr(net)``) and example shape for the rest of the process: the
    export takes 1.5-4 s on 2 CPU cores.

    Args:
        net: the network, on CPU, in eval mode.
        example: :func:`network_example` ``(1, C, *spatial)`` float32.

    Returns:
        ``None``, or one line saying which input failed and how.
    """
    key = (repr(net), tuple(example.shape))  # the architecture (every layer and its sizes) and the input shape
    if key not in _PT2_CHECKED:
        _PT2_CHECKED[key] = _pt2_check(net, example)
    return _PT2_CHECKED[key]


#: :func:`pt2_refusal` per (network repr, example shape) in this process: the answer depends on the architecture
#: only, not on the weights, so runs of one pipeline (cross-validation folds, tests) export once
_PT2_CHECKED: Dict[Tuple[str, tuple], Optional[str]] = {}


def _pt2_check(net, example) -> Optional[str]:
    """:func:`pt2_refusal` without the cache."""
    import torch
    from torch.export import Dim

    x = torch.from_numpy(example).repeat(2, *([1] * (example.ndim - 1)))
    try:
        dims = {0: Dim.AUTO, **{d: Dim.AUTO for d in range(2, x.ndim)}}
        program = torch.export.export(net, (x,), dynamic_shapes=[dims]).module()
    except Exception as exc:  # noqa: BLE001 - any export failure means: keep pickle
        return f"torch.export failed ({_first_line(exc)})"
    channels, spatial = example.shape[1], tuple(example.shape[2:])
    for shape in ((1, channels, *spatial), (3, channels, *spatial), (1, channels, *(s + 1 for s in spatial))):
        probe = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            try:
                want = net(probe)
            except Exception:  # noqa: BLE001 - the network itself refuses this size: nothing to compare
                continue
            try:
                got = program(probe)
            except Exception as exc:  # noqa: BLE001
                return f"the exported program refuses input {tuple(shape)} that the network takes ({_first_line(exc)})"
        if got.shape != want.shape or not torch.allclose(got, want, atol=1e-4, rtol=1e-4):
            return f"the exported program's output for {tuple(shape)} differs from the network's"
    return None


def _signature(net, example):
    """``mlflow.models.infer_signature`` of ``example`` and the network's output on it, with the batch and
    spatial dimensions marked variable (-1): ``(-1, C, -1, -1)`` -> ``(-1, out_channels, -1, -1)`` or
    ``(-1, num_classes)``. BasicUNet, ResNet and DenseNet take other sizes than the example's (LeNet does not)."""
    import numpy as np
    import torch
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types import Schema, TensorSpec

    with torch.no_grad():
        output = net(torch.from_numpy(example)).detach().cpu().numpy().astype(np.float32)
    inferred = infer_signature(example, output)

    def variable(spec):
        return Schema([TensorSpec(spec.type, tuple(d if i == 1 else -1 for i, d in enumerate(spec.shape)))])

    return ModelSignature(variable(inferred.inputs.inputs[0]), variable(inferred.outputs.inputs[0]))


def log_network(net, name: str = "model", pip_requirements: Optional[list] = None, example=None
                ) -> Tuple[str, Optional[str], str]:
    """Log ``net`` to the active MLflow run as the model ``name``, with a signature, an input example and its
    weights-only state dict.

    The format is MLflow's code-free ``serialization_format="pt2"`` (``torch.export``) when the exported program
    serves every input the network serves (:func:`pt2_refusal`), else ``"pickle"`` (MLflow then warns that
    unpickling can run code; medpipe never unpickles it: it reads :data:`STATE_DICT_FILE`, written in both
    formats). Measured on 2 CPU cores (MLflow 3.17, torch 2.x; logging includes MLflow's own check of the example):

    ================ ======================= ============== ============== ========================
    network          format                  model file     log / load s   other input sizes
    ================ ======================= ============== ============== ========================
    EM BasicUNet     pickle (kept)           2.0 MB .pth    0.54 / 0.01    all (the module pads)
    (features 16..)  pt2, fixed example      2.5 MB .pt2    1.7 / 0.15     none ("Guard failed")
                     pt2, dims -1, batch 2   2.9 MB .pt2    3.8 / 0.66     multiples of 16 >= 32 only
    ResNet-18        pickle                  44.8 MB .pth   0.13 / 0.02    all
    (1 x 128 x 128)  pt2, fixed example      45.0 MB .pt2   0.6 / 0.2      none
                     pt2, dims -1, batch 2   45.2 MB .pt2   1.3 / 0.5      all (used)
    ================ ======================= ============== ============== ========================

    Args:
        net: the ``torch.nn.Module`` (moved to CPU in place, as ``mlflow.pytorch.log_model`` needs; its
            train/eval mode is restored afterwards).
        name: the model's name (``runs:/<run id>/<name>``).
        pip_requirements: for the MLmodel's environment (given, so MLflow spawns no process to infer them).
        example: :func:`network_example` ``(1, C, *spatial)`` float32, or ``None`` (no signature or example;
            pickle).

    Returns:
        ``(format, why pickle or None, model URI)``: ``("pt2", None, uri)`` or ``("pickle", reason, uri)``; the URI
        is MLflow's ``models:/<model id>`` of the logged model.
    """
    import mlflow.pytorch
    import numpy as np
    import torch

    training = net.training
    net = net.cpu().eval()
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        fmt, reason, signature = "pickle", "no input example", None
        if example is not None:
            signature = _signature(net, example)
            reason = pt2_refusal(net, example)
            fmt = "pickle" if reason else "pt2"
            # pt2: a batch of 2, or torch.export fixes the batch size to 1
            example = np.repeat(example, 2, axis=0) if fmt == "pt2" else example
        with tempfile.TemporaryDirectory(prefix="medpipe-state-dict-") as tmp:
            path = Path(tmp) / Path(STATE_DICT_FILE).name
            torch.save(state, path)
            if reason:
                logger.info("model %s logged with pickle beside the tensors-only %s (%s)", name, STATE_DICT_FILE,
                            reason)
            info = mlflow.pytorch.log_model(net, name=name, pip_requirements=pip_requirements,
                                            serialization_format=fmt, signature=signature, input_example=example,
                                            extra_files=[str(path)])
    finally:
        net.train(training)
    return fmt, reason, info.model_uri


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
