"""Config errors and their rendering: every problem with its YAML line, dotted key path, what was found and
what was expected, with the allowed keys and a "did you mean" suggestion for a misspelled key or name.

:class:`ConfigError` is what users see; :class:`CrossFieldError` carries problems that involve several fields out
of :class:`medpipe.config.PipelineConfig` validation; :func:`config_error_from_validation` turns a pydantic
``ValidationError`` into one :class:`ConfigError` listing every problem at once.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any, Dict, List, Optional, Tuple, Union

from pydantic import BaseModel, ValidationError
from typing_extensions import Annotated

from medpipe.registry import did_you_mean

__all__ = ["ConfigError", "CrossFieldError", "config_error_from_validation", "line_for"]

#: a YAML key path (mapping keys and list indices) -> the 1-based line where that key or list item starts
LineMap = Dict[Tuple[Any, ...], int]


class ConfigError(ValueError):
    """A pipeline file failed to load or validate.

    Attributes:
        source: the file (or ``"<string>"``).
        problems: list of ``(key_path, line, message)``; ``line`` is 1-based or ``None``.
    """

    def __init__(self, source: str, problems: List[Tuple[str, Optional[int], str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {len(problems)} problem{'s' if len(problems) != 1 else ''}:"]
        for path, line, msg in problems:
            where = f"line {line}, " if line else ""
            lines.append(f"  - {where}{path or '<top>'}: {msg}")
        super().__init__("\n".join(lines))


class CrossFieldError(ValueError):
    """Problems that involve several config fields, each tied to the key path it is reported at.

    Raised inside :class:`medpipe.config.PipelineConfig` validation; :func:`config_error_from_validation` turns
    each problem into a :class:`ConfigError` entry with that path's YAML line.

    Attributes:
        problems: ``[(key_path_tuple, message), ...]``.
    """

    def __init__(self, problems: List[Tuple[Tuple[Any, ...], str]]):
        self.problems = problems
        super().__init__("; ".join(f"{'.'.join(map(str, p))}: {m}" for p, m in problems))


def _unwrap(tp):
    """Strip Optional/Annotated; return (origin-free type or tuple of union members)."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin is Union:
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        return members[0] if len(members) == 1 else tuple(members)
    return tp


def _allowed_keys(root: type, path: Tuple[Any, ...], data: Any) -> Optional[List[str]]:
    """Field names of the model that holds ``path[-1]``, following ``data`` from the ``root`` model to pick union
    members."""
    cur: Any = root
    node = data
    for key in path[:-1]:
        cur = _unwrap(cur)
        if isinstance(cur, tuple):  # union of models: pick by `name`
            tag = node.get("name") if isinstance(node, dict) else None
            cur = next((m for m in cur if tag in _tags_of(m)), None)
            if cur is None:
                return None
        if inspect.isclass(cur) and issubclass(cur, BaseModel):
            if key not in cur.model_fields:
                return None
            cur = cur.model_fields[key].annotation
        elif typing.get_origin(cur) in (list, List) and isinstance(key, int):
            cur = typing.get_args(cur)[0]
        else:
            return None
        node = node[key] if isinstance(node, (dict, list)) else None
    cur = _unwrap(cur)
    if isinstance(cur, tuple):
        tag = node.get("name") if isinstance(node, dict) else None
        cur = next((m for m in cur if tag in _tags_of(m)), None)
    if inspect.isclass(cur) and issubclass(cur, BaseModel):
        return list(cur.model_fields)
    return None


def _tags_of(model) -> Tuple[Any, ...]:
    """The discriminator values (``name`` literals) of a union member model, e.g. ``("resnet18", "resnet50")``."""
    f = getattr(model, "model_fields", {}).get("name")
    if f is None:
        return ()
    return typing.get_args(f.annotation)


def _data_path(loc: Tuple[Any, ...], data: Any) -> Tuple[Any, ...]:
    """Drop pydantic's union-tag elements from ``loc`` so that it follows the YAML structure."""
    out = []
    node = data
    for key in loc:
        if isinstance(node, dict) and key in node:
            node = node[key]
            out.append(key)
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
            out.append(key)
        elif isinstance(node, dict) and isinstance(key, str) and key not in node and key != "name" and (
            node.get("name") == key
        ):
            continue  # discriminator tag inserted by pydantic
        else:
            out.append(key)
            node = None
    return tuple(out)


def line_for(path: Tuple[Any, ...], lines: LineMap) -> Optional[int]:
    """The YAML line of ``path``, or of its nearest ancestor in ``lines`` (e.g. a missing key's section).

    Args:
        path: key path, e.g. ``("train", "max_epochs")`` or ``("transforms", "train", 2)``.
        lines: the file's :data:`LineMap`.

    Returns:
        The 1-based line, or ``None`` when neither the path nor any ancestor is in the file.
    """
    for n in range(len(path), 0, -1):
        if path[:n] in lines:
            return lines[path[:n]]
    return None


def _format_error(err: Dict[str, Any], data: Any, root: type) -> Tuple[Tuple[Any, ...], str]:
    """One pydantic error -> (YAML key path, message in medpipe's words)."""
    path = _data_path(tuple(err["loc"]), data)
    etype = err["type"]
    if etype == "extra_forbidden":
        allowed = _allowed_keys(root, path, data) or []
        msg = f"unknown key {path[-1]!r}." + did_you_mean(str(path[-1]), allowed)
        if allowed:
            msg += f" Allowed keys: {', '.join(allowed)}"
        return path, msg
    if etype == "union_tag_invalid":
        ctx = err.get("ctx", {})
        tag = ctx.get("tag")
        expected = [t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",")]
        return path + ("name",), f"unknown name {tag!r}; allowed: {', '.join(expected)}." + did_you_mean(
            str(tag), expected
        )
    if etype == "union_tag_not_found":
        return path, "missing `name` (it selects the component)"
    if etype == "missing":
        return path, "required key is missing"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if "input" in err and etype not in ("model_type", "dict_type") and not isinstance(err["input"], (dict, list)):
        msg += f" (found {err['input']!r})"
    return path, msg


def config_error_from_validation(exc: ValidationError, data: Any, source: str, lines: LineMap,
                                 root: type) -> ConfigError:
    """One :class:`ConfigError` listing every problem of a failed validation, sorted by line.

    Args:
        exc: the pydantic error of ``root.model_validate(data)``.
        data: the validated mapping (to follow the YAML structure through unions and to list allowed keys).
        source: file name used in the message.
        lines: key path -> YAML line (:data:`LineMap`); problems without a line come last.
        root: the model that was validated (e.g. :class:`medpipe.config.PipelineConfig`).

    Returns:
        The error (not raised). A :class:`CrossFieldError` raised by a model validator contributes each of its
        problems at its own key path.
    """
    problems = []
    for err in exc.errors():
        cross = (err.get("ctx") or {}).get("error")
        if isinstance(cross, CrossFieldError):
            for path, msg in cross.problems:
                problems.append((".".join(str(p) for p in path), line_for(path, lines), msg))
            continue
        path, msg = _format_error(err, data, root)
        problems.append((".".join(str(p) for p in path), line_for(path, lines), msg))
    problems.sort(key=lambda p: (p[1] is None, p[1] or 0))
    return ConfigError(source, problems)
