"""Where pretrained weights come from: a local file, an MLflow model (through a loader) or a checked URL.

A pretrained source (``net.pretrained`` in a pipeline) is one of

* a **local file**: a plain state dict (``.pt`` / ``.pth``), a medpipe checkpoint (``{"net": state_dict,
  "optimizer": ..., "trainer": ...}`` as written by MONAI ``CheckpointSaver`` in
  :mod:`medpipe.engine.trainer`; also the ``state_dict`` / ``model_state_dict`` / ``model`` layouts of other
  tools), or a whole pickled ``torch.nn.Module``;
* an **MLflow model** URI (``runs:/<run_id>/model``, ``models:/<name>/<version>``, ``models:/<name>@alias``) or
  a local MLflow model folder (holding ``MLmodel``), e.g. the model a medpipe run logged. ``medpipe.nets`` does
  not import MLflow: the caller passes ``mlflow_loader``, e.g.
  ``functools.partial(medpipe.tracking.load_model_state_dict, tracking_uri=...)``;
* a **URL** (``https://``, ``http://``, ``file://``) with a required SHA-256, downloaded once into a cache folder.
  No download is needed at run time: offline, the error says to fetch the file elsewhere and pass a local path.

:func:`resolve_pretrained` returns the network's state dict; :func:`medpipe.nets.pretrained.load_pretrained`
copies what fits into a network.

Safety: files are read with ``torch.load(weights_only=True)``. A whole pickled module is accepted only when
every class it names is a ``torch.nn.Module`` subclass from ``torch.nn``, ``monai`` or ``medpipe`` (still with
``weights_only=True``, those classes allow-listed); anything else needs ``trust_pickle=True``, because
unpickling arbitrary objects can run code. MLflow models are loaded by the caller's loader: medpipe's
(:func:`medpipe.mlflow_models.load_model_state_dict`) reads the model's weights-only ``extra_files/state_dict.pt``
with ``weights_only=True`` and refuses a model that has only a pickled file unless ``trust_pickle=True`` is passed
on (it is, to the loader, as ``loader(uri, trust_pickle=True)``).
"""

from __future__ import annotations

import hashlib
import http.client
import importlib
import logging
import os
import pickle
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch
from monai.apps.utils import check_hash
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_KEYS",
    "MLFLOW_SCHEMES",
    "TRUSTED_MODULE_PREFIXES",
    "URL_SCHEMES",
    "MlflowLoader",
    "PretrainedDownloadError",
    "Source",
    "default_cache_dir",
    "is_mlflow_uri",
    "resolve_pretrained",
    "sha256_file",
]

#: A pretrained source: a path, a URI / URL string, or an already loaded state dict.
Source = Union[str, os.PathLike, Mapping]
#: Given an MLflow model URI (``runs:/``, ``models:/``) or a local MLflow model folder, its state dict. Called as
#: ``loader(uri)``, and as ``loader(uri, trust_pickle=True)`` when the caller trusts pickled models.
MlflowLoader = Callable[[str], Mapping[str, torch.Tensor]]

#: URI schemes handed to MLflow.
MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")
#: URL schemes downloaded (with a SHA-256) into the cache.
URL_SCHEMES = ("https://", "http://", "file://")
#: Keys under which checkpoints of medpipe (``net``) and other tools keep the network's state dict.
CHECKPOINT_KEYS = ("net", "state_dict", "model_state_dict", "model")
#: Module prefixes whose ``nn.Module`` classes may be unpickled from a whole-module file.
TRUSTED_MODULE_PREFIXES = ("torch.nn.", "monai.", "medpipe.")

_SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")


class PretrainedDownloadError(ConnectionError):
    """Pretrained weights could not be downloaded (offline, unreachable host, HTTP error)."""


def is_mlflow_uri(source: Source) -> bool:
    """Whether ``source`` is an MLflow model URI (``runs:/``, ``models:/``, ``mlflow-artifacts:/``).

    Args:
        source: a pretrained source (path, string or mapping).

    Returns:
        ``True`` for a string starting with one of :data:`MLFLOW_SCHEMES`.
    """
    return isinstance(source, str) and source.startswith(MLFLOW_SCHEMES)


