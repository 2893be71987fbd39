"""Test-time augmentation by mirroring: the mean softmax over every combination of flips of the spatial axes.

This is nnU-Net's test-time mirroring (Isensee et al., "nnU-Net: a self-configuring method for deep
learning-based biomedical image segmentation", Nature Methods 18:203-211, 2021; nnU-Net v1
``SegmentationNetwork._internal_maybe_mirror_and_pred_2D`` / ``_3D``): the network sees the input and its mirror
images along every non-empty subset of the mirror axes (``2^n`` passes for ``n`` axes), each softmax is mirrored
back and the ``2^n`` softmax maps are averaged with equal weights. (nnU-Net v2 averages the logits instead; the
mean of probabilities is what v1 and the paper describe, and what an ensemble of probability maps does.)
"""

from __future__ import annotations

import itertools
from typing import Callable, List, Optional, Sequence, Tuple

import torch

__all__ = ["tta_softmax", "mirror_combinations"]


def mirror_combinations(n_spatial: int, spatial_axes: Optional[Sequence[int]] = None) -> List[Tuple[int, ...]]:
    """Every subset of the mirrored axes, as tensor dimensions of a ``(B, C, *spatial)`` input.

    Args:
        n_spatial: number of spatial axes of the input (2 for ``(B, C, H, W)``).
        spatial_axes: spatial axes to mirror, 0-based (0 = first spatial axis, i.e. tensor dimension 2); default
            all ``n_spatial`` of them.

    Returns:
        ``2^n`` tuples of tensor dimensions, the empty tuple (no flip) first, then by size
        (``[(), (2,), (3,), (2, 3)]`` for two axes).

    Raises:
        ValueError: an axis outside ``[0, n_spatial)``, or an axis given twice.
    """
    axes = list(range(n_spatial)) if spatial_axes is None else [int(a) for a in spatial_axes]
    bad = [a for a in axes if not 0 <= a < n_spatial]
    if bad or len(set(axes)) != len(axes):
        raise ValueError(f"spatial_axes: expected distinct spatial axes in [0, {n_spatial}) (0 = first spatial "
                         f"axis) for an input with {n_spatial} spatial dimensions, got {list(spatial_axes or [])}")
    dims = [a + 2 for a in axes]
    return [c for r in range(len(dims) + 1) for c in itertools.combinations(dims, r)]


def tta_softmax(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                spatial_axes: Optional[Sequence[int]] = None, flip_back: bool = True) -> torch.Tensor:
    """Mean softmax of ``fn`` over the ``2^n`` mirrored copies of ``x`` (nnU-Net's test-time mirroring).

    For every subset ``S`` of the mirrored axes (the empty one included), ``softmax(fn(flip(x, S)))`` over the class
    dimension 1 is computed in float32; with ``flip_back`` it is flipped back along ``S`` so that every copy is on
    the grid of ``x``. The result is the unweighted mean of the ``2^n`` maps (Isensee et al. 2021, nnU-Net v1
    ``_internal_maybe_mirror_and_pred_2D/3D``). With ``spatial_axes=[]`` it is ``softmax(fn(x))`` exactly.

    Args:
        fn: ``fn(x) -> logits``: a segmentation network or sliding-window inference (``(B, K, *spatial)``, the
            spatial grid of its input) or a classifier (``(B, K)``).
        x: ``(B, C, *spatial)`` input tensor (any float dtype, any device).
        spatial_axes: spatial axes mirrored, 0-based (0 = first spatial axis: H of ``(B, C, H, W)``); default all.
        flip_back: mirror each output back (segmentation); ``False`` for outputs without spatial axes
            (classifiers).

    Returns:
        ``(B, K, *spatial)`` (or ``(B, K)``) float32 mean probabilities on ``x``'s device; they sum to 1 over
        dimension 1.

    Raises:
        ValueError: ``x`` has no spatial axis, a bad ``spatial_axes`` (see :func:`mirror_combinations`), or with
            ``flip_back`` an output whose number of dimensions differs from ``x``'s.
    """
    if x.ndim < 3:
        raise ValueError(f"x: expected (B, C, *spatial) with at least one spatial axis, got shape {tuple(x.shape)}")
    total: Optional[torch.Tensor] = None
    combos = mirror_combinations(x.ndim - 2, spatial_axes)
    for dims in combos:
        out = fn(torch.flip(x, dims) if dims else x)
        prob = torch.softmax(out.float(), dim=1)
        if flip_back and dims:
            if prob.ndim != x.ndim:
                raise ValueError(f"tta_softmax: flip_back needs outputs on the input's grid (B, K, *spatial), got "
                                 f"shape {tuple(prob.shape)} for input {tuple(x.shape)}; use flip_back=False for "
                                 "classifiers")
            prob = torch.flip(prob, dims)
        total = prob if total is None else total + prob
    return total / len(combos)
