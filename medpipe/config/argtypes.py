"""Transform arguments as data: values checked against the annotations of the transform's signature.

A pipeline YAML gives a transform's keyword arguments as plain data (numbers, strings, booleans, lists,
mappings). Two checks run at validation, so that a wrong argument is reported with the transform and the argument
named instead of failing with a ``TypeError`` when the transforms are built (or silently, when a string is
truthy where a boolean goes):

* :func:`data_only_problems`: no string starting with ``$``, ``@`` or ``%`` anywhere in the arguments (MONAI
  bundle expressions, references and macros: a pipeline carries no code) and no NaN or infinite number.
* :func:`type_problems`: each argument against its annotation (MONAI annotates its transforms' arguments, as
  strings under ``from __future__ import annotations``; they are evaluated in the defining module). Only types a
  YAML value can be judged against are checked: ``None``, ``bool``, ``int``, ``float``, ``str``, string enums,
  ``Literal``, ``Hashable``, sequences, tuples and mappings of those, and unions of them. Any other annotation
  (``torch.dtype``, ``np.ndarray``, ``Callable``, a class), an annotation that cannot be evaluated, and an
  unannotated argument are accepted as they are: MONAI converts many of them (e.g. ``"float32"`` to a
  ``torch.dtype``), so when unsure the value is accepted.

Neither imports torch nor MONAI; the caller passes the functions whose signatures apply.
"""

from __future__ import annotations

import collections.abc as cabc
import enum
import inspect
import math
import sys
import types
import typing
from typing import Any, Callable, Dict, List, Tuple

__all__ = ["EXPRESSION_PREFIXES", "data_only_problems", "annotations_of", "type_problems"]

#: first characters of MONAI bundle syntax (``$`` expression, ``@`` reference, ``%`` macro): refused in arguments
EXPRESSION_PREFIXES = ("$", "@", "%")

_SEQUENCES = {cabc.Sequence, cabc.MutableSequence, cabc.Collection, cabc.Iterable, cabc.Set, list, tuple, set,
              frozenset}
_CONCRETE = {list, tuple, set, frozenset}  # a str is not one of these (it is a Sequence / Collection / Iterable)
_MAPPINGS = {dict, cabc.Mapping, cabc.MutableMapping}


def _where(arg: str, path: Tuple[Any, ...]) -> str:
    """``'keys[0]'``, ``'spatial_size[1]'``, ``"kwargs['mode']"``: an argument or a value inside it, quoted."""
    return repr(arg + "".join(f"[{p!r}]" for p in path))


def data_only_problems(name: str, kwargs: Dict[str, Any]) -> List[str]:
    """Strings that look like MONAI bundle syntax, and non-finite numbers, anywhere in a transform's arguments.

    Args:
        name: the transform's class name (for the messages).
        kwargs: its keyword arguments from the YAML (nested lists and mappings are searched).

    Returns:
        One message per problem, e.g. ``"ScaleIntensityRanged: argument 'a_min' is '$1+1': ..."``; empty when
        the arguments are plain data.
    """
    problems: List[str] = []

    def visit(arg: str, path: Tuple[Any, ...], value: Any) -> None:
        if isinstance(value, str) and value.startswith(EXPRESSION_PREFIXES):
            problems.append(f"{name}: argument {_where(arg, path)} is {value!r}: a string starting with "
                            f"{value[0]!r} is MONAI bundle syntax (expression, reference or macro) and a pipeline "
                            "is data only: write the value itself")
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{name}: argument {_where(arg, path)} is {value}: not a finite number; give a "
                            "finite value")
        elif isinstance(value, dict):
            for k, v in value.items():
                visit(arg, path, k)
                visit(arg, path + (k,), v)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                visit(arg, path + (i,), v)

    for arg, value in kwargs.items():
        visit(arg, (), value)
    return problems