def default_cache_dir() -> Path:
    """Folder for downloaded weights: ``$MEDPIPE_CACHE/weights`` when ``MEDPIPE_CACHE`` is set, else
    ``~/.cache/medpipe/weights``. Not created here.

    Returns:
        the folder path.
    """
    env = os.environ.get("MEDPIPE_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "medpipe"
    return root / "weights"


def sha256_file(path: Union[str, os.PathLike], chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, read in ``chunk``-byte blocks.

    ``monai.apps.utils.check_hash`` answers only yes/no; the digest itself goes into our mismatch messages.

    Args:
        path: the file.
        chunk: block size in bytes.

    Returns:
        64 lowercase hex digits.

    Raises:
        OSError: the file cannot be read.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def resolve_pretrained(
    source: Source,
    cache_dir: Optional[Union[str, os.PathLike]] = None,
    sha256: Optional[str] = None,
    *,
    mlflow_loader: Optional[MlflowLoader] = None,
    trust_pickle: bool = False,
    timeout: float = 30.0,
) -> Dict[str, torch.Tensor]:
    """Fetch the state dict that ``source`` points to.

    Args:
        source: a local file (state dict, medpipe checkpoint ``{"net": ...}``, or a pickled ``nn.Module``), a local
            MLflow model folder, an MLflow model URI (``runs:/<id>/model``, ``models:/<name>/<version>``), a URL
            (``https://``, ``http://``, ``file://``), or an already loaded mapping (returned unwrapped).
        cache_dir: where URLs are downloaded to; default :func:`default_cache_dir`.
        sha256: expected SHA-256 (64 hex digits) of the file behind a URL; required for URLs, checked for local
            files when given.
        mlflow_loader: for MLflow sources only: called with the URI (or the resolved MLflow model folder path)
            and returns its state dict, e.g. ``functools.partial(medpipe.tracking.load_model_state_dict,
            tracking_uri="sqlite:///mlflow.db")``; with ``trust_pickle`` it is called as
            ``mlflow_loader(uri, trust_pickle=True)``.
        trust_pickle: allow unpickling arbitrary objects from a local file (``torch.load(weights_only=False)``)
            or an MLflow model that has only a pickled file (passed on to ``mlflow_loader``). Only for sources you
            trust: unpickling can run code.
        timeout: seconds to wait for a URL's server.

    Returns:
        ``{name: tensor}`` (CPU tensors; non-tensor entries dropped), the network's state dict with any checkpoint
        wrapper (``net``, ``state_dict``, ...) removed. Name prefixes such as ``module.`` are kept; they are
        matched in :func:`medpipe.nets.pretrained.load_pretrained`.

    Raises:
        FileNotFoundError: a local ``source`` does not exist (the message names the resolved path).
        ValueError: a URL without ``sha256``, a malformed ``sha256``, a checksum mismatch, a file that is not a
            state dict / checkpoint / module, a pickled file refused without ``trust_pickle``, or an MLflow
            source without ``mlflow_loader``. medpipe's MLflow loader refuses a pickled-only model with
            ``medpipe.mlflow_models.UntrustedModelError`` (a ``ValueError``).
        PretrainedDownloadError: a URL could not be downloaded (the message names the URL and says to download
            it and pass a local path).
        Exception: whatever ``mlflow_loader`` raises for an MLflow source it cannot resolve.
    """
    if isinstance(source, Mapping):
        return _to_state_dict(source, "<mapping>")
    if sha256 is not None and not _SHA256_RE.match(str(sha256)):
        raise ValueError(f"sha256 for pretrained weights {source!s} must be 64 hex digits, got {sha256!r}")
    text = os.fspath(source)
    if is_mlflow_uri(text):
        return _from_mlflow(text, text, mlflow_loader, trust_pickle)
    if text.lower().startswith(URL_SCHEMES):
        path = _download(text, sha256, cache_dir, timeout)
        return _load_file(path, text, trust_pickle)
    if "://" in text:
        raise ValueError(
            f"pretrained source {text!r}: unsupported URL scheme; expected a local path, an MLflow URI "
            f"({', '.join(MLFLOW_SCHEMES)}) or a URL ({', '.join(URL_SCHEMES)})"
        )
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"pretrained weights not found: {path.resolve()} (given as {text!r}); expected a .pt/.pth file, a "
            f"medpipe checkpoint, an MLflow model folder or URI (runs:/<run_id>/model), or an https:// URL"
        )
    if path.is_dir():
        if (path / "MLmodel").is_file():
            return _from_mlflow(str(path.resolve()), text, mlflow_loader, trust_pickle)
        raise ValueError(f"pretrained source {path} is a folder without an MLmodel file; give a weights file")
    if sha256 is not None and not check_hash(path, sha256.lower(), "sha256"):
        raise ValueError(f"checksum mismatch for pretrained weights {path}: expected sha256 {sha256}, "
                         f"got {sha256_file(path)}")
    return _load_file(path, text, trust_pickle)


def _from_mlflow(uri: str, label: str, loader: Optional[MlflowLoader], trust_pickle: bool = False
                 ) -> Dict[str, torch.Tensor]:
    """State dict of an MLflow model URI or folder through the caller's ``loader`` (called with
    ``trust_pickle=True`` only when the caller trusts pickled models, so one-argument loaders keep working)."""
    if loader is None:
        raise ValueError(
            f"pretrained source {label!r} is an MLflow model, and loading one needs MLflow, which medpipe.nets "
            f"does not import: pass mlflow_loader=functools.partial(medpipe.tracking.load_model_state_dict, "
            f"tracking_uri=...) (the workflow does this), or give a weights file instead"
        )
    logger.info("loading pretrained weights from MLflow model %s", uri)
    return _to_state_dict(loader(uri, trust_pickle=True) if trust_pickle else loader(uri), label)


def _download(url: str, sha256: Optional[str], cache_dir, timeout: float) -> Path:
    """Download ``url`` into the cache once (file name ``<sha256[:16]>-<basename>``), verifying its SHA-256.

    Ours rather than ``monai.apps.download_url`` (MONAI 1.6): that one has no timeout (``urlretrieve``, so an
    unreachable host blocks for the OS connect timeout and a stalled server forever), raises on a stale cached
    file instead of downloading again, swallows ``PermissionError`` (an unwritable cache then surfaces later as a
    missing file) and does not say which checksum it got. Here the hash is computed while streaming, and the file
    lands in the cache (atomic rename) only when it matches.
    """
    if not sha256:
        raise ValueError(
            f"pretrained weights URL {url} needs a sha256 checksum (64 hex digits) so that what is downloaded can "
            f"be verified; compute it with `sha256sum FILE` on a copy you trust"
        )
    sha256 = sha256.lower()
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    name = Path(urllib.parse.urlparse(url).path).name or "weights.pt"
    target = cache / f"{sha256[:16]}-{name}"
    if target.is_file():
        if sha256_file(target) == sha256:
            logger.info("pretrained weights %s: using cached %s", url, target)
            return target
        logger.warning("cached %s does not match sha256 %s; downloading %s again", target, sha256, url)
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=cache)
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    try:
        logger.info("downloading pretrained weights %s -> %s", url, target)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310
                for block in iter(lambda: resp.read(1 << 20), b""):
                    h.update(block)
                    out.write(block)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
            if isinstance(err, urllib.error.HTTPError):
                reason = f"HTTP {err.code} {err.reason}"
            else:
                reason = getattr(err, "reason", None) or err
            raise PretrainedDownloadError(
                f"could not download pretrained weights from {url} ({reason}). medpipe needs no network at run "
                f"time: download the file where there is access (e.g. `curl -L -o weights.pt '{url}'`), check "
                f"its sha256 is {sha256}, and set the pretrained source to the local path "
                f"(or place it in the cache as {target})"
            ) from err
        got = h.hexdigest()
        if got != sha256:
            raise ValueError(
                f"checksum mismatch for pretrained weights downloaded from {url}: expected sha256 {sha256}, "
                f"got {got}; the file was not kept"
            )
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def _trusted_module_classes(path: Path) -> Tuple[list, list]:
    """Split the globals a pickled file needs into allow-listable ``nn.Module`` classes and refused names."""
    allowed, refused = [], []
    for qual in torch.serialization.get_unsafe_globals_in_checkpoint(str(path)):
        mod_name, _, attr = qual.rpartition(".")
        obj = None
        if qual.startswith(TRUSTED_MODULE_PREFIXES) and mod_name:
            try:
                obj = importlib.import_module(mod_name)
                for part in attr.split("."):
                    obj = getattr(obj, part)
            except (ImportError, AttributeError):
                obj = None
        if isinstance(obj, type) and issubclass(obj, nn.Module):
            allowed.append(obj)
        else:
            refused.append(qual)
    return allowed, refused


