"""Writing patches as PNG files with a CSV manifest, and reading the manifest back.

Files go to ``out_dir/<label>/<slide stem>_x<x>_y<y>_l<level>.png``; ``manifest.csv`` has one row per patch
(:data:`MANIFEST_FIELDS`). Memory stays constant: patches are read band by band
(:func:`medpipe.data.patches.reading.iter_patch_arrays`) and written as they come.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from medpipe.data.patches.reading import iter_patch_arrays
from medpipe.data.patches.records import PatchRecord, iter_patch_records, progress_bar
from medpipe.data.wsi import Slide, SlideError

logger = logging.getLogger(__name__)

__all__ = ["MANIFEST_FIELDS", "write_patches", "extract_patches", "read_manifest", "require_uint8"]

#: Columns of ``manifest.csv``: the :class:`~medpipe.data.patches.records.PatchRecord` fields.
MANIFEST_FIELDS = ("slide", "x", "y", "level", "label", "tissue", "path")


def require_uint8(slide: Slide) -> None:
    """Check that ``slide`` gives 8-bit windows, as PNG patches (and the tissue mask's 0-255 scale) expect.

    Raises:
        SlideError: the slide's windows are not ``uint8`` (e.g. a 16-bit PNG or TIFF); names the file, its bit
            depth and what is expected, and suggests ``convert_16bit`` / ``--convert-16bit``.
    """
    dtype = np.dtype(slide.dtype)
    if dtype != np.uint8:
        raise SlideError(
            f"{slide.path or slide.name}: {dtype.itemsize * 8}-bit {dtype.name} pixels; the patch writer expects "
            "8-bit RGB or grey (uint8). Pass --convert-16bit (open_slide(..., convert_16bit=True)) to map 16 bits "
            "to 8 by the top byte (v >> 8), or convert the file to 8 bits"
        )


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
    relative to ``out_dir``. An existing manifest of the same name is overwritten. Each record's ``path`` is set
    as it is written. PNGs are ``(h, w, C)`` ``uint8`` (``(h, w)`` grey for one channel); pixels outside the
    slide are 255.

    Args:
        slide: the opened slide the records come from.
        records: patch records (an iterator is consumed as written; grid order reads fastest).
        out_dir: output folder (created if missing).
        patch_size: ``(h, w)`` or int at each record's level, pixels.
        manifest: file name of the manifest in ``out_dir``.
        progress: show a tqdm progress bar over patches.

    Returns:
        path of the manifest.

    Raises:
        ValueError: bad ``patch_size``; a record's level out of range.
        SlideError: the slide's windows are not 8-bit (:func:`require_uint8`), or the file is damaged.
    """
    from PIL import Image

    require_uint8(slide)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(slide.name).stem
    mpath = out / manifest
    n = 0
    with open(mpath, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        pairs = progress_bar(iter_patch_arrays(slide, records, patch_size), progress, desc="writing patches",
                             unit="patch")
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
    """Select patches (:func:`~medpipe.data.patches.records.iter_patch_records`, same keyword arguments) and
    optionally write them.

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
        large, stream :func:`~medpipe.data.patches.records.iter_patch_records` into :func:`write_patches` instead
        (the command line does).

    Raises:
        ValueError, FileNotFoundError: see :func:`~medpipe.data.patches.records.iter_patch_records`.
    """
    records = list(iter_patch_records(slide, patch_size, progress=progress and out_dir is None, **kwargs))
    if out_dir is not None:
        write_patches(slide, records, out_dir, patch_size, progress=progress)
    return records


def read_manifest(path: str | os.PathLike) -> list[PatchRecord]:
    """Read a manifest written by :func:`write_patches` back into records.

    Args:
        path: the ``manifest.csv``.

    Returns:
        One :class:`~medpipe.data.patches.records.PatchRecord` per row, in file order (empty ``label``,
        ``tissue`` and ``path`` cells become ``None``).

    Raises:
        FileNotFoundError: ``path`` does not exist. KeyError: a manifest column is missing. ValueError: a
            non-numeric ``x``, ``y``, ``level``, ``label`` or ``tissue``.
    """
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
