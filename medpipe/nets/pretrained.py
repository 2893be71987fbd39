"""Pretrained weights for transfer learning: find them, load what fits, report what happened.

A pretrained source (``net.pretrained`` in a pipeline) is one of

* a **local file**: a plain state dict (``.pt`` / ``.pth``), a medpipe checkpoint (``{"net": state_dict,
  "optimizer": ..., "trainer": ...}`` as written by MONAI ``CheckpointSaver`` in
  :mod:`medpipe.engine.trainer`; also the ``state_dict`` / ``model_state_dict`` / ``model`` layouts of other
  tools), or a whole pickled ``torch.nn.Module``;
* an **MLflow model** URI (``runs:/<run_id>/model``, ``models:/<name>/<version>``, ``models:/<name>@alias``) or
  a local MLflow model folder (holding ``MLmodel``), e.g. the model a medpipe run logged;
* a **URL** (``https://``, ``http://``, ``file://``) with a required SHA-256, downloaded once into a cache folder.
  No download is needed at run time: offline, the error says to fetch the file elsewhere and pass a local path.

:func:`load_pretrained` then copies every tensor whose name and shape match the network (``module.`` prefixes
of DDP and ``_orig_mod.`` of ``torch.compile`` ignored on both sides), leaves the rest - typically the classifier
head when ``num_classes`` differs - at its initialisation, and returns a :class:`LoadReport`.

Safety: files are read with ``torch.load(weights_only=True)``. A whole pickled module is accepted only when
every class it names is a ``torch.nn.Module`` subclass from ``torch.nn``, ``monai`` or ``medpipe`` (still with
``weights_only=True``, those classes allow-listed); anything else needs ``trust_pickle=True``, because
unpickling arbitrary objects can run code. MLflow models are loaded by ``mlflow.pytorch.load_model``, which
unpickles: use URIs of your own tracking server.
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
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "LoadReport",
    "PretrainedDownloadError",
    "default_cache_dir",
    "head_parameter_names",
    "is_mlflow_uri",
    "load_pretrained",
    "resolve_pretrained",
]

Source = Union[str, os.PathLike, Mapping]

#: URI schemes handed to MLflow.
MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")
#: URL schemes downloaded (with a SHA-256) into the cache.
URL_SCHEMES = ("https://", "http://", "file://")
#: Keys under which checkpoints of medpipe (``net``) and other tools keep the network's state dict.
CHECKPOINT_KEYS = ("net", "state_dict", "model_state_dict", "model")
#: Name prefixes added by wrappers: DDP / DataParallel (``module.``) and ``torch.compile`` (``_orig_mod.``).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
#: Module prefixes whose ``nn.Module`` classes may be unpickled from a whole-module file.
TRUSTED_MODULE_PREFIXES = ("torch.nn.", "monai.", "medpipe.")

_SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")


class PretrainedDownloadError(ConnectionError):
    """Pretrained weights could not be downloaded (offline, unreachable host, HTTP error)."""


# ------------------------------------------------------------------------------------------------ resolve
def is_mlflow_uri(source: Source) -> bool:
    """Whether ``source`` is an MLflow model URI (``runs:/``, ``models:/``, ``mlflow-artifacts:/``)."""
    return isinstance(source, str) and source.startswith(MLFLOW_SCHEMES)


def default_cache_dir() -> Path:
    """Folder for downloaded weights: ``$MEDPIPE_CACHE/weights`` when ``MEDPIPE_CACHE`` is set, else
    ``~/.cache/medpipe/weights``. Not created here."""
    env = os.environ.get("MEDPIPE_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "medpipe"
    return root / "weights"


def resolve_pretrained(
    source: Source,
    cache_dir: Optional[Union[str, os.PathLike]] = None,
    sha256: Optional[str] = None,
    *,
    tracking_uri: Optional[str] = None,
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
        tracking_uri: MLflow tracking URI for ``runs:/`` and ``models:/`` URIs; default MLflow's current one.
        trust_pickle: allow unpickling arbitrary objects from a local file (``torch.load(weights_only=False)``).
            Only for files you trust: unpickling can run code.
        timeout: seconds to wait for a URL's server.

    Returns:
        ``{name: tensor}`` (CPU tensors; non-tensor entries dropped), the network's state dict with any checkpoint
        wrapper (``net``, ``state_dict``, ...) removed. Name prefixes such as ``module.`` are kept; they are
        matched in :func:`load_pretrained`.

    Raises:
        FileNotFoundError: a local ``source`` does not exist (the message names the resolved path).
        ValueError: a URL without ``sha256``, a malformed ``sha256``, a checksum mismatch, a file that is not a
            state dict / checkpoint / module, or a pickled file refused without ``trust_pickle``.
        PretrainedDownloadError: a URL could not be downloaded (the message names the URL and says to download
            it and pass a local path).
        ImportError / mlflow exceptions: an MLflow URI that MLflow cannot resolve.
    """
    if isinstance(source, Mapping):
        return _to_state_dict(source, "<mapping>")
    if sha256 is not None and not _SHA256_RE.match(str(sha256)):
        raise ValueError(f"sha256 for pretrained weights {source!s} must be 64 hex digits, got {sha256!r}")
    text = os.fspath(source)
    if is_mlflow_uri(text):
        from medpipe.tracking import load_model_state_dict

        logger.info("loading pretrained weights from MLflow model %s", text)
        return _to_state_dict(load_model_state_dict(text, tracking_uri=tracking_uri), text)
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
            from medpipe.tracking import load_model_state_dict

            logger.info("loading pretrained weights from MLflow model folder %s", path)
            return _to_state_dict(load_model_state_dict(str(path.resolve()), tracking_uri=tracking_uri), text)
        raise ValueError(f"pretrained source {path} is a folder without an MLmodel file; give a weights file")
    if sha256 is not None:
        got = _sha256_file(path)
        if got.lower() != sha256.lower():
            raise ValueError(f"checksum mismatch for pretrained weights {path}: expected sha256 {sha256}, got {got}")
    return _load_file(path, text, trust_pickle)


