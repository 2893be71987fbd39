"""The ``net`` section: one model per network family, selected by ``name`` (a discriminated union)."""

from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional, Tuple, Union

from pydantic import Field, model_validator
from typing_extensions import Annotated

from medpipe.config.base import StrictModel

__all__ = ["BasicUNetNet", "DynUNetNet", "DenseNet121Net", "ResNetNet", "LeNetNet", "NetConfig", "SEGMENTATION_NETS",
           "CLASSIFICATION_NETS"]


class BasicUNetNet(StrictModel):
    """MONAI ``BasicUNet`` (Falk et al. 2019, "U-Net: deep learning for cell counting, detection, and
    morphometry", Nat. Methods; the 2D/3D U-Net of Ronneberger et al. 2015 with instance norm and LeakyReLU)."""

    name: Literal["basic_unet"]
    spatial_dims: Literal[2, 3] = 2
    in_channels: int = Field(1, ge=1)
    out_channels: int = Field(2, ge=1)
    features: Tuple[int, int, int, int, int, int] = (32, 32, 64, 128, 256, 32)
    act: Union[str, Tuple[str, Dict[str, Any]]] = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True})
    norm: Union[str, Tuple[str, Dict[str, Any]]] = ("instance", {"affine": True})
    bias: bool = True
    dropout: float = Field(0.0, ge=0, lt=1)
    upsample: Literal["deconv", "pixelshuffle", "nontrainable"] = "deconv"
    init: Literal["default", "xavier_uniform", "kaiming_normal"] = Field(
        "default", description="weight initialisation (medpipe.nets.init); default: MONAI's (torch's Kaiming-uniform "
        "convolutions)")


#: one value for every axis, or one per axis
AxisValues = Union[int, List[int]]


class DynUNetNet(StrictModel):
    """MONAI ``DynUNet``: the nnU-Net U-Net (Isensee et al., "nnU-Net: a self-configuring method for deep
    learning-based biomedical image segmentation", Nat. Methods 18, 2021): per stage two conv-norm-LeakyReLU
    blocks (``res_block``: residual ones), strided-convolution down-sampling, transposed-convolution up-sampling,
    optional deep-supervision heads.

    The topology is ``kernel_size`` + ``strides`` (one entry per stage, the first stride 1), or, without them,
    derived from ``patch_size`` (and ``spacing``) as nnU-Net's planner does
    (:func:`medpipe.nets.dynunet.nnunet_topology`: halve each axis while it is at least 8 voxels). With
    ``deep_supervision`` the training output stacks the main output and ``deep_supr_num`` lower-resolution heads
    (``(B, 1 + deep_supr_num, C, *spatial)``), the loss is MONAI's ``DeepSupervisionLoss`` with nnU-Net's weights
    (``medpipe.engine.optim``); in eval mode (validation, inference) the network returns the main output only.
    """

    name: Literal["dyn_unet"]
    spatial_dims: Literal[2, 3] = 3
    in_channels: int = Field(1, ge=1)
    out_channels: int = Field(2, ge=1)
    patch_size: Optional[List[int]] = Field(
        None, min_length=2, max_length=3, description="training patch (voxels) the topology is derived from "
        "when kernel_size/strides are not given; each side must be divisible by 2^(poolings along it)")
    spacing: Optional[List[float]] = Field(
        None, min_length=2, max_length=3, description="voxel spacing (mm) of the patch, for the derived "
        "topology: axes more than 2x coarser than the finest are not pooled until they are within 2x "
        "(nnU-Net); default isotropic")
    kernel_size: Optional[List[AxisValues]] = Field(
        None, description="convolution kernel per stage (input block, down-samplings, bottleneck); default: "
        "derived from patch_size, or 3 everywhere when strides are given")
    strides: Optional[List[AxisValues]] = Field(
        None, description="stride per stage, the first 1 (e.g. [1, 2, 2, 2]: three 2x down-samplings); "
        "default: derived from patch_size")
    filters: Optional[List[int]] = Field(
        None, description="channels per stage; default nnU-Net's min(32 * 2^i, 320 in 3D / 512 in 2D)")
    deep_supervision: bool = Field(False, description="deep-supervision heads in training (nnU-Net)")
    deep_supr_num: int = Field(1, ge=1, description="number of deep-supervision heads below the main output; "
                               "less than the number of up-samplings")
    norm_name: Union[str, Tuple[str, Dict[str, Any]]] = ("instance", {"affine": True})
    act_name: Union[str, Tuple[str, Dict[str, Any]]] = ("leakyrelu", {"inplace": True, "negative_slope": 0.01})
    dropout: Optional[float] = Field(None, ge=0, lt=1)
    res_block: bool = Field(False, description="residual convolution blocks")
    trans_bias: bool = Field(False, description="bias in the transposed convolutions")
    init: Literal["default", "xavier_uniform", "kaiming_normal"] = Field(
        "default", description="weight initialisation (medpipe.nets.init); default: MONAI's (Kaiming-normal, "
        "a=0.01, as nnU-Net)")

    @model_validator(mode="after")
    def _check_topology(self):
        """The stage lists agree with each other and with ``spatial_dims`` (the derived ones are checked when the
        network is built)."""
        d = self.spatial_dims
        for key in ("patch_size", "spacing"):
            value = getattr(self, key)
            if value is not None and len(value) != d:
                raise ValueError(f"{key} has {len(value)} values but spatial_dims is {d}")
        if self.strides is None:
            if self.patch_size is None:
                raise ValueError("give strides (and kernel_size) or patch_size to derive them from (nnU-Net)")
            if self.kernel_size is not None:
                raise ValueError("kernel_size without strides: give both, or neither (derived from patch_size)")
            return self
        stages = [("strides", self.strides)] + ([("kernel_size", self.kernel_size)] if self.kernel_size else [])
        for key, value in stages:
            bad = [v for v in value if not isinstance(v, int) and len(v) != d]
            if bad:
                raise ValueError(f"{key}: entries must be an int or {d} ints (spatial_dims), found {bad[0]}")
        if len(self.strides) < 3:
            raise ValueError(f"strides needs at least 3 stages (two down-samplings), found {len(self.strides)}")
        if self.kernel_size is not None and len(self.kernel_size) != len(self.strides):
            raise ValueError(f"kernel_size has {len(self.kernel_size)} stages, strides {len(self.strides)}")
        if self.filters is not None and len(self.filters) < len(self.strides):
            raise ValueError(f"filters has {len(self.filters)} values, fewer than the {len(self.strides)} stages")
        if self.deep_supervision and self.deep_supr_num >= len(self.strides) - 1:
            raise ValueError(f"deep_supr_num {self.deep_supr_num} must be less than the {len(self.strides) - 1} "
                             "up-samplings")
        return self


