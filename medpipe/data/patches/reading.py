"""Reading the pixels of patch records: banded window reads, and a map-style dataset streaming from the slide.

:func:`iter_patch_arrays` gathers consecutive records into one window read each (a band of patch rows in grid
order); :class:`PatchDataset` reads one patch per item, for a ``DataLoader``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from medpipe.data.patches.records import PatchRecord, as_pair
from medpipe.data.wsi import Slide, open_slide, read_region

__all__ = ["iter_patch_arrays", "PatchDataset"]


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

    Raises:
        ValueError: bad ``patch_size``; a record's level out of range or its window outside the slide.
    """
    ph, pw = as_pair(patch_size, "patch_size")
    group: list[tuple[PatchRecord, int, int]] = []  # (record, y, x at its level)
    box = [0, 0, 0, 0]  # y0, x0, y1, x1 at the level

    def flush():
        """Read the bounding box of the gathered records once; yield each record with its patch."""
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


class PatchDataset(Dataset):
    """Map-style dataset streaming patches straight from the slide (no PNG files), MONAI keys.

    The slide is opened lazily in each process (safe with ``DataLoader(num_workers>0)``).

    Args:
        slide_path: slide file.
        records: patch records (e.g. from :func:`~medpipe.data.patches.records.iter_patch_records` or
            :func:`~medpipe.data.patches.writing.read_manifest`).
        patch_size: ``(h, w)`` or int at each record's level.
        backend: WSI backend (see :func:`medpipe.data.wsi.open_slide`).
        transform: optional callable applied to the item dict (MONAI dict transforms fit).

    Items:
        ``{"image": (C, h, w) uint8 numpy array, "label": int or -1, "location": (y, x) level 0,
        "level": int, "slide": str}``; scaling to float is the transform's job (say it in the pipeline).

    Raises:
        ValueError: bad ``patch_size``. Reading an item raises what :func:`medpipe.data.wsi.open_slide` and
            :func:`medpipe.data.wsi.read_region` raise.
    """

    def __init__(self, slide_path, records: Sequence[PatchRecord], patch_size, backend: str = "auto", transform=None):
        self.slide_path, self.backend = Path(slide_path), backend
        self.records, self.patch_size, self.transform = list(records), as_pair(patch_size, "patch_size"), transform
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

