"""Loading a pipeline file: YAML with a line map (and duplicate keys refused), ``--set`` overrides, schema
upgrades, then validation against :class:`~medpipe.config.pipeline.PipelineConfig` with every problem reported at
once (:class:`~medpipe.config.errors.ConfigError`); and the resolved config written beside every run.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import yaml
from pydantic import ValidationError

from medpipe.config.errors import ConfigError, LineMap, config_error_from_validation
from medpipe.config.pipeline import PipelineConfig
from medpipe.config.schema import upgrade_config_dict

__all__ = ["DuplicateKeyError", "line_map", "apply_overrides", "validate_config", "load_config", "resolved_dict",
           "flatten"]


class DuplicateKeyError(Exception):
    """A YAML mapping repeats a key (``yaml.safe_load`` would silently keep the last one).

    ``args[0]`` is ``(key_path, line)``: the repeated key's path and 1-based line.
    """


def line_map(text: str) -> LineMap:
    """Map each key path in a YAML document to the 1-based line where its key (or list item) starts.

    Args:
        text: the YAML document.

    Returns:
        ``{("train", "max_epochs"): 17, ("transforms", "train", 0): 8, ...}``.

    Raises:
        DuplicateKeyError: a mapping repeats a key; ``args[0]`` is ``(key_path, line)``.
        yaml.YAMLError: the text is not valid YAML.
    """
    lines: LineMap = {}
    root = yaml.compose(text, Loader=yaml.SafeLoader)

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for k, v in node.value:
                key = k.value
                if key in seen:
                    raise DuplicateKeyError((path + (key,), k.start_mark.line + 1))
                seen.add(key)
                lines[path + (key,)] = k.start_mark.line + 1
                walk(v, path + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines[path + (i,)] = v.start_mark.line + 1
                walk(v, path + (i,))

    if root is not None:
        walk(root, ())
    return lines


def _set_path(data: Dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur: Any = data
    for i, k in enumerate(keys[:-1]):
        if isinstance(cur, list):
            cur = cur[int(k)]
            continue
        if k not in cur or cur[k] is None:
            cur[k] = {}
        cur = cur[k]
        if not isinstance(cur, (dict, list)):
            raise ValueError(f"--set {dotted}: {'.'.join(keys[: i + 1])} is a {type(cur).__name__}, not a mapping")
    last = keys[-1]
    if isinstance(cur, list):
        cur[int(last)] = value
    else:
        cur[last] = value


def apply_overrides(data: Dict[str, Any], overrides: Optional[List[str]]) -> Dict[str, Any]:
    """Return a copy of ``data`` with ``key.path=value`` overrides applied (values parsed as YAML).

    Example: ``["train.max_epochs=3", "infer.roi_size=[128,128]", "transforms.train.2.prob=0.3"]``.

    Raises:
        ValueError: an override without ``=`` or through a non-mapping.
    """
    data = copy.deepcopy(data)
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"--set expects key.path=value, found {item!r}")
        key, raw = item.split("=", 1)
        _set_path(data, key.strip(), yaml.safe_load(raw))
    return data


def validate_config(data: Any, source: str = "<string>", lines: Optional[LineMap] = None) -> PipelineConfig:
    """Validate a parsed pipeline mapping.

    An older layout (no ``schema_version``: version 0) is first upgraded to the current one
    (:func:`medpipe.config.schema.upgrade_config_dict`).

    Args:
        data: the mapping from ``yaml.safe_load``.
        source: file name used in error messages.
        lines: key path -> YAML line map from the file (for error messages).

    Raises:
        ConfigError: listing every problem at once, each with its key path and line; or a ``schema_version``
            that is not an integer or is newer than this medpipe supports.
    """
    lines = lines or {}
    if not isinstance(data, dict):
        raise ConfigError(source, [("", 1, f"expected a mapping at the top level, found {type(data).__name__}")])
    data = upgrade_config_dict(data, source, lines)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise config_error_from_validation(exc, data, source, lines, PipelineConfig) from None


def load_config(path: Union[str, Path], overrides: Optional[List[str]] = None) -> PipelineConfig:
    """Read, override and validate a pipeline YAML file.

    Args:
        path: the pipeline file.
        overrides: ``key.path=value`` strings (``--set`` on the command line), values parsed as YAML.

    Returns:
        The validated :class:`PipelineConfig`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ConfigError: YAML syntax error, duplicate key, or any validation problem, all listed with lines.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pipeline file {path} not found")
    text = path.read_text()
    try:
        lines = line_map(text)
        data = yaml.safe_load(text)
    except DuplicateKeyError as dup:
        key_path, line = dup.args[0]
        raise ConfigError(str(path), [(".".join(map(str, key_path)), line, "duplicate key")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(str(path), [("", line, f"YAML syntax error: {getattr(exc, 'problem', exc)}")]) from None
    try:
        data = apply_overrides(data, overrides)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ConfigError(str(path), [("", None, f"bad override: {exc}")]) from None
    return validate_config(data, str(path), lines)


def resolved_dict(cfg: PipelineConfig) -> Dict[str, Any]:
    """The fully resolved config (defaults filled in) as plain data, for ``config.resolved.yaml``.

    Its first key is ``schema_version`` (the layout version, :data:`medpipe.config.schema.CURRENT_SCHEMA_VERSION`);
    :func:`load_config` reads the written file back to an equal config.
    """
    return cfg.model_dump(mode="json")


def flatten(d: Any, prefix: str = "") -> Dict[str, Any]:
    """Flatten nested dicts/lists to ``{"a.b.0.c": value}`` (for MLflow params)."""
    out: Dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(d, list) and d and any(isinstance(x, (dict, list)) for x in d):
        for i, v in enumerate(d):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = d
    return out
