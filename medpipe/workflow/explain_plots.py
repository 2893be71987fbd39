"""PNG grid of class-activation heatmaps (Grad-CAM / Grad-CAM++) for sample images of a classification run.

Each image is drawn twice, side by side: the network's input (after the run's validation transforms) and the
heatmap of the predicted class blended over it (:func:`medpipe.inference.explain.overlay_heatmap`, ``jet``: red =
strongest evidence). Matplotlib with the Agg backend, as :mod:`medpipe.workflow.plots`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from medpipe.inference.explain import class_activation_maps, default_target_layer, overlay_heatmap

logger = logging.getLogger(__name__)

__all__ = ["plot_explanations", "pick_samples"]

_KIND_TITLES = {"gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++"}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int = 80) -> Path:
    plt = _plt()
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / fig.get_figheight()))  # room for the two-line suptitle
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def pick_samples(labels: Sequence[int], max_images: int) -> np.ndarray:
    """Indices of at most ``max_images`` images, the true classes taken in turn (class 0, 1, ..., 0, 1, ...),
    evenly spaced within each class, so a test list sorted by class still shows every class. Deterministic.

    Args:
        labels: true class indices ``(N,)``.
        max_images: how many to pick (``>= 0``).

    Returns:
        ``(min(N, max_images),)`` int64 indices, in pick order.
    """
    labels = np.asarray(labels).reshape(-1)
    if max_images <= 0 or len(labels) == 0:
        return np.zeros(0, dtype=np.int64)
    if len(labels) <= max_images:
        return np.arange(len(labels), dtype=np.int64)
    per_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    quota = [0] * len(per_class)
    while sum(quota) < max_images:  # round robin over the classes that still have images
        for j, idx in enumerate(per_class):
            if quota[j] < len(idx) and sum(quota) < max_images:
                quota[j] += 1
    chosen = [idx[np.linspace(0, len(idx) - 1, q).round().astype(int)] if q else idx[:0]
              for idx, q in zip(per_class, quota)]
    order = [c[r] for r in range(max(quota)) for c in chosen if r < len(c)]
    return np.asarray(order, dtype=np.int64)


def _network_input(image: str, label, transform) -> torch.Tensor:
    """``(C, *spatial)`` float tensor of one file: ``transform({"image": path, "label": label})["image"]``, or the
    file read with Pillow as ``(C, H, W)`` in ``[0, 1]`` when ``transform`` is None."""
    if transform is None:
        from PIL import Image

        with Image.open(image) as im:
            arr = np.asarray(im.convert("L") if im.mode not in ("L", "RGB") else im, dtype=np.float32) / 255.0
        return torch.as_tensor(arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0))
    try:
        out = transform({"image": image, "label": label})
    except Exception as exc:  # MONAI wraps the failing transform's error in a RuntimeError
        raise ValueError(f"images: {image}: the transform failed: {type(exc).__name__}: {exc}") from exc
    out = out[0] if isinstance(out, (list, tuple)) else out
    return torch.as_tensor(out["image"]).float()


def _display(x: torch.Tensor) -> np.ndarray:
    """Network input ``(C, H, W)`` -> ``(H, W)`` grey (one channel, or not three) or ``(H, W, 3)`` RGB."""
    arr = x.detach().cpu().numpy()
    return np.moveaxis(arr, 0, -1) if arr.shape[0] == 3 else arr[0]


def plot_explanations(net, images: Sequence[str], labels, probs, class_names: Sequence[str], path: Path,
                      kind: str = "gradcam", layer: Optional[str] = None, transform=None, device="cpu",
                      max_images: int = 8, title: str = "", preds=None) -> Path:
    """Grid of sample images and their class-activation heatmaps: each image | heatmap of its predicted class
    overlaid, two such pairs per row, titled with the true class, the predicted class and its probability.

    Args:
        net: the trained 2D classifier ``(B, C, H, W)`` -> logits ``(B, K)``; moved to ``device`` for the
            computation and back, its modes, flags and gradients untouched (see
            :func:`medpipe.inference.explain.class_activation_maps`).
        images: image file paths ``(N,)``.
        labels: true class indices ``(N,)``.
        probs: ``(N, K)`` probabilities (as reported, e.g. after temperature scaling).
        class_names: class names in index order.
        path: output PNG.
        kind: ``"gradcam"`` or ``"gradcampp"``.
        layer: target module name; ``None`` = :func:`medpipe.inference.explain.default_target_layer`.
        transform: the run's validation transforms, called as ``transform({"image": path, "label": label})``
            and returning a dict whose ``"image"`` is ``(C, H, W)``; ``None`` = the file read with Pillow, ``/255``.
        device: ``torch.device`` or name where the heatmaps are computed.
        max_images: at most this many images, chosen by :func:`pick_samples` (classes in turn).
        title: figure title.
        preds: predicted class indices ``(N,)`` (e.g. from the run's binary threshold); ``None`` = argmax of
            ``probs``. The heatmap explains this class.

    Returns:
        ``path`` (a figure saying "no images to explain" when ``images`` is empty or ``max_images`` is 0).

    Raises:
        ValueError: ``labels`` / ``probs`` / ``preds`` lengths differ from ``images``; a transform fails on a file
            (named); and those of :func:`medpipe.inference.explain.class_activation_maps`.
    """
    plt = _plt()
    labels, probs = np.asarray(labels).reshape(-1), np.asarray(probs, dtype=np.float64)
    if preds is None:
        preds = probs.argmax(1) if probs.ndim == 2 and len(probs) else np.zeros(len(probs), dtype=np.int64)
    preds = np.asarray(preds).reshape(-1)
    if not (len(labels) == len(probs) == len(preds) == len(images)):
        raise ValueError(f"images, labels, probs, preds: expected equal lengths, got {len(images)}, {len(labels)}, "
                         f"{len(probs)}, {len(preds)}")
    pick = pick_samples(labels, max_images)
    if len(pick) == 0:
        fig, ax = plt.subplots(figsize=(4, 2))
        ax.text(0.5, 0.5, "no images to explain", ha="center", va="center")
        ax.axis("off")
        return _save(fig, path)
    layer = default_target_layer(net) if layer is None else layer
    inputs = [_network_input(str(images[i]), int(labels[i]), transform) for i in pick]
    maps = _maps(net, inputs, preds[pick].astype(np.int64), kind, layer, torch.device(device))
    pairs = min(2, len(pick))
    rows = int(np.ceil(len(pick) / pairs))
    fig, axes = plt.subplots(rows, 2 * pairs, figsize=(6 * pairs, 3.3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for k, (i, x, heat) in enumerate(zip(pick, inputs, maps)):
        ax_img, ax_cam = axes[k // pairs, 2 * (k % pairs)], axes[k // pairs, 2 * (k % pairs) + 1]
        shown = _display(x)
        ax_img.imshow(overlay_heatmap(shown, heat, alpha=0.0))
        ax_img.set_title(f"{Path(str(images[i])).name[:24]}\ntrue {class_names[labels[i]]}", fontsize=8)
        ax_cam.imshow(overlay_heatmap(shown, heat, alpha=0.4))
        ax_cam.set_title(f"{_KIND_TITLES.get(kind, kind)} of the prediction\npred {class_names[preds[i]]} "
                         f"(p={probs[i, preds[i]]:.2f})", fontsize=8)
    fig.suptitle(f"{title}\n{_KIND_TITLES.get(kind, kind)} at {layer} (red: strongest evidence)".strip(),
                 fontsize=10)
    return _save(fig, path)


def _maps(net, inputs, classes: np.ndarray, kind: str, layer: str, device: torch.device) -> list:
    """Heatmaps ``(H, W)`` for each input, computed on ``device`` (the network moved there and back)."""
    param = next(net.parameters(), None)
    home = param.device if param is not None else device
    net.to(device)
    try:
        if len({tuple(x.shape) for x in inputs}) == 1:
            return list(class_activation_maps(net, torch.stack(inputs), classes, kind=kind, layer=layer))
        return [class_activation_maps(net, x[None], int(c), kind=kind, layer=layer)[0]
                for x, c in zip(inputs, classes)]
    finally:
        net.to(home)
