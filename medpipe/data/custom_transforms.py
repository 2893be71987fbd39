"""medpipe's own dictionary transforms, where MONAI has none: an array transform plus a dictionary wrapper
ending in ``d``, as MONAI does.

A leaf module: it imports MONAI only (no other medpipe module), so that :mod:`medpipe.config` can check transform
names against :data:`CUSTOM_TRANSFORMS` without an import cycle.
"""

from __future__ import annotations

from typing import Dict

from monai.transforms import MapTransform, Transform

__all__ = ["ToGrayscale", "ToGrayscaled", "CUSTOM_TRANSFORMS"]


class ToGrayscale(Transform):
    """Colour image -> one grey channel by the ITU-R BT.601 luma weights ``0.299 R + 0.587 G + 0.114 B`` (what
    Pillow's ``convert("L")`` computes), e.g. for chest X-rays stored as RGB with three equal channels.

    Input ``(3, H, W[, D])`` (channel first; a 4th alpha channel is ignored) or ``(1, H, W[, D])`` (returned
    unchanged); output ``(1, H, W[, D])`` float32, same type (tensor / MetaTensor / numpy) as the input.

    Raises:
        ValueError: the channel axis has another size than 1, 3 or 4.
    """

    WEIGHTS = (0.299, 0.587, 0.114)

    def __call__(self, img):
        channels = img.shape[0]
        if channels == 1:
            return img
        if channels not in (3, 4):
            raise ValueError(f"ToGrayscale expects 1, 3 or 4 channels first, got shape {tuple(img.shape)}")
        r, g, b = (img[i:i + 1].float() if hasattr(img, "float") else img[i:i + 1].astype("float32")
                   for i in range(3))
        return r * self.WEIGHTS[0] + g * self.WEIGHTS[1] + b * self.WEIGHTS[2]


class ToGrayscaled(MapTransform):
    """Dictionary wrapper of :class:`ToGrayscale`.

    Args:
        keys: keys of the images to convert, e.g. ``[image]``.
        allow_missing_keys: don't raise if a key is absent.
    """

    def __init__(self, keys, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = ToGrayscale()

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


#: medpipe's own dictionary transforms, by class name (allowed in YAML next to MONAI's).
CUSTOM_TRANSFORMS: Dict[str, type] = {"ToGrayscaled": ToGrayscaled}
