"""Rules: a fingerprint (:mod:`medpipe.plan.fingerprint`) becomes a pipeline, with the reason for every value.

Sources of the rules:

* **nnU-Net** (Isensee et al., Nat. Methods 18, 2021; ``nnunetv2/experiment_planning/experiment_planners/
  default_experiment_planner.py`` 2.x, read for the definitions): target spacing = median spacing (the
  low-resolution axis of an anisotropic set, ratio > 3, at its 10th percentile); patch from the median shape,
  shrunk along the axis with the largest patch / median ratio until it fits a budget, padded to a multiple of
  ``2^poolings``; poolings halve each axis while it stays >= 8 voxels (:func:`medpipe.nets.dynunet.nnunet_topology`);
  feature widths 32 doubling per stage, capped at 320 (3D) / 512 (2D); CT: clip to the 0.5 / 99.5 foreground
  percentiles, then z-score with the foreground mean / std; other modalities: per-image z-score (``nonzero`` when
  the images have a zero background); Dice + CE without background, deep supervision, mirroring along every axis,
  1/3 of patches centred on foreground (``oversample_foreground_percent``) when foreground is rare.
* **Beyond nnU-Net** (medpipe's own, each measured in this repository): 8-bit 2D images are scaled 0-1 (the
  convention of X-ray and microscopy CNNs); on a CPU the widths start at 16, not 32 (2.6x faster per 3D training
  batch at equal Dice trend, ``docs/hippocampus_3d.md``), batch 2 for 3D and AdamW (lr 3e-3, cosine, one epoch
  of warm-up) because a CPU budget allows tens of epochs, not nnU-Net's 1000; classification: a MONAI ResNet-18,
  the input size the largest the budget trains for at least :data:`MIN_EPOCHS` epochs (chosen by
  :mod:`medpipe.plan.budget`), balanced class weights when the largest class is more than 1.5x the smallest,
  grouped splits from a patient column, a Youden threshold for binary tasks; tiny images (median side <=
  :data:`TINY_SIDE`) get LeNet at their own size when ResNet-18 cannot train :data:`MIN_EPOCHS` there.
  Segmentation on a budget: nnU-Net's topology is kept when the budget trains it for :data:`MIN_SEG_STEPS`
  optimizer steps, else a compact 5-stage candidate (BasicUNet's widths) is timed and taken when it trains more steps
  (``docs/plan.md``: EM and lungs); label 0 stays in the Dice term when it covers less than half of the voxels
  (EM membranes); 2D label maps with at most :data:`ANATOMY_OBJECTS` objects per image (two lungs) are an
  anatomical layout that mirroring would break: small affine transforms instead, while many objects (cells) get
  mirroring and 90-degree rotations.

:func:`plan_sections` returns the pipeline as plain data plus ``why``: dotted key -> reason, written as the YAML
comments by :mod:`medpipe.plan.yamlout`. Epochs, batch and validation interval come from the budget
(:mod:`medpipe.plan.budget`).
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = ["plan_sections", "patch_size_rule", "target_spacing_rule", "size_candidates", "MIN_EPOCHS",
           "MIN_SEG_STEPS", "PATCH_VOXELS"]

#: largest training patch per sample, voxels, per (device, dimensionality): nnU-Net sizes its patch to GPU
#: memory (a 128^3 3D / 512^2 2D patch fits 10 GB with its default network); on a CPU time is the limit, and
#: the patch is capped so that a budget of minutes still trains for tens of epochs
PATCH_VOXELS = {("cpu", 2): 256 * 256, ("cpu", 3): 64 ** 3, ("cuda", 2): 512 * 512, ("cuda", 3): 128 ** 3}
#: classification: the input size is the largest candidate that trains this many epochs within the budget
MIN_EPOCHS = 10
#: segmentation: nnU-Net's topology is kept when the budget trains it for at least this many optimizer steps
#: (4 of nnU-Net's 250-iteration epochs); below, a cheaper network's extra steps are worth more than depth
MIN_SEG_STEPS = 1000
#: the compact segmentation network: at most this many stages (4 poolings, as the U-Net of Ronneberger et al. 2015
#: and MONAI's BasicUNet), widths (b, b, 2b, 4b, 8b) as BasicUNet's: the full-resolution stages dominate a CPU step.
#: Measured by ``benchmarks/bench_unet_step.py`` (32 patches of 256 x 256, forward + backward + AdamW, 2-core CPU):
#: nnU-Net's 7-stage 16-512 DynUNet 7.7 s, 5 stages 16-32-64-128-128 6.8 s, this 16-16-32-64-128 4.8 s, BasicUNet 4.9 s
COMPACT_STAGES = 5
#: 2D segmentation: at most this many labelled objects per image (median) is an anatomical layout (two lungs,
#: one heart), which mirroring would break; more is a texture of objects (cells)
ANATOMY_OBJECTS = 4
#: classification: images whose median side is at most this many pixels are tiny patches (IDC's 50 px); when
#: ResNet-18 cannot train MIN_EPOCHS at their own size, the planner takes LeNet at that size instead of shrinking
TINY_SIDE = 64
#: candidate classification input sizes (pixels per side), from the largest
SIZES = (512, 384, 320, 256, 224, 192, 160, 128, 112, 96, 64, 48, 32)


def target_spacing_rule(spacing: Dict[str, List[float]]) -> Tuple[List[float], str]:
    """nnU-Net's target spacing: the median per axis; with anisotropy > 3 the coarse axis at its 10th percentile.

    Args:
        spacing: the fingerprint's ``spacing_mm`` (``median``, ``p10`` per axis).

    Returns:
        ``(target spacing in mm, reason)``.
    """
    med, p10 = list(spacing["median"]), list(spacing["p10"])
    coarse = max(range(len(med)), key=lambda i: med[i])
    if med[coarse] / min(med) > 3:
        med[coarse] = p10[coarse]
        return med, (f"median spacing, the coarse axis {coarse} at its 10th percentile {p10[coarse]:g} mm "
                     "(anisotropy > 3, nnU-Net)")
    return med, "median spacing of the data (nnU-Net)"


def _round_patch(patch: Sequence[int], spacing: Optional[Sequence[float]]) -> Tuple[List[int], List[int]]:
    from medpipe.nets.dynunet import nnunet_topology

    patch = [int(p) for p in patch]
    for _ in range(3):
        _, _, div = nnunet_topology(patch, spacing)
        padded = [int(math.ceil(p / d) * d) for p, d in zip(patch, div)]
        if padded == patch:
            break
        patch = padded
    return patch, div


def patch_size_rule(median_shape: Sequence[float], spacing: Optional[Sequence[float]], max_voxels: int
                    ) -> Tuple[List[int], str]:
    """nnU-Net's patch: the median shape, shrunk along the axis with the largest patch / median ratio until it
    holds at most ``max_voxels``, then padded to a multiple of ``2^poolings`` per axis.

    Returns:
        ``(patch_size, reason)``; shapes in voxels ``(H, W[, D])``.
    """
    med = [max(8, int(round(s))) for s in median_shape]
    patch, div = _round_patch(med, spacing)
    while math.prod(patch) > max_voxels:
        # nnU-Net: shrink the axis whose patch is largest relative to the median shape by its divisibility step
        i = max(range(len(patch)), key=lambda a: (patch[a] / med[a] if patch[a] > div[a] else -1, patch[a]))
        if patch[i] <= div[i]:
            break
        patch[i] -= div[i]
        patch, div = _round_patch(patch, spacing)
    shape = "x".join(str(int(round(s))) for s in median_shape)
    return patch, (f"median shape {shape} -> patch {'x'.join(map(str, patch))} (at most {max_voxels} voxels on this "
                   f"device, multiple of {'x'.join(map(str, div))} for the poolings; nnU-Net's rule)")


def size_candidates(median_shape: Sequence[float]) -> List[int]:
    """Classification input sides (pixels) no larger than the median image's smaller side, largest first."""
    side = int(min(median_shape))
    cands = [s for s in SIZES if s <= side]
    return cands or [max(8, side)]


