"""Slide-level inference: the last stage of a histopathology patch-classifier pipeline.

:func:`predict_slide_heatmap` runs a patch classifier (e.g. :class:`medpipe.nets.lenet.LeNet`) over a whole
slide with the tile-streamed sliding window (:func:`medpipe.inference.streamed.streamed_sliding_window_inference`),
skipping background found by the Otsu tissue mask, as its :class:`~medpipe.inference.slide_settings.SlideInferSettings`
(or the ``slide_infer`` config section) say, and writes

- ``<out_dir>/<stem>_heatmap.zarr``: ``prob`` ``(K, H, W)`` float32 class probabilities at the chosen level,
  ``weight`` ``(H, W)`` (0 where no window ran, i.e. background);
- ``<out_dir>/<stem>_heatmap.png``: the class-``class_index`` probability as a colour map (blue 0, yellow 0.5,
  red 1; white where nothing was inferred), at most ``thumbnail_size`` pixels per side;
- ``<out_dir>/<stem>_overlay.png``: the same over the slide thumbnail (opacity grows with the probability).

The heatmap is scored against a patch label mask by :func:`medpipe.inference.slide_scoring.score_heatmap`.
Nothing here loads the whole slide: memory is bounded by the streamed inference's tile buffers and the thumbnails.

References:
    A. Janowczyk, A. Madabhushi, "Deep learning for digital pathology image analysis: A comprehensive tutorial
    with selected use cases", J Pathol Inform 7:29, 2016 (the IDC data set and its patch protocol).
    A. Cruz-Roa et al., "Automatic detection of invasive ductal carcinoma in whole slide images with
    convolutional neural networks", Proc. SPIE 9041, 2014.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medpipe.data.patches import tissue_mask
from medpipe.data.wsi import Slide, open_slide, resolve_level
from medpipe.inference.slide_settings import SlideInferSettings, size_pair
from medpipe.inference.streamed import render_heatmap, streamed_sliding_window_inference

logger = logging.getLogger(__name__)

__all__ = ["SlideHeatmap", "predict_slide_heatmap"]


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
        settings: what shaped the heatmap (:meth:`~medpipe.inference.slide_settings.SlideInferSettings.record`:
            ``roi_size``, ``input_size``, ``overlap``, ``mode``, ``intensity``, ...), for run records.
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
        """The full-resolution probability map of one class.

        Reads the whole channel into memory: fine for regions and coarse levels, not for a level-0 gigapixel
        slide (use ``zarr.open_group(zarr_path)["prob"]`` and read blocks there).

        Args:
            channel: class channel of ``prob``; default ``class_index``.

        Returns:
            ``(H, W)`` float32 probabilities.
        """
        import zarr

        prob = zarr.open_group(str(self.zarr_path), mode="r")["prob"]
        return np.asarray(prob[self.class_index if channel is None else channel], dtype=np.float32)


def predict_slide_heatmap(
    net: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor],
    slide_path: str | os.PathLike,
    settings: SlideInferSettings | Any,
    *,
    out_dir: str | os.PathLike,
    input_size: int | Sequence[int] | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> SlideHeatmap:
    """Probability heatmap of a whole slide from a patch classifier, tile-streamed, with PNG thumbnails.

    Windows of ``settings.roi_size`` pixels (at ``settings.level``) are cut on MONAI's sliding-window grid, scaled
    with ``settings.intensity``, resized to the network's ``input_size`` when it differs, and classified; each
    window's class probabilities are painted over the window and overlapping windows are averaged
    (``settings.mode``, as MONAI's ``sliding_window_inference``). With ``overlap=0`` and ``mode="constant"`` the
    heatmap is a block map of patch predictions, the protocol of Janowczyk & Madabhushi 2016 (one prediction per
    50 x 50 patch).

    Args:
        net: network mapping ``(B, C, h, w)`` float32 (``(h, w) = input_size``) to ``(B, K)`` logits or
            ``(B, K, h, w)`` dense outputs. An ``nn.Module`` is put in ``eval()`` mode for the call (its previous
            mode is restored) and moved to ``device`` when one is given.
        slide_path: slide file (anything :func:`medpipe.data.wsi.open_slide` reads).
        settings: a :class:`~medpipe.inference.slide_settings.SlideInferSettings`, or the validated ``slide_infer``
            config section (:class:`medpipe.config.SlideInferConfig`, converted by
            :meth:`~medpipe.inference.slide_settings.SlideInferSettings.from_config`).
        out_dir: folder for the Zarr store and PNGs (created).
        input_size: the network's input ``(h, w)`` when it differs from ``roi_size`` (e.g. 50 x 50 windows
            resized to LeNet's 28 x 28, as the seed did; in a pipeline ``cfg.slide_input_size()``); ``None`` =
            ``roi_size``.
        device: where the network runs (default: CPU, or where an ``nn.Module``'s parameters are).
        progress: tqdm progress bar over output tiles.

    Returns:
        a :class:`SlideHeatmap` (paths, geometry, window counts, timing, settings record).

    Raises:
        FileNotFoundError: ``slide_path`` does not exist.
        ValueError: no intensity mapping in ``settings``, level/mpp out of range, bad window or blending settings,
            network output of an unexpected shape, ``class_index`` >= the number of outputs.
    """
    t0 = time.perf_counter()
    s = settings if isinstance(settings, SlideInferSettings) else SlideInferSettings.from_config(settings)
    rh, rw = size_pair(s.roi_size)
    size_in = (rh, rw) if input_size is None else size_pair(input_size)
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

    try:
        with open_slide(slide_path, s.backend) as slide:
            lvl = resolve_level(slide, level=None if s.mpp is not None else s.level, mpp=s.mpp)
            mask = _tissue(slide, s.tissue, s.tissue_channel, s.tissue_max_size)
            stem = Path(slide_path).name.split(".")[0]
            zpath = out / f"{stem}_heatmap.zarr"
            group = streamed_sliding_window_inference(
                slide, _window_predictor(net, s.scaler(), (rh, rw), size_in, s.resize_mode), (rh, rw), sw_batch_size=s.sw_batch_size, overlap=s.overlap, mode=s.mode,
                sigma_scale=s.sigma_scale, out=zpath, level=lvl, tile_size=max(int(s.tile_size), rh, rw),
                activation=s.activation, tissue=mask, min_tissue=s.min_tissue, device=device, progress=progress,
            )
            K = group["prob"].shape[0]
            if not -K <= s.class_index < K:
                raise ValueError(f"class_index={s.class_index} but the network has {K} output channels")
            heat_png, over_png = out / f"{stem}_heatmap.png", out / f"{stem}_overlay.png"
            render_heatmap(group, heat_png, channel=s.class_index, max_size=s.thumbnail_size, style="heatmap")
            render_heatmap(group, over_png, channel=s.class_index, max_size=s.thumbnail_size, slide=slide,
                           alpha=s.alpha)
            H, W = slide.level_dimensions[lvl]
            ds, level_mpp = slide.level_downsamples[lvl], slide.level_mpp(lvl)
    finally:
        if is_module and was_training:
            net.train()
    attrs = dict(group.attrs)
    inf_s = float(attrs["seconds"])
    result = SlideHeatmap(
        zarr_path=zpath, heatmap_png=heat_png, overlay_png=over_png, slide=Path(slide_path), level=lvl,
        shape=(H, W), downsample=float(ds), mpp=level_mpp, class_index=s.class_index,
        n_windows=int(attrs["n_windows"]), n_windows_run=int(attrs["n_windows_run"]),
        tissue_fraction=None if mask is None else float(mask[0].mean()), inference_seconds=inf_s,
        seconds=time.perf_counter() - t0, tiles_per_second=int(attrs["n_windows_run"]) / max(inf_s, 1e-9),
        settings=s.record(size_in),
    )
    logger.info("heatmap of %s (level %d, %dx%d): %d/%d windows, %.1f s (%.0f tiles/s) -> %s", result.slide.name,
                lvl, H, W, result.n_windows_run, result.n_windows, result.seconds, result.tiles_per_second, out)
    return result


def _window_predictor(net, scale: Callable[[torch.Tensor], torch.Tensor], roi: tuple[int, int],
                      size_in: tuple[int, int], resize_mode: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``(B, C, rh, rw)`` raw float32 windows -> network output: scaled, resized to ``size_in`` when it differs
    from ``roi``; a dense ``(B, K, h, w)`` output is resized back to ``roi`` (bilinear)."""

    def predictor(x: torch.Tensor) -> torch.Tensor:
        """The network on one window batch."""
        x = scale(x)
        if size_in != roi:
            x = torch.nn.functional.interpolate(x, size=size_in, mode=resize_mode)
        y = net(x)
        if y.ndim == 4 and tuple(y.shape[2:]) != roi:  # dense output at the network's size
            y = torch.nn.functional.interpolate(y, size=roi, mode="bilinear", align_corners=False)
        return y

    return predictor


def _tissue(slide: Slide, tissue, channel: str, max_size: int):
    """The tissue mask ``(mask, downsample)`` the settings ask for, or ``None``."""
    if tissue is False or tissue is None:
        return None
    if tissue is True:
        return tissue_mask(slide, channel=channel, max_size=max_size)
    mask, ds = tissue
    return np.asarray(mask, bool), float(ds)
