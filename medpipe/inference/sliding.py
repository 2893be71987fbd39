"""Sliding-window inference for images that fit in memory (``monai.inferers.SlidingWindowInferer``).

For slides larger than memory see :mod:`medpipe.inference.streamed`.
"""

from __future__ import annotations

__all__ = ["build_inferer"]


def build_inferer(cfg):
    """``SlidingWindowInferer`` from :class:`medpipe.config.InferConfig`.

    Windows of ``roi_size`` (pixels) are batched ``sw_batch_size`` at a time and overlap by ``overlap``
    (fraction of the window); overlapping outputs are blended with a gaussian importance map
    (``sigma_scale`` of the window size) or uniformly (``constant``). Input ``(B, C, H, W[, D])`` -> network
    output of the same spatial size.

    Args:
        cfg: the ``infer`` section (``roi_size``, ``sw_batch_size``, ``overlap``, ``mode``, ``sigma_scale``,
            ``padding_mode``).

    Returns:
        ``monai.inferers.SlidingWindowInferer``.
    """
    from monai.inferers import SlidingWindowInferer

    return SlidingWindowInferer(roi_size=tuple(cfg.roi_size), sw_batch_size=cfg.sw_batch_size,
                                overlap=cfg.overlap, mode=cfg.mode, sigma_scale=cfg.sigma_scale,
                                padding_mode=cfg.padding_mode)
