"""Weight initialisation schemes, chosen by name in the config (``net.init``).

* ``default``: leave the network as its constructor made it (MONAI's DenseNet and ResNet already use
  Kaiming-normal convolutions; ``torch.nn`` layers use Kaiming-uniform with ``a=sqrt(5)``).
* ``xavier_uniform``: Glorot & Bengio, "Understanding the difficulty of training deep feedforward neural
  networks", AISTATS 2010: ``W ~ U(-a, a)``, ``a = sqrt(6 / (fan_in + fan_out))``; the COVID X-ray seed's choice.
* ``kaiming_normal``: He et al., "Delving deep into rectifiers", ICCV 2015: ``W ~ N(0, 2 / fan_out)``
  (``mode="fan_out"``, ``nonlinearity="relu"``, as torchvision's and MONAI's ResNets).

Both non-default schemes set convolution (1-3D, transposed too) and linear weights, zero their biases, and reset
normalisation layers (batch, instance, group, layer norm) to weight 1 and bias 0. Initialise before loading
pretrained weights (:func:`medpipe.nets.pretrained.load_pretrained`): what is not loaded keeps this scheme.
"""

from __future__ import annotations

import logging
from typing import Callable, Dict

import torch
from torch import nn

from medpipe.registry import UnknownNameError, did_you_mean

logger = logging.getLogger(__name__)

__all__ = ["INIT_SCHEMES", "init_weights"]

_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)  # _NormBase: BatchNorm*d, InstanceNorm*d


def _xavier_uniform(w: torch.Tensor) -> None:
    nn.init.xavier_uniform_(w)


def _kaiming_normal(w: torch.Tensor) -> None:
    nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")


#: scheme name -> weight initialiser (``None``: leave the network unchanged).
INIT_SCHEMES: Dict[str, Callable[[torch.Tensor], None] | None] = {
    "default": None,
    "xavier_uniform": _xavier_uniform,
    "kaiming_normal": _kaiming_normal,
}


@torch.no_grad()
def init_weights(net: nn.Module, scheme: str = "default") -> nn.Module:
    """Initialise ``net``'s weights in place with a named scheme.

    Args:
        net: the network.
        scheme: ``default`` (no change), ``xavier_uniform`` or ``kaiming_normal`` (see the module docstring).
            Draws from torch's global generator: seed it (``medpipe.engine.trainer.seed_everything``) for
            reproducibility.

    Returns:
        ``net`` (the same object).

    Raises:
        medpipe.registry.UnknownNameError: unknown ``scheme`` (lists the allowed names, with a suggestion).
    """
    if scheme not in INIT_SCHEMES:
        raise UnknownNameError(
            f"unknown weight init scheme {scheme!r}; allowed: {', '.join(INIT_SCHEMES)}."
            + did_you_mean(str(scheme), INIT_SCHEMES)
        )
    fn = INIT_SCHEMES[scheme]
    if fn is None:
        return net
    n_layers = n_norms = 0
    for module in net.modules():
        if isinstance(module, _WEIGHTED):
            fn(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
            n_layers += 1
        elif isinstance(module, _NORMS):
            if getattr(module, "weight", None) is not None:
                nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
            n_norms += 1
    logger.info("init %s: %d conv/linear layers, %d norm layers", scheme, n_layers, n_norms)
    return net
