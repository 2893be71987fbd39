"""Patch extraction from whole-slide images: tissue detection, grid or random sampling, labels, PNG + CSV.

The seed project's ``split_oneTomany`` loaded a whole slide and cut it into 28 x 28 patches in memory. Here
the slide is never loaded whole:

1. :func:`tissue_mask` thresholds a low-resolution rendering (Otsu 1979) to find tissue;
2. :func:`iter_patch_records` walks the patch grid (or samples it at random, seeded) row by row, keeping
   patches whose tissue fraction reaches ``min_tissue`` and labelling them from an optional annotation mask;
3. :func:`iter_patch_arrays` reads the kept patches, a strip of neighbours per read; :func:`write_patches`
   writes them as PNGs with a CSV manifest; :class:`PatchDataset` streams them to a ``DataLoader``.

Coordinates: records carry ``x``, ``y`` = column, row of the patch's top-left pixel **in the level-0 frame**
(MONAI's ``location`` convention, and that of the IDC patch file names), plus the ``level`` the patch is read at;
the patch is ``patch_size`` pixels of that level.

CLI::

    python -m medpipe.data.patches SLIDE --patch-size 28 --stride 28 --level 0 --out DIR \
        [--min-tissue 0.5] [--mask MASK.png] [--random N --seed S]
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from medpipe.data.wsi import Slide, open_slide, read_region, read_thumbnail, resolve_level

logger = logging.getLogger("medpipe.data.patches")  # same name when run as `python -m`

__all__ = [
    "PatchRecord",
    "tissue_mask",
    "grid_patch_coordinates",
    "iter_patch_records",
    "iter_patch_arrays",
    "extract_patches",
    "write_patches",
    "read_manifest",
    "PatchDataset",
]

MANIFEST_FIELDS = ("slide", "x", "y", "level", "label", "tissue", "path")


@dataclass
class PatchRecord:
    """One patch: where it is and what it is.

    Attributes:
        slide: slide file name (or ``"array"``).
        x: column of the top-left pixel, level-0 frame.
        y: row of the top-left pixel, level-0 frame.
        level: pyramid level the patch is read at.
        label: annotation label (``None`` without a label mask).
        tissue: tissue fraction of the patch in [0, 1] (``None`` when tissue filtering is off).
        path: PNG path relative to the output folder, once written.
    """

    slide: str
    x: int
    y: int
    level: int
    label: int | None = None
    tissue: float | None = None
    path: str | None = None


# ------------------------------------------------------------------------------------------------ tissue
def tissue_mask(
    slide: Slide,
    level: int | None = None,
    channel: str = "saturation",
    max_size: int = 2048,
    min_threshold: float = 0.05,
) -> tuple[np.ndarray, float]:
    """Foreground (tissue) mask by Otsu's threshold on a low-resolution rendering of the slide.

    H&E and IHC tissue is coloured while glass is near-white and unsaturated, so the default thresholds the
    HSV saturation ``(max - min) / max`` of RGB; ``channel="grey"`` thresholds darkness ``1 - mean(RGB)/255``
    instead (for weakly stained or grey images). The Otsu (1979) threshold is not allowed below
    ``min_threshold``: on a slide that is almost all glass Otsu would otherwise split the background noise.

    Args:
        slide: an opened slide (RGB, 0-255).
        level: pyramid level to render (default: the coarsest); it is shrunk further to ``max_size`` pixels
            per side, tile by tile (:func:`medpipe.data.wsi.read_thumbnail`).
        channel: ``"saturation"`` (default) or ``"grey"``.
        max_size: largest side of the mask in pixels.
        min_threshold: floor of the threshold, on the [0, 1] scale of the channel.

    Returns:
        ``(mask, downsample)``: ``(h, w)`` bool array (True = tissue) and its downsample factor relative to
        level 0 (mask pixel ``(i, j)`` covers level-0 pixels ``[i*d, (i+1)*d) x [j*d, (j+1)*d)``).

    Raises:
        ValueError: unknown ``channel``.

    References:
        N. Otsu, "A threshold selection method from gray-level histograms", IEEE Trans. SMC 9(1), 1979.
    """
    from skimage.filters import threshold_otsu

    if channel not in ("saturation", "grey"):
        raise ValueError(f"tissue_mask channel must be 'saturation' or 'grey', got {channel!r}")
    thumb, ds = read_thumbnail(slide, max_size=max_size, level=level)
    rgb = thumb[:3].astype(np.float32) if thumb.shape[0] >= 3 else np.repeat(thumb[:1], 3, 0).astype(np.float32)
    if channel == "saturation":
        mx, mn = rgb.max(0), rgb.min(0)
        signal = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    else:
        signal = 1.0 - rgb.mean(0) / 255.0
    thr = float(threshold_otsu(signal)) if float(signal.max() - signal.min()) > 1e-6 else min_threshold
    thr = max(thr, min_threshold)
    mask = signal > thr
    logger.info("tissue mask of %s: %s threshold %.3f, %.1f%% tissue, downsample %.2f",
                slide.name, channel, thr, 100 * mask.mean(), ds)
    return mask, ds


# ------------------------------------------------------------------------------------------------ grid
def grid_patch_coordinates(
    slide_shape: Sequence[int],
    patch_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    offset: int | Sequence[int] = 0,
    drop_incomplete: bool = True,
) -> np.ndarray:
    """Top-left corners of a regular patch grid, row-major.

    Args:
        slide_shape: ``(H, W)`` of the image (at the level the patches are cut from), pixels.
        patch_size: patch ``(h, w)`` or one int.
        stride: step ``(sy, sx)`` between patches (default ``patch_size``: no overlap, no gap).
        offset: ``(y, x)`` of the first patch.
        drop_incomplete: drop patches that would cross the right/bottom border (default, as the seed did); if
            False they are kept and read padded.

    Returns:
        ``(N, 2)`` int64 array of ``(y, x)`` in the pixels of ``slide_shape``.

    Raises:
        ValueError: non-positive ``patch_size`` or ``stride``.
    """
    ph, pw = _pair(patch_size, "patch_size")
    sy, sx = _pair(stride if stride is not None else (ph, pw), "stride")
    oy, ox = _pair(offset, "offset", allow_zero=True)
    ys, xs = _axis_starts(slide_shape[0], ph, sy, oy, drop_incomplete), _axis_starts(
        slide_shape[1], pw, sx, ox, drop_incomplete
    )
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([yy.ravel(), xx.ravel()], axis=1).astype(np.int64)


def _axis_starts(size: int, patch: int, stride: int, offset: int, drop_incomplete: bool) -> np.ndarray:
    last = size - patch if drop_incomplete else size - 1
    return np.arange(offset, last + 1, stride, dtype=np.int64) if last >= offset else np.zeros(0, np.int64)


def _pair(v, name: str, allow_zero: bool = False) -> tuple[int, int]:
    t = (int(v), int(v)) if np.isscalar(v) else tuple(int(i) for i in v)
    if len(t) != 2 or any(i < 0 or (i == 0 and not allow_zero) for i in t):
        raise ValueError(f"{name} must be a positive int or (y, x) pair, got {v!r}")
    return t  # type: ignore[return-value]


class _BoxCounter:
    """Counts of ``mask`` pixels under level-0 boxes, O(1) per box via a summed-area table."""

    def __init__(self, mask: np.ndarray, downsample: float):
        self.ds = float(downsample)
        self.shape = mask.shape
        sat = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
        np.cumsum(np.cumsum(mask, 0, dtype=np.int64), 1, out=sat[1:, 1:])
        self.sat = sat

    def bounds(self, y0, x0, y1, x1):
        h, w = self.shape
        r0 = np.clip(np.floor(y0 / self.ds).astype(np.int64), 0, h)
        c0 = np.clip(np.floor(x0 / self.ds).astype(np.int64), 0, w)
        r1 = np.clip(np.maximum(np.ceil(y1 / self.ds).astype(np.int64), r0 + 1), 0, h)
        c1 = np.clip(np.maximum(np.ceil(x1 / self.ds).astype(np.int64), c0 + 1), 0, w)
        return r0, c0, r1, c1

    def count(self, y0, x0, y1, x1) -> tuple[np.ndarray, np.ndarray]:
        r0, c0, r1, c1 = self.bounds(y0, x0, y1, x1)
        s = self.sat
        return s[r1, c1] - s[r0, c1] - s[r1, c0] + s[r0, c0], (r1 - r0) * (c1 - c0)


class _Labeller:
    """Patch labels from an integer label image at some downsample: ``majority`` or ``centre`` rule."""

    def __init__(self, labels: np.ndarray, downsample: float, rule: str):
        if rule not in ("majority", "centre"):
            raise ValueError(f"label_rule must be 'majority' or 'centre', got {rule!r}")
        self.labels, self.ds, self.rule = labels, float(downsample), rule
        self.values = np.unique(labels)
        if rule == "majority":  # one summed-area table per label value (label images have few values)
            self.counters = [_BoxCounter(labels == v, downsample) for v in self.values]

    def __call__(self, y0, x0, y1, x1) -> np.ndarray:
        if self.rule == "centre":
            r = np.clip(np.floor((y0 + y1) / 2 / self.ds).astype(np.int64), 0, self.labels.shape[0] - 1)
            c = np.clip(np.floor((x0 + x1) / 2 / self.ds).astype(np.int64), 0, self.labels.shape[1] - 1)
            return self.labels[r, c].astype(np.int64)
        counts = np.stack([cnt.count(y0, x0, y1, x1)[0] for cnt in self.counters])  # (n_values, N)
        return self.values[np.argmax(counts, axis=0)].astype(np.int64)  # ties -> smallest label value


def _load_label_mask(mask, slide: Slide, mask_downsample: float | None) -> tuple[np.ndarray, float]:
    if isinstance(mask, (str, os.PathLike)):
        from PIL import Image

        path = Path(mask)
        if not path.exists():
            raise FileNotFoundError(f"label mask not found: {path}")
        with Image.open(path) as im:
            arr = np.asarray(im)
        name = str(path)
    else:
        arr, name = np.asarray(mask), "label mask array"
    if arr.ndim == 3:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D integer label image, got shape {arr.shape}")
    h0, w0 = slide.level_dimensions[0]
    if mask_downsample is None:
        dy, dx = h0 / arr.shape[0], w0 / arr.shape[1]
        if abs(dy - dx) > 0.02 * max(dy, dx) + 1.0 / min(arr.shape):
            raise ValueError(
                f"{name}: shape (h, w)={arr.shape} does not have the aspect ratio of {slide.name} "
                f"(level 0 (h, w)={(h0, w0)}); pass mask_downsample explicitly"
            )
        mask_downsample = 0.5 * (dy + dx)
    return arr, float(mask_downsample)


# ------------------------------------------------------------------------------------------------ records
def iter_patch_records(
    slide: Slide,
    patch_size: int | Sequence[int] = 28,
    stride: int | Sequence[int] | None = None,
    level: int | None = 0,
    mpp: float | None = None,
    min_tissue: float = 0.5,
    tissue: tuple[np.ndarray, float] | None = None,
    label_mask: str | os.PathLike | np.ndarray | None = None,
    mask_downsample: float | None = None,
    label_rule: str = "majority",
    ignore_labels: Sequence[int] = (),
    random: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> Iterator[PatchRecord]:
    """Yield the patches of a slide that pass the tissue filter, with labels, without reading pixels.

    Args:
        slide: an opened slide.
        patch_size: ``(h, w)`` (or int) at ``level``, pixels. The seed used 28.
        stride: grid step at ``level`` (default ``patch_size``).
        level: pyramid level to cut patches from; or give ``mpp`` (micrometres per pixel) instead.
        mpp: resolution in micrometres per pixel (see :func:`medpipe.data.wsi.resolve_level`).
        min_tissue: minimum tissue fraction in [0, 1] per patch; ``0`` disables tissue filtering (no mask
            computed). The fraction is measured on the tissue mask, at its resolution.
        tissue: a precomputed ``(mask, downsample)`` from :func:`tissue_mask` (default: computed here).
        label_mask: integer label image (array or PNG path) covering the whole slide at some downsample, e.g.
            the IDC ``patch_label_mask.png`` (0 background, 1 non-IDC, 2 IDC).
        mask_downsample: level-0 pixels per label-mask pixel (default: inferred from the shapes).
        label_rule: ``"majority"`` (most frequent label under the patch; ties go to the smaller value) or
            ``"centre"`` (label at the patch centre).
        ignore_labels: drop patches whose label is one of these (e.g. ``(0,)`` for unannotated background).
        random: sample this many patches at random from the grid (without replacement) instead of yielding
            the whole grid; deterministic for a given ``seed``; yielded sorted by ``(y, x)``.
        seed: seed of ``numpy.random.default_rng`` for ``random``.
        progress: show a tqdm progress bar over grid rows.

    Yields:
        :class:`PatchRecord` in row-major order of the grid (``path`` unset).

    Raises:
        ValueError: bad ``patch_size``/``stride``/``min_tissue``/``label_rule``; label mask shape mismatch.
        FileNotFoundError: ``label_mask`` path missing.
    """
    level = resolve_level(slide, level=None if mpp is not None else level, mpp=mpp)
    if not 0.0 <= float(min_tissue) <= 1.0:
        raise ValueError(f"min_tissue must be in [0, 1], got {min_tissue}")
    ph, pw = _pair(patch_size, "patch_size")
    sy, sx = _pair(stride if stride is not None else (ph, pw), "stride")
    lh, lw = slide.level_dimensions[level]
    ds = slide.level_downsamples[level]
    ys, xs = _axis_starts(lh, ph, sy, 0, True), _axis_starts(lw, pw, sx, 0, True)
    counter = None
    if min_tissue > 0:
        mask, mds = tissue if tissue is not None else tissue_mask(slide)
        counter = _BoxCounter(mask, mds)
    labeller = None
    if label_mask is not None:
        labeller = _Labeller(*_load_label_mask(label_mask, slide, mask_downsample), rule=label_rule)
    ignore = np.asarray(list(ignore_labels), dtype=np.int64)

    def select(yl: np.ndarray, xl: np.ndarray) -> Iterator[PatchRecord]:
        y0, x0 = np.round(yl * ds).astype(np.int64), np.round(xl * ds).astype(np.int64)
        y1, x1 = y0 + ph * ds, x0 + pw * ds
        keep = np.ones(len(y0), bool)
        frac = None
        if counter is not None:
            n, area = counter.count(y0, x0, y1, x1)
            frac = n / area
            keep &= frac >= min_tissue
        lab = None
        if labeller is not None:
            lab = labeller(y0, x0, y1, x1)
            if ignore.size:
                keep &= ~np.isin(lab, ignore)
        for i in np.flatnonzero(keep):
            yield PatchRecord(
                slide.name, int(x0[i]), int(y0[i]), level,
                None if lab is None else int(lab[i]), None if frac is None else round(float(frac[i]), 4),
            )

    if random is None:
        rows = _tqdm(ys, progress, desc=f"patches {slide.name}", unit="row")
        for y in rows:
            yield from select(np.full(len(xs), y, np.int64), xs)
        return
    yield from sorted(_sample(select, ys, xs, int(random), seed), key=lambda r: (r.y, r.x))


_PERMUTE_MAX = 4_000_000  # grids up to this many cells are sampled by a full permutation (32 MB of indices)


def _sample(select: Callable, ys: np.ndarray, xs: np.ndarray, n: int, seed: int) -> list[PatchRecord]:
    """Draw ``n`` distinct valid grid cells: a seeded permutation scanned in chunks (rejection sampling with
    a seen-set past 4M cells, so memory does not grow with the slide)."""
    rng = np.random.default_rng(seed)
    total = len(ys) * len(xs)
    out: list[PatchRecord] = []
    if total == 0 or n <= 0:
        return out
    chunk = max(4 * n, 1024)
    if total <= _PERMUTE_MAX:
        order = rng.permutation(total)
        for start in range(0, total, chunk):
            idx = order[start : start + chunk]
            out.extend(select(ys[idx // len(xs)], xs[idx % len(xs)]))
            if len(out) >= n:
                break
        if len(out) < n:
            logger.warning("random sampling: only %d grid patches pass the filters, %d requested", len(out), n)
        return out[:n]  # select() keeps the permutation order, so these are the first n valid draws
    seen: set[int] = set()
    for _ in range(50):
        draws = rng.integers(0, total, size=chunk)
        # first occurrence of each draw, in draw order: np.unique alone would sort the cells, and taking the
        # first n valid ones would then favour the top rows of the slide
        _, first = np.unique(draws, return_index=True)
        idx = np.array([i for i in draws[np.sort(first)].tolist() if i not in seen], dtype=np.int64)
        seen.update(idx.tolist())
        out.extend(select(ys[idx // len(xs)], xs[idx % len(xs)]))
        if len(out) >= n:
            return out[:n]
    logger.warning("random sampling found %d of %d requested patches with enough tissue", len(out), n)
    return out


def _tqdm(it, enabled: bool, **kw):
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, **kw)


# ------------------------------------------------------------------------------------------------ pixels
def iter_patch_arrays(
    slide: Slide,
    records: Iterable[PatchRecord],
    patch_size: int | Sequence[int],
    max_pixels: int = 1 << 22,
    min_density: float = 1 / 16,
) -> Iterator[tuple[PatchRecord, np.ndarray]]:
    """Read the pixels of ``records``, many patches per read: consecutive records are gathered into bands.

    Consecutive records at the same level are read as one window (their bounding box) as long as the window
    stays under ``max_pixels`` and the patches cover at least ``min_density`` of it; in grid order that is a
    band of several patch rows, so each compressed slide tile is decoded about once instead of once per patch
    row. Memory: one window of at most ``max_pixels`` pixels (12 MiB for RGB at the default).

    Args:
        slide: the opened slide the records come from.
        records: patch records (any order; grid order reads fastest).
        patch_size: ``(h, w)`` at each record's level.
        max_pixels: largest window read at once, pixels at the level.
        min_density: smallest fraction of a window covered by patches (sparse records are read in smaller
            windows rather than one large mostly unused one).

    Yields:
        ``(record, patch)`` in the order of ``records``, ``patch`` a ``(C, h, w)`` ``uint8`` array; pixels
        outside the slide are 255 (white glass).
    """
    ph, pw = _pair(patch_size, "patch_size")
    group: list[tuple[PatchRecord, int, int]] = []  # (record, y, x at its level)
    box = [0, 0, 0, 0]  # y0, x0, y1, x1 at the level

    def flush():
        level = group[0][0].level
        ds = slide.level_downsamples[level]
        y0, x0, y1, x1 = box
        win = read_region(slide, (int(round(y0 * ds)), int(round(x0 * ds))), (y1 - y0, x1 - x0), level, fill=255)
        for r, ly, lx in group:
            yield r, win[:, ly - y0 : ly - y0 + ph, lx - x0 : lx - x0 + pw]

    for rec in records:
        ds = slide.level_downsamples[rec.level]
        ly, lx = int(round(rec.y / ds)), int(round(rec.x / ds))
        if group:
            y0, x0 = min(box[0], ly), min(box[1], lx)
            y1, x1 = max(box[2], ly + ph), max(box[3], lx + pw)
            area = (y1 - y0) * (x1 - x0)
            if rec.level != group[0][0].level or area > max_pixels or (len(group) + 1) * ph * pw < min_density * area:
                yield from flush()
                group = []
            else:
                box[:] = [y0, x0, y1, x1]
        if not group:
            box[:] = [ly, lx, ly + ph, lx + pw]
        group.append((rec, ly, lx))
    if group:
        yield from flush()


def write_patches(
    slide: Slide,
    records: Iterable[PatchRecord],
    out_dir: str | os.PathLike,
    patch_size: int | Sequence[int],
    manifest: str = "manifest.csv",
    progress: bool = False,
) -> Path:
    """Write patches as PNG files plus a CSV manifest, streaming (constant memory).

    Files go to ``out_dir/<label>/<slide stem>_x<x>_y<y>_l<level>.png`` (``<label>`` is ``unlabelled``
    without a label mask); the manifest has columns ``slide, x, y, level, label, tissue, path`` with ``path``
    relative to ``out_dir``. An existing manifest of the same name is overwritten.

    Returns:
        path of the manifest.
    """
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(slide.name).stem
    mpath = out / manifest
    n = 0
    with open(mpath, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        pairs = _tqdm(iter_patch_arrays(slide, records, patch_size), progress, desc="writing patches", unit="patch")
        for rec, arr in pairs:
            sub = out / ("unlabelled" if rec.label is None else str(rec.label))
            sub.mkdir(exist_ok=True)
            rel = f"{sub.name}/{stem}_x{rec.x}_y{rec.y}_l{rec.level}.png"
            Image.fromarray(np.moveaxis(arr, 0, -1).squeeze(-1) if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)).save(
                out / rel
            )
            rec.path = rel
            writer.writerow({k: ("" if v is None else v) for k, v in asdict(rec).items()})
            n += 1
    logger.info("wrote %d patches of %s to %s", n, slide.name, out)
    return mpath


def extract_patches(
    slide: Slide,
    patch_size: int | Sequence[int] = 28,
    out_dir: str | os.PathLike | None = None,
    progress: bool = False,
    **kwargs,
) -> list[PatchRecord]:
    """Select patches (:func:`iter_patch_records`, same keyword arguments) and optionally write them.

    Args:
        slide: an opened slide.
        patch_size: ``(h, w)`` or int at the chosen level.
        out_dir: if given, PNGs and ``manifest.csv`` are written there (:func:`write_patches`) and each
            record's ``path`` is set.
        progress: tqdm progress bars.
        kwargs: ``stride``, ``level``, ``mpp``, ``min_tissue``, ``tissue``, ``label_mask``, ``mask_downsample``,
            ``label_rule``, ``ignore_labels``, ``random``, ``seed`` of :func:`iter_patch_records`.

    Returns:
        the records, in grid (or sorted random) order. For gigapixel slides whose record list would itself be
        large, stream :func:`iter_patch_records` into :func:`write_patches` instead (the CLI does).
    """
    records = list(iter_patch_records(slide, patch_size, progress=progress and out_dir is None, **kwargs))
    if out_dir is not None:
        write_patches(slide, records, out_dir, patch_size, progress=progress)
    return records


def read_manifest(path: str | os.PathLike) -> list[PatchRecord]:
    """Read a manifest written by :func:`write_patches` back into records."""
    with open(path, newline="") as fh:
        return [
            PatchRecord(
                row["slide"], int(row["x"]), int(row["y"]), int(row["level"]),
                int(row["label"]) if row["label"] != "" else None,
                float(row["tissue"]) if row["tissue"] != "" else None,
                row["path"] or None,
            )
            for row in csv.DictReader(fh)
        ]


# ------------------------------------------------------------------------------------------------ dataset
class PatchDataset(Dataset):
    """Map-style dataset streaming patches straight from the slide (no PNG files), MONAI keys.

    The slide is opened lazily in each process (safe with ``DataLoader(num_workers>0)``).

    Args:
        slide_path: slide file.
        records: patch records (e.g. from :func:`iter_patch_records` or :func:`read_manifest`).
        patch_size: ``(h, w)`` or int at each record's level.
        backend: WSI backend (see :func:`medpipe.data.wsi.open_slide`).
        transform: optional callable applied to the item dict (MONAI dict transforms fit).

    Items:
        ``{"image": (C, h, w) uint8 numpy array, "label": int or -1, "location": (y, x) level 0,
        "level": int, "slide": str}``; scaling to float is the transform's job (say it in the pipeline).
    """

    def __init__(self, slide_path, records: Sequence[PatchRecord], patch_size, backend: str = "auto", transform=None):
        self.slide_path, self.backend = Path(slide_path), backend
        self.records, self.patch_size, self.transform = list(records), _pair(patch_size, "patch_size"), transform
        self._slide: Slide | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.records)

    def _get_slide(self) -> Slide:
        if self._slide is None or self._pid != os.getpid():
            self._slide, self._pid = open_slide(self.slide_path, self.backend), os.getpid()
        return self._slide

    def __getitem__(self, i: int) -> dict:
        r = self.records[i]
        img = read_region(self._get_slide(), (r.y, r.x), self.patch_size, r.level, fill=255)
        item = {"image": img, "label": -1 if r.label is None else r.label, "location": (r.y, r.x),
                "level": r.level, "slide": r.slide}
        return self.transform(item) if self.transform is not None else item

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_slide"], state["_pid"] = None, None  # file handles do not cross process boundaries
        return state


# ------------------------------------------------------------------------------------------------ CLI
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m medpipe.data.patches",
        description="Cut a whole-slide image into tissue patches: PNG files + manifest.csv (slide, x, y, level, "
        "label, tissue, path; x/y = top-left in level-0 pixels).",
    )
    p.add_argument("slide", help="slide file (.svs, .tif, .dcm, .png, .jpg, ...)")
    p.add_argument("--patch-size", type=int, default=28, help="patch side in pixels at --level (default 28)")
    p.add_argument("--stride", type=int, default=None, help="grid step in pixels (default: patch size)")
    p.add_argument("--level", type=int, default=0, help="pyramid level (default 0)")
    p.add_argument("--mpp", type=float, default=None, help="resolution in micrometres/pixel instead of --level")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--min-tissue", type=float, default=0.5, help="minimum tissue fraction per patch (0 = keep all)")
    p.add_argument("--tissue-channel", choices=("saturation", "grey"), default="saturation")
    p.add_argument("--mask", default=None, help="integer label image covering the slide (e.g. PNG)")
    p.add_argument("--mask-downsample", type=float, default=None, help="level-0 pixels per mask pixel")
    p.add_argument("--label-rule", choices=("majority", "centre"), default="majority")
    p.add_argument("--ignore-label", type=int, action="append", default=[], help="drop patches with this label")
    p.add_argument("--random", type=int, default=None, metavar="N", help="sample N patches at random")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--backend", default="auto", help="WSI backend: auto, openslide, tifffile, cucim, dicom, pil")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        n, manifest = _run_cli(a)
    except (FileNotFoundError, ValueError, ImportError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{n} patches -> {manifest}")
    return 0


def _run_cli(a: argparse.Namespace) -> tuple[int, Path]:
    with open_slide(a.slide, a.backend) as slide:
        tissue = tissue_mask(slide, channel=a.tissue_channel) if a.min_tissue > 0 else None
        records = iter_patch_records(
            slide, a.patch_size, a.stride, level=a.level if a.mpp is None else None, mpp=a.mpp,
            min_tissue=a.min_tissue, tissue=tissue, label_mask=a.mask, mask_downsample=a.mask_downsample,
            label_rule=a.label_rule, ignore_labels=a.ignore_label, random=a.random, seed=a.seed,
        )
        manifest = write_patches(slide, records, a.out, a.patch_size, progress=not a.no_progress)
    with open(manifest) as fh:
        return sum(1 for _ in fh) - 1, manifest


if __name__ == "__main__":
    raise SystemExit(main())
