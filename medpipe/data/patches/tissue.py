"""Tissue detection on whole-slide images, and counting mask pixels under level-0 boxes.

:func:`tissue_mask` thresholds a low-resolution rendering of the slide (Otsu 1979); :class:`BoxCounter` answers
"how many mask pixels lie under this level-0 box" in O(1) per box, for patch filtering
(:func:`medpipe.data.patches.iter_patch_records`) and window skipping
(:func:`medpipe.inference.streamed.streamed_sliding_window_inference`).
"""

from __future__ import annotations

import logging

import numpy as np

from medpipe.data.wsi import Slide, read_thumbnail

logger = logging.getLogger(__name__)

__all__ = ["tissue_mask", "BoxCounter"]


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
        slide: an opened slide (RGB or grey; 0-255 for ``uint8``, the dtype's full range for other integers).
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
    full = float(np.iinfo(thumb.dtype).max) if np.issubdtype(thumb.dtype, np.integer) else 255.0
    rgb = thumb[:3].astype(np.float32) if thumb.shape[0] >= 3 else np.repeat(thumb[:1], 3, 0).astype(np.float32)
    if channel == "saturation":
        mx, mn = rgb.max(0), rgb.min(0)
        signal = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    else:
        signal = 1.0 - rgb.mean(0) / full
    thr = float(threshold_otsu(signal)) if float(signal.max() - signal.min()) > 1e-6 else min_threshold
    thr = max(thr, min_threshold)
    mask = signal > thr
    logger.info("tissue mask of %s: %s threshold %.3f, %.1f%% tissue, downsample %.2f",
                slide.name, channel, thr, 100 * mask.mean(), ds)
    return mask, ds


class BoxCounter:
    """Counts of ``mask`` pixels under level-0 boxes, O(1) per box via a summed-area table (Crow 1984).

    The table is ``skimage.transform.integral_image`` of the mask (``int64``) with a zero row and column
    prepended; identical to the ``numpy.cumsum`` table it replaces, and as fast (18 vs 14 ms for a 901 x 1493
    mask, 128 vs 132 ms for 2048 x 2048).

    Args:
        mask: ``(h, w)`` bool (or 0/1 integer) array, e.g. from :func:`tissue_mask`.
        downsample: level-0 pixels per mask pixel (mask pixel ``(i, j)`` covers level-0 pixels
            ``[i*d, (i+1)*d) x [j*d, (j+1)*d)``).

    Attributes:
        ds: ``downsample`` as a float.
        shape: ``(h, w)`` of the mask.
        sat: ``(h + 1, w + 1)`` ``int64`` summed-area table, ``sat[r, c]`` = mask pixels in ``[0, r) x [0, c)``.
    """

    def __init__(self, mask: np.ndarray, downsample: float):
        from skimage.transform import integral_image

        self.ds = float(downsample)
        self.shape = mask.shape
        self.sat = np.pad(integral_image(np.asarray(mask), dtype=np.int64), ((1, 0), (1, 0)))

    def bounds(self, y0, x0, y1, x1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Mask-pixel rectangles ``[r0, r1) x [c0, c1)`` covering level-0 boxes ``[y0, y1) x [x0, x1)``.

        Args:
            y0, x0, y1, x1: ``(N,)`` arrays (or scalars) of level-0 box corners, pixels.

        Returns:
            ``(r0, c0, r1, c1)``: ``(N,)`` ``int64`` arrays, outward-rounded to whole mask pixels, at least one
            mask pixel per side where the box lies inside the mask, clipped to the mask.
        """
        h, w = self.shape
        r0 = np.clip(np.floor(y0 / self.ds).astype(np.int64), 0, h)
        c0 = np.clip(np.floor(x0 / self.ds).astype(np.int64), 0, w)
        r1 = np.clip(np.maximum(np.ceil(y1 / self.ds).astype(np.int64), r0 + 1), 0, h)
        c1 = np.clip(np.maximum(np.ceil(x1 / self.ds).astype(np.int64), c0 + 1), 0, w)
        return r0, c0, r1, c1

    def count(self, y0, x0, y1, x1) -> tuple[np.ndarray, np.ndarray]:
        """Mask pixels under level-0 boxes, and the number of mask pixels each box covers.

        Args:
            y0, x0, y1, x1: ``(N,)`` arrays (or scalars) of level-0 box corners, pixels.

        Returns:
            ``(count, area)``: ``(N,)`` ``int64`` arrays; ``count / area`` is the mask fraction of each box
            (``area`` is 0 for a box wholly outside the mask).
        """
        r0, c0, r1, c1 = self.bounds(y0, x0, y1, x1)
        s = self.sat
        return s[r1, c1] - s[r0, c1] - s[r1, c0] + s[r0, c0], (r1 - r0) * (c1 - c0)
