"""PNG plots for a run (matplotlib, Agg).

Segmentation: training curves and image / ground truth / prediction overlays (2D; for 3D volumes the axial,
coronal and sagittal slices through the label's centre of mass, :func:`plot_orthogonal_overlays`). Classification: loss and accuracy
learning curves, ROC curves, confusion matrices (counts and row-normalised) and a grid of misclassified images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from medpipe.config import LOWER_IS_BETTER_METRICS

__all__ = ["plot_history", "plot_overlays", "read_gray", "plot_learning_curves", "plot_roc", "plot_confusion",
           "plot_misclassified", "plot_reliability", "plot_orthogonal_overlays", "orthogonal_slices", "read_volume"]


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
    distances = [k for k in names if k in LOWER_IS_BETTER_METRICS]  # mm / pixels: own axis, not squashing the scores
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
            ax3.plot([r["epoch"] for r in va], [r[k] for r in va], "s--", color="tab:gray", label=f"{k} (mm)")
        ax3.set_ylabel("distance (mm; pixels for PNG)")
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
    3D masks (NIfTI volumes) are drawn by :func:`plot_orthogonal_overlays` instead (``max_rows`` cases).
    """
    from skimage.segmentation import find_boundaries

    rows = [r for r in records if "label" in r][:max_rows] or list(records)[:max_rows]
    if rows and _is_volume_file(rows[0]["mask"]):
        return plot_orthogonal_overlays(records, path, max_cases=min(max_rows, 3))
    plt = _plt()
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


#: overlay colours of classes 1, 2, ... (matplotlib's tab10 without its grey)
_CLASS_COLOURS = ((0.12, 0.47, 0.71), (1.0, 0.50, 0.05), (0.17, 0.63, 0.17), (0.84, 0.15, 0.16),
                  (0.58, 0.40, 0.74), (0.55, 0.34, 0.29), (0.89, 0.47, 0.76), (0.74, 0.74, 0.13))
#: anatomical view -> the axis-code letters (nibabel ``aff2axcodes``) of the axis the view's slice is taken across
_VIEWS = (("axial", "SI"), ("coronal", "AP"), ("sagittal", "LR"))


def _is_volume_file(path: str) -> bool:
    """Whether ``path`` is a NIfTI file (``.nii`` / ``.nii.gz``) holding a 3D (or 4D) array."""
    if not str(path).endswith((".nii", ".nii.gz")):
        return False
    import nibabel as nib

    return len(nib.load(str(path)).shape) >= 3


def read_volume(path: str):
    """A volume file (NIfTI, NRRD, MHA, a DICOM series folder: MONAI ``LoadImage``) in RAS orientation
    (``Orientation(axcodes="RAS")``), so that an image and a mask written with its affine share one array order
    whatever readers and storage orders they had.

    Returns:
        ``(*spatial)`` float32 array (the first channel of a multi-channel file) and its ``(4, 4)`` float64 affine
        in MONAI's RAS convention.

    Raises:
        ValueError: the file is not 3D (or 3D with channels).
    """
    from monai.transforms import LoadImage, Orientation

    img = LoadImage(image_only=True, ensure_channel_first=True)(str(path))
    if img.ndim != 4:
        raise ValueError(f"{path}: expected a 3D volume, got shape {tuple(img.shape)}")
    img = Orientation(axcodes="RAS")(img)
    arr = np.asarray(img[0].detach().cpu().numpy(), dtype=np.float32)
    return arr, np.asarray(img.affine.detach().cpu().numpy(), dtype=np.float64)


def orthogonal_slices(label: np.ndarray, affine=None, fallback: np.ndarray = None) -> Dict[str, tuple]:
    """The axial, coronal and sagittal slices through the centre of mass of a label.

    Args:
        label: ``(*spatial)`` 3D class indices; the centre of mass of its foreground (``> 0``,
            ``scipy.ndimage.center_of_mass``) is used, else that of ``fallback``'s (e.g. the prediction), else the
            volume's centre.
        affine: ``(4, 4)`` RAS affine telling which array axis is left-right, anterior-posterior and
            superior-inferior (``nibabel.aff2axcodes``); ``None``: the axes are R, A, S in order.
        fallback: ``(*spatial)`` mask used when ``label`` is empty.

    Returns:
        ``{"axial": (axis, index), "coronal": (axis, index), "sagittal": (axis, index)}``: the array axis across
        which the view is cut and the slice index on it.
    """
    from scipy import ndimage

    codes = ("R", "A", "S") if affine is None else _axcodes(affine)
    centre = [(s - 1) / 2 for s in label.shape]
    for m in (label, fallback):
        if m is not None and np.any(m > 0):
            centre = ndimage.center_of_mass(np.asarray(m) > 0)
            break
    out = {}
    for view, letters in _VIEWS:
        axis = next(i for i, c in enumerate(codes) if c in letters)
        out[view] = (axis, int(np.clip(round(float(centre[axis])), 0, label.shape[axis] - 1)))
    return out


def _axcodes(affine) -> tuple:
    import nibabel as nib

    return tuple(nib.aff2axcodes(np.asarray(affine, dtype=np.float64)))


