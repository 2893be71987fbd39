"""Build MONAI dictionary-transform chains from validated config.

Transforms are named by their MONAI class name; medpipe adds its own only where MONAI has none
(``CUSTOM_TRANSFORMS``, array transform + dictionary wrapper ending in ``d``, as MONAI does).
"""

from __future__ import annotations

import logging
from typing import Dict, List, Sequence

logger = logging.getLogger(__name__)

#: medpipe's own dictionary transforms, by class name (allowed in YAML next to MONAI's).
CUSTOM_TRANSFORMS: Dict[str, type] = {}

__all__ = ["build_transforms", "CUSTOM_TRANSFORMS"]


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