def _load(dim: int, rgb: str, keys: List[str]) -> List[Dict]:
    """Loading and channel-first transforms for the data's format."""
    if dim == 3:
        return [{"name": "LoadImaged", "keys": keys}, {"name": "EnsureChannelFirstd", "keys": keys},
                {"name": "Orientationd", "keys": keys, "axcodes": "RAS"}]
    load = {"name": "LoadImaged", "keys": keys, "reader": "PILReader", "reverse_indexing": False}
    if rgb in ("rgb", "rgba"):
        return [load, {"name": "EnsureChannelFirstd", "keys": ["image"], "channel_dim": -1},
                *([{"name": "EnsureChannelFirstd", "keys": ["label"], "channel_dim": "no_channel"}]
                  if "label" in keys else [])]
    if rgb == "grey-as-rgb":
        return [load, {"name": "EnsureChannelFirstd", "keys": ["image"], "channel_dim": -1},
                {"name": "ToGrayscaled", "keys": ["image"]},
                *([{"name": "EnsureChannelFirstd", "keys": ["label"], "channel_dim": "no_channel"}]
                  if "label" in keys else [])]
    return [load, {"name": "EnsureChannelFirstd", "keys": keys, "channel_dim": "no_channel"}]


def _channel_kind(fp: Dict) -> str:
    kinds = fp["channel_kinds"]
    return max(kinds, key=kinds.get)


