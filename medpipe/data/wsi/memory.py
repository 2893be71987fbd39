"""Memory limits for images that must be decoded whole: what the machine has, what an image will take, and refusal.

Plain PNG/JPEG/BMP have no tiles, so the ``pil`` backend decodes them whole (:mod:`.pil`). Before decoding,
:func:`check_memory` compares the estimate from the file's header with a limit: by default half of the memory
available now (:func:`default_memory_limit`: ``MemAvailable`` of ``/proc/meminfo``, capped by the cgroup
limit), configurable with ``max_memory=`` of :func:`medpipe.data.wsi.open_slide` and ``--max-memory`` of
``python -m medpipe.data.patches``. Sizes are bytes; :func:`parse_size` reads ``"4G"``, ``"512MiB"``, ``"none"``.
"""

from __future__ import annotations

import math
import os
import re

from medpipe.data.wsi.base import SlideError

__all__ = ["available_memory", "default_memory_limit", "resolve_memory_limit", "parse_size", "format_bytes",
           "check_memory", "SlideMemoryError"]

_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


class SlideMemoryError(SlideError):
    """An image that would need more memory than the limit to decode; raised from its header, before decoding."""


def available_memory() -> int | None:
    """Bytes of memory available to this process now, ``None`` when the system does not say.

    ``MemAvailable`` of ``/proc/meminfo`` (else ``os.sysconf`` free pages), capped by the cgroup v2 limit
    (``/sys/fs/cgroup/memory.max`` minus ``memory.current``) when there is one.
    """
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = None
    try:
        with open("/sys/fs/cgroup/memory.max") as fh:
            limit = fh.read().strip()
        with open("/sys/fs/cgroup/memory.current") as fh:
            current = int(fh.read().strip())
        if limit != "max":
            room = max(int(limit) - current, 0)
            avail = room if avail is None else min(avail, room)
    except (OSError, ValueError):
        pass
    return avail


def default_memory_limit() -> float:
    """Half of :func:`available_memory` in bytes (``math.inf``, no limit, when the system does not say)."""
    avail = available_memory()
    return math.inf if avail is None else avail / 2


def resolve_memory_limit(max_memory: int | float | str | None) -> float:
    """The limit in bytes: ``None`` -> :func:`default_memory_limit`; a string -> :func:`parse_size`; else itself.

    Raises:
        ValueError: a limit that is not a positive number of bytes (or ``"none"``).
    """
    if max_memory is None:
        return default_memory_limit()
    value = parse_size(max_memory) if isinstance(max_memory, str) else float(max_memory)
    if not value > 0:
        raise ValueError(f"max_memory must be a positive number of bytes (or 'none'), got {max_memory!r}")
    return value


def parse_size(text: str) -> float:
    """Bytes in a size such as ``"4G"``, ``"4GiB"``, ``"4GB"``, ``"512M"``, ``"1.5T"``, ``"1000000"``.

    Units are binary (K = 1024 bytes); ``"none"``, ``"inf"`` or ``"unlimited"`` give ``math.inf`` (no limit).

    Raises:
        ValueError: not a size (the message quotes it and gives examples).
    """
    t = str(text).strip()
    if t.lower() in ("none", "inf", "unlimited"):
        return math.inf
    m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(?:I?B)?", t, flags=re.IGNORECASE)
    if m is None:
        raise ValueError(f"not a memory size: {text!r} (expected e.g. 4G, 512MiB, 1000000 or none)")
    value = float(m.group(1)) * _UNITS[m.group(2).upper()]
    if not value > 0:
        raise ValueError(f"memory size must be positive, got {text!r}")
    return value


def format_bytes(n: float) -> str:
    """``n`` bytes as e.g. ``"2.5 GiB"`` (``"no limit"`` for ``math.inf``)."""
    if math.isinf(n):
        return "no limit"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def check_memory(path, need: float, limit: float, what: str, hint: str) -> None:
    """Refuse, before any decoding, an image whose estimated memory ``need`` exceeds ``limit``.

    Args:
        path: the file (named in the message).
        need: estimated bytes.
        limit: bytes allowed (``math.inf``: no limit).
        what: what the estimate is of, e.g. ``"30000x30000 RGB PNG, decoded whole: 4 bytes/pixel"``.
        hint: what to do instead (one sentence).

    Raises:
        SlideMemoryError: ``need > limit``; one line naming the file, the estimate, the limit and ``hint``.
    """
    if need > limit:
        raise SlideMemoryError(
            f"{path}: {what} needs about {format_bytes(need)}, above the memory limit of {format_bytes(limit)} "
            f"(default: half of the available memory; set max_memory / --max-memory). {hint}"
        )
