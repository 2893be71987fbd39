"""Boundary distances in physical units: HD95, average symmetric surface distance, and their empty-mask rule.

:func:`boundary_distances` computes, per image and foreground class, the 95th-percentile symmetric Hausdorff
distance (HD95) or the average symmetric surface distance (ASD, also written ASSD) with MONAI
(``monai.metrics.compute_hausdorff_distance`` / ``compute_average_surface_distance``) at the voxel spacing of each
image, so the distances are in **millimetres** when the spacing is in mm (NIfTI / DICOM headers) and in **pixels**
for files without a physical spacing (PNG / TIFF: spacing 1, so pixels = mm numerically; today's 2D numbers are
unchanged).

* HD95: the larger of the two directed 95th percentiles of the distances from the boundary voxels of one mask to
  the nearest boundary voxel of the other (Huttenlocher et al., "Comparing images using the Hausdorff distance",
  IEEE TPAMI 15(9), 1993; the 95th percentile as in the BraTS and Medical Segmentation Decathlon evaluations).
* ASD: the mean of the distances of both directed sets pooled, ``(sum_a d(a, B) + sum_b d(b, A)) / (|A| + |B|)``
  over the boundary voxels ``A`` of the prediction and ``B`` of the ground truth (Heimann et al., "Comparison and
  evaluation of methods for liver segmentation from CT datasets", IEEE TMI 28(8), 2009; MONAI's
  ``SurfaceDistanceMetric(symmetric=True)``). medpy's ``assd`` is the mean of the two directed means instead; the two
  agree when both boundaries have as many voxels.

Boundary voxels are those of the mask with a 6- (3D) or 4- (2D) neighbour outside it (MONAI ``get_mask_edges``);
distances are Euclidean between voxel centres scaled by the spacing (``scipy.ndimage.distance_transform_edt`` with
``sampling=spacing``).

MONAI returns NaN (or inf) for an image whose prediction or ground truth is empty, and its mean silently skips
those, so a network that predicts nothing could look better than one that predicts something wrong.
:func:`score_empty_masks` replaces those values by a defined score:

* prediction empty and ground truth not, or the reverse: the diagonal of the image in physical units
  (:func:`image_diagonal` with the spacing), the largest distance two voxels of the image can have, as the BraTS
  challenge scores an empty prediction of a present tumour with its volume's maximum distance (Bakas et al.,
  "Identifying the best machine learning algorithms for brain tumor segmentation ... in the BRATS challenge",
  arXiv:1811.02629, 2018);
* both empty: NaN, to be left out of the mean (there is no boundary to be distant from).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, List, NamedTuple, Optional, Tuple

import torch

__all__ = ["image_diagonal", "EmptyMaskScores", "score_empty_masks", "batch_spacing", "spacing_from_affine",
           "boundary_distances", "DISTANCE_KINDS"]

#: what :func:`boundary_distances` computes
DISTANCE_KINDS = ("hd95", "asd")


def image_diagonal(spatial_shape: Sequence[int], spacing: Optional[Sequence[float]] = None) -> float:
    """Largest Euclidean distance between two voxel centres of an image, ``sqrt(sum(((s - 1) * sp)^2))``.

    Args:
        spatial_shape: spatial sizes ``(H, W[, D])`` in voxels.
        spacing: voxel spacing per spatial axis (e.g. mm); ``None``: 1 (the diagonal in pixels).

    Returns:
        The diagonal as a Python float, in the unit of ``spacing`` (360.6 px for 256 x 256 without spacing).

    Raises:
        ValueError: ``spacing`` does not have one value per spatial axis.
    """
    sp = [1.0] * len(spatial_shape) if spacing is None else [float(v) for v in spacing]
    if len(sp) != len(spatial_shape):
        raise ValueError(f"spacing: expected {len(spatial_shape)} values (one per spatial axis of "
                         f"{tuple(spatial_shape)}), got {tuple(spacing)}")
    return math.sqrt(sum(((int(s) - 1) * v) ** 2 for s, v in zip(spatial_shape, sp)))


def batch_spacing(spacing: Any, batch_size: int, ndim: int) -> List[Tuple[float, ...]]:
    """One spacing tuple per image of a batch.

    Args:
        spacing: ``None`` (1 on every axis), one number (isotropic), a sequence of ``ndim`` numbers (every image),
            or a sequence of ``batch_size`` such sequences (per image); tensors and arrays are accepted.
        batch_size: ``B``.
        ndim: number of spatial axes (2 or 3).

    Returns:
        ``B`` tuples of ``ndim`` floats.

    Raises:
        ValueError: the shape of ``spacing`` fits none of the forms above, or a value is not positive and finite.
    """
    if spacing is None:
        return [(1.0,) * ndim] * batch_size
    if hasattr(spacing, "tolist"):
        spacing = spacing.tolist()
    if isinstance(spacing, (int, float)):
        out = [(float(spacing),) * ndim] * batch_size
    elif len(spacing) == batch_size and all(isinstance(s, (list, tuple)) for s in spacing):
        out = [tuple(float(v) for v in s) for s in spacing]
    else:
        out = [tuple(float(v) for v in spacing)] * batch_size
    if any(len(s) != ndim for s in out):
        raise ValueError(f"spacing: expected {ndim} values per image (spatial axes) for a batch of {batch_size}, "
                         f"got {spacing!r}")
    if any(not (math.isfinite(v) and v > 0) for s in out for v in s):
        raise ValueError(f"spacing: expected positive finite values, got {spacing!r}")
    return out


def spacing_from_affine(affine: Any, ndim: int) -> Tuple[float, ...]:
    """Voxel spacing of the first ``ndim`` axes of a ``(ndim + 1)`` or ``(4, 4)`` affine: the column norms of its
    rotation-zoom part (``monai.data.utils.affine_to_spacing``; as nibabel's ``header.get_zooms`` for NIfTI).

    Args:
        affine: ``(4, 4)`` (or ``(ndim + 1, ndim + 1)``) array or tensor, e.g. ``MetaTensor.affine``.
        ndim: number of spatial axes (2 or 3).

    Returns:
        ``ndim`` floats (mm for NIfTI / DICOM; 1.0 for a PNG, whose affine MONAI sets to the identity).
    """
    from monai.data.utils import affine_to_spacing

    aff = torch.as_tensor(affine, dtype=torch.float64).cpu()
    return tuple(float(v) for v in affine_to_spacing(aff, r=ndim))


class EmptyMaskScores(NamedTuple):
    """Result of :func:`score_empty_masks` and :func:`boundary_distances`.

    Attributes:
        distances: ``(B, C - 1)`` distances with the empty-mask rule applied, dtype and device of the input.
        n_one_empty: number of (image, class) pairs where exactly one of prediction and ground truth is empty
            (scored the image diagonal).
        n_both_empty: number of (image, class) pairs where both are empty (scored NaN).
    """

    distances: torch.Tensor
    n_one_empty: int
    n_both_empty: int


def score_empty_masks(distances: torch.Tensor, y_pred: torch.Tensor, y: torch.Tensor,
                      spacing: Any = None) -> EmptyMaskScores:
    """Apply the empty-mask rule (module docstring) to per-image, per-foreground-class distances.

    Args:
        distances: ``(B, C - 1)`` float distances, e.g. from
            ``monai.metrics.HausdorffDistanceMetric(include_background=False, percentile=95)``.
        y_pred: ``(B, C, H, W[, D])`` one-hot binary prediction, channel 0 background.
        y: ``(B, C, H, W[, D])`` one-hot binary ground truth, same shape.
        spacing: voxel spacing in any form of :func:`batch_spacing` (``None``: pixels).

    Returns:
        :class:`EmptyMaskScores`; the spatial shape of ``y_pred`` and the spacing of each image give its diagonal.
    """
    has_pred = torch.as_tensor(y_pred)[:, 1:].flatten(2).sum(-1) > 0  # (B, C - 1)
    has_true = torch.as_tensor(y)[:, 1:].flatten(2).sum(-1) > 0
    one_empty = (has_pred != has_true).to(distances.device)
    both_empty = (~has_pred & ~has_true).to(distances.device)
    shape = tuple(y_pred.shape[2:])
    diag = [image_diagonal(shape, sp) for sp in batch_spacing(spacing, int(y_pred.shape[0]), len(shape))]
    diagonal = torch.tensor(diag, dtype=distances.dtype, device=distances.device)[:, None].expand_as(distances)
    out = torch.where(one_empty, diagonal, distances)
    out = torch.where(both_empty, torch.full_like(out, float("nan")), out)
    return EmptyMaskScores(out, int(one_empty.sum()), int(both_empty.sum()))


def boundary_distances(y_pred: torch.Tensor, y: torch.Tensor, kind: str = "hd95", spacing: Any = None,
                       percentile: float = 95.0) -> EmptyMaskScores:
    """HD95 or ASD per image and foreground class, in the unit of ``spacing``, with the empty-mask rule.

    MONAI's ``compute_hausdorff_distance(include_background=False, percentile=percentile, spacing=...)`` (``hd95``)
    or ``compute_average_surface_distance(include_background=False, symmetric=True, spacing=...)`` (``asd``), see
    the module docstring for the definitions and sources; then :func:`score_empty_masks`.

    Args:
        y_pred: ``(B, C, H, W[, D])`` one-hot binary prediction, channel 0 background.
        y: ``(B, C, H, W[, D])`` one-hot binary ground truth, same shape.
        kind: ``"hd95"`` or ``"asd"``.
        spacing: voxel spacing in any form of :func:`batch_spacing` (mm from the image header; ``None``: pixels).
        percentile: the percentile of ``hd95`` (95; 100 gives the Hausdorff distance).

    Returns:
        :class:`EmptyMaskScores` with ``(B, C - 1)`` float32 distances.

    Raises:
        ValueError: ``kind`` is unknown, the shapes differ or ``spacing`` does not fit the batch.
    """
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    if kind not in DISTANCE_KINDS:
        raise ValueError(f"kind: expected one of {list(DISTANCE_KINDS)}, got {kind!r}")
    y_pred, y = torch.as_tensor(y_pred), torch.as_tensor(y)
    if y_pred.shape != y.shape:
        raise ValueError(f"y_pred and y must have the same shape, got {tuple(y_pred.shape)} and {tuple(y.shape)}")
    sp = batch_spacing(spacing, int(y_pred.shape[0]), y_pred.ndim - 2)
    with warnings.catch_warnings():
        # MONAI warns per empty mask (scored by the rule below) and, from its own surface-distance code, about its
        # deprecated `always_return_as_numpy` argument (nothing to act on here)
        warnings.filterwarnings("ignore", message=r".*is all 0, this may result in nan/inf distance")
        warnings.filterwarnings("ignore", message=r".*always_return_as_numpy", category=FutureWarning)
        if kind == "hd95":
            d = compute_hausdorff_distance(y_pred, y, include_background=False, percentile=percentile, spacing=sp)
        else:
            d = compute_average_surface_distance(y_pred, y, include_background=False, symmetric=True, spacing=sp)
    return score_empty_masks(torch.as_tensor(d, dtype=torch.float32), y_pred, y, sp)