def _normalise(fp: Dict, dim: int, why: Dict, where: str) -> List[Dict]:
    """Intensity normalisation by modality and bit depth (module docstring)."""
    modality = " ".join(fp.get("modality") or []).upper()
    stats = fp.get("intensity_foreground") or fp.get("intensity") or {}
    eight_bit = fp.get("bits") == [8] or fp.get("dtypes") == ["uint8"]
    if "CT" in modality.split():
        lo, hi = round(stats["percentile_00_5"], 2), round(stats["percentile_99_5"], 2)
        why[where] = (f"CT: clip to the foreground 0.5 / 99.5 percentiles {lo:g} / {hi:g} HU, then z-score with the "
                      "foreground mean / std (nnU-Net's CTNormalization)")
        return [{"name": "ScaleIntensityRanged", "keys": ["image"], "a_min": lo, "a_max": hi, "b_min": lo,
                 "b_max": hi, "clip": True},
                {"name": "NormalizeIntensityd", "keys": ["image"], "subtrahend": round(stats["mean"], 4),
                 "divisor": round(stats["std"], 4)}]
    if dim == 2 and eight_bit:
        why[where] = "8-bit images: 0-255 -> 0-1 (X-ray, photo and microscopy convention)"
        return [{"name": "ScaleIntensityRanged", "keys": ["image"], "a_min": 0, "a_max": 255, "b_min": 0.0,
                 "b_max": 1.0, "clip": True}]
    zero_bg = stats.get("min", 1) <= 0 <= stats.get("max", -1)
    why[where] = (f"{modality or 'non-CT'} intensities on per-image scales (foreground {stats.get('min', 0):.3g} to "
                  f"{stats.get('max', 0):.3g}): per-image z-score" + (" over non-zero voxels" if zero_bg else "")
                  + " (nnU-Net's ZScoreNormalization)")
    return [{"name": "NormalizeIntensityd", "keys": ["image"], "nonzero": bool(zero_bg), "channel_wise": True}]


def _label_map(fp: Dict, why: Dict, where: str) -> List[Dict]:
    values = fp["label_values"]
    if values == list(range(len(values))):
        return []
    why[where] = f"label values {values} -> class indices 0..{len(values) - 1}"
    return [{"name": "MapLabelValued", "keys": ["label"], "orig_labels": values,
             "target_labels": list(range(len(values)))}]