class _ClassifierNet(StrictModel):
    """Fields shared by the image classifiers: input ``(B, in_channels, H, W[, D])`` -> logits
    ``(B, num_classes)``, plus weight initialisation and transfer learning."""

    spatial_dims: Literal[2, 3] = 2
    in_channels: int = Field(1, ge=1)
    num_classes: int = Field(2, ge=2, description="number of classes (the network's output channels)")
    init: Literal["default", "xavier_uniform", "kaiming_normal"] = Field(
        "default", description="weight initialisation (medpipe.nets.init), applied before `pretrained`")
    pretrained: Optional[str] = Field(
        None, description="weights to start from: a .pt/.pth file or medpipe checkpoint, an MLflow model URI "
        "(runs:/<id>/model), or an https:// URL with `pretrained_sha256`; tensors whose name and shape match are "
        "loaded, the rest (e.g. a head of another class count) keeps `init`")
    pretrained_sha256: Optional[str] = Field(None, pattern=r"^[0-9a-fA-F]{64}$",
                                             description="SHA-256 of the `pretrained` file (required for URLs)")
    pretrained_trust_pickle: bool = Field(
        False, description="unpickle a `pretrained` source that holds more than tensors (a whole pickled model "
        "of other classes, an MLflow model with only its pickled data/model.pth); unpickling runs any code in "
        "the file: only for sources you trust. Default: tensors only (torch.load weights_only=True)")


class DenseNet121Net(_ClassifierNet):
    """MONAI ``DenseNet121`` (Huang et al., "Densely connected convolutional networks", CVPR 2017): dense blocks
    of (6, 12, 24, 16) layers, growth rate 32, batch norm; ``num_classes`` is MONAI's ``out_channels``. The
    pneumonia X-ray default (the CheXNet backbone, Rajpurkar et al. 2017)."""

    name: Literal["densenet121"]
    init_features: int = Field(64, ge=1)
    growth_rate: int = Field(32, ge=1)
    bn_size: int = Field(4, ge=1)
    dropout_prob: float = Field(0.0, ge=0, lt=1, description="dropout after each dense layer")


class ResNetNet(_ClassifierNet):
    """MONAI ``ResNet`` via ``resnet18`` (basic blocks [2, 2, 2, 2]) or ``resnet50`` (bottlenecks [3, 4, 6, 3])
    (He et al., "Deep residual learning for image recognition", CVPR 2016); ``in_channels`` is MONAI's
    ``n_input_channels``. ``conv1_t_stride`` defaults to 2 as in He et al. (MONAI's default is 1, which
    quadruples the cost of every later layer on 2D images)."""

    name: Literal["resnet18", "resnet50"]
    conv1_t_size: int = Field(7, ge=1, description="kernel size of the first convolution")
    conv1_t_stride: int = Field(2, ge=1, description="stride of the first convolution")
    no_max_pool: bool = Field(False, description="skip the max-pool after the first convolution")
    shortcut_type: Literal["A", "B"] = Field("B", description="A: zero-padded identity, B: 1x1 conv projection")
    widen_factor: float = Field(1.0, gt=0)


class LeNetNet(_ClassifierNet):
    """medpipe ``LeNet`` (LeCun et al. 1998, the histopathology seed's variant): two conv 5x5 / ReLU / max-pool
    blocks of 20 and 50 filters, dense 500, dense ``num_classes``; only accepts ``input_size`` inputs."""

    name: Literal["lenet"]
    spatial_dims: Literal[2] = 2
    in_channels: int = Field(3, ge=1)
    input_size: Union[int, Tuple[int, int]] = Field(28, description="patch size in pixels, H or (H, W)")
    padding: int = Field(2, ge=0, description="2 = 'same' 5x5 convolutions (the seed's Keras model); 0 = valid")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout before the last dense layer")


SEGMENTATION_NETS = ("basic_unet", "dyn_unet")
CLASSIFICATION_NETS = ("densenet121", "resnet18", "resnet50", "lenet")

NetConfig = Annotated[Union[BasicUNetNet, DynUNetNet, DenseNet121Net, ResNetNet, LeNetNet],
                      Field(discriminator="name")]
