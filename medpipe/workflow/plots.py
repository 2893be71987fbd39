"""PNG plots for a run (matplotlib, Agg).

Segmentation: training curves and image / ground truth / prediction overlays. Classification: loss and accuracy
learning curves, ROC curves, confusion matrices (counts and row-normalised) and a grid of misclassified images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from medpipe.config import LOWER_IS_BETTER_METRICS

__all__ = ["plot_history", "plot_overlays", "read_gray", "plot_learning_curves", "plot_roc", "plot_confusion",
           "plot_misclassified", "plot_reliability"]


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
    distances = [k for k in names if k in LOWER_IS_BETTER_METRICS]  # pixels: own axis, not squashing the scores
    for k in names:
        if k not in distances:
            ax2.plot([r["epoch"] for r in va], [r[k] for r in va], "o-", label=k)
    ax2.set_xlabel("epoch")
    ax2.set_title("validation")
    ax2.grid(alpha=0.3)
    handles, labels = ax2.get_legend_handles_labels()
    if distances:
        ax3 = ax2.twinx()
        for k in distances:
            ax3.plot([r["epoch"] for r in va], [r[k] for r in va], "s--", color="tab:gray", label=f"{k} (px)")
        ax3.set_ylabel("distance (pixels)")
        h3, l3 = ax3.get_legend_handles_labels()
        handles, labels = handles + h3, labels + l3
    if handles:
        ax2.legend(handles, labels)
    fig.suptitle(title)
    return _save(fig, path)


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
    return _save(fig, path, dpi=80)


def _save(fig, path: Path, dpi: int = 100) -> Path:
    plt = _plt()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_learning_curves(history: Dict[str, List], path: Path, key_metric: str = "", title: str = "") -> Path:
    """Classification learning curves: loss (training and validation) and accuracy (training and validation)
    per epoch, plus the key validation metric when it is not accuracy.

    Args:
        history: ``{"train": [{"epoch", "train_loss", "train_accuracy", ...}], "val": [{"epoch", "loss",
            "accuracy", <metric>...}]}`` as kept by :class:`medpipe.tracking.Tracker`.
        path: output PNG.
        key_metric: name of the key validation metric.
    """
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    tr, va = history.get("train", []), history.get("val", [])
    ep_t, ep_v = [r["epoch"] for r in tr], [r["epoch"] for r in va]
    if tr:
        ax1.plot(ep_t, [r["train_loss"] for r in tr], "o-", label="training")
    if va and "loss" in va[0]:
        ax1.plot(ep_v, [r["loss"] for r in va], "s-", label="validation")
    ax1.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    if tr and "train_accuracy" in tr[0]:
        ax2.plot(ep_t, [r["train_accuracy"] for r in tr], "o-", label="training accuracy")
    if va and "accuracy" in va[0]:
        ax2.plot(ep_v, [r["accuracy"] for r in va], "s-", label="validation accuracy")
    if va and key_metric and key_metric != "accuracy" and key_metric in va[0]:
        ax2.plot(ep_v, [r[key_metric] for r in va], "^--", label=f"validation {key_metric}")
    ax2.set(xlabel="epoch", title="accuracy", ylim=(0, 1.02))
    from matplotlib.ticker import MaxNLocator

    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.suptitle(title)
    return _save(fig, path)


def plot_roc(curves: Dict[str, tuple], class_names: Sequence[str], path: Path, thresholds: Dict = None) -> Path:
    """ROC curves (one panel per split): the positive class for two classes, one curve per class
    (one-vs-rest) otherwise; the operating point of a binary threshold is marked.

    Args:
        curves: ``{split: (labels (N,) int, probs (N, C) float)}``.
        class_names: class names in index order.
        path: output PNG.
        thresholds: ``{split: threshold}`` binary operating thresholds to mark.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _plt()
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4.6), squeeze=False)
    for ax, (split, (labels, probs)) in zip(axes[0], curves.items()):
        classes = [1] if probs.shape[1] == 2 else range(probs.shape[1])
        for c in classes:
            pos = labels == c
            if pos.all() or not pos.any():
                continue
            fpr, tpr, _ = roc_curve(pos, probs[:, c])
            ax.plot(fpr, tpr, label=f"{class_names[c]} (AUC {roc_auc_score(pos, probs[:, c]):.3f})")
        thr = (thresholds or {}).get(split)
        if thr is not None and probs.shape[1] == 2 and 0 < (labels == 1).sum() < len(labels):
            pred = probs[:, 1] >= thr
            tpr_o = (pred & (labels == 1)).sum() / (labels == 1).sum()
            fpr_o = (pred & (labels == 0)).sum() / (labels == 0).sum()
            ax.plot([fpr_o], [tpr_o], "ko", label=f"threshold {thr:.3f}")
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set(xlabel="1 - specificity (FPR)", ylabel="sensitivity (TPR)", title=f"ROC, {split} (n={len(labels)})",
               xlim=(0, 1), ylim=(0, 1.01))
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_confusion(cm, class_names: Sequence[str], path: Path, title: str = "") -> Path:
    """Confusion matrix as counts (left) and normalised by true class, i.e. per-class recall (right).

    Args:
        cm: ``(C, C)`` counts, rows = true class, columns = predicted class.
        class_names: class names in index order.
        path: output PNG.
    """
    plt = _plt()
    cm = np.asarray(cm, dtype=np.int64)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = 3 + 0.6 * len(class_names)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    for ax, mat, fmt, sub in ((axes[0], cm, "d", "counts"), (axes[1], norm, ".2f", "normalised by true class")):
        ax.imshow(mat, cmap="Blues", vmin=0, vmax=mat.max() if mat.max() > 0 else 1)
        for i in range(mat.shape[0]):
            for j in range(mat.shape[1]):
                val = format(mat[i, j], fmt)
                ax.text(j, i, val, ha="center", va="center",
                        color="white" if mat[i, j] > 0.5 * mat.max() else "black")
        ax.set_xticks(range(len(class_names)), class_names, rotation=30, ha="right")
        ax.set_yticks(range(len(class_names)), class_names)
        ax.set(xlabel="predicted", ylabel="true", title=sub)
    fig.suptitle(title)
    return _save(fig, path)