def _seg_spatial(fp: Dict, device: str, why: Dict) -> Tuple[List[int], Optional[List[float]], List[Dict], int]:
    """Resampling, patch and crop transforms of a segmentation plan; returns (patch, spacing, transforms)."""
    dim = fp["dimensionality"]
    spacing, pre = None, []
    median = list(fp["shape"]["median"])
    if dim == 3 and fp.get("spacing_mm"):
        spacing, reason = target_spacing_rule(fp["spacing_mm"])
        lo, hi = fp["spacing_mm"]["min"], fp["spacing_mm"]["max"]
        if any(abs(a - t) > 0.01 * t or abs(b - t) > 0.01 * t for a, b, t in zip(lo, hi, spacing)):
            pre.append({"name": "Spacingd", "keys": ["image", "label"], "pixdim": [round(s, 4) for s in spacing],
                        "mode": ["bilinear", "nearest"]})
            why["transforms.train.spacing"] = reason
            median = [m * s / t for m, s, t in zip(median, fp["spacing_mm"]["median"], spacing)]
        else:
            why["transforms.train.spacing"] = (f"no Spacingd: every volume is at {'x'.join(f'{s:g}' for s in spacing)}"
                                               " mm already (the target spacing)")
    patch, why["net.patch_size"] = patch_size_rule(median, spacing, PATCH_VOXELS[(device, dim)])
    keys = ["image", "label"]
    crop: List[Dict] = [{"name": "SpatialPadd", "keys": keys, "spatial_size": patch}]
    ratio = math.prod(median) / math.prod(patch)
    fg = fp.get("foreground_fraction") or 0.0
    if ratio <= 1.0:
        crop.append({"name": "RandSpatialCropd", "keys": keys, "roi_size": patch, "random_size": False})
        why["transforms.train.crop"] = "the patch covers the median image: one random crop per image"
    elif fg < 0.1:
        n_samples = min(4, max(1, round(ratio)))
        crop.append({"name": "RandCropByPosNegLabeld", "keys": keys, "label_key": "label", "spatial_size": patch,
                     "pos": 1, "neg": 2, "num_samples": n_samples})
        why["transforms.train.crop"] = (f"foreground {fg:.1%} of the voxels: 1 in 3 patches centred on foreground "
                                        f"(nnU-Net's oversample_foreground_percent 0.33), {n_samples} per image")
    else:
        n_samples = min(4, max(1, round(ratio)))
        crop.append({"name": "RandSpatialCropSamplesd", "keys": keys, "roi_size": patch, "num_samples": n_samples,
                     "random_size": False})
        why["transforms.train.crop"] = (f"the median image holds {ratio:.1f} patches: {n_samples} random patches per "
                                        f"image per epoch (foreground {fg:.0%}: no foreground sampling needed)")
    return patch, spacing, pre + crop


