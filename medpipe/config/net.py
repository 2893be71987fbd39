"""The ``net`` section: one model per network family, selected by ``name`` (a discriminated union)."""

from __future__ import annotations

from typing import Any, Dict, Literal, Optional, Tuple, Union

from pydantic import Field
from typing_extensions import Annotated

from medpipe.config.base import StrictModel

__all__ = ["BasicUNetNet", "DenseNet121Net", "ResNetNet", "LeNetNet", "NetConfig", "SEGMENTATION_NETS",
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


SEGMENTATION_NETS = ("basic_unet",)
CLASSIFICATION_NETS = ("densenet121", "resnet18", "resnet50", "lenet")

NetConfig = Annotated[Union[BasicUNetNet, DenseNet121Net, ResNetNet, LeNetNet], Field(discriminator="name")]