def _view_axes(axis: int, codes: tuple) -> tuple:
    """``(vertical, horizontal)`` array axes of the view cut across ``axis``: vertical is the superior-inferior
    axis if it is in the view, else the anterior-posterior one."""
    rest = [i for i in range(3) if i != axis]
    vertical = next((i for i in rest if codes[i] in "SI"), None)
    vertical = next(i for i in rest if codes[i] in "AP") if vertical is None else vertical
    return vertical, next(i for i in rest if i != vertical)


def _view_slice(vol: np.ndarray, axis: int, index: int, codes: tuple) -> np.ndarray:
    """The 2D slice ``index`` across ``axis``, rows along the vertical axis of :func:`_view_axes`, superior
    (anterior) upwards when drawn with ``origin="lower"``."""
    vertical, _ = _view_axes(axis, codes)
    sl = np.take(vol, index, axis=axis)
    if [i for i in range(3) if i != axis].index(vertical) == 1:  # rows must run along the vertical axis
        sl = sl.T
    return sl[::-1] if codes[vertical] in "IP" else sl


def _blend(gray: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(H, W)`` grey in [0, 1] with each class of ``mask`` tinted in its colour (45 % opacity)."""
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    for c in range(1, int(mask.max()) + 1 if mask.size else 1):
        sel = mask == c
        rgb[sel] = 0.55 * rgb[sel] + 0.45 * np.asarray(_CLASS_COLOURS[(c - 1) % len(_CLASS_COLOURS)])
    return rgb


def plot_orthogonal_overlays(records: Sequence[Dict], path: Path, max_cases: int = 3,
                             class_names: Sequence[str] = None) -> Path:
    """PNG of 3D cases: for each case the axial, coronal and sagittal slices through the centre of mass of its
    ground truth (:func:`orthogonal_slices`; the prediction's without one), as three panels: image | ground truth
    overlay | prediction overlay, each class in its own colour. Pixels are drawn at their physical aspect ratio
    (the voxel spacing of the image's affine).

    Args:
        records: from :func:`medpipe.inference.predict.predict_cases`: ``{"image": path, "mask": path (NIfTI),
            "label": path (optional)}``; labelled cases first, at most ``max_cases``.
        path: output PNG.
        max_cases: cases drawn.
        class_names: ``K`` names, background first (legend); default ``class 1``, ``class 2``, ...

    Returns:
        ``path``.

    Raises:
        ValueError: no record, a file that is not 3D, or image, ground truth and prediction of different shapes.
    """
    plt = _plt()
    rows = ([r for r in records if "label" in r] + [r for r in records if "label" not in r])[:max_cases]
    if not rows:
        raise ValueError("plot_orthogonal_overlays: records is empty; expected predict_cases records")
    fig, axes = plt.subplots(3 * len(rows), 3, figsize=(8.4, 2.7 * 3 * len(rows)), squeeze=False)
    n_classes = 1
    for i, rec in enumerate(rows):
        img, affine = read_volume(rec["image"])
        pred = np.rint(read_volume(rec["mask"])[0]).astype(np.int64)
        lab = np.rint(read_volume(rec["label"])[0]).astype(np.int64) if "label" in rec else None
        for name, arr in (("prediction", pred), ("ground truth", lab)):
            if arr is not None and arr.shape != img.shape:
                raise ValueError(f"{rec['image']}: {name} shape {arr.shape} differs from the image's {img.shape}")
        n_classes = max(n_classes, int(pred.max()) + 1, int(lab.max()) + 1 if lab is not None else 1)
        lo, hi = np.percentile(img, (1, 99))
        gray = ((img - lo) / max(hi - lo, 1e-6)).clip(0, 1)
        codes = _axcodes(affine)
        spacing = np.sqrt((affine[:3, :3] ** 2).sum(0))
        cuts = orthogonal_slices(lab if lab is not None else pred, affine, pred)
        for j, (view, (axis, index)) in enumerate(cuts.items()):
            ax_row = axes[3 * i + j]
            vertical, horizontal = _view_axes(axis, codes)
            g = _view_slice(gray, axis, index, codes)
            aspect = spacing[vertical] / spacing[horizontal]  # height / width of a pixel on screen
            panels = [np.repeat(g[..., None], 3, -1),
                      _blend(g, _view_slice(lab, axis, index, codes)) if lab is not None else None,
                      _blend(g, _view_slice(pred, axis, index, codes))]
            for ax, panel, title in zip(ax_row, panels, ("image", "ground truth", "prediction")):
                if panel is not None:
                    ax.imshow(panel, origin="lower", aspect=aspect, interpolation="nearest")
                ax.set_title(f"{Path(rec['image']).name[:28]}: {view} {index}" if title == "image"
                             else f"{title}, {view}", fontsize=8)
                ax.axis("off")
    from matplotlib.patches import Patch

    names = list(class_names)[1:] if class_names else [f"class {c}" for c in range(1, n_classes)]
    fig.legend(handles=[Patch(color=_CLASS_COLOURS[(c - 1) % len(_CLASS_COLOURS)], label=n)
                        for c, n in enumerate(names, start=1)], loc="lower center", ncol=max(len(names), 1))
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