def _load_file(path: Path, label: str, trust_pickle: bool) -> Dict[str, torch.Tensor]:
    """``torch.load`` a weights file safely and unwrap it to a tensor state dict."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError, ...
        if not isinstance(err, pickle.UnpicklingError):
            raise ValueError(f"pretrained weights {label}: {path} is not a readable torch file ({err})") from err
        try:
            allowed, refused = _trusted_module_classes(path)
        except Exception as inner:  # noqa: BLE001 - not a torch zip / legacy file at all
            raise ValueError(f"pretrained weights {label}: {path} is not a readable torch file ({inner})") from err
        if not refused:
            with torch.serialization.safe_globals(allowed):
                obj = torch.load(path, map_location="cpu", weights_only=True)
        elif trust_pickle:
            logger.warning("pretrained weights %s: unpickling %s with weights_only=False (trusted)", label, path)
            obj = torch.load(path, map_location="cpu", weights_only=False)
        else:
            raise ValueError(
                f"pretrained weights {label}: {path} holds pickled objects that are not torch/MONAI/medpipe "
                f"network classes ({', '.join(refused[:5])}{', ...' if len(refused) > 5 else ''}); unpickling "
                f"them can run code. Save a state dict instead (`torch.save(net.state_dict(), path)`), or pass "
                f"trust_pickle=True for a file you trust"
            ) from err
    return _to_state_dict(obj, label)


def _to_state_dict(obj, label: str) -> Dict[str, torch.Tensor]:
    """Unwrap a module, a checkpoint dict or a state dict into ``{name: tensor}``."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for key in CHECKPOINT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                inner = inner.state_dict()
            if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                logger.debug("pretrained weights %s: using the checkpoint's %r entry", label, key)
                obj = inner
                break
        tensors = {str(k): v.detach().cpu() for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
        raise ValueError(
            f"pretrained weights {label}: no tensors found; keys are {sorted(map(str, obj))[:10]} (expected a "
            f"state dict, or a checkpoint with one of {list(CHECKPOINT_KEYS)})"
        )
    raise ValueError(
        f"pretrained weights {label}: expected a state dict, a checkpoint dict or an nn.Module, got "
        f"{type(obj).__name__}"
    )
