"""Build MONAI dictionary-transform chains from validated config.

Transforms are named by their MONAI class name; medpipe adds its own only where MONAI has none
(``CUSTOM_TRANSFORMS``, array transform + dictionary wrapper ending in ``d``, as MONAI does).
"""

from __future__ import annotations

import logging
from typing import Dict, List, Sequence

from monai.transforms import MapTransform, Transform

logger = logging.getLogger(__name__)

__all__ = ["build_transforms", "cache_on_device", "CUSTOM_TRANSFORMS", "ToGrayscale", "ToGrayscaled"]


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


def build_transforms(specs: Sequence, where: str = "transforms"):
    """Instantiate a ``monai.transforms.Compose`` from transform specs.

    Args:
        specs: :class:`medpipe.config.TransformSpec` items (``name`` + keyword arguments).
        where: config path of the list, used in error messages (e.g. ``"transforms.train"``).

    Returns:
        ``monai.transforms.Compose`` applying the transforms in order; random transforms draw from the
        Compose's random state, which :func:`medpipe.engine.trainer.seed_everything` sets.

    Raises:
        ValueError: a transform rejected its arguments; the message names ``where[i]`` and the transform.
    """
    import monai.transforms as mt

    from medpipe.config import _transform_table

    table = _transform_table()
    built: List = []
    for i, spec in enumerate(specs):
        cls = table[spec.name]
        try:
            built.append(cls(**spec.kwargs))
        except Exception as exc:  # MONAI raises ValueError/TypeError/etc. with its own text
            raise ValueError(f"{where}[{i}] {spec.name}: {type(exc).__name__}: {exc}") from exc
    return mt.Compose(built)


def cache_on_device(chain, device):
    """``chain`` with ``monai.transforms.ToDeviced`` inserted before its first random transform (at the end when
    it has none), so that ``CacheDataset``, which caches the deterministic prefix, holds the cached tensors on
    ``device`` and the random transforms after it run there too (MONAI's fast-training recipe: CacheDataset +
    ToDeviced + ThreadDataLoader, ``num_workers`` 0).

    Args:
        chain: a ``monai.transforms.Compose`` from :func:`build_transforms`.
        device: ``torch.device``; the keys moved are those of the chain's first transform (the loaded images, e.g.
            ``image`` and ``label``).

    Returns:
        A new ``Compose`` (the input is unchanged).
    """
    from monai.transforms import Compose, Randomizable, ToDeviced

    items = list(chain.transforms)
    if not items or not hasattr(items[0], "keys"):
        raise ValueError("data.cache_on_device: the transform chain must start with a dictionary transform "
                         "naming the image keys (e.g. LoadImaged)")
    at = next((i for i, t in enumerate(items) if isinstance(t, Randomizable)), len(items))
    items.insert(at, ToDeviced(keys=list(items[0].keys), device=device))
    return Compose(items)
