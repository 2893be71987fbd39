"""Name -> component registries with "did you mean" errors.

A pipeline YAML may only name components that are registered here (or, for transforms, MONAI dictionary
transforms by class name): it can never carry an import path or code. This module imports neither torch nor
MONAI; factories are registered by the modules that own them (``medpipe.nets``, ``medpipe.engine``) and may
import heavy libraries lazily.

The error style follows ``monai.utils.look_up_option``: the unknown name, the allowed names and the closest
match.
"""

from __future__ import annotations

import difflib
from typing import Dict, Generic, Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")

__all__ = ["Registry", "did_you_mean", "UnknownNameError"]


class UnknownNameError(KeyError, ValueError):
    """Raised when a registry lookup fails; ``str(err)`` lists the allowed names and the closest match."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest of ``choices`` to ``name``, or ``""`` if none is close.

    Args:
        name: the misspelled name.
        choices: the valid names.

    Returns:
        A sentence to append to an error message (with a leading space), possibly empty.
    """
    choices = [str(c) for c in choices]
    lowered = {c.lower(): c for c in choices}
    if name.lower() in lowered and lowered[name.lower()] != name:
        return f" Did you mean '{lowered[name.lower()]}'?"
    match = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    if not match:
        match = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
        match = [lowered[m] for m in match]
    return f" Did you mean '{match[0]}'?" if match else ""


class Registry(Generic[T]):
    """A named table of components (factories or classes).

    Args:
        kind: what the registry holds, used in error messages (e.g. ``"net"``).

    Example:
        >>> nets = Registry("net")
        >>> @nets.register("lenet")
        ... def build_lenet(cfg): ...
        >>> nets.get("lenet")  # doctest: +ELLIPSIS
        <function build_lenet ...>
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: Dict[str, T] = {}

    def register(self, name: str, item: Optional[T] = None):
        """Register ``item`` under ``name``; usable as a decorator when ``item`` is omitted.

        Raises:
            ValueError: if ``name`` is already registered or is not lowercase snake_case.
        """
        if name != name.lower() or not name.replace("_", "").isalnum():
            raise ValueError(f"{self.kind} name {name!r} must be lowercase snake_case")

        def _add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return _add if item is None else _add(item)

    def get(self, name: str) -> T:
        """Return the component registered as ``name``.

        Raises:
            UnknownNameError: naming the unknown ``name``, the allowed names and the closest match.
        """
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; allowed: {', '.join(sorted(self._items))}."
                + did_you_mean(name, self._items)
            ) from None

    def names(self) -> list:
        """Sorted registered names."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)
