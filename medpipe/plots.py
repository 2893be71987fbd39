"""PNG plots for a run: training curves and image / ground truth / prediction overlays (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

__all__ = ["plot_history", "plot_overlays", "read_gray"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_history(history: Dict[str, List], path: Path, title: str = "") -> Path:
    """Training-curve PNG: mean training loss per epoch (left), validation metrics per epoch (right).

    Args:
        history: ``{"train": [{"epoch", "train_loss", "lr"}, ...], "val": [{"epoch", <metric>: value}, ...]}``.
        path: output PNG.
    """
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    tr = history.get("train", [])
    if tr:
        ax1.plot([r["epoch"] for r in tr], [r["train_loss"] for r in tr], "o-", label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.set_title("training loss")
    ax1.grid(alpha=0.3)
    va = history.get("val", [])
    names = [k for k in (va[0] if va else {}) if k != "epoch"]
    for k in names:
        ax2.plot([r["epoch"] for r in va], [r[k] for r in va], "o-", label=k)
    ax2.set_xlabel("epoch")
    ax2.set_title("validation")
    ax2.grid(alpha=0.3)
    if names:
        ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def read_gray(path: str) -> np.ndarray:
    """A 2D image file as a ``(H, W)`` array (first channel of colour images)."""
    from PIL import Image

    with Image.open(path) as im:
        a = np.asarray(im)
    return a[..., 0] if a.ndim == 3 else a


def plot_overlays(records: Sequence[Dict], path: Path, max_rows: int = 4) -> Path:
    """PNG grid, one row per case: image, ground truth, prediction, and an overlay (prediction edges in red,
    ground-truth edges in green). ``records`` come from :func:`medpipe.inference.predict.predict_cases`.
    """
    from skimage.segmentation import find_boundaries

    plt = _plt()
    rows = [r for r in records if "label" in r][:max_rows] or list(records)[:max_rows]
    fig, axes = plt.subplots(len(rows), 4, figsize=(12, 3 * len(rows)), squeeze=False)
    for ax_row, rec in zip(axes, rows):
        img = read_gray(rec["image"]).astype(np.float32)
        pred = read_gray(rec["mask"]) > 0
        lab = read_gray(rec["label"]) > 0 if "label" in rec else None
        ax_row[0].imshow(img, cmap="gray")
        ax_row[0].set_title(Path(rec["image"]).name)
        if lab is not None:
            ax_row[1].imshow(lab, cmap="gray")
        ax_row[1].set_title("ground truth")
        ax_row[2].imshow(pred, cmap="gray")
        ax_row[2].set_title("prediction")
        lo, hi = np.percentile(img, (1, 99))
        rgb = np.repeat(((img - lo) / max(hi - lo, 1e-6)).clip(0, 1)[..., None], 3, axis=-1)
        if lab is not None:
            rgb[find_boundaries(lab)] = (0, 1, 0)
        rgb[find_boundaries(pred)] = (1, 0, 0)
        ax_row[3].imshow(rgb)
        ax_row[3].set_title("overlay (red: pred, green: GT)")
        for ax in ax_row:
            ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