def _sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _download(url: str, sha256: Optional[str], cache_dir, timeout: float) -> Path:
    """Download ``url`` into the cache once (file name ``<sha256[:16]>-<basename>``), verifying its SHA-256."""
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
        if _sha256_file(target) == sha256:
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


# --------------------------------------------------------------------------------------------------- load
@dataclass
class LoadReport:
    """What :func:`load_pretrained` did.

    Attributes:
        source: the pretrained source as given (path, URI or URL).
        loaded: network parameter/buffer names copied from the checkpoint.
        shape_mismatch: ``(name, checkpoint shape, network shape)`` for tensors present in both with different
            shapes; these keep the network's own initialisation (e.g. the classifier head when ``num_classes``
            differs).
        missing: network names absent from the checkpoint (kept at their initialisation).
        unexpected: checkpoint names the network does not have (ignored).
        excluded: names skipped on purpose (``exclude`` argument), kept at their initialisation.
        n_loaded_values: number of scalar values copied.
        n_net_values: number of scalar values in the network's state dict.
    """

    source: str
    loaded: List[str] = field(default_factory=list)
    shape_mismatch: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    excluded: List[str] = field(default_factory=list)
    n_loaded_values: int = 0
    n_net_values: int = 0

    @property
    def reinitialised(self) -> List[str]:
        """Network names left at their initialisation: shape mismatches, excluded and missing names."""
        return [m[0] for m in self.shape_mismatch] + list(self.excluded) + list(self.missing)

    def summary(self, max_names: int = 8) -> str:
        """A few lines for the log: counts, then the skipped names (at most ``max_names`` of each kind)."""

        def names(items: Sequence[str]) -> str:
            more = f", ... (+{len(items) - max_names})" if len(items) > max_names else ""
            return ", ".join(items[:max_names]) + more

        n_net = len(self.loaded) + len(self.reinitialised)
        frac = self.n_loaded_values / self.n_net_values if self.n_net_values else 0.0
        lines = [f"pretrained {self.source}: loaded {len(self.loaded)}/{n_net} tensors "
                 f"({self.n_loaded_values:,}/{self.n_net_values:,} values, {frac:.1%})"]
        if self.shape_mismatch:
            lines.append("  shape mismatch, kept at initialisation: " + names(
                [f"{n} {tuple(c)} in checkpoint vs {tuple(t)} in net" for n, c, t in self.shape_mismatch]))
        if self.excluded:
            lines.append("  excluded, kept at initialisation: " + names(self.excluded))
        if self.missing:
            lines.append("  missing from checkpoint, kept at initialisation: " + names(self.missing))
        if self.unexpected:
            lines.append("  in checkpoint but not in net, ignored: " + names(self.unexpected))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-serialisable dict (tuples as lists), e.g. for ``mlflow.log_dict(report.to_dict(), ...)``."""
        out = asdict(self)
        out["shape_mismatch"] = [{"name": n, "checkpoint_shape": list(c), "net_shape": list(t)}
                                 for n, c, t in self.shape_mismatch]
        return out


def _strip_wrappers(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name


def load_pretrained(
    net: nn.Module,
    source: Source,
    *,
    strict_shapes: bool = False,
    exclude: Iterable[str] = (),
    cache_dir: Optional[Union[str, os.PathLike]] = None,
    sha256: Optional[str] = None,
    tracking_uri: Optional[str] = None,
    trust_pickle: bool = False,
) -> LoadReport:
    """Copy every checkpoint tensor whose name and shape match ``net`` into ``net`` (in place).

    Names are compared without the wrapper prefixes ``module.`` (DDP / ``DataParallel``) and ``_orig_mod.``
    (``torch.compile``) on either side, so a checkpoint of a wrapped net loads into a plain one and vice versa.
    Values are cast to the network tensor's dtype and device. Everything not loaded keeps the network's current
    values, so initialise first (:func:`medpipe.nets.init.init_weights`), then load.

    Args:
        net: the network to fill.
        source: see :func:`resolve_pretrained` (path, MLflow URI, URL, or a state dict mapping).
        strict_shapes: raise instead of skipping when a name matches but the shape does not.
        exclude: network names or name prefixes (e.g. ``head_parameter_names(net)`` or ``"class_layers.out"``)
            never loaded, e.g. to re-initialise a head whose shape happens to match but whose classes differ.
        cache_dir: download cache for URLs (see :func:`resolve_pretrained`).
        sha256: expected SHA-256 of a URL's (or local file's) content.
        tracking_uri: MLflow tracking URI for ``runs:/`` / ``models:/`` sources.
        trust_pickle: see :func:`resolve_pretrained`.

    Returns:
        :class:`LoadReport` (also logged at INFO level).

    Raises:
        FileNotFoundError: a local source does not exist (names the path).
        ValueError: no tensor at all matched by name and shape (names the source and sample keys of both sides;
            usually the wrong architecture or checkpoint); with ``strict_shapes``, any shape mismatch.
        PretrainedDownloadError: see :func:`resolve_pretrained`.
    """
    label = "<state dict>" if isinstance(source, Mapping) else os.fspath(source)
    ckpt = resolve_pretrained(source, cache_dir=cache_dir, sha256=sha256, tracking_uri=tracking_uri,
                              trust_pickle=trust_pickle)
    own = net.state_dict()
    by_plain = {_strip_wrappers(k): k for k in own}
    exclude = [_strip_wrappers(e) for e in exclude]

    def is_excluded(plain: str) -> bool:
        return any(plain == e or plain.startswith(e.rstrip(".") + ".") for e in exclude)

    report = LoadReport(source=label, n_net_values=sum(int(t.numel()) for t in own.values()))
    to_load: Dict[str, torch.Tensor] = {}
    seen = set()
    for ckpt_key, value in ckpt.items():
        plain = _strip_wrappers(ckpt_key)
        net_key = by_plain.get(plain)
        if net_key is None:
            report.unexpected.append(ckpt_key)
            continue
        seen.add(net_key)
        if is_excluded(plain):
            report.excluded.append(net_key)
            continue
        target = own[net_key]
        if tuple(value.shape) != tuple(target.shape):
            report.shape_mismatch.append((net_key, tuple(value.shape), tuple(target.shape)))
            continue
        to_load[net_key] = value.to(dtype=target.dtype)
        report.loaded.append(net_key)
        report.n_loaded_values += int(value.numel())
    report.missing = [k for k in own if k not in seen]

    if strict_shapes and report.shape_mismatch:
        raise ValueError(f"pretrained weights {label}: shapes differ (strict_shapes=True): " + "; ".join(
            f"{n} {tuple(c)} in checkpoint vs {tuple(t)} in net" for n, c, t in report.shape_mismatch))
    if not to_load:
        raise ValueError(
            f"pretrained weights {label}: no tensor matches the network by name and shape, so nothing was loaded "
            f"(checkpoint keys e.g. {list(ckpt)[:3]}, network keys e.g. {list(own)[:3]}); is it a checkpoint of "
            f"the same architecture?"
        )
    result = net.load_state_dict(to_load, strict=False)
    if result.unexpected_keys:  # cannot happen: every key came from net.state_dict()
        raise RuntimeError(f"unexpected keys while loading {label}: {result.unexpected_keys}")
    logger.info("%s", report.summary())
    return report


# --------------------------------------------------------------------------------------------------- head
def _unwrap(net: nn.Module) -> Tuple[nn.Module, str]:
    """The inner network of DDP / DataParallel / ``torch.compile`` wrappers and the name prefix to reach it."""
    prefix = ""
    while True:
        if isinstance(net, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            net, prefix = net.module, prefix + "module."
        elif hasattr(net, "_orig_mod") and isinstance(net._orig_mod, nn.Module):
            net, prefix = net._orig_mod, prefix + "_orig_mod."
        else:
            return net, prefix


def _head_module_name(net: nn.Module) -> str:
    """Name (relative to ``net``) of the classifier head module."""
    from medpipe.nets.lenet import LeNet

    try:
        from monai.networks.nets import DenseNet, ResNet
    except ImportError:  # pragma: no cover - MONAI is a dependency
        DenseNet = ResNet = ()
    if DenseNet and isinstance(net, DenseNet):
        return "class_layers.out"
    if ResNet and isinstance(net, ResNet):
        return "fc"
    if isinstance(net, LeNet):
        return f"classifier.{len(net.classifier) - 1}"
    last = None
    for name, module in net.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        raise ValueError(
            f"cannot find a classifier head in {type(net).__name__}: no nn.Linear layer; give the head's "
            f"parameter names explicitly"
        )
    return last


def head_parameter_names(net: nn.Module) -> List[str]:
    """Parameter names of the classifier head, the part retrained in transfer learning.

    MONAI ``DenseNet`` (``DenseNet121``, ...): ``class_layers.out``; MONAI ``ResNet`` (``resnet18``/``50``...):
    ``fc``; medpipe :class:`~medpipe.nets.lenet.LeNet`: the last dense layer (``classifier.4``); any other
    network: its last ``nn.Linear`` module. DDP / ``torch.compile`` wrappers are looked through and their prefix
    kept, so the names match ``net.named_parameters()``.

    Args:
        net: the network.

    Returns:
        e.g. ``["class_layers.out.weight", "class_layers.out.bias"]``.

    Raises:
        ValueError: no head found (no ``nn.Linear`` layer).
    """
    inner, prefix = _unwrap(net)
    head = _head_module_name(inner)
    module = inner.get_submodule(head)
    return [f"{prefix}{head}.{n}" for n, _ in module.named_parameters()]
