"""Load pretrained weights into a network by name and shape, and report what happened.

:func:`load_pretrained` fetches a state dict (:func:`medpipe.nets.weight_sources.resolve_pretrained`: a local
file, an MLflow model through the caller's loader, or a checked URL), copies every tensor whose name and shape
match the network (``module.`` prefixes of DDP and ``_orig_mod.`` of ``torch.compile`` ignored on both sides),
leaves the rest - typically the classifier head when ``num_classes`` differs - at its initialisation, and returns
a :class:`LoadReport`. :func:`head_parameter_names` names the classifier head that transfer learning retrains.

Library pieces: ``torch.nn.modules.utils.consume_prefix_in_state_dict_if_present`` strips the wrapper prefixes
and ``monai.networks.utils.copy_model_state`` matches tensors by name and shape (``exclude`` as its
``exclude_vars`` pattern). The :class:`LoadReport` (why each name was skipped, in checkpoint order) is ours:
``copy_model_state`` returns only the sorted updated and unchanged names.
"""

from __future__ import annotations

import logging
import os
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Iterable, List, Optional, Sequence, Tuple, Union

from monai.networks.nets import DenseNet, ResNet
from monai.networks.utils import copy_model_state
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from medpipe.nets.lenet import LeNet
from medpipe.nets.weight_sources import MlflowLoader, Source, resolve_pretrained

logger = logging.getLogger(__name__)

__all__ = ["WRAPPER_PREFIXES", "LoadReport", "head_parameter_names", "load_pretrained", "plain_names"]

#: Name prefixes added by wrappers: DDP / DataParallel (``module.``) and ``torch.compile`` (``_orig_mod.``).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


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
        """A few lines for the log: counts, then the skipped names.

        Args:
            max_names: at most this many names of each kind, then ``... (+n)``.

        Returns:
            newline-separated text, first line ``pretrained <source>: loaded a/b tensors (x/y values, z%)``.
        """

        def _names(items: Sequence[str]) -> str:
            more = f", ... (+{len(items) - max_names})" if len(items) > max_names else ""
            return ", ".join(items[:max_names]) + more

        n_net = len(self.loaded) + len(self.reinitialised)
        frac = self.n_loaded_values / self.n_net_values if self.n_net_values else 0.0
        lines = [f"pretrained {self.source}: loaded {len(self.loaded)}/{n_net} tensors "
                 f"({self.n_loaded_values:,}/{self.n_net_values:,} values, {frac:.1%})"]
        if self.shape_mismatch:
            lines.append("  shape mismatch, kept at initialisation: " + _names(
                [f"{n} {tuple(c)} in checkpoint vs {tuple(t)} in net" for n, c, t in self.shape_mismatch]))
        if self.excluded:
            lines.append("  excluded, kept at initialisation: " + _names(self.excluded))
        if self.missing:
            lines.append("  missing from checkpoint, kept at initialisation: " + _names(self.missing))
        if self.unexpected:
            lines.append("  in checkpoint but not in net, ignored: " + _names(self.unexpected))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """The report as plain data, e.g. for ``pretrained_report.json``.

        Returns:
            JSON-serialisable dict of the fields; ``shape_mismatch`` as ``{"name", "checkpoint_shape",
            "net_shape"}`` dicts with lists for shapes.
        """
        out = asdict(self)
        out["shape_mismatch"] = [{"name": n, "checkpoint_shape": list(c), "net_shape": list(t)}
                                 for n, c, t in self.shape_mismatch]
        return out


def plain_names(names: Iterable[str]) -> OrderedDict[str, str]:
    """Names without their wrapper prefixes (:data:`WRAPPER_PREFIXES`, repeatedly, e.g. ``module._orig_mod.``).

    Stripped with ``torch.nn.modules.utils.consume_prefix_in_state_dict_if_present``; the result keeps the order of
    ``names`` (that function moves renamed keys to the end). When two names strip to the same plain name, only one
    is kept.

    Args:
        names: state-dict keys, e.g. ``["module.features.0.weight", ...]``.

    Returns:
        ``{plain name: original name}`` in the order of ``names``.
    """
    names = list(names)
    table: OrderedDict[str, str] = OrderedDict((n, n) for n in names)
    while any(k.startswith(WRAPPER_PREFIXES) for k in table):
        for prefix in WRAPPER_PREFIXES:
            consume_prefix_in_state_dict_if_present(table, prefix)
    index = {n: i for i, n in enumerate(names)}
    return OrderedDict(sorted(table.items(), key=lambda kv: index[kv[1]]))


def _exclude_pattern(exclude: Iterable[str]) -> Optional[str]:
    """A ``copy_model_state`` ``exclude_vars`` pattern: a plain name equal to, or below, one of ``exclude``."""
    alts = [f"{re.escape(e)}$|{re.escape(e.rstrip('.'))}\\." for e in plain_names(exclude)]
    return f"^(?:{'|'.join(alts)})" if alts else None


