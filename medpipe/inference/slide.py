"""Slide-level inference and scoring: the last stage of a histopathology patch-classifier pipeline.

:func:`predict_slide_heatmap` runs a patch classifier (e.g. :class:`medpipe.nets.lenet.LeNet`) over a whole
slide with the tile-streamed sliding window (:func:`medpipe.inference.streamed.streamed_sliding_window_inference`),
skipping background found by the Otsu tissue mask, and writes

- ``<out_dir>/<stem>_heatmap.zarr``: ``prob`` ``(K, H, W)`` float32 class probabilities at the chosen level,
  ``weight`` ``(H, W)`` (0 where no window ran, i.e. background);
- ``<out_dir>/<stem>_heatmap.png``: the class-``class_index`` probability as a colour map (blue 0, yellow 0.5,
  red 1; white where nothing was inferred), at most ``thumbnail_size`` pixels per side;
- ``<out_dir>/<stem>_overlay.png``: the same over the slide thumbnail (opacity grows with the probability).

:func:`score_heatmap` scores such a heatmap against a patch label mask such as the IDC
``reconstructed_region/patient8863_patch_label_mask.png`` (Janowczyk & Madabhushi 2016; 0 background,
1 non-IDC, 2 IDC, one label per 50 x 50 patch on a grid anchored at pixel (0, 0)): one score per labelled patch
(the mean probability over the patch), ROC AUC of IDC vs non-IDC, and sensitivity / specificity / balanced
accuracy / F1 at a threshold (the paper reports F1 0.7648 and balanced accuracy 0.8423 on its test patients).

Nothing here loads the whole slide: memory is bounded by the streamed inference's tile buffers and the
thumbnails (:func:`score_heatmap` takes the heatmap as an in-memory array, so it is meant for regions such as
the 2801 x 2351 IDC one, or for heatmaps computed at a coarse level).

References:
    A. Janowczyk, A. Madabhushi, "Deep learning for digital pathology image analysis: A comprehensive tutorial
    with selected use cases", J Pathol Inform 7:29, 2016 (the IDC data set and its patch protocol).
    A. Cruz-Roa et al., "Automatic detection of invasive ductal carcinoma in whole slide images with
    convolutional neural networks", Proc. SPIE 9041, 2014.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medpipe.data.wsi import Slide, open_slide, resolve_level
from medpipe.inference.streamed import render_heatmap, streamed_sliding_window_inference

logger = logging.getLogger(__name__)

__all__ = ["SlideHeatmap", "predict_slide_heatmap", "score_heatmap", "intensity_range"]


@dataclass
class SlideHeatmap:
    """What :func:`predict_slide_heatmap` produced.

    Attributes:
        zarr_path: Zarr group with ``prob`` ``(K, H, W)`` float32 and ``weight`` ``(H, W)`` float32.
        heatmap_png: colour-mapped probability of ``class_index`` (RGB PNG, at most ``thumbnail_size`` a side).
        overlay_png: the heatmap over the slide thumbnail (RGB PNG, same size).
        slide: the slide file.
        level: pyramid level the network saw.
        shape: ``(H, W)`` of the heatmap = the slide's size at ``level``, pixels.
        downsample: level-0 pixels per heatmap pixel.
        mpp: resolution of the heatmap ``(y, x)`` in micrometres per pixel, ``None`` when the slide has none.
        class_index: channel of ``prob`` shown in the PNGs and returned by :meth:`heatmap`.
        n_windows: windows on the slide's grid (``roi_size``, ``overlap``).
        n_windows_run: windows the network ran on (the others were background).
        tissue_fraction: fraction of the tissue mask that is tissue (``None`` without tissue skipping).
        inference_seconds: wall time of the streamed inference (reading, network, blending, writing).
        seconds: total wall time (tissue mask, inference, PNGs).
        tiles_per_second: network input tiles (windows) per second of ``inference_seconds``.
    """

    zarr_path: Path
    heatmap_png: Path
    overlay_png: Path
    slide: Path
    level: int
    shape: tuple[int, int]
    downsample: float
    mpp: tuple[float, float] | None
    class_index: int
    n_windows: int
    n_windows_run: int
    tissue_fraction: float | None
    inference_seconds: float
    seconds: float
    tiles_per_second: float
    settings: dict = field(default_factory=dict, repr=False)

    def heatmap(self, channel: int | None = None) -> np.ndarray:
        """The full-resolution probability map ``(H, W)`` float32 of ``channel`` (default ``class_index``).

        Reads the whole channel into memory: fine for regions and coarse levels, not for a level-0 gigapixel
        slide (use ``zarr.open_group(zarr_path)["prob"]`` and read blocks there).
        """
        import zarr

        prob = zarr.open_group(str(self.zarr_path), mode="r")["prob"]
        return np.asarray(prob[self.class_index if channel is None else channel], dtype=np.float32)


def intensity_range(
    a_min: float, a_max: float, b_min: float = 0.0, b_max: float = 1.0, clip: bool = True
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Linear intensity mapping ``[a_min, a_max] -> [b_min, b_max]``, as :class:`monai.transforms.ScaleIntensityRange`.

    Args:
        a_min: input intensity mapped to ``b_min`` (e.g. 0 for ``uint8`` RGB).
        a_max: input intensity mapped to ``b_max`` (e.g. 255).
        b_min: output minimum.
        b_max: output maximum.
        clip: clip the output to ``[b_min, b_max]``.

    Returns:
        a function of a float tensor of any shape (e.g. ``(B, C, h, w)``) returning a tensor of that shape.

    Raises:
        ValueError: ``a_max == a_min``.
    """
    if a_max == a_min:
        raise ValueError(f"intensity range is empty: a_min == a_max == {a_min}")
    scale = (b_max - b_min) / (a_max - a_min)
    lo, hi = min(b_min, b_max), max(b_min, b_max)

    def f(x: torch.Tensor) -> torch.Tensor:
        y = (x - a_min) * scale + b_min
        return y.clamp_(lo, hi) if clip else y

    return f


