"""The base of every pipeline config model: unknown keys are errors, defaults are validated."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["StrictModel"]


class StrictModel(BaseModel):
    """A pydantic v2 model that refuses unknown keys (``extra="forbid"``: a misspelled key is an error, never
    silently dropped), validates its defaults (``validate_default=True``), refuses non-finite numbers in its float
    fields (``allow_inf_nan=False``: ``.nan``, ``.inf`` and ``-.inf`` in YAML or ``--set``, e.g.
    ``optimizer.lr=.inf``, would train NaN weights) and stays mutable (task-dependent defaults are filled in after
    validation, see :class:`medpipe.config.PipelineConfig`).

    Every config section derives from it; :class:`medpipe.config.TransformSpec` does not (it allows the
    transform's keyword arguments as extra keys).
    """

    model_config = ConfigDict(extra="forbid", frozen=False, validate_default=True, allow_inf_nan=False)