def load_pretrained(
    net: nn.Module,
    source: Source,
    *,
    strict_shapes: bool = False,
    exclude: Iterable[str] = (),
    cache_dir: Optional[Union[str, os.PathLike]] = None,
    sha256: Optional[str] = None,
    mlflow_loader: Optional[MlflowLoader] = None,
    trust_pickle: bool = False,
) -> LoadReport:
    """Copy every checkpoint tensor whose name and shape match ``net`` into ``net`` (in place).

    Names are compared without the wrapper prefixes ``module.`` (DDP / ``DataParallel``) and ``_orig_mod.``
    (``torch.compile``) on either side, so a checkpoint of a wrapped net loads into a plain one and vice versa.
    Values are cast to the network tensor's dtype and device. Everything not loaded keeps the network's current
    values, so initialise first (:func:`medpipe.nets.init.init_weights`), then load.

    Args:
        net: the network to fill.
        source: see :func:`medpipe.nets.weight_sources.resolve_pretrained` (path, MLflow URI, URL, or a state
            dict mapping).
        strict_shapes: raise instead of skipping when a name matches but the shape does not.
        exclude: network names or name prefixes (e.g. ``head_parameter_names(net)`` or ``"class_layers.out"``)
            never loaded, e.g. to re-initialise a head whose shape happens to match but whose classes differ.
        cache_dir: download cache for URLs (see ``resolve_pretrained``).
        sha256: expected SHA-256 of a URL's (or local file's) content.
        mlflow_loader: state dict of an MLflow model URI or folder, for ``runs:/`` / ``models:/`` sources, e.g.
            ``functools.partial(medpipe.tracking.load_model_state_dict, tracking_uri=...)``.
        trust_pickle: unpickle a source that holds more than tensors (a file, or an MLflow model with only a
            pickled file); default ``False``: such sources are refused, because unpickling can run code. See
            ``resolve_pretrained``.

    Returns:
        :class:`LoadReport` (also logged at INFO level).

    Raises:
        FileNotFoundError: a local source does not exist (names the path).
        ValueError: no tensor at all matched by name and shape (names the source and sample keys of both sides;
            usually the wrong architecture or checkpoint); with ``strict_shapes``, any shape mismatch; an MLflow
            source without ``mlflow_loader``; a pickled source without ``trust_pickle``.
        medpipe.nets.weight_sources.PretrainedDownloadError: see ``resolve_pretrained``.
    """
    label = "<state dict>" if isinstance(source, Mapping) else os.fspath(source)
    ckpt = resolve_pretrained(source, cache_dir=cache_dir, sha256=sha256, mlflow_loader=mlflow_loader,
                              trust_pickle=trust_pickle)
    own = net.state_dict()
    net_of = plain_names(own)  # plain -> network key
    ckpt_of = plain_names(ckpt)  # plain -> checkpoint key
    pattern = _exclude_pattern(exclude)
    _, updated, _ = copy_model_state(OrderedDict((p, own[k]) for p, k in net_of.items()),
                                     {p: ckpt[k] for p, k in ckpt_of.items()}, exclude_vars=pattern, inplace=False)
    updated = set(updated)

    report = LoadReport(source=label, n_net_values=sum(int(t.numel()) for t in own.values()))
    for plain, ckpt_key in ckpt_of.items():
        net_key, value = net_of.get(plain), ckpt[ckpt_key]
        if net_key is None:
            report.unexpected.append(ckpt_key)
        elif pattern is not None and re.search(pattern, plain):
            report.excluded.append(net_key)
        elif plain not in updated:
            report.shape_mismatch.append((net_key, tuple(value.shape), tuple(own[net_key].shape)))
        else:
            report.loaded.append(net_key)
            report.n_loaded_values += int(value.numel())
    report.missing = [k for p, k in net_of.items() if p not in ckpt_of]

    if strict_shapes and report.shape_mismatch:
        raise ValueError(f"pretrained weights {label}: shapes differ (strict_shapes=True): " + "; ".join(
            f"{n} {tuple(c)} in checkpoint vs {tuple(t)} in net" for n, c, t in report.shape_mismatch))
    if not report.loaded:
        raise ValueError(
            f"pretrained weights {label}: no tensor matches the network by name and shape, so nothing was loaded "
            f"(checkpoint keys e.g. {list(ckpt)[:3]}, network keys e.g. {list(own)[:3]}); is it a checkpoint of "
            f"the same architecture?"
        )
    to_load = {net_of[p]: ckpt[ckpt_of[p]].to(dtype=own[net_of[p]].dtype) for p in ckpt_of if p in updated}
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
    if isinstance(net, DenseNet):
        return "class_layers.out"
    if isinstance(net, ResNet):
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
