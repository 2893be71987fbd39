"""Class-activation heatmaps for classifiers: Grad-CAM and Grad-CAM++ through MONAI ``monai.visualize``.

Methods:
    - Grad-CAM: Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
      Localization", ICCV 2017 (arXiv:1610.02391): the target layer's activations weighted by the spatial mean of
      the class score's gradient, summed over channels, rectified. ``monai.visualize.GradCAM``.
    - Grad-CAM++: Chattopadhay et al., "Grad-CAM++: Generalized Gradient-based Visual Explanations for Deep
      Convolutional Networks", WACV 2018 (arXiv:1710.11063): per-location weights from higher-order gradients.
      ``monai.visualize.GradCAMpp``.

MONAI computes the maps and upsamples them (bilinear) to the input size. What medpipe adds around it:

- the target layer of every classifier medpipe builds (:func:`default_target_layer`) and a one-line error for a
  layer name that is not a module of the network;
- maps normalised per image to ``[0, 1]`` with 1 = strongest evidence (MONAI's default normaliser maps the maximum
  to 0); a map that is 0 everywhere (no positive evidence for the class) stays 0;
- one MONAI call per class in the batch (MONAI sums the scores of ``logits[:, class_idx]``, one class per call)
  and one per image for Grad-CAM++ (MONAI's ``exp(score)`` broadcasts a batch of scores against the last spatial
  axis);
- the network is left as it was found: the forward/backward hooks are removed (MONAI never removes its own),
  every module's train/eval mode, every parameter's ``requires_grad`` and ``.grad`` and every ``inplace`` flag are
  restored. Parameters are frozen during the computation (the gradient flows to the input only), so nothing
  accumulates into a training run's gradients.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from medpipe.nets.lenet import LeNet
from medpipe.registry import did_you_mean

logger = logging.getLogger(__name__)

__all__ = ["CAM_KINDS", "class_activation_maps", "default_target_layer", "overlay_heatmap"]

#: ``kind`` -> MONAI class name in ``monai.visualize``.
CAM_KINDS = {"gradcam": "GradCAM", "gradcampp": "GradCAMpp"}


def _default_layer_table():
    """``(network class, target layer inside it)`` for the classifiers of ``medpipe.nets.factory``."""
    from monai.networks.nets import DenseNet, ResNet

    return (
        # MONAI DenseNet121: features.denseblock4 -> features.norm5 -> class_layers.relu -> pool -> out.
        # class_layers.relu is the last rectified convolutional feature map, the layer MONAI's own GradCAM example
        # uses (1/32 of the input size).
        (DenseNet, "class_layers.relu"),
        # MONAI ResNet (resnet18 / resnet50): the last residual stage, before avgpool (1/32 of the input size).
        (ResNet, "layer4"),
        # medpipe LeNet: features = conv, relu, pool, conv, relu (index 4), pool; the last conv's rectified output,
        # before its pooling (1/2 of the input size with padding 2).
        (LeNet, "features.4"),
    )


def default_target_layer(net: nn.Module) -> str:
    """The module name Grad-CAM should use for ``net``: the last convolutional block's output.

    ``densenet121`` -> ``"class_layers.relu"`` (features.denseblock4 after norm5 and ReLU), ``resnet18`` /
    ``resnet50`` -> ``"layer4"``, ``lenet`` -> ``"features.4"`` (the second convolution's ReLU). A network that
    wraps one of these (e.g. ``module.`` of DistributedDataParallel) gets the prefixed name. Any other network: the
    last ``nn.Conv1d/2d/3d`` in module order (logged).

    Args:
        net: a ``torch.nn.Module``.

    Returns:
        A name from ``net.named_modules()``.

    Raises:
        ValueError: ``net`` has none of these classifiers and no convolution.
    """
    table = _default_layer_table()
    for prefix, module in net.named_modules():
        for cls, layer in table:
            if isinstance(module, cls):
                return f"{prefix}.{layer}" if prefix else layer
    convs = [name for name, m in net.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    if not convs:
        raise ValueError(f"net: {type(net).__name__} has no convolution to explain; pass layer=<module name>")
    logger.info("Grad-CAM target layer of %s: its last convolution %s", type(net).__name__, convs[-1])
    return convs[-1]


def _resolve_layer(net: nn.Module, layer: str) -> nn.Module:
    """The module called ``layer``; ValueError naming a few valid names otherwise."""
    modules = dict(net.named_modules())
    if isinstance(layer, str) and layer and layer in modules:
        return modules[layer]
    names = [n for n in modules if n]
    try:
        default = [default_target_layer(net)]
    except ValueError:
        default = []
    top = [n for n in names if "." not in n]
    examples = list(dict.fromkeys(default + top[-4:] + names[-3:]))[:8]
    raise ValueError(f"layer={layer!r} is not a module of {type(net).__name__}."
                     f"{did_you_mean(str(layer), names)} Valid names include: {', '.join(examples)}")


@contextmanager
def _explaining(net: nn.Module) -> Iterator[None]:
    """``net`` in eval mode with frozen parameters and no in-place activations; everything restored on exit."""
    modes = [(m, m.training) for m in net.modules()]
    params = [(p, p.requires_grad, p.grad) for p in net.parameters()]
    inplace = [m for m in net.modules() if getattr(m, "inplace", None) is True]
    try:
        net.eval()
        for p, _, _ in params:
            p.requires_grad_(False)
        for m in inplace:  # full backward hooks refuse outputs modified in place; results are identical
            m.inplace = False
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, flag, grad in params:
            p.requires_grad_(flag)
            p.grad = grad
        for m in inplace:
            m.inplace = True


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    """Per-image min-max scaling of ``(B, 1, *spatial)`` maps to ``[0, 1]`` (MONAI ``ScaleIntensity``; a
    constant map becomes 0)."""
    from monai.transforms import ScaleIntensity

    scaler = ScaleIntensity(minv=0.0, maxv=1.0)
    return torch.stack([torch.as_tensor(scaler(m)) for m in maps.detach()]).clamp_(0.0, 1.0)


def _classes(net: nn.Module, x: torch.Tensor, class_index) -> np.ndarray:
    """Per-image class indices ``(B,)``: the given ones, or the network's argmax."""
    if class_index is None:
        with torch.no_grad():
            return net(x).argmax(1).cpu().numpy().astype(np.int64)
    arr = np.asarray(class_index, dtype=np.int64).reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, len(x))
    if arr.size != len(x):
        raise ValueError(f"class_index: expected None, an int or {len(x)} ints (one per image), got {arr.size}")
    if (arr < 0).any():
        raise ValueError(f"class_index: expected class indices >= 0, got {arr.tolist()}")
    return arr