def _seg_augment(fp: Dict, dim: int, kind: str, why: Dict) -> List[Dict]:
    """Spatial and intensity augmentation of a segmentation plan (module docstring: anatomy vs texture)."""
    keys = ["image", "label"]
    objects = [o.get("objects_per_case_median", 0) for o in (fp.get("objects") or {}).values()]
    per_case = sum(objects)
    intensity = [{"name": "RandScaleIntensityd", "keys": ["image"], "factors": 0.25, "prob": 0.15},
                 {"name": "RandShiftIntensityd", "keys": ["image"], "offsets": 0.1, "prob": 0.15}]
    if dim == 2 and kind != "rgb" and 0 < per_case <= ANATOMY_OBJECTS:
        why["transforms.train.augment"] = (
            f"{per_case:g} labelled object(s) per image (median): an anatomical layout (left and right, up and down "
            "are anatomy, as in a chest radiograph), so no mirroring; rotations +-10 degrees, scaling 0.9-1.1, "
            "shifts of 4 % and small intensity changes (medpipe's rule; nnU-Net mirrors every axis)")
        shift = [max(1, int(round(0.04 * s))) for s in fp["shape"]["median"]]
        return [{"name": "RandAffined", "keys": keys, "prob": 0.5, "rotate_range": 0.17, "scale_range": [0.1, 0.1],
                 "translate_range": shift, "mode": ["bilinear", "nearest"], "padding_mode": ["border", "zeros"]},
                *intensity]
    aug = [{"name": "RandFlipd", "keys": keys, "prob": 0.5, "spatial_axis": a} for a in range(dim)]
    if dim == 2 and per_case > ANATOMY_OBJECTS:
        aug.append({"name": "RandRotate90d", "keys": keys, "prob": 0.5, "max_k": 3})
        why["transforms.train.augment"] = (
            f"{per_case:g} labelled objects per image (median): a texture of objects (cells, nuclei) with no "
            "orientation: mirroring along both axes (nnU-Net), 90-degree rotations and small intensity changes")
        return aug + intensity
    why["transforms.train.augment"] = ("mirroring along every axis and small intensity changes (nnU-Net's default "
                                       "mirroring; brightness 0.75-1.25 at p 0.15)")
    return aug + intensity


def _include_background(fp: Dict, why: Dict) -> bool:
    """nnU-Net leaves label 0 out of the Dice term; medpipe keeps it when label 0 is the minority of the voxels
    (EM membranes, 22 % of the pixels against 78 % cell interior, are what the task is about)."""
    fg = fp.get("foreground_fraction")
    if fg is not None and fg > 0.5:
        why["loss.include_background"] = (
            f"label 0 covers only {1 - fg:.0%} of the voxels: it is a structure, not a background, so the Dice term "
            "includes it (medpipe's rule; nnU-Net always leaves label 0 out)")
        return True
    why["loss.include_background"] = (f"label 0 is the background ({1 - (fg or 0):.0%} of the voxels): nnU-Net's Dice "
                                      "term leaves it out (do_bg=False); CE covers it")
    return False


def _seg_network(patch: Sequence[int], spacing, dim: int, device: str, compact: bool, why: Dict) -> Dict:
    """DynUNet topology: nnU-Net's (every pooling the patch allows, widths doubling to 320 / 512), or the compact
    candidate (at most :data:`COMPACT_STAGES` stages, BasicUNet's widths) that the planner takes when nnU-Net's
    cannot train :data:`MIN_SEG_STEPS` optimizer steps in the budget and the compact one trains more."""
    from medpipe.nets.dynunet import nnunet_topology

    kernels, strides, _ = nnunet_topology(patch, spacing)
    base, cap = (16 if device == "cpu" else 32), (320 if dim == 3 else 512)
    if compact:
        kernels, strides = kernels[:COMPACT_STAGES], strides[:COMPACT_STAGES]
        filters = [base * m for m in (1, 1, 2, 4, 8)][:len(strides)]
        why["net.filters"] = (f"the compact network: {len(strides)} stages, widths {'-'.join(map(str, filters))} "
                              "(MONAI BasicUNet's shape: the full-resolution stages dominate a CPU step, 1.6x "
                              "cheaper than nnU-Net's topology on 256 x 256 patches, benchmarks/bench_unet_step.py); "
                              f"chosen because nnU-Net's topology trains fewer than {MIN_SEG_STEPS} optimizer steps "
                              "in this budget on this device")
        why["net.kernel_size"] = "nnU-Net's kernels of the first stages"
        why["net.strides"] = "nnU-Net's strides of the first stages"
        return {"filters": filters, "kernel_size": kernels, "strides": strides}
    filters = [min(cap, base * 2 ** i) for i in range(len(strides))]
    why["net.filters"] = (f"{len(strides)} stages for the patch; widths {base} doubling per stage, capped at {cap} "
                          "(nnU-Net" + (", halved on a CPU: 2.6x faster per 3D batch, docs/hippocampus_3d.md)"
                                        if device == "cpu" else ")"))
    return {"filters": filters}


