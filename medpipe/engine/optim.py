"""Losses, optimizers and learning-rate schedules from config (MONAI losses, ``torch.optim``).

Deep supervision (``net.deep_supervision`` of ``dyn_unet``): :func:`with_deep_supervision` wraps the configured loss
in MONAI's ``DeepSupervisionLoss`` with nnU-Net's weights (:func:`deep_supervision_weights`), fed the heads of
``DynUNet``'s stacked training output (:class:`StackedDeepSupervisionLoss`).
"""

from __future__ import annotations

from typing import List

import torch
from torch import nn

__all__ = ["build_loss", "with_deep_supervision", "build_optimizer", "build_scheduler", "IndexCrossEntropyLoss",
           "StackedDeepSupervisionLoss", "deep_supervision_weights"]


class IndexCrossEntropyLoss(nn.Module):
    """Cross-entropy for dense class-index labels with a channel axis.

    Args:
        weight: optional per-class weights ``(C,)``.
        label_smoothing: as in ``torch.nn.CrossEntropyLoss``.

    Shapes:
        logits ``(B, C, H, W[, D])`` float; label ``(B, 1, H, W[, D])`` (or without the channel axis) holding
        class indices (any dtype, cast to long). Returns a scalar.
    """

    def __init__(self, weight=None, label_smoothing: float = 0.0):
        super().__init__()
        self.ce = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the logits against class-index labels.

        Args:
            logits: ``(B, C[, H, W[, D]])`` float, unnormalised scores.
            label: class indices ``(B[, H, W[, D]])`` or with a channel axis ``(B, 1[, H, W[, D]])`` (any integer
                or float dtype, cast to int64).

        Returns:
            the scalar mean loss (float, as ``torch.nn.CrossEntropyLoss``).
        """
        if label.ndim == logits.ndim:
            label = label[:, 0]
        return self.ce(logits, label.long())


def build_loss(cfg, class_weights=None) -> nn.Module:
    """Loss module from :class:`medpipe.config.LossConfig`.

    All losses take logits ``(B, C, ...)`` and class-index labels ``(B, 1, ...)`` (classification: logits
    ``(B, C)``, labels ``(B,)``). ``dice_ce`` is MONAI ``DiceCELoss(to_onehot_y=True, softmax=True)`` (Milletari
    et al. 2016 soft Dice + cross-entropy), ``dice`` is MONAI ``DiceLoss`` with the same settings.

    Args:
        cfg: the loss config.
        class_weights: per-class weights that replace ``cfg.class_weights`` (e.g. ``balanced`` weights computed
            from the training split by :func:`medpipe.data.loaders.balanced_class_weights`).

    Returns:
        MONAI ``DiceCELoss`` (``dice_ce``), ``DiceLoss`` (``dice``) or :class:`IndexCrossEntropyLoss`
        (``cross_entropy``); class weights become a float32 ``(C,)`` tensor.

    Raises:
        ValueError: ``cfg.class_weights`` is ``balanced`` and no computed ``class_weights`` were given.
    """
    from monai.losses import DiceCELoss, DiceLoss

    if class_weights is None and cfg.class_weights == "balanced":
        raise ValueError("loss.class_weights: balanced needs the weights computed from the training split")
    weights = class_weights if class_weights is not None else cfg.class_weights
    weight = torch.tensor(weights, dtype=torch.float32) if weights else None
    if cfg.name == "dice_ce":
        return DiceCELoss(to_onehot_y=True, softmax=True, include_background=cfg.include_background,
                          lambda_dice=cfg.lambda_dice, lambda_ce=cfg.lambda_ce, weight=weight,
                          label_smoothing=cfg.label_smoothing)
    if cfg.name == "dice":
        return DiceLoss(to_onehot_y=True, softmax=True, include_background=cfg.include_background)
    return IndexCrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)


def deep_supervision_weights(levels: int) -> List[float]:
    """nnU-Net's deep-supervision weights: ``1 / 2**i`` for output ``i`` (0 = full resolution), normalised to sum
    to 1 (nnU-Net v2 ``nnUNetTrainer._build_loss``; nnU-Net also zeroes its lowest-resolution output, which DynUNet
    does not produce: ``deep_supr_num`` stops above the bottleneck). With one level the weight is 1, so the loss
    keeps the scale of the plain loss.

    Args:
        levels: number of outputs (``1 + net.deep_supr_num``), at least 1.

    Returns:
        ``levels`` float weights, decreasing, summing to 1.

    Raises:
        ValueError: ``levels`` < 1.
    """
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    raw = [0.5 ** i for i in range(levels)]
    return [w / sum(raw) for w in raw]


class StackedDeepSupervisionLoss(nn.Module):
    """MONAI ``DeepSupervisionLoss`` for ``DynUNet``'s stacked training output.

    ``DynUNet`` in training mode with deep supervision returns ``(B, 1 + deep_supr_num, C, *spatial)``: the main
    output, then the heads of decreasing resolution, each interpolated to the full size (MONAI). They are unbound
    along axis 1 (as MONAI's DynUNet tutorial does) and the loss is ``sum_i w_i * loss(head_i, label)`` with
    :func:`deep_supervision_weights`. A prediction of the label's rank (an eval-mode output) gets the plain loss.

    Args:
        loss: the configured loss (e.g. MONAI ``DiceCELoss``), ``loss(logits (B, C, ...), label (B, 1, ...))``.
        levels: ``1 + net.deep_supr_num``, the outputs stacked by the network.

    Shapes:
        ``forward``: ``pred`` ``(B, levels, C, *spatial)`` (or ``(B, C, *spatial)``), ``label`` ``(B, 1, *spatial)``
        class indices -> scalar float.
    """

    def __init__(self, loss: nn.Module, levels: int):
        super().__init__()
        from monai.losses import DeepSupervisionLoss

        self.levels = int(levels)
        self.ds = DeepSupervisionLoss(loss, weights=deep_supervision_weights(self.levels))

    def forward(self, pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """The weighted sum of the loss over the stacked outputs (see the class docstring).

        Raises:
            ValueError: ``pred`` stacks another number of outputs than ``levels``.
        """
        if pred.ndim == label.ndim + 1:
            if pred.shape[1] != self.levels:
                raise ValueError(f"the network stacked {pred.shape[1]} outputs, the loss expects {self.levels} "
                                 "(1 + net.deep_supr_num)")
            return self.ds(list(torch.unbind(pred, dim=1)), label)
        return self.ds(pred, label)


def with_deep_supervision(loss: nn.Module, net_cfg) -> nn.Module:
    """The training loss for a network: ``loss`` wrapped in :class:`StackedDeepSupervisionLoss` when the net config
    has ``deep_supervision`` on (``dyn_unet``), else ``loss`` itself.

    Args:
        loss: the loss from :func:`build_loss`.
        net_cfg: ``cfg.net``; ``deep_supervision`` and ``deep_supr_num`` are read when present.

    Returns:
        the loss module to train with (validation uses the network's eval-mode output and no loss).
    """
    if getattr(net_cfg, "deep_supervision", False):
        return StackedDeepSupervisionLoss(loss, 1 + net_cfg.deep_supr_num)
    return loss


def build_optimizer(cfg, params) -> torch.optim.Optimizer:
    """``torch.optim`` optimizer from :class:`medpipe.config.OptimizerConfig`.

    ``adam`` and ``adamw`` take ``lr``, ``betas`` and ``weight_decay`` (``adamw``: decoupled weight decay,
    Loshchilov & Hutter 2019); ``sgd`` takes ``lr``, ``momentum``, ``nesterov`` and ``weight_decay``.

    Args:
        cfg: the optimizer config (``name`` one of ``adam``, ``adamw``, ``sgd``).
        params: the parameters to optimise (e.g. ``net.parameters()``, all of them even when some are frozen).

    Returns:
        ``torch.optim.Adam``, ``AdamW`` or ``SGD``.
    """
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay)


def build_scheduler(cfg, optimizer, max_epochs: int):
    """Epoch-level LR scheduler, or ``None`` for ``name: none``.

    ``cosine`` uses ``monai.optimizers.WarmupCosineSchedule`` (linear warm-up, then half a cosine down to
    ``min_lr``); ``step`` is ``torch.optim.lr_scheduler.StepLR`` (multiply by ``gamma`` every ``step_size``
    epochs); ``plateau`` returns ``torch.optim.lr_scheduler.ReduceLROnPlateau`` in ``max`` mode (it is stepped
    with the key validation metric; ``patience`` in validation rounds).

    Args:
        cfg: :class:`medpipe.config.SchedulerConfig` (``name`` one of ``none``, ``cosine``, ``step``, ``plateau``).
        optimizer: the optimizer whose learning rate it drives.
        max_epochs: ``train.max_epochs``, the length of the cosine schedule (epochs).

    Returns:
        the scheduler (stepped once per epoch), or ``None``.
    """
    if cfg.name == "none":
        return None
    if cfg.name == "cosine":
        from monai.optimizers import WarmupCosineSchedule

        return WarmupCosineSchedule(optimizer, warmup_steps=cfg.warmup_epochs, t_total=max_epochs,
                                    end_lr=cfg.min_lr, warmup_multiplier=0.1 if cfg.warmup_epochs else 0.0)
    if cfg.name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=cfg.gamma,
                                                      patience=cfg.patience, min_lr=cfg.min_lr)
