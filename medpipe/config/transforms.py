"""The ``transforms`` section: MONAI dictionary transforms by class name, checked against their signatures.

The table of allowed transforms (:func:`transform_table`) is MONAI's dictionary transforms plus medpipe's own
(:data:`medpipe.data.custom_transforms.CUSTOM_TRANSFORMS`); it is built lazily on the first check, so importing
this module imports neither torch nor MONAI.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Dict, List, Optional, Tuple

from pydantic import BaseModel, ConfigDict, model_validator

from medpipe.config.argtypes import annotations_of, data_only_problems, type_problems
from medpipe.config.base import StrictModel
from medpipe.registry import did_you_mean

__all__ = ["TransformSpec", "TransformsConfig", "check_transform_args", "transform_table"]


class TransformSpec(BaseModel):
    """One MONAI dictionary transform: ``{name: ScaleIntensityRanged, keys: [image], a_min: 0, ...}``.

    ``name`` is the MONAI class name (dictionary transforms only, i.e. subclasses of
    ``monai.transforms.MapTransform``); the remaining keys are its keyword arguments, checked against the
    class's ``__init__`` signature (and, for ``LoadImaged`` with a named ``reader``, that reader's signature):
    names, required arguments, value types against the annotations, and data only (no ``$``/``@``/``%`` bundle
    syntax, no NaN or infinity; :mod:`medpipe.config.argtypes`).
    """

    model_config = ConfigDict(extra="allow")
    name: str

    @model_validator(mode="after")
    def _check_signature(self) -> "TransformSpec":
        check_transform_args(self.name, self.kwargs)
        return self

    @property
    def kwargs(self) -> Dict[str, Any]:
        """Keyword arguments of the transform (everything but ``name``)."""
        return dict(self.model_extra or {})


def _monai_dict_transforms() -> Dict[str, type]:
    import monai.transforms as mt

    out = {}
    for attr in dir(mt):
        obj = getattr(mt, attr)
        if inspect.isclass(obj) and issubclass(obj, mt.MapTransform) and obj is not mt.MapTransform:
            if attr.endswith("d") or attr.endswith("D"):
                out[attr] = obj
    return out


@functools.lru_cache(maxsize=None)
def transform_table() -> Dict[str, type]:
    """The transforms a pipeline may name: class name -> class.

    MONAI's dictionary transforms (subclasses of ``monai.transforms.MapTransform`` exported by
    ``monai.transforms`` whose name ends in ``d`` or ``D``) plus medpipe's own
    (:data:`medpipe.data.custom_transforms.CUSTOM_TRANSFORMS`). Built on the first call (it imports MONAI and
    torch), then cached; the same dict is returned every time, do not modify it.

    Returns:
        ``{class_name: class}``, e.g. ``{"ScaleIntensityRanged": monai.transforms.ScaleIntensityRanged, ...}``.
    """
    from medpipe.data.custom_transforms import CUSTOM_TRANSFORMS  # leaf module: imports only MONAI

    table = _monai_dict_transforms()
    table.update(CUSTOM_TRANSFORMS)
    return table


def _params(fn) -> Tuple[Dict[str, inspect.Parameter], bool]:
    sig = inspect.signature(fn)
    params = {k: p for k, p in sig.parameters.items() if k != "self"}
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    params = {k: p for k, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return params, var_kw


def check_transform_args(name: str, kwargs: Dict[str, Any]) -> None:
    """Check that ``name`` is an allowed dictionary transform and ``kwargs`` fit its signature.

    Args:
        name: class name from :func:`transform_table`, e.g. ``"ScaleIntensityRanged"``.
        kwargs: its keyword arguments from the YAML; for ``LoadImaged`` with a ``reader`` named by string
            (e.g. ``PILReader``), that ``monai.data`` reader's arguments are allowed too.

    Raises:
        ValueError: unknown transform (with the closest name), unknown argument (with the allowed ones),
            a missing required argument, a string starting with ``$``, ``@`` or ``%`` or a NaN/infinite number
            anywhere in the arguments, or a value its annotation does not accept (e.g. a string where a float goes;
            :func:`medpipe.config.argtypes.type_problems`), all problems of the transform in one message.
    """
    table = transform_table()
    if name not in table:
        hint = did_you_mean(name, table)
        if not hint and name + "d" in table:
            hint = f" Did you mean '{name}d' (the dictionary version)?"
        raise ValueError(f"unknown transform {name!r}: expected a MONAI dictionary transform class name.{hint}")
    cls = table[name]
    params, var_kw = _params(cls.__init__)
    hints = annotations_of(cls.__init__)
    unknown = [k for k in kwargs if k not in params]
    if unknown and var_kw and name == "LoadImaged" and isinstance(kwargs.get("reader"), str):
        import monai.data as md

        reader_cls = getattr(md, kwargs["reader"], None)
        if reader_cls is None:
            readers = [r for r in dir(md) if r.endswith("Reader") and r != "ImageReader"]
            raise ValueError(
                f"LoadImaged: unknown reader {kwargs['reader']!r}; allowed: {', '.join(readers)}."
                + did_you_mean(kwargs["reader"], readers)
            )
        r_params, r_var_kw = _params(reader_cls.__init__)
        hints = {**annotations_of(reader_cls.__init__), **hints}
        params = {**params, **r_params}
        var_kw = r_var_kw
        unknown = [k for k in kwargs if k not in params]
    if unknown and var_kw:
        # **kwargs are passed on (e.g. to a reader's backend): only flag names that look like typos of a
        # known argument, which would otherwise be passed on and fail later or be ignored.
        unknown = [k for k in unknown if did_you_mean(k, params)]
        var_kw = not unknown
    if unknown and not var_kw:
        allowed = ", ".join(params)
        msgs = [f"{name}: unknown argument {k!r}.{did_you_mean(k, params)} Allowed: {allowed}" for k in unknown]
        raise ValueError("; ".join(msgs))
    missing = [k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in kwargs]
    if missing:
        raise ValueError(f"{name}: missing required argument(s) {', '.join(missing)}")
    problems: List[str] = []
    for k, v in kwargs.items():  # a value that is not data is not type-checked too
        problems += data_only_problems(name, {k: v}) or (type_problems(name, {k: v}, hints) if k in params else [])
    if problems:
        raise ValueError("; ".join(problems))


class TransformsConfig(StrictModel):
    """MONAI dictionary transform chains.

    ``infer`` (for unlabelled images) defaults to ``val`` with the ``label`` key removed from every transform
    (a transform whose only key is ``label`` is dropped).
    """

    train: List[TransformSpec]
    val: List[TransformSpec]
    infer: Optional[List[TransformSpec]] = None
