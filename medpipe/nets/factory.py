"""Network factory: ``build_net(cfg.net)`` looks the net's ``name`` up in :data:`NETS`.

Each entry takes the validated net config (a pydantic model from :mod:`medpipe.config`) and returns a
``torch.nn.Module``. Config fields keep MONAI's argument names, so most builders pass them straight on.
"""

from __future__ import annotations

from medpipe.registry import Registry

NETS: Registry = Registry("net")

__all__ = ["NETS", "build_net"]


def _fields(cfg, drop=("name",)):
    return {k: v for k, v in cfg.model_dump().items() if k not in drop}


@NETS.register("basic_unet")
def _basic_unet(cfg):
    """MONAI ``BasicUNet``: input ``(B, in_channels, H, W[, D])`` -> logits ``(B, out_channels, H, W[, D])``.
    Spatial sizes should be divisible by 16 (four 2x down-samplings)."""
    from monai.networks.nets import BasicUNet

    kw = _fields(cfg)
    for key in ("act", "norm"):
        if isinstance(kw[key], (list, tuple)):
            kw[key] = tuple(kw[key])
    return BasicUNet(**kw)


def build_net(cfg):
    """Build the network named by ``cfg.name``.

    Args:
        cfg: a net config model from :mod:`medpipe.config` (e.g. ``BasicUNetNet``).

    Returns:
        ``torch.nn.Module`` producing logits (no final activation).

    Raises:
        medpipe.registry.UnknownNameError: ``cfg.name`` is not registered (with the allowed names).
    """
    return NETS.get(cfg.name)(cfg)
