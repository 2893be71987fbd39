"""Build MONAI dictionary-transform chains from validated config.

Transforms are named by their MONAI class name; medpipe adds its own only where MONAI has none
(:mod:`medpipe.data.custom_transforms`). The name -> class table is :func:`medpipe.config.transform_table`, the
one that validated the names.
"""

from __future__ import annotations

import logging
from typing import List, Optional, Sequence

from medpipe.config import transform_table
# compatibility: these lived here before medpipe.data.custom_transforms; import them from there
from medpipe.data.custom_transforms import CUSTOM_TRANSFORMS, ToGrayscale, ToGrayscaled  # noqa: F401

logger = logging.getLogger(__name__)

__all__ = ["build_transforms", "cache_on_device"]


def build_transforms(specs: Sequence, where: str = "transforms", series_uid: Optional[Sequence[str]] = None):
    """Instantiate a ``monai.transforms.Compose`` from transform specs.

    Every ``LoadImaged`` reads a DICOM series folder with :class:`medpipe.data.volumes.DicomSeriesReader` (series
    chosen by ``series_uid``, slices sorted by position, gaps refused) and files with its own readers
    (:func:`medpipe.data.volumes.add_series_reader`).

    Args:
        specs: :class:`medpipe.config.TransformSpec` items (``name`` + keyword arguments).
        where: config path of the list, used in error messages (e.g. ``"transforms.train"``).
        series_uid: ``data.series_uid``: the SeriesInstanceUID(s) to read from folders holding several series.

    Returns:
        ``monai.transforms.Compose`` applying the transforms in order; random transforms draw from the
        Compose's random state, which :func:`medpipe.engine.trainer.seed_everything` sets.

    Raises:
        ValueError: a transform rejected its arguments; the message names ``where[i]`` and the transform.
    """
    import monai.transforms as mt

    table = transform_table()
    built: List = []
    for i, spec in enumerate(specs):
        cls = table[spec.name]
        try:
            built.append(cls(**spec.kwargs))
        except Exception as exc:  # MONAI raises ValueError/TypeError/etc. with its own text
            raise ValueError(f"{where}[{i}] {spec.name}: {type(exc).__name__}: {exc}") from exc
    from medpipe.data.volumes import add_series_reader

    return add_series_reader(mt.Compose(built), series_uid)


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
