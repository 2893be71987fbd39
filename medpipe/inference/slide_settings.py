"""Settings of a slide heatmap run: one object instead of thirty keyword arguments.

:class:`SlideInferSettings` holds how :func:`medpipe.inference.slide.predict_slide_heatmap` cuts, scales, skips,
blends and draws windows. Build it directly, or from the validated ``slide_infer`` config section
(:class:`medpipe.config.SlideInferConfig`) with :meth:`SlideInferSettings.from_config`; ``predict_slide_heatmap``
accepts either. Field names are those of the config section (MONAI's where MONAI has one: ``roi_size``,
``overlap``, ``mode``, ``sigma_scale``, ``sw_batch_size``).

:class:`IntensityRange` is the linear window scaling of MONAI ``ScaleIntensityRange`` applied to a whole window
batch on the network's device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch

__all__ = ["IntensityRange", "SlideInferSettings", "size_pair"]


def size_pair(v: Union[int, Sequence[int]]) -> tuple[int, int]:
    """A 2-D size as ``(h, w)``.

    Args:
        v: an int (square) or an ``(h, w)`` pair, pixels.

    Returns:
        ``(h, w)`` ints.

    Raises:
        ValueError: not one or two positive ints.
    """
    t = (int(v), int(v)) if np.isscalar(v) else tuple(int(i) for i in v)
    if len(t) != 2 or min(t) < 1:
        raise ValueError(f"expected a positive int or (h, w) pair, got {v!r}")
    return t  # type: ignore[return-value]


@dataclass(frozen=True)
class IntensityRange:
    """Linear intensity mapping ``[a_min, a_max] -> [b_min, b_max]``, as :class:`monai.transforms.ScaleIntensityRange`.

    Ours rather than MONAI's transform: it runs on the ``(B, C, h, w)`` float32 window batch in place on the
    network's device, whereas ``ScaleIntensityRange`` works per image and allocates; the results are equal
    (``tests/inference/test_slide.py`` compares them).

    Attributes:
        a_min: input intensity mapped to ``b_min`` (e.g. 0 for ``uint8`` RGB).
        a_max: input intensity mapped to ``b_max`` (e.g. 255).
        b_min: output minimum.
        b_max: output maximum.
        clip: clip the output to ``[b_min, b_max]``.

    Raises:
        ValueError: ``a_max == a_min`` (at construction).
    """

    a_min: float
    a_max: float
    b_min: float = 0.0
    b_max: float = 1.0
    clip: bool = True

    def __post_init__(self) -> None:
        if self.a_max == self.a_min:
            raise ValueError(f"intensity range is empty: a_min == a_max == {self.a_min}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``x`` (float tensor of any shape, e.g. ``(B, C, h, w)``; modified in place when clipping).

        Args:
            x: raw intensities.

        Returns:
            the mapped tensor, same shape and dtype.
        """
        a_min, a_max, b_min, b_max = float(self.a_min), float(self.a_max), float(self.b_min), float(self.b_max)
        y = (x - a_min) * ((b_max - b_min) / (a_max - a_min)) + b_min
        return y.clamp_(min(b_min, b_max), max(b_min, b_max)) if self.clip else y

    def describe(self) -> str:
        """Text for run records, e.g. ``"[0.0, 255.0] -> [0.0, 1.0] clipped"``.

        Returns:
            the mapping as text.
        """
        return f"[{self.a_min}, {self.a_max}] -> [{self.b_min}, {self.b_max}]{' clipped' if self.clip else ''}"


Intensity = Union[IntensityRange, Callable[[torch.Tensor], torch.Tensor], str, None]


