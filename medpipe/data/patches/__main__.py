"""Command line: cut a whole-slide image into tissue patches (PNG files + ``manifest.csv``).

::

    python -m medpipe.data.patches SLIDE --patch-size 28 --stride 28 --level 0 --out DIR \
        [--min-tissue 0.5] [--mask MASK.png] [--random N --seed S] [--max-memory 8G] [--convert-16bit]

Bad input gives one line ``error: ...`` naming the file and exit status 2: a missing, truncated or corrupt slide,
a PNG/JPEG whose decoded size is above ``--max-memory`` (refused from its header, before decoding), 16-bit pixels
without ``--convert-16bit``, an unwritable output folder.

Nothing imports this module; the library functions are in :mod:`medpipe.data.patches`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from medpipe.data.patches.records import iter_patch_records
from medpipe.data.patches.tissue import tissue_mask
from medpipe.data.patches.writing import require_uint8, write_patches
from medpipe.data.wsi import default_memory_limit, open_slide, parse_size
from medpipe.data.wsi.memory import format_bytes


def _size(text: str) -> float:
    """argparse type of ``--max-memory``."""
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _parser() -> argparse.ArgumentParser:
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
    p.add_argument("--max-memory", type=_size, default=None, metavar="SIZE",
                   help="memory a PNG/JPEG slide (decoded whole: no tiles) and the label mask may take, e.g. 8G, "
                   f"512M or none (default: half of the available memory, now {format_bytes(default_memory_limit())})")
    p.add_argument("--convert-16bit", action="store_true",
                   help="map 16-bit slides to 8 bits by the top byte (v >> 8); without it they are refused")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: the arguments (default ``sys.argv[1:]``); see ``python -m medpipe.data.patches --help``.

    Returns:
        The exit status: 0, or 2 after printing one line ``error: ...`` to stderr for a missing file, a bad
        argument value (e.g. a level out of range), a missing backend package, a truncated or corrupt slide or
        mask, a slide above ``--max-memory``, 16-bit pixels without ``--convert-16bit``, or an output folder
        that cannot be written (read-only, disk full).
    """
    a = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        n, manifest = _run(a)
    except (OSError, ValueError, ImportError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{n} patches -> {manifest}")
    return 0


def _run(a: argparse.Namespace) -> tuple[int, Path]:
    with open_slide(a.slide, a.backend, max_memory=a.max_memory, convert_16bit=a.convert_16bit) as slide:
        require_uint8(slide)  # before the tissue mask: 16-bit pixels would give white patches
        tissue = tissue_mask(slide, channel=a.tissue_channel) if a.min_tissue > 0 else None
        records = iter_patch_records(
            slide, a.patch_size, a.stride, level=a.level if a.mpp is None else None, mpp=a.mpp,
            min_tissue=a.min_tissue, tissue=tissue, label_mask=a.mask, mask_downsample=a.mask_downsample,
            label_rule=a.label_rule, ignore_labels=a.ignore_label, random=a.random, seed=a.seed,
            max_memory=a.max_memory,
        )
        manifest = write_patches(slide, records, a.out, a.patch_size, progress=not a.no_progress)
    with open(manifest) as fh:
        return sum(1 for _ in fh) - 1, manifest


if __name__ == "__main__":
    raise SystemExit(main())