def plot_misclassified(images: Sequence[str], labels, preds, probs, class_names: Sequence[str], path: Path,
                       max_items: int = 16, title: str = "") -> Path:
    """Grid of misclassified images, most confident mistakes first, each titled true -> predicted (p).

    Args:
        images: image paths ``(N,)``.
        labels: true class indices ``(N,)``.
        preds: predicted class indices ``(N,)``.
        probs: ``(N, C)`` probabilities.
        class_names: class names.
        path: output PNG (a blank "no errors" figure when nothing is misclassified).
        max_items: at most this many images.
    """
    from PIL import Image

    plt = _plt()
    labels, preds, probs = np.asarray(labels), np.asarray(preds), np.asarray(probs)
    wrong = np.flatnonzero(labels != preds)
    wrong = wrong[np.argsort(-probs[wrong, preds[wrong]], kind="stable")][:max_items]
    if len(wrong) == 0:
        fig, ax = plt.subplots(figsize=(4, 2))
        ax.text(0.5, 0.5, "no misclassified images", ha="center", va="center")
        ax.axis("off")
        return _save(fig, path)
    cols = min(4, len(wrong))
    rows = int(np.ceil(len(wrong) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), wrong):
        try:
            with Image.open(images[i]) as im:
                arr = np.asarray(im.convert("L") if im.mode not in ("L", "RGB") else im)
            ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None)
        except (OSError, ValueError):
            ax.text(0.5, 0.5, "unreadable", ha="center")
        ax.set_title(f"{Path(images[i]).name[:22]}\ntrue {class_names[labels[i]]} -> {class_names[preds[i]]} "
                     f"({probs[i, preds[i]]:.2f})", fontsize=8)
    fig.suptitle(title)
    return _save(fig, path, dpi=80)


def plot_reliability(curves: Dict[str, Dict[str, tuple]], path: Path, n_bins: int = 15, title: str = "") -> Path:
    """Reliability diagrams (Guo et al. 2017, figure 1), one panel per split: accuracy against mean confidence of
    the top label in equal-width bins (:func:`medpipe.metrics.reliability_curve`), one line per probability
    version (e.g. before / after temperature scaling) with its ECE, the diagonal (perfect calibration), and the
    share of cases in each bin as bars.

    Args:
        curves: ``{split: {version: (labels (N,) int, probs (N, C) float)}}``.
        path: output PNG.
        n_bins: equal-width confidence bins.
        title: figure title.
    """
    from medpipe.metrics import expected_calibration_error, reliability_curve

    plt = _plt()
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4.8), squeeze=False)
    for ax, (split, versions) in zip(axes[0], curves.items()):
        ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
        n = 0
        for k, (version, (labels, probs)) in enumerate(versions.items()):
            rc = reliability_curve(labels, probs, n_bins)
            ece = expected_calibration_error(labels, probs, n_bins)
            used = rc["count"] > 0
            ax.plot(rc["confidence"][used], rc["accuracy"][used], "os^v"[k % 4] + "-",
                    label=f"{version} (ECE {100 * ece:.1f} %)")
            if k == 0:
                n = int(rc["count"].sum())
                width = rc["bin_upper"] - rc["bin_lower"]
                ax.bar(rc["bin_lower"], rc["count"] / max(n, 1), width=width, align="edge", alpha=0.15,
                       color="tab:blue", edgecolor="none", label="share of cases")
        ax.set(xlabel="confidence (top-label probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02),
               title=f"reliability, {split} (n={n}, {n_bins} bins)")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)