@dataclass(frozen=True)
class SlideInferSettings:
    """How a patch classifier is slid over a slide (:func:`medpipe.inference.slide.predict_slide_heatmap`).

    Attributes:
        roi_size: window ``(h, w)`` (or int) in pixels at ``level``: the patch size the classifier was trained on,
            at the slide's resolution (e.g. 50 for the IDC patches of Janowczyk & Madabhushi 2016).
        intensity: required, so that nothing is rescaled silently: an :class:`IntensityRange` (``uint8`` RGB to
            [0, 1] is ``IntensityRange(0, 255)``), a callable on the ``(B, C, h, w)`` float32 window batch (raw
            slide values), or ``"none"`` to feed raw values.
        overlap: window overlap fraction in [0, 1) (per axis or one value).
        mode: ``"constant"`` or ``"gaussian"`` blending of overlapping windows (as MONAI's
            ``sliding_window_inference``).
        sigma_scale: gaussian sigma as a fraction of ``roi_size``.
        sw_batch_size: windows per network call.
        tile_size: side of the output tiles processed at once (memory ~ ``(C + K + 1) * (tile + roi)**2 * 4``
            bytes), pixels at ``level``.
        level: pyramid level; or ``mpp`` (micrometres per pixel) instead; default level 0.
        mpp: see ``level``.
        resize_mode: ``torch.nn.functional.interpolate`` mode of the resize to the network's input size;
            ``"area"`` matches the default of MONAI's ``Resize``, which the training transforms should use too.
        activation: ``"softmax"`` (for logits), ``"sigmoid"`` or ``None`` (outputs are probabilities).
        class_index: output channel shown in the PNGs (1 = IDC / malignant for a 2-class model).
        tissue: ``True``: skip background windows using the Otsu tissue mask
            (:func:`medpipe.data.patches.tissue_mask`); a precomputed ``(mask, downsample)``; or ``False``.
        min_tissue: a window runs when its tissue fraction is above this (0 = any tissue).
        tissue_channel: ``"saturation"`` or ``"grey"`` (see :func:`medpipe.data.patches.tissue_mask`).
        tissue_max_size: largest side of the tissue mask, pixels.
        backend: WSI backend (:func:`medpipe.data.wsi.open_slide`).
        thumbnail_size: largest side of the PNGs, pixels.
        alpha: opacity of the overlay at probability 1.

    Raises:
        ValueError: (at construction) no ``intensity``, an ``intensity`` that is neither callable nor ``"none"``,
            a bad ``roi_size``.
    """

    roi_size: Union[int, Sequence[int]]
    intensity: Intensity
    overlap: Union[float, Sequence[float]] = 0.0
    mode: str = "constant"
    sigma_scale: float = 0.125
    sw_batch_size: int = 64
    tile_size: int = 2048
    level: Union[int, None] = None
    mpp: Union[float, None] = None
    resize_mode: str = "area"
    activation: Union[str, None] = "softmax"
    class_index: int = 1
    tissue: Union[bool, tuple[np.ndarray, float]] = True
    min_tissue: float = 0.0
    tissue_channel: str = "saturation"
    tissue_max_size: int = 2048
    backend: str = "auto"
    thumbnail_size: int = 1024
    alpha: float = 0.5

    def __post_init__(self) -> None:
        size_pair(self.roi_size)
        if self.intensity is None:
            raise ValueError(
                "say how slide intensities are scaled for the network: intensity=IntensityRange(a_min, a_max, b_min, "
                "b_max) (e.g. IntensityRange(0, 255) for uint8 RGB to [0, 1], as the training transforms' "
                "ScaleIntensityRanged), a callable, or intensity='none' for raw values"
            )
        if isinstance(self.intensity, str):
            if self.intensity != "none":
                raise ValueError(f"intensity must be a callable or 'none', got {self.intensity!r}")
        elif not callable(self.intensity):
            raise ValueError(f"intensity must be a callable or 'none', got {type(self.intensity).__name__}")

    @classmethod
    def from_config(cls, section: Any) -> SlideInferSettings:
        """Settings from the validated ``slide_infer`` section.

        Args:
            section: a :class:`medpipe.config.SlideInferConfig` (``cfg.slide_infer``), or any object with its
                attributes; ``intensity`` has ``a_min``, ``a_max``, ``b_min``, ``b_max``, ``clip``. Fields the
                section lacks (``activation``) keep the defaults above; ``input_size`` is not a setting (pass
                ``cfg.slide_input_size()`` to ``predict_slide_heatmap``).

        Returns:
            the settings.

        Raises:
            ValueError: as the constructor.
        """
        values = {f.name: getattr(section, f.name) for f in dataclasses.fields(cls)
                  if f.name != "intensity" and hasattr(section, f.name)}
        i = section.intensity
        return cls(intensity=IntensityRange(i.a_min, i.a_max, i.b_min, i.b_max, i.clip), **values)

    def scaler(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The window scaling as a function of the ``(B, C, h, w)`` float32 batch.

        Returns:
            ``intensity`` itself, or the identity for ``"none"``.
        """
        return (lambda x: x) if isinstance(self.intensity, str) else self.intensity  # type: ignore[return-value]

    def record(self, input_size: Sequence[int]) -> dict:
        """The settings that shape the heatmap, for ``SlideHeatmap.settings`` (run records, ``slides.json``).

        Args:
            input_size: the network input ``(h, w)`` the windows were resized to.

        Returns:
            dict with ``roi_size``, ``input_size``, ``overlap``, ``mode``, ``sw_batch_size``, ``tile_size``,
            ``activation``, ``min_tissue`` and ``intensity`` (text).
        """
        i = self.intensity
        text = i.describe() if isinstance(i, IntensityRange) else (
            i if isinstance(i, str) else getattr(i, "__name__", type(i).__name__))
        return {"roi_size": list(size_pair(self.roi_size)), "input_size": list(input_size), "overlap": self.overlap,
                "mode": self.mode, "sw_batch_size": self.sw_batch_size, "tile_size": self.tile_size,
                "activation": self.activation, "min_tissue": self.min_tissue, "intensity": text}
