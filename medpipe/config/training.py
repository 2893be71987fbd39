"""Training sections: ``loss``, ``optimizer``, ``scheduler`` and ``train``."""

from __future__ import annotations

from typing import List, Literal, Optional, Tuple, Union

from pydantic import Field

from medpipe.config.base import StrictModel

__all__ = ["LossConfig", "OptimizerConfig", "SchedulerConfig", "TrainConfig"]


class LossConfig(StrictModel):
    """Loss function (MONAI losses; ``cross_entropy`` is ``torch.nn.CrossEntropyLoss``).

    ``dice_ce``: MONAI ``DiceCELoss`` (Milletari et al. 2016 Dice + cross-entropy) on softmax outputs with
    one-hot labels. ``dice``: MONAI ``DiceLoss``. ``cross_entropy``: class-index labels. The default ``name``
    depends on the task: ``dice_ce`` for segmentation, ``cross_entropy`` for classification.
    ``class_weights`` weights the cross-entropy term per class: a list (one weight per class) or, for
    classification, ``balanced``: ``n / (C * n_c)`` from the training split's class counts ``n_c``
    (King & Zeng 2001; scikit-learn's ``class_weight="balanced"``).
    """

    name: Optional[Literal["dice_ce", "dice", "cross_entropy"]] = Field(
        None, description="default: dice_ce (segmentation), cross_entropy (classification)")
    include_background: bool = True
    lambda_dice: float = Field(1.0, ge=0)
    lambda_ce: float = Field(1.0, ge=0)
    class_weights: Optional[Union[Literal["balanced"], List[float]]] = Field(
        None, description="per-class weights of the cross-entropy, or balanced (classification)")
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class OptimizerConfig(StrictModel):
    """Optimizer (``torch.optim``): Adam (Kingma & Ba 2015), AdamW (Loshchilov & Hutter 2019) or SGD."""

    name: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, description="sgd only")
    nesterov: bool = Field(False, description="sgd only")
    betas: Tuple[float, float] = Field((0.9, 0.999), description="adam/adamw only")


class SchedulerConfig(StrictModel):
    """Learning-rate schedule, stepped once per epoch.

    ``cosine``: cosine annealing to ``min_lr`` over ``max_epochs`` (Loshchilov & Hutter 2017) after
    ``warmup_epochs`` of linear warm-up; ``step``: multiply by ``gamma`` every ``step_size`` epochs;
    ``plateau``: multiply by ``gamma`` when the key validation metric has not improved for ``patience``
    validations.
    """

    name: Literal["none", "cosine", "step", "plateau"] = "none"
    warmup_epochs: int = Field(0, ge=0)
    min_lr: float = Field(0.0, ge=0)
    step_size: int = Field(10, ge=1)
    gamma: float = Field(0.1, gt=0, le=1)
    patience: int = Field(5, ge=0)


class TrainConfig(StrictModel):
    """Training loop settings (``monai.engines.SupervisedTrainer``)."""

    max_epochs: int = Field(..., ge=1)
    batch_size: int = Field(4, ge=1)
    val_interval: int = Field(1, ge=1, description="validate every N epochs")
    val_batch_size: int = Field(1, ge=1)
    amp: bool = Field(False, description="automatic mixed precision (torch.autocast); used on CUDA only, "
                      "elsewhere training stays float32")
    amp_dtype: Literal["float16", "bfloat16"] = Field(
        "float16", description="autocast dtype with amp: float16 (any CUDA GPU; gradients scaled by GradScaler) "
        "or bfloat16 (Ampere and newer; float32's range, no scaling needed)")
    channels_last: bool = Field(False, description="network weights and input batches in channels-last memory "
                                "format (NHWC / NDHWC), faster convolutions on tensor-core GPUs")
    compile: bool = Field(False, description="torch.compile the training network (static shapes, plain-tensor "
                          "inputs; validation runs uncompiled); the first epoch pays the compilation time. Not "
                          "with channels_last for basic_unet (torch 2.13 inductor fails on its padding backward)")
    seed: int = 0
    deterministic: bool = Field(True, description="deterministic cuDNN kernels without autotuning; false: "
                                "cudnn.benchmark autotuning (faster on GPUs, not bitwise reproducible)")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto | cpu | cuda | cuda:N")
    grad_clip_norm: Optional[float] = Field(None, gt=0, description="clip the gradient L2 norm to this value")
    early_stop_patience: Optional[int] = Field(None, ge=1, description="stop after N validations without gain")
    progress: bool = Field(True, description="show progress bars")
    freeze_backbone_epochs: int = Field(0, ge=0, description="transfer learning: train only the classifier head "
                                        "for the first N epochs, then all layers (classification)")