def class_activation_maps(net: nn.Module, x: Union[torch.Tensor, np.ndarray],
                          class_index: Optional[Union[int, Sequence[int]]] = None, kind: str = "gradcam",
                          layer: Optional[str] = None) -> np.ndarray:
    """Grad-CAM / Grad-CAM++ heatmaps of a classifier, one per image, at the input's size.

    Args:
        net: classifier, ``(B, C, *spatial)`` -> logits ``(B, K)``; its device is used.
        x: ``(B, C, H, W)`` (or ``(B, C, H, W, D)``) float tensor or array, the network's input (after the
            validation transforms).
        class_index: class to explain: ``None`` = the network's predicted class (argmax of the logits) per image,
            an int for every image, or ``B`` ints.
        kind: ``"gradcam"`` (Selvaraju et al. 2017, ``monai.visualize.GradCAM``) or ``"gradcampp"``
            (Chattopadhay et al. 2018, ``monai.visualize.GradCAMpp``).
        layer: target module name (``net.named_modules()``); ``None`` = :func:`default_target_layer`.

    Returns:
        ``(B, H, W[, D])`` float32 in ``[0, 1]``, per image 1 at the strongest evidence for the class (bilinear
        upsampling from the layer's resolution); all 0 where the rectified map has no positive value.

    Raises:
        ValueError: unknown ``kind``; ``layer`` not a module of ``net`` (with close and valid names); ``x`` not
            ``(B, C, *spatial)``; ``class_index`` of the wrong length or outside the network's classes.
    """
    import monai.visualize as mv
    from monai.visualize.class_activation_maps import ModelWithHooks

    if kind not in CAM_KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {', '.join(CAM_KINDS)}")
    layer = default_target_layer(net) if layer is None else layer
    module = _resolve_layer(net, layer)
    x = torch.as_tensor(x)
    if x.ndim < 3 or len(x) == 0:
        raise ValueError(f"x: expected (B, C, *spatial) with B >= 1, got shape {tuple(x.shape)}")
    param = next(net.parameters(), None)
    device = param.device if param is not None else x.device
    x = x.detach().to(device=device, dtype=param.dtype if param is not None else torch.float32)
    out = np.zeros((len(x), *x.shape[2:]), dtype=np.float32)
    with _explaining(net), torch.inference_mode(False), torch.enable_grad():
        x = x.clone()  # a normal tensor even when the caller is in inference mode
        classes = _classes(net, x, class_index)
        hooked = ModelWithHooks(net, layer, register_forward=False, register_backward=False)
        hooked.register_forward = hooked.register_backward = True
        handles = [module.register_forward_hook(hooked.forward_hook(layer)),
                   module.register_full_backward_hook(hooked.backward_hook(layer))]
        try:
            cam = getattr(mv, CAM_KINDS[kind])(nn_module=hooked, target_layers=layer, postprocessing=_normalise)
            for c in np.unique(classes):
                idx = np.flatnonzero(classes == c)
                for chunk in _chunks(idx, 1 if kind == "gradcampp" else len(idx)):
                    out[chunk] = _one_class(cam, x[torch.as_tensor(chunk, device=device)], int(c))
        finally:
            for h in handles:
                h.remove()
    return out


