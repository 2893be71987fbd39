"""Generate the config reference (Markdown) from the pydantic schema.

``python -m medpipe.config.doc > docs/config_reference.md``. A test checks that the committed page equals
this output, so the reference cannot drift from the code.
"""

from __future__ import annotations

import inspect
import sys
import typing
from typing import List

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from medpipe.config.loading import MAX_CONFIG_BYTES, MAX_YAML_ALIASES, MAX_YAML_DEPTH, MAX_YAML_NODES
from medpipe.config.pipeline import PipelineConfig
from medpipe.config.transforms import TransformSpec


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Literal:
        return " \\| ".join(repr(a) for a in args)
    if origin is typing.Union:
        return " \\| ".join(_type_name(a) for a in args)
    if origin in (list, typing.List):
        return f"list[{_type_name(args[0])}]" if args else "list"
    if origin in (tuple, typing.Tuple):
        return f"tuple[{', '.join(_type_name(a) for a in args)}]"
    if origin in (dict, typing.Dict):
        return "mapping"
    if origin is not None and hasattr(origin, "__name__") and origin.__name__ == "Annotated":
        return _type_name(args[0])
    if tp is type(None):
        return "null"
    if inspect.isclass(tp) and issubclass(tp, BaseModel):
        return f"[{tp.__name__}](#{tp.__name__.lower()})"
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _models() -> List[type]:
    seen, order = set(), []

    def visit(model):
        if model in seen:
            return
        seen.add(model)
        order.append(model)
        for f in model.model_fields.values():
            for tp in _walk(f.annotation):
                if inspect.isclass(tp) and issubclass(tp, BaseModel):
                    visit(tp)

    visit(PipelineConfig)
    return order


def _walk(tp):
    yield tp
    for a in typing.get_args(tp):
        yield from _walk(a)


def _default(field) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        return "*(section defaults)*"
    d = field.default
    if d is PydanticUndefined:
        return ""
    return f"`{d!r}`"


def render() -> str:
    """The reference page as Markdown: one table per config model, in the order they appear."""
    out = ["# Pipeline config reference", "",
           "Generated from `medpipe/config/` by `python -m medpipe.config.doc`; do not edit by hand.", "",
           "Unknown keys are errors. Transforms are MONAI dictionary transforms by class name with their keyword",
           "arguments (checked against the class signature: names, required arguments, and values against the",
           "argument's annotation); see `pipelines/em_unet.yaml` for a complete file.", "",
           "A pipeline is data only: numbers must be finite (no `.nan` / `.inf`, in the file or in `--set`), and a",
           "transform argument may not be a string starting with `$`, `@` or `%` (MONAI bundle expressions). A",
           f"file larger than {MAX_CONFIG_BYTES // 1024} KiB, with more than {MAX_YAML_ALIASES} aliases (`*name`), "
           f"more than {MAX_YAML_NODES} values once",
           f"aliases are expanded, nesting deeper than {MAX_YAML_DEPTH} levels, or a recursive alias is refused "
           "with the line where the limit was reached.", ""]
    for model in _models():
        out.append(f"## {model.__name__}")
        out.append("")
        doc = inspect.cleandoc(model.__doc__ or "")
        if doc:
            out.extend([doc, ""])
        if model is TransformSpec:
            out.extend(["| key | type | default | description |", "|---|---|---|---|",
                        "| `name` | str | **required** | MONAI dictionary transform class name |",
                        "| *any other* | | | keyword arguments of that transform |", ""])
            continue
        out.extend(["| key | type | default | description |", "|---|---|---|---|"])
        for name, f in model.model_fields.items():
            desc = (f.description or "").replace("|", "\\|")
            out.append(f"| `{name}` | {_type_name(f.annotation)} | {_default(f)} | {desc} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(render() + "\n")
