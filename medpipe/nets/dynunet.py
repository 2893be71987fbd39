"""MONAI ``DynUNet`` from config, with nnU-Net's rule for its topology.

:func:`nnunet_topology` derives the kernel sizes and strides of each stage from the training patch size and voxel
spacing as nnU-Net's experiment planner does (Isensee et al., "nnU-Net: a self-configuring method for deep
learning-based biomedical image segmentation", Nat. Methods 18, 2021; nnU-Net v2
``nnunetv2/experiment_planning/experiment_planners/network_topology.py``, ``get_pool_and_conv_props`` with
``min_feature_map_size = 4``, the planner's ``UNet_featuremap_min_edge_length``): an axis is halved while it is at
least ``2 * 4 = 8`` voxels, only axes whose spacing is within 2x of the finest one are pooled, a lone axis only while
it is at least 12, and a kernel is 3 along an axis once that axis's spacing is within 2x of the finest (1 before:
in-plane convolutions for very anisotropic data); the bottleneck always has 3s. For MSD Hippocampus (patch
40 x 56 x 40 at 1 mm) this gives nnU-Net's own plan: four stages, strides ``[1, 2, 2, 2]`` along every axis, kernels
3.

:func:`build_dynunet` builds ``monai.networks.nets.DynUNet`` from a :class:`medpipe.config.net.DynUNetNet`.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

__all__ = ["MIN_FEATURE_MAP_SIZE", "nnunet_topology", "build_dynunet"]

#: nnU-Net v2's ``UNet_featuremap_min_edge_length``: the smallest bottleneck edge (voxels).
MIN_FEATURE_MAP_SIZE = 4


def nnunet_topology(patch_size: Sequence[int], spacing: Optional[Sequence[float]] = None,
                    min_feature_map_size: int = MIN_FEATURE_MAP_SIZE
                    ) -> Tuple[List[List[int]], List[List[int]], List[int]]:
    """Kernel sizes and strides of a U-Net for a patch, by nnU-Net's ``get_pool_and_conv_props``.

    One deviation: nnU-Net v2 sets a kernel to 3 by comparing ``spacings_of_axes[d]`` (the spacings of the
    poolable axes only, indexed by the axis ``d``) with the finest spacing, which indexes the wrong axis (or fails)
    once an axis stops pooling; here the axis's own current spacing is compared, as nnU-Net v1 did.

    Args:
        patch_size: the training patch, voxels per axis (2 or 3 values).
        spacing: voxel spacing per axis (any unit); ``None``: isotropic.
        min_feature_map_size: smallest edge of the bottleneck feature map (nnU-Net: 4).

    Returns:
        ``(kernel_size, strides, divisible_by)``: one ``[k, ...]`` and one ``[s, ...]`` per stage (the first stride
        all 1s, then 2 along the pooled axes), and ``2 ** poolings`` per axis, which each side of the patch (and
        of the sliding-window ``roi_size``) must divide.

    Raises:
        ValueError: ``spacing`` has another length than ``patch_size``, or a value is not positive.
    """
    dim = len(patch_size)
    spacing = [1.0] * dim if spacing is None else [float(s) for s in spacing]
    if len(spacing) != dim or min(spacing) <= 0 or min(patch_size) <= 0:
        raise ValueError(f"patch_size {list(patch_size)} and spacing {spacing}: expected positive values, one per "
                         "axis")
    size, space = [int(s) for s in patch_size], list(spacing)
    strides, kernels, pools, kernel = [[1] * dim], [], [0] * dim, [1] * dim
    while True:
        valid = [i for i in range(dim) if size[i] >= 2 * min_feature_map_size]
        if not valid:
            break
        finest = min(space[i] for i in valid)
        valid = [i for i in valid if space[i] / finest < 2]
        if len(valid) == 1 and size[valid[0]] < 3 * min_feature_map_size:
            break
        kernel = [3 if kernel[d] == 3 or space[d] / min(space) < 2 else 1 for d in range(dim)]
        for i in valid:
            pools[i] += 1
            space[i] *= 2
            size[i] = math.ceil(size[i] / 2)
        strides.append([2 if i in valid else 1 for i in range(dim)])
        kernels.append(list(kernel))
    kernels.append([3] * dim)  # the bottleneck
    return kernels, strides, [2 ** p for p in pools]


def _topology(cfg) -> Tuple[list, list]:
    """``(kernel_size, strides)`` of the config: given, or derived from ``patch_size`` (checked to divide)."""
    if cfg.strides is not None:
        return list(cfg.kernel_size or [3] * len(cfg.strides)), list(cfg.strides)
    kernels, strides, divisible = nnunet_topology(cfg.patch_size, cfg.spacing)
    if len(strides) < 3:
        raise ValueError(f"net.patch_size {cfg.patch_size}: nnU-Net's rule pools it {len(strides) - 1} time(s); "
                         "DynUNet needs at least 2 (every side >= 16 voxels), or give net.strides")
    padded = [math.ceil(s / d) * d for s, d in zip(cfg.patch_size, divisible)]
    if padded != list(cfg.patch_size):
        raise ValueError(f"net.patch_size {cfg.patch_size} is not divisible by {divisible} (2^poolings per axis); "
                         f"use {padded} (nnU-Net pads the patch the same way), in the crops and infer.roi_size too")
    return kernels, strides


def build_dynunet(cfg):
    """``monai.networks.nets.DynUNet`` from a ``dyn_unet`` net config.

    Args:
        cfg: :class:`medpipe.config.net.DynUNetNet`; ``init`` is applied by :func:`medpipe.nets.factory.prepare_net`.

    Returns:
        ``DynUNet``: ``(B, in_channels, *spatial)`` -> logits ``(B, out_channels, *spatial)`` in eval mode; in
        training mode with ``deep_supervision`` the main output and ``deep_supr_num`` heads (each interpolated to
        the full size by MONAI) stacked as ``(B, 1 + deep_supr_num, out_channels, *spatial)``. Each spatial side
        must be divisible by the product of the strides along it.

    Raises:
        ValueError: the derived topology has fewer than three stages, the patch is not divisible by it, or
            ``deep_supr_num`` is not less than the number of up-samplings (each names the ``net.`` field).
    """
    from monai.networks.nets import DynUNet

    kernels, strides = _topology(cfg)
    if cfg.deep_supervision and cfg.deep_supr_num >= len(strides) - 1:
        raise ValueError(f"net.deep_supr_num {cfg.deep_supr_num} must be less than the {len(strides) - 1} "
                         f"up-samplings of strides {strides}")
    if cfg.filters is not None and len(cfg.filters) < len(strides):
        raise ValueError(f"net.filters has {len(cfg.filters)} values, fewer than the {len(strides)} stages of "
                         f"strides {strides}")
    norm = tuple(cfg.norm_name) if isinstance(cfg.norm_name, (list, tuple)) else cfg.norm_name
    act = tuple(cfg.act_name) if isinstance(cfg.act_name, (list, tuple)) else cfg.act_name
    return DynUNet(spatial_dims=cfg.spatial_dims, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
                   kernel_size=kernels, strides=strides, upsample_kernel_size=strides[1:],
                   filters=list(cfg.filters) if cfg.filters else None, dropout=cfg.dropout, norm_name=norm,
                   act_name=act, deep_supervision=cfg.deep_supervision, deep_supr_num=cfg.deep_supr_num,
                   res_block=cfg.res_block, trans_bias=cfg.trans_bias)