def annotations_of(fn: Callable) -> Dict[str, Tuple[Any, str]]:
    """The evaluated annotations of ``fn``'s parameters: ``{name: (type, text as written)}``.

    String annotations are evaluated in the module that defines ``fn``; a parameter whose annotation is missing
    or cannot be evaluated is left out (its values are not checked).
    """
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}
    module = sys.modules.get(getattr(fn, "__module__", ""), None)
    namespace = dict(vars(module)) if module is not None else {}
    out: Dict[str, Tuple[Any, str]] = {}
    for key, p in params.items():
        ann = p.annotation
        if ann is inspect.Parameter.empty or key == "self":
            continue
        text = ann if isinstance(ann, str) else getattr(ann, "__name__", None) or repr(ann)
        if isinstance(ann, str):
            try:
                ann = eval(ann, namespace)  # noqa: S307 - MONAI's own annotation text, never user input
            except Exception:  # NameError for TYPE_CHECKING-only names, etc.: unsure, so not checked
                continue
        out[key] = (ann, text)
    return out


def _seq_mismatch(value: Any, base: Any, args: Tuple[Any, ...]) -> bool:
    """``True`` when ``value`` is certainly not a ``base[args]`` sequence (``base`` from :data:`_SEQUENCES`)."""
    if isinstance(value, str):
        if base in _CONCRETE:
            return True
        return bool(args) and bool(value) and _mismatch(value[0], args[0])  # a str is a sequence of 1-char strs
    if not isinstance(value, (list, tuple)):
        return True
    if base is tuple and args:
        if len(args) == 2 and args[1] is Ellipsis:
            return any(_mismatch(v, args[0]) for v in value)
        if args == ((),):
            return len(value) != 0
        return len(value) != len(args) or any(_mismatch(v, a) for v, a in zip(value, args))
    return bool(args) and any(_mismatch(v, args[0]) for v in value)


def _mismatch(value: Any, tp: Any) -> bool:
    """``True`` when a YAML ``value`` is certainly not accepted by the annotation ``tp``; ``False`` when it is
    or when unsure."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return all(_mismatch(value, a) for a in args)
    if origin is typing.Literal:
        return value not in args
    if origin is typing.Annotated:
        return _mismatch(value, args[0])
    if tp is None or tp is type(None):
        return value is not None
    if tp is bool or tp is int:
        return not isinstance(value, int)  # bool is an int, as Python has it
    if tp is float:
        return not isinstance(value, (int, float))
    if tp is str:
        return not isinstance(value, str)
    if inspect.isclass(tp) and issubclass(tp, enum.Enum):
        members = [m.value for m in tp]
        return all(isinstance(m, str) for m in members) and not isinstance(value, str)
    if tp is cabc.Hashable:
        return isinstance(value, (list, dict))
    base = origin or tp
    if base in _MAPPINGS:
        if not isinstance(value, dict):
            return True
        return len(args) == 2 and any(_mismatch(k, args[0]) or _mismatch(v, args[1]) for k, v in value.items())
    if base in _SEQUENCES:
        return _seq_mismatch(value, base, args)
    return False  # torch.dtype, np.ndarray, Callable, a class, a TypeVar, ...: unsure, accepted


def _hint(value: Any) -> str:
    """A suggestion for a common mistake, or ``""``."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ""
        return (f" (a string: write the number without quotes and with a decimal point, e.g. {float(value)!r}; "
                "YAML 1.1 reads 1e-3 as a string)")
    return ""


def type_problems(name: str, kwargs: Dict[str, Any], hints: Dict[str, Tuple[Any, str]]) -> List[str]:
    """Arguments whose value the annotation certainly does not accept.

    Args:
        name: the transform's class name (for the messages).
        kwargs: its keyword arguments from the YAML.
        hints: ``{argument: (type, text)}`` as from :func:`annotations_of`; arguments not in it are not checked.

    Returns:
        One message per argument, e.g. ``"ScaleIntensityRanged: argument 'a_min' is 'zero' (str); expected
        float"``; empty when every checked argument fits.
    """
    problems = []
    for arg, value in kwargs.items():
        if arg in hints and _mismatch(value, hints[arg][0]):
            problems.append(f"{name}: argument {arg!r} is {value!r} ({type(value).__name__}); expected "
                            f"{hints[arg][1]}{_hint(value)}")
    return problems
