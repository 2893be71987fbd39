"""Loading a pipeline file: YAML with a line map (and duplicate keys refused), ``--set`` overrides, schema
upgrades, then validation against :class:`~medpipe.config.pipeline.PipelineConfig` with every problem reported at
once (:class:`~medpipe.config.errors.ConfigError`); and the resolved config written beside every run.

YAML is read with PyYAML's ``SafeLoader`` (plain data: no tags that build objects) under limits that a pipeline
(a few KB, a few hundred values) never reaches, so that a hostile file is refused in well under a second instead
of exhausting memory: :data:`MAX_CONFIG_BYTES` per file, :data:`MAX_YAML_ALIASES` alias uses (``*name``),
:data:`MAX_YAML_NODES` values once aliases are expanded (a "billion laughs" file of nested aliases is a few
hundred bytes and expands to 10^9 values), :data:`MAX_YAML_DEPTH` levels of nesting, and no alias that refers to
the list or mapping containing it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import yaml
from pydantic import ValidationError

from medpipe.config.errors import ConfigError, LineMap, config_error_from_validation
from medpipe.config.pipeline import PipelineConfig
from medpipe.config.schema import upgrade_config_dict

__all__ = ["DuplicateKeyError", "YAMLLimitError", "line_map", "parse_yaml", "read_yaml_file", "apply_overrides",
           "validate_config", "load_config", "resolved_dict", "flatten", "MAX_CONFIG_BYTES", "MAX_YAML_ALIASES",
           "MAX_YAML_NODES", "MAX_YAML_DEPTH"]

#: largest pipeline file read, in bytes (the shipped pipelines are 3-6 KB)
MAX_CONFIG_BYTES = 256 * 1024
#: most alias uses (``*name``) in one YAML document (a pipeline needs a few, e.g. a shared ``keys`` list)
MAX_YAML_ALIASES = 100
#: most values (scalars, lists, mappings) in one YAML document, counting an aliased value at every use
MAX_YAML_NODES = 20_000
#: deepest nesting of lists and mappings in one YAML document (a pipeline nests 4-6 levels)
MAX_YAML_DEPTH = 64


class DuplicateKeyError(Exception):
    """A YAML mapping repeats a key (``yaml.safe_load`` would silently keep the last one).

    ``args[0]`` is ``(key_path, line)``: the repeated key's path and 1-based line.
    """


class YAMLLimitError(ValueError):
    """A YAML document exceeds a limit of :mod:`medpipe.config.loading` (aliases, expanded size, nesting, a
    recursive alias, or the file size).

    Attributes:
        line: the 1-based line where the limit was reached, or ``None`` (the whole file).
    """

    def __init__(self, message: str, line: Optional[int] = None):
        self.line = line
        super().__init__(message)


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses, while composing, more than :data:`MAX_YAML_ALIASES` alias uses, more than
    :data:`MAX_YAML_NODES` composed values and nesting deeper than :data:`MAX_YAML_DEPTH`."""

    def __init__(self, stream):
        super().__init__(stream)
        self._aliases = 0
        self._nodes = 0
        self._depth = 0

    def compose_node(self, parent, index):
        """Count the node (or alias use) about to be composed, then compose it as ``SafeLoader`` does."""
        line = self.peek_event().start_mark.line + 1
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                raise YAMLLimitError(f"more than {MAX_YAML_ALIASES} alias uses (*name); a pipeline needs a few: "
                                     "write the values out", line)
        else:
            self._nodes += 1
            if self._nodes > MAX_YAML_NODES:
                raise YAMLLimitError(f"more than {MAX_YAML_NODES} values; a pipeline has a few hundred: is this a "
                                     "pipeline file?", line)
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise YAMLLimitError(f"lists and mappings nested more than {MAX_YAML_DEPTH} levels deep", line)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a composed document whose aliases expand it past :data:`MAX_YAML_NODES` values, or refer to a
    list or mapping from inside it (a recursive structure). Linear in the composed nodes (sizes memoised)."""
    sizes: Dict[int, int] = {}
    active = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise YAMLLimitError("an alias refers to the list or mapping that contains it (a recursive structure)",
                                 node.start_mark.line + 1)
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            for child in node.value:
                total += size(child)
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                total += size(k) + size(v)
        active.discard(key)
        if total > MAX_YAML_NODES:
            raise YAMLLimitError(f"aliases (*name) expand this value to more than {MAX_YAML_NODES} values (nested "
                                 "aliases, a 'billion laughs' document); a pipeline has a few hundred: write the "
                                 "values out", node.start_mark.line + 1)
        sizes[key] = total
        return total

    size(root)


def _compose(text: str):
    """``(loader, root node or None)`` of a one-document YAML text, within the limits. Dispose the loader."""
    loader = _BoundedLoader(text)
    try:
        root = loader.get_single_node()
        if root is not None:
            _check_expansion(root)
    except BaseException:
        loader.dispose()
        raise
    return loader, root


def _walk_lines(root: Optional[yaml.Node]) -> LineMap:
    """The :data:`LineMap` of a composed document (duplicate keys refused)."""
    lines: LineMap = {}

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


def line_map(text: str) -> LineMap:
    """Map each key path in a YAML document to the 1-based line where its key (or list item) starts.

    Args:
        text: the YAML document.

    Returns:
        ``{("train", "max_epochs"): 17, ("transforms", "train", 0): 8, ...}``.

    Raises:
        DuplicateKeyError: a mapping repeats a key; ``args[0]`` is ``(key_path, line)``.
        YAMLLimitError: the document exceeds a limit (aliases, expanded size, nesting, recursive alias).
        yaml.YAMLError: the text is not valid YAML.
    """
    loader, root = _compose(text)
    loader.dispose()
    return _walk_lines(root)


def parse_yaml(text: str) -> Tuple[Any, LineMap]:
    """Parse one YAML document as plain data (``SafeLoader``), within the limits of this module.

    Args:
        text: the YAML document.

    Returns:
        ``(data, lines)``: the data as ``yaml.safe_load`` returns it, and its :data:`LineMap`.

    Raises:
        DuplicateKeyError: a mapping repeats a key; ``args[0]`` is ``(key_path, line)``.
        YAMLLimitError: more than :data:`MAX_YAML_ALIASES` alias uses, more than :data:`MAX_YAML_NODES` values
            with aliases expanded, nesting deeper than :data:`MAX_YAML_DEPTH`, or a recursive alias.
        yaml.YAMLError: the text is not valid YAML (or holds several documents).
    """
    loader, root = _compose(text)
    try:
        lines = _walk_lines(root)
        data = loader.construct_document(root) if root is not None else None
    finally:
        loader.dispose()
    return data, lines


def read_yaml_file(path: Union[str, Path]) -> Tuple[Any, LineMap]:
    """Read a YAML file as plain data with its line map, refusing what a pipeline file never is.

    Args:
        path: the file (at most :data:`MAX_CONFIG_BYTES` bytes of UTF-8 text).

    Returns:
        ``(data, lines)`` as :func:`parse_yaml`.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ConfigError: one line naming the file: larger than :data:`MAX_CONFIG_BYTES`, not UTF-8 text, a YAML
            syntax error, a duplicate key, or a limit of :func:`parse_yaml` (with the line where it was reached).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pipeline file {path} not found")
    size = path.stat().st_size
    with path.open("rb") as f:
        raw = f.read(MAX_CONFIG_BYTES + 1)  # not more, whatever the size said
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(str(path), [("", None, f"the file is {max(size, len(raw))} bytes, more than the "
                                       f"{MAX_CONFIG_BYTES} bytes a pipeline file may have (pipelines are a few "
                                       "KB): is this the right file?")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [("", None, f"not UTF-8 text (byte {exc.start}: {raw[exc.start:exc.start + 1]!r}"
                                       "): a pipeline file is YAML text")]) from None
    try:
        return parse_yaml(text)
    except DuplicateKeyError as dup:
        key_path, line = dup.args[0]
        raise ConfigError(str(path), [(".".join(map(str, key_path)), line, "duplicate key")]) from None
    except YAMLLimitError as exc:
        raise ConfigError(str(path), [("", exc.line, f"refused: {exc}")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(str(path), [("", line, f"YAML syntax error: {getattr(exc, 'problem', None) or exc}")]
                          ) from None


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
        ValueError: an override without ``=``, through a non-mapping, or with a value that is not valid YAML (or
            exceeds the limits of :func:`parse_yaml`).
    """
    data = copy.deepcopy(data)
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"--set expects key.path=value, found {item!r}")
        key, raw = item.split("=", 1)
        try:
            value, _ = parse_yaml(raw)
        except (yaml.YAMLError, DuplicateKeyError, YAMLLimitError) as exc:
            problem = getattr(exc, "problem", None) or exc
            raise ValueError(f"--set {key.strip()}: the value {raw!r} is not valid YAML ({problem})") from None
        _set_path(data, key.strip(), value)
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
        ConfigError: a file refused by :func:`read_yaml_file` (too large, not UTF-8, YAML syntax error, duplicate
            key, too many or recursive aliases), a bad override, or any validation problem, all listed with lines.
    """
    path = Path(path)
    data, lines = read_yaml_file(path)
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
