"""Tile-streamed sliding-window inference for images larger than memory, written to a chunked Zarr store.

:func:`streamed_sliding_window_inference` computes what :func:`monai.inferers.sliding_window_inference` computes
(same window placement, same importance map, same weighted average), but without ever holding the image or the
output whole:

- windows are placed exactly as MONAI places them on the full image (``scan_interval = int(roi * (1 -
  overlap))``, the last window of each row/column shifted back to end at the border, symmetric constant
  padding when the image is smaller than ``roi_size``), with MONAI's ``compute_importance_map`` weights;
- the output plane is cut into ``tile_size`` tiles, processed row-major; a tile's windows are the windows whose
  top-left corner lies in it. Its input (tile + ``roi - 1`` margin) is read from the slide, its windows are
  batched (``sw_batch_size``) through the predictor under ``torch.inference_mode()``, and the weighted outputs
  and weights are added into a buffer of the tile + margin;
- the buffer is added to the on-disk accumulators (Zarr arrays ``prob`` and ``weight``); since windows only
  reach right and down, a tile receives nothing after its own turn, so it is normalised (``prob /= weight``)
  right then and written final. Margins wait, un-normalised, in the Zarr store for their own tile's turn.

Peak memory is one tile buffer plus a batch, independent of the slide size. The result is a Zarr group with
``prob`` (float32, ``(K, H, W)``, chunks ``(K, chunk, chunk)``) and ``weight`` (float32, ``(H, W)``, the sum of
importance weights of the windows that were run, kept for inspection).

Background: with ``tissue`` given, windows without tissue (fraction <= ``min_tissue``, see
:func:`medpipe.data.patches.tissue_mask`) are not read or run. Pixels covered by no window that ran are 0
in ``prob`` and ``weight``; pixels covered by some run windows are the weighted mean over those windows only.

Patch classifiers: a predictor that returns ``(B, K)`` (e.g. :class:`medpipe.nets.lenet.LeNet` logits) has each
window's vector broadcast ("painted") over its window, then blended like dense outputs; with
``overlap=0`` and ``mode="constant"`` this is a ``roi``-sized block map of patch predictions.

Code layout (cf. MONAI ``inferers/splitter.py`` + ``merger.py``): window planning (:func:`window_starts`,
``_plan_windows``, ``_tile_windows``, ``_place_tile``), per-tile inference (``_window_reader``, ``_window_runner``,
``_infer_tile``), accumulation in Zarr (``_ZarrAccumulator``), the tile loop (``_stream_tiles``).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medpipe.data.patches import BoxCounter
from medpipe.data.wsi import Slide, read_region, read_thumbnail, slide_from_array

logger = logging.getLogger(__name__)

__all__ = ["streamed_sliding_window_inference", "window_starts", "render_heatmap"]


def _zarr():
    try:
        import zarr
    except ImportError as e:
        raise ImportError("streamed inference writes Zarr arrays: pip install zarr (or medpipe[wsi])") from e
    return zarr


def _create_array(group, name: str, shape: tuple, chunks: tuple):
    """float32 array filled with 0: ``create_array`` (zarr 3) or ``create_dataset`` (zarr 2)."""
    if hasattr(group, "create_array"):
        return group.create_array(name, shape=shape, chunks=chunks, dtype="float32", fill_value=0.0)
    return group.create_dataset(name, shape=shape, chunks=chunks, dtype="float32", fill_value=0.0)


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Window start positions along one axis, exactly as MONAI's ``dense_patch_slices``.

    Args:
        size: axis length after MONAI's padding (``max(image, roi)``), pixels.
        roi: window length, pixels.
        overlap: fraction of overlap in [0, 1).

    Returns:
        sorted starts (ints, pixels); the last window ends at ``size``.
    """
    interval = roi if roi == size else max(int(roi * (1 - overlap)), 1)
    num = int(math.ceil(float(size) / interval))
    n = next((d + 1 for d in range(num) if d * interval + roi >= size), 1)
    return [min(d * interval, size - roi) for d in range(n)]


