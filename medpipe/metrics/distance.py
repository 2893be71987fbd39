"""Boundary distances: the empty-mask rule of our HD95 (95th-percentile Hausdorff distance).

MONAI's ``compute_hausdorff_distance`` returns NaN (or inf) for an image whose prediction or ground truth is empty,
and its mean silently skips those, so a network that predicts nothing could look better than one that predicts
something wrong. :func:`score_empty_masks` replaces those values by a defined score:

* prediction empty and ground truth not, or the reverse: the image diagonal (:func:`image_diagonal`), the largest
  distance two pixels of the image can have, as the BraTS challenge scores an empty prediction of a present tumour
  with its volume's maximum distance (Bakas et al., "Identifying the best machine learning algorithms for brain
  tumor segmentation ... in the BRATS challenge", arXiv:1811.02629, 2018);
* both empty: NaN, to be left out of the mean (there is no boundary to be distant from).

Distances are in **pixels** (no spacing is applied).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

__all__ = ["image_diagonal", "EmptyMaskScores", "score_empty_masks"]


def image_diagonal(spatial_shape: Sequence[int]) -> float:
    """Largest Euclidean distance between two pixel centres of an image, ``sqrt(sum((s - 1)^2))``.

    Args:
        spatial_shape: spatial sizes ``(H, W[, D])`` in pixels.

    Returns:
        The diagonal in pixels as a Python float (360.6 for 256 x 256).
    """
    return math.sqrt(sum((int(s) - 1) ** 2 for s in spatial_shape))


class EmptyMaskScores(NamedTuple):
    """Result of :func:`score_empty_masks`.

    Attributes:
        distances: ``(B, C - 1)`` distances with the empty-mask rule applied, dtype and device of the input.
        n_one_empty: number of (image, class) pairs where exactly one of prediction and ground truth is empty
            (scored the image diagonal).
        n_both_empty: number of (image, class) pairs where both are empty (scored NaN).
    """

    distances: torch.Tensor
    n_one_empty: int
    n_both_empty: int


def score_empty_masks(distances: torch.Tensor, y_pred: torch.Tensor, y: torch.Tensor) -> EmptyMaskScores:
    """Apply the empty-mask rule (module docstring) to per-image, per-foreground-class distances.

    Args:
        distances: ``(B, C - 1)`` float distances in pixels, e.g. from
            ``monai.metrics.HausdorffDistanceMetric(include_background=False, percentile=95)``.
        y_pred: ``(B, C, H, W[, D])`` one-hot binary prediction, channel 0 background.
        y: ``(B, C, H, W[, D])`` one-hot binary ground truth, same shape.

    Returns:
        :class:`EmptyMaskScores`; the spatial shape of ``y_pred`` gives the diagonal.
    """
    has_pred = torch.as_tensor(y_pred)[:, 1:].flatten(2).sum(-1) > 0  # (B, C - 1)
    has_true = torch.as_tensor(y)[:, 1:].flatten(2).sum(-1) > 0
    one_empty = (has_pred != has_true).to(distances.device)
    both_empty = (~has_pred & ~has_true).to(distances.device)
    diagonal = image_diagonal(y_pred.shape[2:])
    out = torch.where(one_empty, torch.full_like(distances, diagonal), distances)
    out = torch.where(both_empty, torch.full_like(out, float("nan")), out)
    return EmptyMaskScores(out, int(one_empty.sum()), int(both_empty.sum()))
