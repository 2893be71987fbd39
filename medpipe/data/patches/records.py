"""Which patches to cut from a whole-slide image: the patch grid, tissue filtering, labels, random sampling.

The seed project's ``split_oneTomany`` loaded a whole slide and cut it into 28 x 28 patches in memory. Here
:func:`iter_patch_records` walks the patch grid (or samples it at random, seeded) row by row without reading
pixels, keeping patches whose tissue fraction (:func:`medpipe.data.patches.tissue.tissue_mask`) reaches
``min_tissue`` and labelling them from an optional annotation mask.

Coordinates: records carry ``x``, ``y`` = column, row of the patch's top-left pixel **in the level-0 frame**
(MONAI's ``location`` convention, and that of the IDC patch file names), plus the ``level`` the patch is read at;
the patch is ``patch_size`` pixels of that level.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medpipe.data.patches.tissue import BoxCounter, tissue_mask
from medpipe.data.wsi import Slide, SlideError, resolve_level
from medpipe.data.wsi.base import describe_size
from medpipe.data.wsi.memory import check_memory, resolve_memory_limit
from medpipe.data.wsi.pil import NATIVE_BYTES

logger = logging.getLogger(__name__)

__all__ = ["PatchRecord", "grid_patch_coordinates", "iter_patch_records", "as_pair", "progress_bar"]


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
    ph, pw = as_pair(patch_size, "patch_size")
    sy, sx = as_pair(stride if stride is not None else (ph, pw), "stride")
    oy, ox = as_pair(offset, "offset", allow_zero=True)
    ys, xs = _axis_starts(slide_shape[0], ph, sy, oy, drop_incomplete), _axis_starts(
        slide_shape[1], pw, sx, ox, drop_incomplete
    )
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([yy.ravel(), xx.ravel()], axis=1).astype(np.int64)


def _axis_starts(size: int, patch: int, stride: int, offset: int, drop_incomplete: bool) -> np.ndarray:
    last = size - patch if drop_incomplete else size - 1
    return np.arange(offset, last + 1, stride, dtype=np.int64) if last >= offset else np.zeros(0, np.int64)


def as_pair(v, name: str, allow_zero: bool = False) -> tuple[int, int]:
    """A size, stride or offset as a ``(y, x)`` pair of ints.

    Args:
        v: one int (both axes) or a ``(y, x)`` sequence, pixels.
        name: the argument's name, for the message.
        allow_zero: accept 0 (offsets) besides positive values.

    Returns:
        ``(y, x)`` ints.

    Raises:
        ValueError: not one or two values, or a negative (or, without ``allow_zero``, zero) value.
    """
    t = (int(v), int(v)) if np.isscalar(v) else tuple(int(i) for i in v)
    if len(t) != 2 or any(i < 0 or (i == 0 and not allow_zero) for i in t):
        raise ValueError(f"{name} must be a positive int or (y, x) pair, got {v!r}")
    return t  # type: ignore[return-value]


class _Labeller:
    """Patch labels from an integer label image at some downsample: ``majority`` or ``centre`` rule."""

    def __init__(self, labels: np.ndarray, downsample: float, rule: str, name: str = "label mask",
                 limit: float = float("inf")):
        if rule not in ("majority", "centre"):
            raise ValueError(f"label_rule must be 'majority' or 'centre', got {rule!r}")
        self.labels, self.ds, self.rule = labels, float(downsample), rule
        self.values = np.unique(labels)
        if rule == "majority":  # one summed-area table per label value (label images have few values)
            # each table is int64 (8 bytes/pixel), built through a bool mask and int64 temporaries (~25 bytes/pixel)
            need = labels.size * (8 * len(self.values) + 25)
            check_memory(name, need, limit, f"the majority rule over {len(self.values)} label values of a "
                         f"{labels.shape[1]}x{labels.shape[0]} mask ({8 * len(self.values) + 25} bytes/pixel)",
                         "Use label_rule='centre' (--label-rule centre), or a label mask at a coarser downsample.")
            self.counters = [BoxCounter(labels == v, downsample) for v in self.values]

    def __call__(self, y0, x0, y1, x1) -> np.ndarray:
        if self.rule == "centre":
            r = np.clip(np.floor((y0 + y1) / 2 / self.ds).astype(np.int64), 0, self.labels.shape[0] - 1)
            c = np.clip(np.floor((x0 + x1) / 2 / self.ds).astype(np.int64), 0, self.labels.shape[1] - 1)
            return self.labels[r, c].astype(np.int64)
        counts = np.stack([cnt.count(y0, x0, y1, x1)[0] for cnt in self.counters])  # (n_values, N)
        return self.values[np.argmax(counts, axis=0)].astype(np.int64)  # ties -> smallest label value


def _read_label_image(path: Path, limit: float) -> np.ndarray:
    """Decode a label image with Pillow after checking its decoded size against ``limit`` (from the header)."""
    from PIL import Image, ImageFile

    saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = None, False  # the memory limit guards the size
    try:
        with Image.open(path) as im:
            native = NATIVE_BYTES.get(im.mode, 4)
            # Pillow's storage, then numpy's copy through tobytes (the bytes object and the array share memory)
            need = im.width * im.height * (native + 2 * len(im.getbands()) * (2 if "16" in im.mode else 1))
            check_memory(path, need, limit, f"the {im.width}x{im.height} {im.mode} label mask, decoded whole",
                         "Give a label mask at a coarser downsample (--mask-downsample).")
            return np.asarray(im)
    except SlideError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise SlideError(f"label mask {path}: truncated, corrupt or not an image ({describe_size(path)}): {e}") from None
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _load_label_mask(mask, slide: Slide, mask_downsample: float | None, limit: float) -> tuple[np.ndarray, float, str]:
    if isinstance(mask, (str, os.PathLike)):
        path = Path(mask)
        if not path.exists():
            raise FileNotFoundError(f"label mask not found: {path}")
        arr = _read_label_image(path, limit)
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
    return arr, float(mask_downsample), name


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
    max_memory: int | float | str | None = None,
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
        max_memory: bytes the label mask may take, decoded and (majority rule) as one ``int64`` summed-area
            table per label value (``None``: half of the available memory; see
            :func:`medpipe.data.wsi.memory.resolve_memory_limit`).

    Yields:
        :class:`PatchRecord` in row-major order of the grid (``path`` unset).

    Raises:
        ValueError: bad ``patch_size``/``stride``/``min_tissue``/``label_rule``; label mask shape mismatch.
        FileNotFoundError: ``label_mask`` path missing.
        SlideError: the label mask file is truncated or corrupt. SlideMemoryError: the label mask would need
            more than ``max_memory`` (checked from its header, and before the summed-area tables are built).
    """
    level = resolve_level(slide, level=None if mpp is not None else level, mpp=mpp)
    if not 0.0 <= float(min_tissue) <= 1.0:
        raise ValueError(f"min_tissue must be in [0, 1], got {min_tissue}")
    ph, pw = as_pair(patch_size, "patch_size")
    sy, sx = as_pair(stride if stride is not None else (ph, pw), "stride")
    lh, lw = slide.level_dimensions[level]
    ds = slide.level_downsamples[level]
    ys, xs = _axis_starts(lh, ph, sy, 0, True), _axis_starts(lw, pw, sx, 0, True)
    counter = None
    if min_tissue > 0:
        mask, mds = tissue if tissue is not None else tissue_mask(slide)
        counter = BoxCounter(mask, mds)
    labeller = None
    if label_mask is not None:
        limit = resolve_memory_limit(max_memory)
        arr, mds, name = _load_label_mask(label_mask, slide, mask_downsample, limit)
        labeller = _Labeller(arr, mds, label_rule, name, limit)
    ignore = np.asarray(list(ignore_labels), dtype=np.int64)

    def select(yl: np.ndarray, xl: np.ndarray) -> Iterator[PatchRecord]:
        """Records of the grid cells at level pixels ``(yl, xl)`` that pass the tissue and label filters."""
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
        rows = progress_bar(ys, progress, desc=f"patches {slide.name}", unit="row")
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


def progress_bar(it, enabled: bool, **kw):
    """``it`` wrapped in a ``tqdm.auto`` progress bar when ``enabled`` (keyword arguments go to tqdm), else ``it``."""
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, **kw)