# ------------------------------------------------------------------------------------------ window planning
@dataclass(frozen=True)
class _WindowGrid:
    """MONAI's window grid over one slide level and its cut into output tiles (pixels of that level).

    The plane is padded symmetrically to at least ``roi`` (``padded``, ``pad``); windows start at
    ``starts_y x starts_x`` in padded-plane pixels; ``importance`` is MONAI's ``(rh, rw)`` float32 weight map.
    """

    shape: tuple[int, int]
    padded: tuple[int, int]
    pad: tuple[int, int]
    roi: tuple[int, int]
    overlap: tuple[float, float]
    starts_y: np.ndarray
    starts_x: np.ndarray
    tile: int
    downsample: float
    importance: torch.Tensor

    @property
    def n_tiles(self) -> tuple[int, int]:
        """Output tiles per column and per row."""
        return math.ceil(self.padded[0] / self.tile), math.ceil(self.padded[1] / self.tile)


def _plan_windows(shape, downsample, roi_size, overlap, mode, sigma_scale, activation, tile_size) -> _WindowGrid:
    """Check the window settings and place the windows as MONAI does (see :func:`streamed_sliding_window_inference`)."""
    from monai.data.utils import compute_importance_map

    H, W = shape
    rh, rw = (int(roi_size),) * 2 if np.isscalar(roi_size) else tuple(int(r) for r in roi_size)
    ov = (float(overlap),) * 2 if np.isscalar(overlap) else tuple(float(o) for o in overlap)
    if min(rh, rw) < 1 or any(not 0 <= o < 1 for o in ov):
        raise ValueError(f"roi_size must be positive and overlap in [0, 1), got roi_size={roi_size}, overlap={overlap}")
    if mode not in ("constant", "gaussian"):
        raise ValueError(f"mode must be 'constant' or 'gaussian', got {mode!r}")
    if activation not in (None, "softmax", "sigmoid"):
        raise ValueError(f"activation must be None, 'softmax' or 'sigmoid', got {activation!r}")
    T = int(tile_size)
    if T < max(rh, rw):
        raise ValueError(f"tile_size={tile_size} must be >= roi_size {(rh, rw)}")
    # MONAI geometry: pad to at least roi (symmetric), windows over the padded plane
    Hp, Wp = max(H, rh), max(W, rw)
    imp = compute_importance_map((rh, rw), mode=mode, sigma_scale=sigma_scale, device="cpu", dtype=torch.float32)
    return _WindowGrid(
        shape=(H, W), padded=(Hp, Wp), pad=((Hp - H) // 2, (Wp - W) // 2), roi=(rh, rw), overlap=ov,
        starts_y=np.asarray(window_starts(Hp, rh, ov[0])), starts_x=np.asarray(window_starts(Wp, rw, ov[1])),
        tile=T, downsample=downsample, importance=imp.to(torch.float32),
    )


@dataclass
class _Tile:
    """One output tile ``[y0, y1) x [x0, x1)`` (padded plane) and the buffer its windows fill.

    The buffer spans ``[y0, by1) x [x0, bx1)`` (the tile plus the reach of its windows); ``out`` is the part of
    it inside the unpadded output ``(oy0, ox0, oy1, ox1)``, at offset ``off`` in the buffer; ``touched`` are the
    tiles the buffer overlaps.
    """

    index: tuple[int, int]
    box: tuple[int, int, int, int]
    wins: list[tuple[int, int]]
    end: tuple[int, int] = (0, 0)
    out: tuple[int, int, int, int] = (0, 0, 0, 0)
    off: tuple[int, int] = (0, 0)
    touched: set = field(default_factory=set)

    def buffer_region(self) -> tuple[slice, slice]:
        """Rows and columns of the buffer that lie inside the output region ``out``."""
        oy0, ox0, oy1, ox1 = self.out
        return slice(self.off[0], self.off[0] + oy1 - oy0), slice(self.off[1], self.off[1] + ox1 - ox0)


def _tile_windows(grid: _WindowGrid, ti: int, tj: int, counter: BoxCounter | None, min_tissue: float) -> _Tile:
    """The windows whose top-left corner lies in tile ``(ti, tj)``, less those without enough tissue."""
    T, (Hp, Wp), (rh, rw), ds = grid.tile, grid.padded, grid.roi, grid.downsample
    ty0, tx0 = ti * T, tj * T
    ty1, tx1 = min(ty0 + T, Hp), min(tx0 + T, Wp)
    sy, sx = grid.starts_y, grid.starts_x
    wy, wx = sy[(sy >= ty0) & (sy < ty1)], sx[(sx >= tx0) & (sx < tx1)]
    wins = [(int(y), int(x)) for y in wy for x in wx]
    if counter is not None and wins:
        arr = np.asarray(wins)
        y0, x0 = (arr[:, 0] - grid.pad[0]) * ds, (arr[:, 1] - grid.pad[1]) * ds
        n, area = counter.count(y0, x0, y0 + rh * ds, x0 + rw * ds)
        frac = n / area
        wins = [w for w, f in zip(wins, frac) if f > 0 and f > min_tissue]
    return _Tile(index=(ti, tj), box=(ty0, tx0, ty1, tx1), wins=wins)


def _place_tile(grid: _WindowGrid, tile: _Tile) -> None:
    """Fill in the buffer extent, the output region and the touched tiles of ``tile``."""
    (ti, tj), (ty0, tx0, ty1, tx1), wins = tile.index, tile.box, tile.wins
    (rh, rw), (H, W), (pad_y, pad_x), T = grid.roi, grid.shape, grid.pad, grid.tile
    n_ty, n_tx = grid.n_tiles
    by1 = max(ty1, max((y + rh for y, _ in wins), default=ty1))
    bx1 = max(tx1, max((x + rw for _, x in wins), default=tx1))
    # region of the buffer inside the (unpadded) output arrays
    oy0, ox0 = max(ty0 - pad_y, 0), max(tx0 - pad_x, 0)
    oy1, ox1 = min(by1 - pad_y, H), min(bx1 - pad_x, W)
    tile.end, tile.out = (by1, bx1), (oy0, ox0, oy1, ox1)
    tile.off = (oy0 + pad_y - ty0, ox0 + pad_x - tx0)
    tile.touched = {(a, b) for a in range(ti, min(n_ty, math.ceil(by1 / T)))
                    for b in range(tj, min(n_tx, math.ceil(bx1 / T)))}


# ------------------------------------------------------------------------------------------ per-tile inference
def _window_reader(slide: Slide, level: int, grid: _WindowGrid, cval: float, intensity_scale: float | None,
                   buf: torch.Tensor) -> Callable[[int, int, int, int], torch.Tensor]:
    """``read(y0, x0, h, w)``: input in padded-plane pixels -> ``(C, h, w)`` float32 view of ``buf`` (cval outside)."""
    (pad_y, pad_x), ds = grid.pad, grid.downsample

    def read(y0: int, x0: int, h: int, w: int) -> torch.Tensor:
        """One input region, read from the slide into the reused buffer."""
        yi, xi = y0 - pad_y, x0 - pad_x
        arr = read_region(slide, (int(round(yi * ds)), int(round(xi * ds))), (h, w), level, fill=cval)
        t = buf[:, :h, :w]
        t.copy_(torch.from_numpy(np.ascontiguousarray(arr)))
        return t.mul_(intensity_scale) if intensity_scale is not None else t

    return read


def _window_runner(predictor: Callable[[torch.Tensor], torch.Tensor], device: torch.device, roi: tuple[int, int],
                   activation: str | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``run(batch)``: ``(B, C, rh, rw)`` windows -> ``(B, K, rh, rw)`` or ``(B, K, 1, 1)`` float32 CPU outputs."""
    rh, rw = roi

    def run(batch: torch.Tensor) -> torch.Tensor:
        """The predictor on one batch, shape-checked and activated."""
        p = predictor(batch.to(device)).detach().to("cpu", torch.float32)
        if p.ndim == 2:
            p = p[:, :, None, None]
        elif p.ndim != 4 or tuple(p.shape[2:]) != (rh, rw):
            raise ValueError(
                f"predictor output shape {tuple(p.shape)} for windows {tuple(batch.shape)}: expected (B, K, {rh}, "
                f"{rw}) or (B, K)"
            )
        if activation is not None:  # checked by _plan_windows: "softmax" or "sigmoid"
            p = torch.softmax(p, dim=1) if activation == "softmax" else torch.sigmoid(p)
        return p

    return run


def _infer_tile(tile: _Tile, acc: torch.Tensor, wsum: torch.Tensor, grid: _WindowGrid, read, run,
                sw_batch_size: int, pad_batches: bool) -> None:
    """Read the tile + margin once, run its windows in batches, add weighted outputs into ``acc`` / ``wsum``."""
    (rh, rw), imp, wins = grid.roi, grid.importance, tile.wins
    ty0, tx0 = tile.box[:2]
    by1, bx1 = tile.end
    iy0, ix0 = min(y for y, _ in wins), min(x for _, x in wins)
    inp = read(iy0, ix0, by1 - iy0, bx1 - ix0)  # (C, h, w): tile + margin, read once
    for b in range(0, len(wins), sw_batch_size):
        chunk = wins[b : b + sw_batch_size]
        batch = torch.stack([inp[:, y - iy0 : y - iy0 + rh, x - ix0 : x - ix0 + rw] for y, x in chunk])
        if pad_batches and len(chunk) < sw_batch_size:  # constant input shape (see pad_batches)
            batch = torch.cat([batch, batch.new_zeros((sw_batch_size - len(chunk),) + batch.shape[1:])])
        p = run(batch)
        for k, (y, x) in enumerate(chunk):
            acc[:, y - ty0 : y - ty0 + rh, x - tx0 : x - tx0 + rw] += p[k] * imp
            wsum[y - ty0 : y - ty0 + rh, x - tx0 : x - tx0 + rw] += imp


# ------------------------------------------------------------------------------------------ accumulation in Zarr
class _ZarrAccumulator:
    """The on-disk sums ``prob`` ``(K, H, W)`` and ``weight`` ``(H, W)`` and the reused tile buffers.

    Buffers are sized for the largest tile, allocated once and reused: re-allocating tens of MB per tile makes
    glibc's heap grow with the number of tiles (dynamic mmap threshold), i.e. with the slide size. ``dirty`` are
    the tiles holding un-normalised sums from earlier tiles' margins.
    """

    def __init__(self, root, grid: _WindowGrid, n_out: int, chunk_size: int):
        (H, W), (rh, rw), T, c = grid.shape, grid.roi, grid.tile, int(chunk_size)
        self.grid = grid
        self.prob = _create_array(root, "prob", (n_out, H, W), (n_out, min(c, H), min(c, W)))
        self.weight = _create_array(root, "weight", (H, W), (min(c, H), min(c, W)))
        self.buf_acc = torch.empty((n_out, T + rh, T + rw), dtype=torch.float32)
        self.buf_w = torch.empty((T + rh, T + rw), dtype=torch.float32)
        self.dirty: set[tuple[int, int]] = set()

    def start(self, tile: _Tile) -> tuple[torch.Tensor, torch.Tensor]:
        """Zeroed ``(K, h, w)`` / ``(h, w)`` buffer views for ``tile``, holding the sums pending in Zarr."""
        ty0, tx0 = tile.box[:2]
        by1, bx1 = tile.end
        oy0, ox0, oy1, ox1 = tile.out
        ys, xs = tile.buffer_region()
        acc = self.buf_acc[:, : by1 - ty0, : bx1 - tx0].zero_()
        wsum = self.buf_w[: by1 - ty0, : bx1 - tx0].zero_()
        if tile.touched & self.dirty:
            acc[:, ys, xs] = torch.from_numpy(np.asarray(self.prob[:, oy0:oy1, ox0:ox1]))
            wsum[ys, xs] = torch.from_numpy(np.asarray(self.weight[oy0:oy1, ox0:ox1]))
        return acc, wsum

    def finish(self, tile: _Tile, acc: torch.Tensor, wsum: torch.Tensor) -> None:
        """Write the buffer back: the tile itself is final, so it is normalised; margins stay as sums."""
        ty0, tx0, ty1, tx1 = tile.box
        oy0, ox0, oy1, ox1 = tile.out
        ys, xs = tile.buffer_region()
        th, tw = ty1 - ty0, tx1 - tx0
        self.weight[oy0:oy1, ox0:ox1] = wsum[ys, xs].numpy()
        acc[:, :th, :tw].div_(wsum[:th, :tw].clamp_(min=1e-30))  # acc is 0 wherever no window ran
        self.prob[:, oy0:oy1, ox0:ox1] = acc[:, ys, xs].numpy()
        self.dirty.discard(tile.index)
        if tile.wins:
            self.dirty |= tile.touched - {tile.index}


# ------------------------------------------------------------------------------------------ the whole run
def streamed_sliding_window_inference(
    image: Slide | np.ndarray | torch.Tensor,
    predictor: Callable[[torch.Tensor], torch.Tensor],
    roi_size: int | Sequence[int],
    sw_batch_size: int = 16,
    overlap: float | Sequence[float] = 0.25,
    mode: str = "constant",
    sigma_scale: float | Sequence[float] = 0.125,
    out: str | os.PathLike | None = None,
    level: int = 0,
    tile_size: int = 2048,
    chunk_size: int = 512,
    intensity_scale: float | None = None,
    activation: str | None = None,
    tissue: tuple[np.ndarray, float] | None = None,
    min_tissue: float = 0.0,
    cval: float = 0.0,
    device: torch.device | str | None = None,
    pad_batches: bool = True,
    progress: bool = False,
):
    """Sliding-window inference over a slide (or array), tile by tile, into a Zarr store.

    Args:
        image: a :class:`medpipe.data.wsi.Slide` (read at ``level``), or an in-memory ``(C, H, W)`` array or
            tensor (any dtype; converted to float32 per window).
        predictor: callable or ``nn.Module`` mapping a ``(B, C, h, w)`` float32 tensor to ``(B, K, h, w)``
            (dense) or ``(B, K)`` (patch classifier: painted over the window). Run under
            ``torch.inference_mode()``; put modules in ``eval()`` mode yourself.
        roi_size: window ``(h, w)`` or int, pixels at ``level``.
        sw_batch_size: windows per predictor call.
        overlap: window overlap fraction in [0, 1) (per axis or one value), as MONAI.
        mode: ``"constant"`` or ``"gaussian"`` blending, as MONAI.
        sigma_scale: gaussian sigma as a fraction of ``roi_size`` (MONAI's default 0.125).
        out: Zarr group path to create (overwritten); ``None`` keeps it in memory (small images only).
        level: pyramid level to read (Slide input only).
        tile_size: side of the output tiles processed at once, pixels; must be >= ``roi_size``. Memory is
            about ``(C + K + 1) * (tile_size + roi)**2 * 4`` bytes plus the batch.
        chunk_size: side of the Zarr chunks; ``tile_size`` should be a multiple of it.
        intensity_scale: multiply input windows by this after conversion to float32 (e.g. ``1/255`` for uint8
            slides); ``None`` = no scaling. Nothing else is done to intensities.
        activation: ``None`` (blend raw outputs, exactly as MONAI), ``"softmax"`` (over channels) or
            ``"sigmoid"``, applied to each window's output before blending.
        tissue: ``(mask, downsample)`` tissue mask (bool, level-0 downsample) as returned by
            :func:`medpipe.data.patches.tissue_mask`; windows with tissue fraction <= ``min_tissue`` are skipped.
        min_tissue: see ``tissue``.
        cval: value of the padding outside the image (MONAI's ``cval``), before ``intensity_scale``.
        device: device for the predictor's input (default: CPU); outputs are brought back to the CPU.
        pad_batches: complete each tile's last, partial batch with zero windows (outputs discarded), so the
            predictor always sees ``sw_batch_size`` windows. oneDNN/cuDNN build and cache kernels per input
            shape; with a different remainder batch per tile, CPU memory was measured creeping with slide size
            (+170 MB over 60 LeNet calls); constant shapes keep it flat. Costs < 1 batch per tile.
        progress: tqdm progress bar over tiles.

    Returns:
        the Zarr group: ``group["prob"]`` ``(K, H, W)`` float32, ``group["weight"]`` ``(H, W)`` float32;
        ``group.attrs`` hold the settings and window counts (``n_windows``, ``n_windows_run``, ``seconds``).

    Raises:
        ValueError: bad ``roi_size``/``overlap``/``mode``/``activation``; ``tile_size < roi_size``; predictor
            output shape neither ``(B, K, h, w)`` matching the window nor ``(B, K)``.
    """
    zarr = _zarr()
    t_start = time.perf_counter()
    slide = image if isinstance(image, Slide) else slide_from_array(image)
    if not isinstance(image, Slide):
        level = 0
    grid = _plan_windows(slide.level_dimensions[level], slide.level_downsamples[level], roi_size, overlap, mode,
                         sigma_scale, activation, tile_size)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    (rh, rw), T = grid.roi, grid.tile
    buf_in = torch.empty((slide.channels, T + rh, T + rw), dtype=torch.float32)  # reused, see _ZarrAccumulator
    read = _window_reader(slide, level, grid, cval, intensity_scale, buf_in)
    run = _window_runner(predictor, dev, grid.roi, activation)
    counter = BoxCounter(*tissue) if tissue is not None else None

    with torch.inference_mode():
        n_out = run(torch.full((1, slide.channels, rh, rw), float(cval) * (intensity_scale or 1.0))).shape[1]
        root = zarr.open_group(store=str(out) if out is not None else zarr.storage.MemoryStore(), mode="w")
        sums = _ZarrAccumulator(root, grid, n_out, chunk_size)
        n_run = _stream_tiles(grid, sums, read, run, counter, min_tissue, sw_batch_size, pad_batches, progress)
    seconds = time.perf_counter() - t_start
    n_total = len(grid.starts_y) * len(grid.starts_x)
    root.attrs.update({
        "source": str(slide.path) if slide.path is not None else "array",
        "level": level, "roi_size": [rh, rw], "overlap": list(grid.overlap), "mode": mode,
        "sigma_scale": sigma_scale if np.isscalar(sigma_scale) else list(sigma_scale),
        "intensity_scale": intensity_scale, "activation": activation, "tile_size": T,
        "n_windows": n_total, "n_windows_run": n_run, "seconds": seconds,
    })
    logger.info("streamed inference on %s: %d/%d windows run (%.0f windows/s), output %s", slide.name, n_run,
                n_total, n_run / max(seconds, 1e-9), out or "in memory")
    return root


def _stream_tiles(grid: _WindowGrid, sums: _ZarrAccumulator, read, run, counter: BoxCounter | None,
                  min_tissue: float, sw_batch_size: int, pad_batches: bool, progress: bool) -> int:
    """Process the output tiles row-major (plan, infer, accumulate, write); returns the number of windows run."""
    n_ty, n_tx = grid.n_tiles
    tiles = [(i, j) for i in range(n_ty) for j in range(n_tx)]
    if progress:
        from tqdm.auto import tqdm

        tiles = tqdm(tiles, desc="tiles", unit="tile")
    n_run = 0
    for ti, tj in tiles:
        tile = _tile_windows(grid, ti, tj, counter, min_tissue)
        if not tile.wins and tile.index not in sums.dirty:
            continue  # background tile, nothing pending: stays 0 (no read, no write)
        _place_tile(grid, tile)
        acc, wsum = sums.start(tile)
        if tile.wins:
            _infer_tile(tile, acc, wsum, grid, read, run, sw_batch_size, pad_batches)
            n_run += len(tile.wins)
        sums.finish(tile, acc, wsum)
    return n_run


# ------------------------------------------------------------------------------------------------ heatmap
def render_heatmap(
    result,
    out_png: str | os.PathLike | None = None,
    channel: int = -1,
    max_size: int = 1024,
    slide: Slide | None = None,
    alpha: float = 0.5,
    style: str = "overlay",
) -> np.ndarray:
    """Low-resolution heatmap of one output channel, optionally over the slide, without loading full-res.

    The ``prob`` and ``weight`` arrays are read chunk-aligned block by block; each heatmap pixel is the mean
    probability over the ``f x f`` block's pixels where some window ran (``weight > 0``),
    ``f = ceil(max(H, W) / max_size)``; blocks where nothing ran count as 0. The slide background comes from
    :func:`medpipe.data.wsi.read_thumbnail` (coarsest level, tile by tile).

    Args:
        result: the Zarr group returned by :func:`streamed_sliding_window_inference`, or its path.
        out_png: where to write the RGB PNG (optional; parent folders are created).
        channel: output channel to show (default: the last, e.g. "malignant" of a 2-class model).
        max_size: largest side of the heatmap, pixels.
        slide: the slide the result came from, background of the ``"overlay"`` style (default: white).
        alpha: ``"overlay"`` style: opacity of the colour at probability 1 (it scales with the probability).
        style: ``"overlay"``: colour blended over the slide (or white) with opacity ``alpha * p``;
            ``"heatmap"``: the colour map itself (blue 0, yellow 0.5, red 1), white where nothing was inferred.

    Returns:
        ``(h, w, 3)`` uint8 RGB image, ``h = ceil(H / f)``, ``w = ceil(W / f)``.

    Raises:
        ValueError: unknown ``style``.
    """
    if style not in ("overlay", "heatmap"):
        raise ValueError(f"style must be 'overlay' or 'heatmap', got {style!r}")
    zarr = _zarr()
    from PIL import Image

    group = zarr.open_group(str(result), mode="r") if isinstance(result, (str, os.PathLike)) else result
    prob, weight = group["prob"], group["weight"]
    K, H, W = prob.shape
    ch = channel % K
    f = max(1, math.ceil(max(H, W) / max_size))
    step = f * max(1, prob.chunks[1] // f)
    heat = np.zeros((math.ceil(H / f), math.ceil(W / f)), np.float32)
    covered = np.zeros_like(heat, dtype=bool)
    for y in range(0, H, step):
        for x in range(0, W, step):
            blk = np.nan_to_num(np.asarray(prob[ch, y : y + step, x : x + step], dtype=np.float32))
            cov = (np.asarray(weight[y : y + step, x : x + step]) > 0).astype(np.float32)
            ph, pw = -blk.shape[0] % f, -blk.shape[1] % f
            if ph or pw:  # partial border blocks: zero-padded, and the padding is not covered
                blk, cov = np.pad(blk, ((0, ph), (0, pw))), np.pad(cov, ((0, ph), (0, pw)))
            hb, wb = blk.shape[0] // f, blk.shape[1] // f
            n = cov.reshape(hb, f, wb, f).sum(axis=(1, 3))
            s = (blk * cov).reshape(hb, f, wb, f).sum(axis=(1, 3))
            heat[y // f : y // f + hb, x // f : x // f + wb] = s / np.maximum(n, 1)
            covered[y // f : y // f + hb, x // f : x // f + wb] = n > 0
    heat = np.clip(heat, 0.0, 1.0)
    colour = _colormap(heat)
    if style == "heatmap":
        rgb = np.where(covered[..., None], colour, 255.0).astype(np.uint8)
    else:
        bg = np.full(heat.shape + (3,), 255.0, np.float32)
        if slide is not None:
            bg, _ = read_thumbnail(slide, max_size=max(heat.shape) * 2)
            bg = np.moveaxis(bg[:3] if bg.shape[0] >= 3 else np.repeat(bg[:1], 3, 0), 0, -1)
            bg = np.asarray(Image.fromarray(bg).resize((heat.shape[1], heat.shape[0]), Image.BILINEAR), np.float32)
        a = (alpha * heat)[..., None]
        rgb = np.clip((1 - a) * bg + a * colour, 0, 255).astype(np.uint8)
    if out_png is not None:
        Path(out_png).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(out_png)
    return rgb


def _colormap(v: np.ndarray) -> np.ndarray:
    """Blue -> yellow -> red ramp for values in [0, 1], ``(..., 3)`` float 0-255."""
    stops = np.array([[0.0, 0, 0, 255], [0.5, 255, 255, 0], [1.0, 255, 0, 0]], np.float32)
    return np.stack([np.interp(v, stops[:, 0], stops[:, i]) for i in (1, 2, 3)], axis=-1)
