"""Patch extraction from whole-slide images: tissue detection, grid or random sampling, labels, PNG + CSV.

The seed project's ``split_oneTomany`` loaded a whole slide and cut it into 28 x 28 patches in memory. Here
the slide is never loaded whole:

1. :func:`tissue_mask` thresholds a low-resolution rendering (Otsu 1979) to find tissue (:mod:`.tissue`);
2. :func:`iter_patch_records` walks the patch grid (or samples it at random, seeded) row by row, keeping
   patches whose tissue fraction reaches ``min_tissue`` and labelling them from an optional annotation mask
   (:mod:`.records`);
3. :func:`iter_patch_arrays` reads the kept patches, a strip of neighbours per read, and :class:`PatchDataset`
   streams them to a ``DataLoader`` (:mod:`.reading`); :func:`write_patches` writes them as PNGs with a CSV
   manifest (:mod:`.writing`).

Coordinates: records carry ``x``, ``y`` = column, row of the patch's top-left pixel **in the level-0 frame**
(MONAI's ``location`` convention, and that of the IDC patch file names), plus the ``level`` the patch is read at;
the patch is ``patch_size`` pixels of that level.

Command line (:mod:`medpipe.data.patches.__main__`)::

    python -m medpipe.data.patches SLIDE --patch-size 28 --stride 28 --level 0 --out DIR \
        [--min-tissue 0.5] [--mask MASK.png] [--random N --seed S] [--max-memory 8G] [--convert-16bit]
"""

from medpipe.data.patches.reading import PatchDataset, iter_patch_arrays
from medpipe.data.patches.records import PatchRecord, grid_patch_coordinates, iter_patch_records
from medpipe.data.patches.tissue import BoxCounter, tissue_mask
from medpipe.data.patches.writing import MANIFEST_FIELDS, extract_patches, read_manifest, write_patches

__all__ = [
    "PatchRecord",
    "tissue_mask",
    "BoxCounter",
    "grid_patch_coordinates",
    "iter_patch_records",
    "iter_patch_arrays",
    "extract_patches",
    "write_patches",
    "read_manifest",
    "PatchDataset",
    "MANIFEST_FIELDS",
]