def _chunks(idx: np.ndarray, size: int) -> List[np.ndarray]:
    """``idx`` cut into pieces of at most ``size``."""
    return [idx[i:i + size] for i in range(0, len(idx), size)]


def _one_class(cam, x: torch.Tensor, c: int) -> np.ndarray:
    """Maps ``(b, *spatial)`` of class ``c`` for the images ``x`` ``(b, C, *spatial)``."""
    x = x.detach().clone().requires_grad_(True)
    try:
        maps = cam(x=x, class_idx=c)
    except IndexError as exc:  # logits[:, c] out of range
        raise ValueError(f"class_index: {c} is not a class of the network ({exc})") from exc
    return maps[:, 0].detach().float().cpu().numpy()


def _as_rgb01(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` / ``(H, W, 1|3|4)`` image -> ``(H, W, 3)`` float in ``[0, 1]`` (uint8 / 255, else min-max)."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] in (1, 3, 4):
        img = img[..., :3] if img.shape[-1] != 1 else img[..., 0]
    if img.ndim not in (2, 3):
        raise ValueError(f"image: expected (H, W) or (H, W, 1|3|4), got shape {img.shape}")
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    else:
        img = np.nan_to_num(img.astype(np.float32))
        lo, hi = float(img.min()), float(img.max())
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img


def overlay_heatmap(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """A heatmap blended over its image with the ``jet`` colour map (red = 1), as Grad-CAM figures are drawn.

    Args:
        image: ``(H, W)`` grey or ``(H, W, 3)`` RGB (``(H, W, 1)`` / ``(H, W, 4)`` accepted), channels last; uint8
            is read as 0..255, any other dtype is min-max scaled for display.
        heatmap: ``(h, w)`` float in ``[0, 1]`` (values outside are clipped, NaN = 0); resized bilinearly
            (``skimage.transform.resize``) to ``(H, W)`` when its size differs.
        alpha: weight of the colour map, ``0 <= alpha <= 1`` (``(1 - alpha) * image + alpha * colour``).

    Returns:
        ``(H, W, 3)`` uint8 RGB.

    Raises:
        ValueError: ``alpha`` outside ``[0, 1]``; ``image`` or ``heatmap`` of another rank.
    """
    import matplotlib

    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha: expected a weight in [0, 1], got {alpha}")
    rgb = _as_rgb01(image)
    heat = np.nan_to_num(np.asarray(heatmap, dtype=np.float32))
    if heat.ndim != 2:
        raise ValueError(f"heatmap: expected (H, W), got shape {heat.shape}")
    if heat.shape != rgb.shape[:2]:
        from skimage.transform import resize

        heat = resize(heat, rgb.shape[:2], order=1, mode="edge", anti_aliasing=False)
    colour = matplotlib.colormaps["jet"](np.clip(heat, 0.0, 1.0))[..., :3]
    blend = (1.0 - float(alpha)) * rgb + float(alpha) * colour
    return np.clip(np.rint(blend * 255.0), 0, 255).astype(np.uint8)