def _segmentation(fp: Dict, layout, device: str, why: Dict, compact: bool = False) -> Dict:
    dim = fp["dimensionality"]
    kind = _channel_kind(fp)
    keys = ["image", "label"]
    load = _load(dim, kind, keys)
    norm = _normalise(fp, dim, why, "transforms.train.normalise")
    lmap = _label_map(fp, why, "transforms.train.labels")
    patch, spacing, spatial = _seg_spatial(fp, device, why)
    resample = [t for t in spatial if t["name"] == "Spacingd"]
    crop = [t for t in spatial if t["name"] != "Spacingd"]
    aug = _seg_augment(fp, dim, kind, why)
    num_classes = len(fp["label_values"])
    topology = _seg_network(patch, spacing, dim, device, compact, why)
    include_bg = _include_background(fp, why)
    in_ch = 3 if kind in ("rgb", "rgba") else 1
    names = (layout.label_names or [])
    class_names = [n.lower().replace(" ", "_") for n in names] if len(names) == num_classes else None
    metric_names = ["dice", "hd95"] + (["asd", "volume"] if dim == 3 else [])
    why.update({
        "net.name": "MONAI DynUNet: nnU-Net's U-Net, kernels and strides from the patch (nnunet_topology)",
        "net.in_channels": f"{in_ch} channel(s): {kind} images",
        "net.out_channels": f"label values {fp['label_values']}: background + {num_classes - 1} class(es)",
        "net.deep_supervision": "a loss on every decoder stage but the lowest, weights halving (nnU-Net)",
        "loss.name": "Dice + cross-entropy (nnU-Net)",
        "optimizer.name": "AdamW, lr 3e-3: an adaptive step for a schedule of tens of epochs (nnU-Net's SGD 0.01 "
                          "with momentum 0.99 is tuned for 1000)",
        "scheduler.name": "cosine annealing to zero over the run (nnU-Net: poly decay, a similar shape)",
        "metrics.names": "Dice and HD95" + (" and ASD in mm, volumes in mm3" if dim == 3 else " in pixels")
                         + ", per label",
        "infer.roi_size": "the training patch (nnU-Net's sliding window)",
        "infer.overlap": "nnU-Net's step 0.5 with gaussian weighting of the window centres",
        "infer.sw_batch_size": "windows per forward pass",
        "infer.splits": "predict validation" + (" and the test images" if layout.data.get("test_images") else ""),
        "net.spatial_dims": f"{dim}D data",
        "net.deep_supr_num": "heads below the main output",
        "net.norm_name": "instance norm with a learned scale and shift (nnU-Net)",
        "net.res_block": "plain convolution blocks (nnU-Net's default U-Net)",
        "optimizer.weight_decay": "nnU-Net's weight decay",
        "scheduler.warmup_epochs": "one epoch from 0.1x against early instability of Adam",
        "metrics.key_metric": "the best checkpoint is the one with the best mean validation Dice",
    })
    return {
        "transforms": {"train": load + resample + norm + lmap + crop + aug, "val": load + resample + norm + lmap},
        "net": {"name": "dyn_unet", "spatial_dims": dim, "in_channels": in_ch, "out_channels": num_classes,
                "patch_size": patch, **({"spacing": [round(s, 4) for s in spacing]} if spacing else {}),
                **topology, "deep_supervision": True,
                "deep_supr_num": max(1, min(2, len(topology["filters"]) - 2)),
                "norm_name": ["instance", {"affine": True}], "res_block": False},
        "loss": {"name": "dice_ce", "include_background": include_bg},
        "optimizer": {"name": "adamw", "lr": 0.003, "weight_decay": 3.0e-5},
        "scheduler": {"name": "cosine", "warmup_epochs": 1},
        "metrics": {**({"class_names": class_names} if class_names else {}), "names": metric_names,
                    "key_metric": "dice"},
        "infer": {"roi_size": patch, "sw_batch_size": 4, "overlap": 0.5, "mode": "gaussian",
                  "splits": ["val"] + (["test"] if layout.data.get("test_images") or fp["splits"].get("test")
                                       else []),
                  **({"output_format": "nifti"} if dim == 3 else {})},
    }