def predict_slide_heatmap(
    net: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor],
    slide_path: str | os.PathLike,
    *,
    roi_size: int | Sequence[int],
    out_dir: str | os.PathLike,
    a_min: float | None = None,
    a_max: float | None = None,
    b_min: float = 0.0,
    b_max: float = 1.0,
    clip: bool = True,
    intensity: Callable[[torch.Tensor], torch.Tensor] | str | None = None,
    overlap: float | Sequence[float] = 0.0,
    mode: str = "constant",
    sigma_scale: float = 0.125,
    sw_batch_size: int = 64,
    tile_size: int = 2048,
    level: int | None = None,
    mpp: float | None = None,
    input_size: int | Sequence[int] | None = None,
    resize_mode: str = "area",
    activation: str | None = "softmax",
    class_index: int = 1,
    tissue: bool | tuple[np.ndarray, float] = True,
    min_tissue: float = 0.0,
    tissue_channel: str = "saturation",
    tissue_max_size: int = 2048,
    backend: str = "auto",
    device: torch.device | str | None = None,
    thumbnail_size: int = 1024,
    alpha: float = 0.5,
    progress: bool = False,
) -> SlideHeatmap:
    """Probability heatmap of a whole slide from a patch classifier, tile-streamed, with PNG thumbnails.

    Windows of ``roi_size`` pixels (at ``level``) are cut on MONAI's sliding-window grid, scaled with the given
    intensity mapping, optionally resized to the network's ``input_size``, and classified; each window's class
    probabilities are painted over the window and overlapping windows are averaged (``mode``, as MONAI's
    ``sliding_window_inference``). With ``overlap=0`` and ``mode="constant"`` the heatmap is a block map of
    patch predictions, the protocol of Janowczyk & Madabhushi 2016 (one prediction per 50 x 50 patch).

    Args:
        net: network mapping ``(B, C, h, w)`` float32 (``(h, w) = input_size``) to ``(B, K)`` logits or
            ``(B, K, h, w)`` dense outputs. An ``nn.Module`` is put in ``eval()`` mode for the call (its previous
            mode is restored) and moved to ``device`` when one is given.
        slide_path: slide file (anything :func:`medpipe.data.wsi.open_slide` reads).
        roi_size: window ``(h, w)`` (or int) in pixels at ``level``: the patch size the classifier was trained
            on, at the slide's resolution (e.g. 50 for the IDC patches).
        out_dir: folder for the Zarr store and PNGs (created).
        a_min: intensity mapping ``[a_min, a_max] -> [b_min, b_max]`` (:func:`intensity_range`); give it, or
            ``intensity``, explicitly: nothing is rescaled silently. ``uint8`` RGB to [0, 1] is ``a_min=0,
            a_max=255``.
        a_max: see ``a_min``.
        b_min: see ``a_min``.
        b_max: see ``a_min``.
        clip: clip after the mapping.
        intensity: instead of ``a_min``/``a_max``: a callable on the ``(B, C, h, w)`` float32 window batch (raw
            slide values), or ``"none"`` to feed raw values.
        overlap: window overlap fraction in [0, 1) (per axis or one value).
        mode: ``"constant"`` or ``"gaussian"`` blending of overlapping windows.
        sigma_scale: gaussian sigma as a fraction of ``roi_size``.
        sw_batch_size: windows per network call.
        tile_size: side of the output tiles processed at once (memory ~ ``(C + K + 1) * (tile + roi)**2 * 4``
            bytes), pixels at ``level``.
        level: pyramid level; or ``mpp`` (micrometres per pixel) instead; default level 0.
        mpp: see ``level``.
        input_size: the network's input ``(h, w)`` when it differs from ``roi_size`` (e.g. 50 x 50 windows
            resized to LeNet's 28 x 28, as the seed did); ``None`` = ``roi_size``.
        resize_mode: ``torch.nn.functional.interpolate`` mode for that resize; ``"area"`` matches the default of
            MONAI's ``Resize``, which the training transforms should then use too.
        activation: ``"softmax"`` (default, for logits), ``"sigmoid"`` or ``None`` (outputs are probabilities).
        class_index: output channel shown in the PNGs (1 = IDC / malignant for a 2-class model).
        tissue: ``True``: skip background windows using the Otsu tissue mask
            (:func:`medpipe.data.patches.tissue_mask`); a precomputed ``(mask, downsample)``; or ``False``.
        min_tissue: a window runs when its tissue fraction is above this (0 = any tissue).
        tissue_channel: ``"saturation"`` or ``"grey"`` (see :func:`medpipe.data.patches.tissue_mask`).
        tissue_max_size: largest side of the tissue mask, pixels.
        backend: WSI backend (:func:`medpipe.data.wsi.open_slide`).
        device: where the network runs (default: CPU, or where an ``nn.Module``'s parameters are).
        thumbnail_size: largest side of the PNGs, pixels.
        alpha: opacity of the overlay at probability 1.
        progress: tqdm progress bar over output tiles.

    Returns:
        a :class:`SlideHeatmap` (paths, geometry, window counts, timing).

    Raises:
        FileNotFoundError: ``slide_path`` does not exist.
        ValueError: no intensity mapping given (or both kinds given), level/mpp out of range, bad window or
            blending settings, network output of an unexpected shape, ``class_index`` >= the number of outputs.
    """
    t0 = time.perf_counter()
    scale = _intensity(a_min, a_max, b_min, b_max, clip, intensity)
    rh, rw = _pair(roi_size)
    size_in = (rh, rw) if input_size is None else _pair(input_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    is_module = isinstance(net, torch.nn.Module)
    was_training = net.training if is_module else False
    if is_module:
        if device is not None:
            net.to(device)
        else:
            device = next((p.device for p in net.parameters()), torch.device("cpu"))
        net.eval()

    def predictor(x: torch.Tensor) -> torch.Tensor:  # (B, C, rh, rw) raw slide values, float32
        x = scale(x)
        if size_in != (rh, rw):
            x = torch.nn.functional.interpolate(x, size=size_in, mode=resize_mode)
        y = net(x)
        if y.ndim == 4 and tuple(y.shape[2:]) != (rh, rw):  # dense output at the network's size
            y = torch.nn.functional.interpolate(y, size=(rh, rw), mode="bilinear", align_corners=False)
        return y

    try:
        with open_slide(slide_path, backend) as slide:
            lvl = resolve_level(slide, level=None if mpp is not None else level, mpp=mpp)
            mask = _tissue(slide, tissue, tissue_channel, tissue_max_size)
            stem = Path(slide_path).name.split(".")[0]
            zpath = out / f"{stem}_heatmap.zarr"
            group = streamed_sliding_window_inference(
                slide, predictor, (rh, rw), sw_batch_size=sw_batch_size, overlap=overlap, mode=mode,
                sigma_scale=sigma_scale, out=zpath, level=lvl, tile_size=max(int(tile_size), rh, rw),
                activation=activation, tissue=mask, min_tissue=min_tissue, device=device, progress=progress,
            )
            K = group["prob"].shape[0]
            if not -K <= class_index < K:
                raise ValueError(f"class_index={class_index} but the network has {K} output channels")
            heat_png, over_png = out / f"{stem}_heatmap.png", out / f"{stem}_overlay.png"
            render_heatmap(group, heat_png, channel=class_index, max_size=thumbnail_size, style="heatmap")
            render_heatmap(group, over_png, channel=class_index, max_size=thumbnail_size, slide=slide, alpha=alpha)
            H, W = slide.level_dimensions[lvl]
            ds, level_mpp = slide.level_downsamples[lvl], slide.level_mpp(lvl)
    finally:
        if is_module and was_training:
            net.train()
    attrs = dict(group.attrs)
    inf_s = float(attrs["seconds"])
    result = SlideHeatmap(
        zarr_path=zpath, heatmap_png=heat_png, overlay_png=over_png, slide=Path(slide_path), level=lvl,
        shape=(H, W), downsample=float(ds), mpp=level_mpp, class_index=class_index,
        n_windows=int(attrs["n_windows"]), n_windows_run=int(attrs["n_windows_run"]),
        tissue_fraction=None if mask is None else float(mask[0].mean()), inference_seconds=inf_s,
        seconds=time.perf_counter() - t0, tiles_per_second=int(attrs["n_windows_run"]) / max(inf_s, 1e-9),
        settings={"roi_size": [rh, rw], "input_size": list(size_in), "overlap": overlap, "mode": mode,
                  "sw_batch_size": sw_batch_size, "tile_size": tile_size, "activation": activation,
                  "min_tissue": min_tissue, "intensity": _describe_intensity(a_min, a_max, b_min, b_max, clip,
                                                                             intensity)},
    )
    logger.info("heatmap of %s (level %d, %dx%d): %d/%d windows, %.1f s (%.0f tiles/s) -> %s", result.slide.name,
                lvl, H, W, result.n_windows_run, result.n_windows, result.seconds, result.tiles_per_second, out)
    return result


def _pair(v) -> tuple[int, int]:
    t = (int(v), int(v)) if np.isscalar(v) else tuple(int(i) for i in v)
    if len(t) != 2 or min(t) < 1:
        raise ValueError(f"expected a positive int or (h, w) pair, got {v!r}")
    return t  # type: ignore[return-value]


def _intensity(a_min, a_max, b_min, b_max, clip, intensity) -> Callable[[torch.Tensor], torch.Tensor]:
    ranged = a_min is not None or a_max is not None
    if ranged and intensity is not None:
        raise ValueError("give either a_min/a_max (linear range) or intensity (callable or 'none'), not both")
    if ranged:
        if a_min is None or a_max is None:
            raise ValueError(f"a_min and a_max must both be given, got a_min={a_min}, a_max={a_max}")
        return intensity_range(float(a_min), float(a_max), float(b_min), float(b_max), clip)
    if intensity is None:
        raise ValueError(
            "say how slide intensities are scaled for the network: a_min/a_max/b_min/b_max (e.g. a_min=0, "
            "a_max=255 for uint8 RGB to [0, 1], as the training transforms' ScaleIntensityRanged), a callable "
            "intensity=..., or intensity='none' for raw values"
        )
    if isinstance(intensity, str):
        if intensity != "none":
            raise ValueError(f"intensity must be a callable or 'none', got {intensity!r}")
        return lambda x: x
    if not callable(intensity):
        raise ValueError(f"intensity must be a callable or 'none', got {type(intensity).__name__}")
    return intensity


def _describe_intensity(a_min, a_max, b_min, b_max, clip, intensity) -> str:
    if a_min is not None:
        return f"[{a_min}, {a_max}] -> [{b_min}, {b_max}]{' clipped' if clip else ''}"
    return intensity if isinstance(intensity, str) else getattr(intensity, "__name__", type(intensity).__name__)


def _tissue(slide: Slide, tissue, channel: str, max_size: int):
    if tissue is False or tissue is None:
        return None
    if tissue is True:
        from medpipe.data.patches import tissue_mask

        return tissue_mask(slide, channel=channel, max_size=max_size)
    mask, ds = tissue
    return np.asarray(mask, bool), float(ds)


# ------------------------------------------------------------------------------------------------ scoring
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
    H, W = heat.shape
    if labels.shape != heat.shape:
        ry, rx = H / labels.shape[0], W / labels.shape[1]
        if abs(ry - rx) > 0.02 * max(ry, rx):
            raise ValueError(
                f"label_mask shape {labels.shape} does not have the aspect ratio of the heatmap {heat.shape}"
            )
        iy = np.minimum((np.arange(H) * labels.shape[0]) // H, labels.shape[0] - 1)
        ix = np.minimum((np.arange(W) * labels.shape[1]) // W, labels.shape[1] - 1)
        labels = labels[np.ix_(iy, ix)]
    ph, pw = _pair(patch_size)
    ny, nx = math.ceil(H / ph), math.ceil(W / pw)
    pad = ((0, ny * ph - H), (0, nx * pw - W))
    inside = np.pad(np.ones((H, W), bool), pad)
    cov = inside if coverage is None else np.pad(_check_cov(coverage, (H, W)), pad)

    def cells(a: np.ndarray) -> np.ndarray:  # (ny*ph, nx*pw) -> (ny, nx) sums
        return a.reshape(ny, ph, nx, pw).sum(axis=(1, 3))

    heat_sum = cells(np.pad(heat, pad) * cov)
    n_cov = cells(cov.astype(np.int64))
    lab_p = np.pad(labels.astype(np.int64), pad, constant_values=np.iinfo(np.int64).min)
    values = np.unique(labels)
    counts = np.stack([cells(lab_p == v) for v in values])  # (n_values, ny, nx)
    cell_label = values[np.argmax(counts, axis=0)]
    scored = cell_label != background_label
    score = np.where(n_cov > 0, heat_sum / np.maximum(n_cov, 1), 0.0)
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
        "n_patches": int(len(lab)),
        "n_pos": n_pos,
        "n_neg": n_neg,
        "n_uncovered": int((n_cov[yy, xx] == 0).sum()),
    }
    if return_patches:
        result.update(patch_yx=np.stack([yy * ph, xx * pw], axis=1), patch_label=lab, patch_score=sc)
    return result


def _check_cov(coverage, shape) -> np.ndarray:
    cov = np.asarray(coverage, bool)
    if cov.shape != shape:
        raise ValueError(f"coverage must have the heatmap's shape {shape}, got {cov.shape}")
    return cov
