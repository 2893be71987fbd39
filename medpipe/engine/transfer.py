"""Fine-tuning schedule for transfer learning: train the head alone for N epochs, then everything.

While frozen, backbone parameters have ``requires_grad=False`` (their gradients are ``None``, so an optimizer built
over all parameters leaves them untouched, weight decay and momentum included) and the backbone's normalisation
layers stay in eval mode, so their running statistics do not move either - although ``SupervisedTrainer`` calls
``network.train()`` every iteration (a forward pre-hook puts them back in eval mode). This is the usual
"feature extraction, then fine-tuning" recipe (Yosinski et al., "How transferable are features in deep neural
networks?", NeurIPS 2014; Kornblith et al., "Do Better ImageNet Models Transfer Better?", CVPR 2019).

Example:
    >>> handler = attach_freeze_schedule(engines.trainer, net, epochs=3)   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import weakref
from typing import Iterable, List, Optional

from torch import nn

from medpipe.nets.pretrained import head_parameter_names

logger = logging.getLogger(__name__)

__all__ = ["FreezeBackbone", "attach_freeze_schedule", "freeze_backbone", "frozen_norm_layers", "is_head",
           "unfreeze_all"]

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
# frozen norm module -> handle of its eval-mode pre-hook (weak: a discarded network takes its entries with it)
_EVAL_HOOKS: "weakref.WeakKeyDictionary[nn.Module, object]" = weakref.WeakKeyDictionary()


def _keep_eval(module: nn.Module, args) -> None:
    """Forward pre-hook: run a frozen norm layer in eval mode (running statistics used, not updated)."""
    module.training = False


def is_head(name: str, head_names: Iterable[str]) -> bool:
    """Whether a parameter or module belongs to the head.

    Args:
        name: dotted parameter or module name, as in ``net.named_parameters()`` (e.g. ``"fc.weight"``).
        head_names: names of the head's parameters or modules (e.g. ``["fc"]``); a name covers itself and
            everything below it (``"fc"`` covers ``"fc.weight"`` but not ``"fc2.weight"``).

    Returns:
        ``True`` when ``name`` equals, or lies below, one of ``head_names``.
    """
    return any(name == h or name.startswith(h + ".") for h in head_names)


def freeze_backbone(net: nn.Module, head_names: Optional[Iterable[str]] = None) -> List[str]:
    """Freeze everything except the head.

    Args:
        net: the network.
        head_names: parameter or module names of the head (a name also covers everything below it, e.g.
            ``"fc"``); default :func:`medpipe.nets.pretrained.head_parameter_names`.

    Returns:
        The names of the parameters frozen.

    Raises:
        ValueError: ``head_names`` matches no parameter of ``net`` (a typo would otherwise freeze everything).
    """
    if head_names is None:
        head_names = head_parameter_names(net)
    head_names = [h.rstrip(".") for h in head_names]
    params = dict(net.named_parameters())
    if not any(is_head(n, head_names) for n in params):
        raise ValueError(f"head names {head_names} match no parameter of {type(net).__name__} "
                         f"(parameters e.g. {list(params)[-4:]})")
    frozen = []
    for name, p in params.items():
        if not is_head(name, head_names):
            p.requires_grad_(False)
            p.grad = None  # an optimizer skips parameters without a gradient (no momentum / weight decay step)
            frozen.append(name)
    n_norms = 0
    for name, module in net.named_modules():
        if isinstance(module, _NORMS) and not is_head(name, head_names) and module not in _EVAL_HOOKS:
            module.eval()
            _EVAL_HOOKS[module] = module.register_forward_pre_hook(_keep_eval, prepend=True)
            n_norms += 1
    logger.info("froze %d backbone parameter tensors and %d norm layers; training the head %s",
                len(frozen), n_norms, head_names)
    return frozen


def unfreeze_all(net: nn.Module) -> None:
    """Undo :func:`freeze_backbone`: every parameter trainable, norm layers following ``net``'s mode again.

    Sets ``requires_grad=True`` on all parameters of ``net`` (also those frozen elsewhere), removes the eval-mode
    pre-hooks :func:`freeze_backbone` put on its norm layers and gives those layers ``net``'s current
    ``training`` flag. Safe to call on a network that was never frozen.

    Args:
        net: the network, modified in place.
    """
    for p in net.parameters():
        p.requires_grad_(True)
    for module in net.modules():
        handle = _EVAL_HOOKS.pop(module, None)
        if handle is not None:
            handle.remove()
            module.training = net.training
    logger.info("unfroze all parameters of %s", type(net).__name__)


def frozen_norm_layers(net: nn.Module) -> List[str]:
    """The norm layers of ``net`` held in eval mode by :func:`freeze_backbone` (until :func:`unfreeze_all`).

    Args:
        net: the network.

    Returns:
        Their module names, in ``net.named_modules()`` order (e.g. ``["bn1", "layer1.0.bn1", ...]``); empty
        when ``net`` is not frozen.
    """
    return [name for name, module in net.named_modules() if module in _EVAL_HOOKS]


class FreezeBackbone:
    """Ignite handler: backbone frozen for the first ``epochs`` epochs, then everything trainable.

    Checked at every ``EPOCH_STARTED``, so a run resumed from a checkpoint past ``epochs`` starts unfrozen.
    The optimizer must have been built over all parameters (frozen ones simply get no gradient).

    Args:
        net: the trained network (``trainer.network``).
        epochs: number of epochs with the backbone frozen (0 = never frozen).
        head_names: see :func:`freeze_backbone`.

    Raises:
        ValueError: ``epochs`` is negative.
    """

    def __init__(self, net: nn.Module, epochs: int, head_names: Optional[Iterable[str]] = None) -> None:
        if int(epochs) < 0:
            raise ValueError(f"freeze epochs must be >= 0, got {epochs}")
        self.net = net
        self.epochs = int(epochs)
        self.head_names = list(head_names) if head_names is not None else None
        self.frozen = False

    def attach(self, engine) -> None:
        """Register the schedule on ``engine``.

        Adds this handler at ``Events.EPOCH_STARTED`` (freeze or unfreeze by epoch) and a release at
        ``Events.COMPLETED`` (the network is left unfrozen); with ``epochs == 0`` nothing is registered.

        Args:
            engine: an ignite ``Engine``, e.g. ``monai.engines.SupervisedTrainer``, that trains ``net``.

        Raises:
            ImportError: pytorch-ignite is not installed.
        """
        from ignite.engine import Events

        if self.epochs > 0:
            engine.add_event_handler(Events.EPOCH_STARTED, self)
            engine.add_event_handler(Events.COMPLETED, self._release)

    def __call__(self, engine) -> None:
        """At ``EPOCH_STARTED``: freeze during epochs ``1..epochs``, unfreeze after (``engine.state.epoch``)."""
        epoch = engine.state.epoch  # already incremented: 1 during the first epoch
        if epoch <= self.epochs and not self.frozen:
            logger.info("epoch %d: backbone frozen for epochs 1-%d", epoch, self.epochs)
            freeze_backbone(self.net, self.head_names)
            self.frozen = True
        elif epoch > self.epochs and self.frozen:
            logger.info("epoch %d: backbone unfrozen, fine-tuning all layers", epoch)
            unfreeze_all(self.net)
            self.frozen = False

    def _release(self, engine) -> None:
        """At the end of the run leave the network unfrozen (plain module for saving and inference)."""
        if self.frozen:
            unfreeze_all(self.net)
            self.frozen = False


def attach_freeze_schedule(trainer, net: nn.Module, epochs: int,
                           head_names: Optional[Iterable[str]] = None) -> FreezeBackbone:
    """Freeze ``net``'s backbone for the first ``epochs`` epochs of ``trainer``, then train everything.

    Args:
        trainer: ``monai.engines.SupervisedTrainer`` (any ignite ``Engine``).
        net: the network it trains.
        epochs: frozen epochs (0: no-op).
        head_names: head parameter/module names; default
            :func:`medpipe.nets.pretrained.head_parameter_names`.

    Returns:
        The attached :class:`FreezeBackbone` handler.

    Raises:
        ValueError: ``epochs`` is negative.
    """
    handler = FreezeBackbone(net, epochs, head_names)
    handler.attach(trainer)
    return handler