def _classification(fp: Dict, layout, device: str, size: int, why: Dict, small_net: bool = False) -> Dict:
    dim = fp["dimensionality"]
    kind = _channel_kind(fp)
    load = _load(dim, kind, ["image"])
    med = fp["shape"]["median"]
    aspect = med[1] / med[0] if dim == 2 else 1.0
    spatial = [size, size] if dim == 2 and 0.9 <= aspect <= 1.1 else (
        [size, int(round(size * aspect / 8) * 8)] if dim == 2 else [size] * 3)
    resize = [{"name": "Resized", "keys": ["image"], "spatial_size": spatial, "mode": "area"}]
    norm = _normalise(fp, dim, why, "transforms.train.normalise")
    if kind in ("rgb", "rgba"):
        aug = [{"name": "RandFlipd", "keys": ["image"], "prob": 0.5, "spatial_axis": 0},
               {"name": "RandFlipd", "keys": ["image"], "prob": 0.5, "spatial_axis": 1},
               {"name": "RandRotate90d", "keys": ["image"], "prob": 0.5}]
        why["transforms.train.augment"] = "colour images (microscopy, photos): flips and 90-degree rotations"
    else:
        aug = [{"name": "RandRotated", "keys": ["image"], "range_x": 0.17, "prob": 0.5, "padding_mode": "border"},
               {"name": "RandZoomd", "keys": ["image"], "min_zoom": 0.9, "max_zoom": 1.1, "prob": 0.5,
                "padding_mode": "edge"}]
        why["transforms.train.augment"] = ("grey radiographs: +-10 degree rotations and 0.9-1.1 zoom, no flips "
                                           "(left and right are anatomy)")
    counts = fp["class_counts"]
    loss: Dict = {"name": "cross_entropy"}
    if fp["imbalance"] > 1.5:
        loss["class_weights"] = "balanced"
        why["loss.class_weights"] = (f"largest / smallest class {fp['imbalance']:.1f} (> 1.5): weights n / (K n_c)")
    binary = len(counts) == 2
    metrics = {"names": (["auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1"] if binary
                         else ["auc", "balanced_accuracy", "accuracy", "f1"]), "key_metric": "auc"}
    if binary:
        metrics["threshold"] = "youden"
        why["metrics.threshold"] = "binary: operating point by Youden's J on validation, applied to test"
    why["metrics.key_metric"] = "threshold-free ranking (" + ("ROC AUC" if binary else "macro one-vs-rest AUC") + ")"
    in_ch = 3 if kind in ("rgb", "rgba") else 1
    net: Dict = {"name": "resnet18", "spatial_dims": dim, "in_channels": in_ch, "num_classes": len(counts)}
    why["net.name"] = "MONAI ResNet-18: strong ImageNet-scale baseline, cheap at small input sizes"
    if small_net:
        net = {"name": "lenet", "in_channels": in_ch, "num_classes": len(counts), "input_size": size, "padding": 2}
        why["net.name"] = (f"tiny images (median side {min(med):g} px <= {TINY_SIDE}): ResNet-18 trains fewer than "
                           f"{MIN_EPOCHS} epochs at {size} px in this budget, and downscaling them loses what little "
                           "there is; LeNet (LeCun 1998; the seed's patch classifier) trains many more")
        why["net.input_size"] = "the planned input size"
        why["net.padding"] = "'same' 5x5 convolutions"
    why["net.num_classes"] = ", ".join(f"{k} {v}" for k, v in counts.items()) + " cases"
    why["loss.name"] = "cross-entropy"
    why["optimizer.name"] = "AdamW lr 1e-3 with cosine annealing and one warm-up epoch"
    why["train.grad_clip_norm"] = "gradient norm clipped at 5 against early spikes"
    why["net.in_channels"] = f"{kind} images" + (" converted to one channel" if kind == "grey-as-rgb" else "")
    why["net.spatial_dims"] = f"{dim}D images"
    why["metrics.names"] = "threshold-free AUC and the threshold metrics reviewers ask for"
    return {
        "transforms": {"train": load + resize + norm + aug, "val": load + resize + norm},
        "net": net,
        "loss": loss,
        "optimizer": {"name": "adamw", "lr": 0.001, "weight_decay": 1.0e-4},
        "scheduler": {"name": "cosine", "warmup_epochs": 1},
        "metrics": metrics,
    }


