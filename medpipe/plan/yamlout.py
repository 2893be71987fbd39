"""A planned pipeline as YAML a person can read: block sections, one flow-style line per transform, and the reason
for each planned value as a comment on its line (``why``: dotted key -> reason, from :mod:`medpipe.plan.rules` and
:mod:`medpipe.plan.budget`).

Transform comments are keyed by group (``transforms.train.normalise``, ``.labels``, ``.spacing``, ``.crop``,
``.augment``, ``.resize``) and written on the group's first transform; a reason whose key has no line of its own
(``no Spacingd: ...``) becomes a comment line at the top of its section. The text is what ``yaml.safe_load``
reads back to the same data (tested).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import yaml

__all__ = ["to_yaml", "transform_group"]

#: transform name -> comment group
_GROUPS = {"ScaleIntensityRanged": "normalise", "NormalizeIntensityd": "normalise", "MapLabelValued": "labels",
           "Spacingd": "spacing", "SpatialPadd": "crop", "RandSpatialCropd": "crop", "RandSpatialCropSamplesd": "crop",
           "RandCropByPosNegLabeld": "crop", "Resized": "resize"}
_WIDTH = 56  # comments start at this column where the line is shorter


def transform_group(name: str) -> Optional[str]:
    """The comment group of a transform name (``None``: loading, no planned value)."""
    if name in _GROUPS:
        return _GROUPS[name]
    return "augment" if name.startswith("Rand") else None


def _flow(value: Any) -> str:
    """One value as a single flow-style YAML line (a scalar's document-end marker ``...`` removed)."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10 ** 9).strip()
    return text[:-3].strip() if text.endswith("...") else text


def _line(indent: int, text: str, comment: Optional[str]) -> str:
    line = " " * indent + text
    if comment:
        line = line.ljust(_WIDTH) + "  # " + comment
    return line


def _is_leaf(value: Any) -> bool:
    """Written on one line: scalars, lists of scalars / short lists, and dicts of those."""
    if isinstance(value, dict):
        return all(_is_leaf(v) and not isinstance(v, dict) for v in value.values())
    if isinstance(value, list):
        return all(not isinstance(v, (dict, list)) or _is_leaf(v) for v in value)
    return True


def _emit(data: Dict, path: str, indent: int, why: Dict[str, str], used: set, out: List[str]) -> None:
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else key
        comment = why.get(dotted)
        if comment:
            used.add(dotted)
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            out.append(_line(indent, f"{key}:", comment))
            seen_groups = set()
            for item in value:
                group = transform_group(str(item.get("name", "")))
                gkey = f"{path.split('.')[0]}.train.{group}" if path.startswith("transforms") else None
                c = None
                if group and gkey and group not in seen_groups:
                    seen_groups.add(group)
                    c = why.get(gkey)
                    if c and key == "val":
                        c = "as in training"
                    if c:
                        used.add(gkey)
                out.append(_line(indent + 2, "- " + _flow(item), c))
        elif isinstance(value, dict) and not (_is_leaf(value) and indent >= 2):
            out.append(_line(indent, f"{key}:", comment))
            orphans = [k for k in why if k.startswith(dotted + ".") and k.count(".") >= dotted.count(".") + 1
                       and k not in used and not _has_line(value, k[len(dotted) + 1:])]
            if dotted == "transforms":
                orphans = [k for k in orphans if not k.startswith("transforms.train.")
                           or not _group_written(value, k.rsplit(".", 1)[-1])]
            for k in orphans:
                used.add(k)
                out.append(" " * (indent + 2) + "# " + why[k])
            _emit(value, dotted, indent + 2, why, used, out)
        else:
            out.append(_line(indent, f"{key}: {_flow(value)}", comment))


def _has_line(section: Dict, rel: str) -> bool:
    node: Any = section
    for part in rel.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _group_written(transforms: Dict, group: str) -> bool:
    return any(transform_group(str(t.get("name", ""))) == group for t in transforms.get("train", []))


def to_yaml(cfg: Dict, why: Dict[str, str], header: Sequence[str] = ()) -> str:
    """The commented YAML text of a planned pipeline (module docstring).

    Args:
        cfg: the pipeline as plain data (sections in writing order).
        why: dotted key -> reason.
        header: comment lines written first (without ``#``).

    Returns:
        The YAML text, ending in a newline.
    """
    out = ["# " + h if h else "#" for h in header]
    used: set = set()
    _emit(cfg, "", 0, why, used, out)
    return "\n".join(out) + "\n"
