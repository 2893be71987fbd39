"""Network factory: ``build_net(cfg.net)`` looks the net's ``name`` up in :data:`NETS`.

Each entry takes the validated net config (a pydantic model from :mod:`medpipe.config`) and returns a
``torch.nn.Module``. Config fields keep MONAI's argument names, so most builders pass them straight on.
"""

from __future__ import annotations

from typing import Optional

from medpipe.nets.dynunet import build_dynunet
from medpipe.nets.init import init_weights
from medpipe.nets.lenet import LeNet
from medpipe.nets.pretrained import load_pretrained
from medpipe.nets.weight_sources import MlflowLoader
from medpipe.registry import Registry

NETS: Registry = Registry("net")

__all__ = ["NETS", "build_net", "prepare_net"]


def _fields(cfg, drop=("name",)):
    return {k: v for k, v in cfg.model_dump().items() if k not in drop}


@NETS.register("basic_unet")
def _basic_unet(cfg):
    """MONAI ``BasicUNet``: input ``(B, in_channels, H, W[, D])`` -> logits ``(B, out_channels, H, W[, D])``.
    Spatial sizes should be divisible by 16 (four 2x down-samplings). ``init`` is applied by :func:`prepare_net`."""
    from monai.networks.nets import BasicUNet

    kw = _fields(cfg, drop=("name", "init"))
    for key in ("act", "norm"):
        if isinstance(kw[key], (list, tuple)):
            kw[key] = tuple(kw[key])
    return BasicUNet(**kw)


NETS.register("dyn_unet", build_dynunet)

_CLASSIFIER_EXTRA = ("name", "num_classes", "in_channels", "init", "pretrained", "pretrained_sha256",
                     "pretrained_trust_pickle")


@NETS.register("densenet121")
def _densenet121(cfg):
    """MONAI ``DenseNet121``: ``(B, in_channels, H, W[, D])`` -> logits ``(B, num_classes)``. Any input size of
    at least 32 pixels per side (five 2x reductions)."""
    from monai.networks.nets import DenseNet121

    return DenseNet121(spatial_dims=cfg.spatial_dims, in_channels=cfg.in_channels, out_channels=cfg.num_classes,
                       init_features=cfg.init_features, growth_rate=cfg.growth_rate, bn_size=cfg.bn_size,
                       dropout_prob=cfg.dropout_prob)


def _resnet(cfg):
    """MONAI ``ResNet`` (``resnet18`` / ``resnet50`` factories): ``(B, in_channels, H, W[, D])`` -> logits
    ``(B, num_classes)``; adaptive average pooling before the dense head, so any input size works. MONAI's own
    ``pretrained`` download (MedicalNet) is never used here; see ``net.pretrained``."""
    from monai.networks import nets

    factory = getattr(nets, cfg.name)
    return factory(pretrained=False, spatial_dims=cfg.spatial_dims, n_input_channels=cfg.in_channels,
                   num_classes=cfg.num_classes, **_fields(cfg, drop=_CLASSIFIER_EXTRA + ("spatial_dims",)))


NETS.register("resnet18", _resnet)
NETS.register("resnet50", _resnet)


@NETS.register("lenet")
def _lenet(cfg):
    """medpipe ``LeNet``: ``(B, in_channels, H, W)`` with ``(H, W) == input_size`` -> logits ``(B, num_classes)``."""
    return LeNet(spatial_dims=cfg.spatial_dims, in_channels=cfg.in_channels, num_classes=cfg.num_classes,
                 input_size=cfg.input_size, padding=cfg.padding, dropout=cfg.dropout)


def build_net(cfg):
    """Build the network named by ``cfg.name``.

    Args:
        cfg: a net config model from :mod:`medpipe.config` (e.g. ``BasicUNetNet``, ``DynUNetNet``,
            ``DenseNet121Net``).
            ``init`` and ``pretrained`` of classifier configs are applied by :func:`prepare_net`, not here.

    Returns:
        ``torch.nn.Module`` producing logits (no final activation).

    Raises:
        medpipe.registry.UnknownNameError: ``cfg.name`` is not registered (with the allowed names).
        ValueError: a ``dyn_unet`` topology that cannot be built (:func:`medpipe.nets.dynunet.build_dynunet`).
    """
    return NETS.get(cfg.name)(cfg)


def prepare_net(net, cfg, *, mlflow_loader: Optional[MlflowLoader] = None):
    """Initialise a freshly built network and load its pretrained weights, as its config says.

    Order: :func:`medpipe.nets.init.init_weights` with ``cfg.init`` first, then
    :func:`medpipe.nets.pretrained.load_pretrained` with ``cfg.pretrained``, so that whatever the checkpoint does
    not provide (e.g. a head for another number of classes) keeps the chosen initialisation. ``basic_unet`` and
    ``dyn_unet`` have ``init`` but no ``pretrained``; a config without a field skips that step. Pretrained weights
    are read as tensors only unless the config sets ``pretrained_trust_pickle: true``.

    Args:
        net: the network from :func:`build_net`.
        cfg: its net config.
        mlflow_loader: for a ``runs:/`` / ``models:/`` (or MLflow model folder) ``pretrained`` source: returns the
            model's state dict given its URI, e.g. ``functools.partial(medpipe.tracking.load_model_state_dict,
            tracking_uri=cfg.tracking.tracking_uri)``, called as ``mlflow_loader(uri, trust_pickle=True)`` when
            ``cfg.pretrained_trust_pickle``. ``medpipe.nets`` never imports MLflow itself.

    Returns:
        ``(net, report)``: ``report`` is the :class:`medpipe.nets.pretrained.LoadReport` or ``None`` when
        nothing was loaded.

    Raises:
        FileNotFoundError, ValueError, medpipe.nets.weight_sources.PretrainedDownloadError: from
            ``load_pretrained`` (missing file, nothing matching, checksum mismatch, offline download, an MLflow
            source without ``mlflow_loader``, a pickled source without ``pretrained_trust_pickle``).
    """
    init = getattr(cfg, "init", "default")
    if init != "default":
        init_weights(net, init)
    report = None
    source = getattr(cfg, "pretrained", None)
    if source:
        report = load_pretrained(net, source, sha256=cfg.pretrained_sha256, mlflow_loader=mlflow_loader,
                                 trust_pickle=bool(getattr(cfg, "pretrained_trust_pickle", False)))
    return net, report