def plan_sections(fp: Dict, layout, device: str = "cpu", name: Optional[str] = None, size: Optional[int] = None,
                  compact: bool = False, small_net: bool = False) -> Tuple[Dict, Dict[str, str]]:
    """The pipeline for ``fp`` except the budgeted values (epochs, batch, validation interval).

    Args:
        fp: the fingerprint (:func:`medpipe.plan.fingerprint.compute_fingerprint`).
        layout: the :class:`medpipe.plan.layout.Layout` (data section, label names).
        device: ``"cpu"`` or ``"cuda"``, the device the run will train on.
        name: the pipeline's name (default: the data folder's name).
        size: classification input side in pixels (default: the largest of :func:`size_candidates`).
        compact: segmentation: the compact network instead of nnU-Net's topology (:func:`_seg_network`).
        small_net: classification: LeNet instead of ResNet-18 (tiny images, :data:`TINY_SIDE`).

    Returns:
        ``(config dict, why)``: the pipeline as plain data with ``train.max_epochs`` 1 and the device's default
        batch (the budget replaces them); ``why`` maps dotted keys to reasons.
    """
    why: Dict[str, str] = {}
    dim = fp["dimensionality"]
    data = dict(layout.data)
    est_bytes = fp["num_cases"] * math.prod(fp["shape"]["median"]) * 4 * (2 if fp["task"] == "segmentation" else 1)
    data.setdefault("cache", "memory" if est_bytes < 4e9 else "none")
    why.setdefault("data.cache", f"the decoded float32 data is about {est_bytes / 1e6:.0f} MB: "
                   + ("loaded and normalised once, kept in memory" if est_bytes < 4e9 else "too large to cache"))
    if fp["task"] == "segmentation":
        body = _segmentation(fp, layout, device, why, compact)
        batch = (2 if dim == 3 else 8) if device == "cpu" else (2 if dim == 3 else 12)
        why["train.batch_size"] = (f"{batch} per step: " + ("nnU-Net's 3D batch" if dim == 3 else
                                   "2D patches are small") + (", more optimizer steps per CPU second"
                                                              if device == "cpu" else ""))
    else:
        size = size or size_candidates(fp["shape"]["median"])[0]
        body = _classification(fp, layout, device, size, why, small_net)
        batch = 16 if size >= 256 else 32
        why["train.batch_size"] = f"{batch} images of {size} px per step"
    if layout.metrics:
        body["metrics"] = dict(layout.metrics)
        why["metrics.key_metric"] = "the metrics section of the pipeline the data section came from (the protocol)"
    name = name or str(data.get("root", "plan")).rstrip("/").split("/")[-1]
    why.setdefault("train.seed", "weights, augmentation and sampling reproducible")
    why.setdefault("train.device", "the device timed for the budget")
    why.setdefault("tracking.tracking_uri", "the project's default local MLflow store")
    cfg = {"name": name, "task": fp["task"], "data": data, **body,
           "train": {"max_epochs": 1, "batch_size": batch, "val_interval": 1, "seed": 0,
                     "device": "auto" if device == "cpu" else "cuda"},
           "tracking": {"tracking_uri": "sqlite:///mlflow.db", "experiment": name}}
    if fp["task"] == "classification":
        cfg["train"]["val_batch_size"] = 2 * batch
        cfg["train"]["grad_clip_norm"] = 5.0
    return cfg, why
