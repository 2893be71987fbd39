"""Whole-slide image (WSI) access, windowed: nothing here decodes a whole slide level into memory.

A thin layer over MONAI :class:`monai.data.WSIReader` that gives every backend the same small interface:

- :func:`open_slide` opens a file and returns a :class:`Slide` (the MONAI reader object where one applies, the
  opened backend object, the pyramid geometry and the resolution in micrometres per pixel where known);
- :func:`resolve_level` picks a pyramid level by index or by micrometres per pixel;
- :func:`read_region` reads a ``(C, h, w)`` ``uint8`` window, level-0 location ``(y, x)``, size at the level;
- :func:`read_thumbnail` renders a whole level small, tile by tile;
- :func:`check_slide` checks a file as :func:`open_slide` would, without decoding plain images (for integrity
  checks before work starts).

Backends (``backend=``), one module each:

- ``"openslide"`` (:mod:`.monai_backends`): MONAI ``WSIReader(backend="openslide")`` (``openslide-python`` +
  ``openslide-bin``) for windows and resolution; Aperio SVS (JPEG and JPEG 2000 tiles), NDPI, MRXS, DICOM WSI with
  complete WSI attributes, ... (not plain, non-pyramidal TIFF such as ``kidney-48-5.tif``: ``"auto"`` uses
  tifffile there).
- ``"cucim"`` (:mod:`.monai_backends`): MONAI ``WSIReader(backend="cucim")`` (GPU toolkit ``cucim``, when
  installed).
- ``"tifffile"`` (:mod:`.tiff`): ``tifffile`` (+ ``imagecodecs`` for JPEG 2000) through its Zarr store, so that
  only the tiles (or strips) under a window are decoded; our own code, because MONAI 1.6's
  ``TiffFileWSIReader`` decodes a whole level per patch, counts thumbnail pages as levels and misses the Aperio
  ``MPP`` (details in :mod:`.tiff`). The ``reader`` attribute still holds a MONAI ``WSIReader(backend="tifffile")``
  for code that wants it.
- ``"dicom"`` (:mod:`.dicom`): our own code, because MONAI 1.6's ``WSIReader`` has no DICOM backend and
  OpenSlide 4 refuses ``small_dicom_wsi.dcm``. Single-file DICOM VL Whole Slide Microscopy images with
  encapsulated (JPEG, JPEG 2000) frames through ``pydicom`` + ``Pillow``, decoding only the frames under a
  window; one file is one pyramid level. ``"auto"`` uses it when OpenSlide cannot read the file.
- ``"pil"`` (:mod:`.pil`): plain PNG/JPEG/BMP via Pillow, decoded once, whole (these formats have no tiles),
  after a header check of the decoded size against a memory limit (:mod:`.memory`; default half of the
  available memory) and of the bit depth.
- ``"array"``: an in-memory ``(C, H, W)`` array (see :func:`slide_from_array`), for tests and small crops.

Levels: level ``i`` is the ``i``-th resolution of the baseline pyramid for every backend. tifffile lists the
thumbnail, label and macro images of an SVS as extra *pages* (MONAI's ``TiffFileWSIReader.get_level_count``
counts them, so its ``level=1`` may be a thumbnail); here tifffile levels are ``tif.series[0].levels``, which
agree with OpenSlide's ``level_count`` (e.g. 1 for ``CMU-1-Small-Region.svs``, 2 for
``tcga-cr-7395-01a-01-ts1.svs``).

Damaged files (truncated, corrupt) raise :class:`SlideError` (a ``ValueError``) naming the file, from
:func:`open_slide` (TIFF tile tables and DICOM frame tables are checked against the file size when opening) or
from :func:`read_region`.

Coordinates follow MONAI: ``location`` is ``(y, x)`` = (row, column) of the top-left pixel in the level-0
frame, ``size`` is ``(h, w)`` in pixels of the requested level; level dimensions are ``(height, width)``.
"""

from medpipe.data.wsi.base import BACKENDS, Slide, SlideError
from medpipe.data.wsi.checks import check_slide
from medpipe.data.wsi.memory import SlideMemoryError, default_memory_limit, parse_size
from medpipe.data.wsi.slide import open_slide, read_region, read_thumbnail, resolve_level, slide_from_array

__all__ = ["Slide", "SlideError", "SlideMemoryError", "open_slide", "check_slide", "slide_from_array", "resolve_level",
           "read_region", "read_thumbnail", "default_memory_limit", "parse_size", "BACKENDS"]
