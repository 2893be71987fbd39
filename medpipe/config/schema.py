"""Versions of the config layout and the steps that upgrade an older file to the current one.

Every ``config.resolved.yaml`` records the layout it was written with as ``schema_version`` (its first key). A
mapping without the key is version 0: resolved configs written before versioning, and user pipelines, which
need not carry it. :func:`upgrade_config_dict` brings an older mapping to :data:`CURRENT_SCHEMA_VERSION` before
validation, one step per version, so that a run folder written by an older medpipe can still be served or
resumed. A file from a newer medpipe is refused with a :class:`~medpipe.config.errors.ConfigError`.

Changing the layout (renaming or moving a key, changing a meaning): increase :data:`CURRENT_SCHEMA_VERSION` and
add the step from the previous version to :data:`UPGRADES`.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from medpipe.config.errors import ConfigError, LineMap

__all__ = ["CURRENT_SCHEMA_VERSION", "UPGRADES", "upgrade_config_dict"]

#: the config layout this medpipe writes and reads (1: the first versioned layout)
CURRENT_SCHEMA_VERSION = 1

_KEY = "schema_version"


def _v0_to_v1(data: Dict[str, Any]) -> Dict[str, Any]:
    """Version 0 (no ``schema_version``) -> 1: the same content; only the key is added, as the first key."""
    return {_KEY: 1, **{k: v for k, v in data.items() if k != _KEY}}


#: ordered upgrade steps: ``{from_version: step}``; a step takes a mapping of that version and returns a new
#: mapping of version ``from_version + 1`` (with ``schema_version`` set to it). One per version below the current.
UPGRADES: Dict[int, Callable[[Dict[str, Any]], Dict[str, Any]]] = {
    0: _v0_to_v1,
}


def upgrade_config_dict(data: Dict[str, Any], source: str, lines: Optional[LineMap] = None) -> Dict[str, Any]:
    """Bring a parsed pipeline mapping to :data:`CURRENT_SCHEMA_VERSION`.

    Args:
        data: the top-level mapping from ``yaml.safe_load`` (not modified). Without ``schema_version`` it is
            version 0.
        source: file name used in error messages.
        lines: key path -> YAML line map of the file (for error messages), as from
            :func:`medpipe.config.loading.line_map`.

    Returns:
        A new mapping with ``schema_version`` equal to :data:`CURRENT_SCHEMA_VERSION`, the steps of
        :data:`UPGRADES` applied in order from the file's version.

    Raises:
        ConfigError: ``schema_version`` is not a non-negative integer, or is newer than
            :data:`CURRENT_SCHEMA_VERSION` (the message names the file, the version found and the newest supported).
    """
    version = data.get(_KEY, 0)
    line = (lines or {}).get((_KEY,))
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ConfigError(source, [(_KEY, line, "must be a non-negative integer (the version of the config "
                                    f"layout), found {version!r}")])
    if version > CURRENT_SCHEMA_VERSION:
        raise ConfigError(source, [(_KEY, line, f"is {version}, newer than this medpipe supports (newest supported: "
                                    f"{CURRENT_SCHEMA_VERSION}); the file was written by a newer medpipe: upgrade "
                                    "medpipe to read it")])
    out = dict(data)
    for step_from in range(version, CURRENT_SCHEMA_VERSION):
        out = UPGRADES[step_from](out)
    out[_KEY] = CURRENT_SCHEMA_VERSION
    return out
