"""Scoring a slide heatmap against a patch label mask (the IDC protocol of Janowczyk & Madabhushi 2016).

:func:`score_heatmap` scores a heatmap such as the one of :func:`medpipe.inference.slide.predict_slide_heatmap`
against a patch label mask such as the IDC ``reconstructed_region/patient8863_patch_label_mask.png`` (0 background,
1 non-IDC, 2 IDC, one label per 50 x 50 patch on a grid anchored at pixel (0, 0)): one score per labelled patch
(the mean probability over the patch), ROC AUC of IDC vs non-IDC, and sensitivity / specificity / balanced
accuracy / F1 at a threshold (the paper reports F1 0.7648 and balanced accuracy 0.8423 on its test patients).

The heatmap is an in-memory array, so this is meant for regions such as the 2801 x 2351 IDC one, or for heatmaps
computed at a coarse level.

References:
    A. Janowczyk, A. Madabhushi, "Deep learning for digital pathology image analysis: A comprehensive tutorial
    with selected use cases", J Pathol Inform 7:29, 2016 (the IDC data set and its patch protocol).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from medpipe.inference.slide_settings import size_pair

logger = logging.getLogger(__name__)

__all__ = ["score_heatmap"]


def score_heatmap(
    heatmap: np.ndarray,
    label_mask: np.ndarray,
    patch_size: int | Sequence[int] = 50,
    *,
    positive_label: int = 2,
    negative_label: int = 1,
    background_label: int = 0,
    threshold: float = 0.5,
    coverage: np.ndarray | None = None,
    return_patches: bool = False,
) -> dict[str, Any]:
    """Patch-level ROC AUC (and thresholded metrics) of a probability heatmap against a patch label mask.

    The heatmap is cut into ``patch_size`` cells on a grid anchored at pixel ``(0, 0)`` (cells at the right and
    bottom border may be partial). Each cell gets the majority label of ``label_mask`` under it (ties go to the
    smaller value); cells whose label is ``background_label`` are not scored. A scored cell's score is the mean
    heatmap value over its pixels inside the image. The AUC is that of ``positive_label`` (IDC) vs
    ``negative_label`` (non-IDC) patches; other labels are ignored.

    For the IDC region (Janowczyk & Madabhushi 2016) ``label_mask`` is ``patient8863_patch_label_mask.png``:
    ``(2351, 2801)`` uint8, the same grid as the mosaic, constant over each 50 x 50 patch whose top-left is at
    ``(y - 1, x - 1)`` of the patch file name ``..._x<x>_y<y>_class<c>.png`` (i.e. multiples of 50 from 0);
    979 patches, 207 of them IDC.

    Args:
        heatmap: ``(H, W)`` float probability of the positive class (e.g. ``SlideHeatmap.heatmap()``).
        label_mask: ``(h, w)`` integer labels. If ``(h, w) != (H, W)`` it is mapped onto the heatmap grid by
            nearest neighbour (same field of view, e.g. a mask at a coarser pyramid level or a heatmap computed
            at one); the aspect ratios must agree within 2 %.
        patch_size: cell ``(h, w)`` (or int) in heatmap pixels.
        positive_label: label of positive patches (2 = IDC).
        negative_label: label of negative patches (1 = non-IDC).
        background_label: label of unannotated pixels (0).
        threshold: probability threshold for sensitivity, specificity, balanced accuracy, F1.
        coverage: optional ``(H, W)`` bool, pixels where the heatmap was actually inferred (e.g.
            ``weight > 0`` of the Zarr store); a cell's mean is taken over covered pixels only and a cell with
            none scores 0 (counted in ``n_uncovered``: the tissue mask skipped it).
        return_patches: also return per-patch arrays ``patch_yx`` ``(N, 2)`` (top-left, heatmap pixels),
            ``patch_label`` ``(N,)`` and ``patch_score`` ``(N,)``.

    Returns:
        dict with float ``auc`` (NaN when one class is absent), ``sensitivity``, ``specificity``,
        ``balanced_accuracy``, ``f1``, ``mean_score_pos``, ``mean_score_neg``, and int ``n_patches``, ``n_pos``,
        ``n_neg``, ``n_uncovered``; plus the arrays with ``return_patches``.

    Raises:
        ValueError: ``heatmap`` not 2-D, ``label_mask`` not 2-D or of another aspect ratio, ``coverage`` of
            another shape, bad ``patch_size``.
    """
    from sklearn.metrics import roc_auc_score

    heat = np.asarray(heatmap, dtype=np.float64)
    labels = np.asarray(label_mask)
    if heat.ndim != 2:
        raise ValueError(f"heatmap must be (H, W), got shape {heat.shape}")
    if labels.ndim != 2:
        raise ValueError(f"label_mask must be (h, w), got shape {labels.shape}")
    labels = _labels_on_grid(labels, heat.shape)
    ph, pw = size_pair(patch_size)
    cell_label, score, n_cov = _cell_scores(heat, labels, (ph, pw), coverage)
    scored = cell_label != background_label
    yy, xx = np.nonzero(scored)
    lab, sc = cell_label[yy, xx], score[yy, xx]
    pos, neg = lab == positive_label, lab == negative_label
    y_true, y_score = np.concatenate([np.ones(pos.sum()), np.zeros(neg.sum())]), np.concatenate([sc[pos], sc[neg]])
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    if n_pos and n_neg:
        auc = float(roc_auc_score(y_true, y_score))
    else:
        auc = float("nan")
        logger.warning("score_heatmap: %d positive and %d negative patches: AUC undefined", n_pos, n_neg)
    pred = y_score >= threshold
    tp, fn = int(pred[y_true == 1].sum()), int((~pred[y_true == 1]).sum())
    tn, fp = int((~pred[y_true == 0]).sum()), int(pred[y_true == 0].sum())
    sens = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    result: dict[str, Any] = {
        "auc": auc,
        "sensitivity": sens,
        "specificity": spec,
        "balanced_accuracy": 0.5 * (sens + spec),
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan"),
        "mean_score_pos": float(sc[pos].mean()) if n_pos else float("nan"),
        "mean_score_neg": float(sc[neg].mean()) if n_neg else float("nan"),
        "threshold": float(threshold),
        "n_patches": len(lab),
        "n_pos": n_pos,
        "n_neg": n_neg,
        "n_uncovered": int((n_cov[yy, xx] == 0).sum()),
    }
    if return_patches:
        result.update(patch_yx=np.stack([yy * ph, xx * pw], axis=1), patch_label=lab, patch_score=sc)
    return result


def _labels_on_grid(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``labels`` ``(h, w)`` mapped onto the heatmap's ``(H, W)`` grid by nearest neighbour (same field of view)."""
    H, W = shape
    if labels.shape == (H, W):
        return labels
    ry, rx = H / labels.shape[0], W / labels.shape[1]
    if abs(ry - rx) > 0.02 * max(ry, rx):
        raise ValueError(f"label_mask shape {labels.shape} does not have the aspect ratio of the heatmap {shape}")
    iy = np.minimum((np.arange(H) * labels.shape[0]) // H, labels.shape[0] - 1)
    ix = np.minimum((np.arange(W) * labels.shape[1]) // W, labels.shape[1] - 1)
    return labels[np.ix_(iy, ix)]


def _cell_scores(heat: np.ndarray, labels: np.ndarray, patch: tuple[int, int], coverage
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per ``patch`` cell ``(ny, nx)``: majority label (ties to the smaller value), mean covered heat, covered
    pixel count."""
    (H, W), (ph, pw) = heat.shape, patch
    ny, nx = math.ceil(H / ph), math.ceil(W / pw)
    pad = ((0, ny * ph - H), (0, nx * pw - W))
    inside = np.pad(np.ones((H, W), bool), pad)
    cov = inside if coverage is None else np.pad(_check_cov(coverage, (H, W)), pad)

    def cells(a: np.ndarray) -> np.ndarray:
        """``(ny*ph, nx*pw)`` -> ``(ny, nx)`` sums."""
        return a.reshape(ny, ph, nx, pw).sum(axis=(1, 3))

    heat_sum = cells(np.pad(heat, pad) * cov)
    n_cov = cells(cov.astype(np.int64))
    lab_p = np.pad(labels.astype(np.int64), pad, constant_values=np.iinfo(np.int64).min)
    values = np.unique(labels)
    counts = np.stack([cells(lab_p == v) for v in values])  # (n_values, ny, nx)
    cell_label = values[np.argmax(counts, axis=0)]
    score = np.where(n_cov > 0, heat_sum / np.maximum(n_cov, 1), 0.0)
    return cell_label, score, n_cov


def _check_cov(coverage, shape) -> np.ndarray:
    """``coverage`` as bool, checked to have the heatmap's ``shape``."""
    cov = np.asarray(coverage, bool)
    if cov.shape != shape:
        raise ValueError(f"coverage must have the heatmap's shape {shape}, got {cov.shape}")
    return cov
