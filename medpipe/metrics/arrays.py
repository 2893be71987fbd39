"""Input coercion and validation shared by the segmentation and classification metrics.

Everything accepts numpy arrays, nested lists and torch tensors; tensors are recognised by duck typing
(``detach`` and ``cpu`` attributes), so torch is never imported here. Every check raises ``ValueError`` with a
message that names the argument, what was found and what was expected.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["to_numpy", "describe_values", "as_int_labels", "as_binary_mask", "check_same_shape"]


def to_numpy(x: Any) -> np.ndarray:
    """Convert a numpy array, list or torch tensor to a numpy array.

    Args:
        x: array-like of any shape and dtype; a torch tensor (duck-typed, torch is not imported) is detached and
            moved to the CPU first.

    Returns:
        ``np.asarray(x)``: same shape, numpy's dtype for the input (no copy when ``x`` already is an array).
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
    return np.asarray(x)


def describe_values(arr: np.ndarray, limit: int = 8) -> str:
    """The distinct values of ``arr`` for an error message, e.g. ``"[0, 1, 255]"``.

    Args:
        arr: numpy array of any shape.
        limit: at most this many (smallest) distinct values are shown; ``", ..."`` marks the rest.

    Returns:
        The sorted distinct values as ``"[v0, v1, ...]"``.
    """
    values = np.unique(arr)
    shown = ", ".join(repr(v.item()) for v in values[:limit])
    return f"[{shown}{', ...' if values.size > limit else ''}]"


def as_int_labels(x: Any, name: str, num_classes: int) -> np.ndarray:
    """Return ``x`` as an int64 class-index array with values in ``[0, num_classes)``.

    Args:
        x: class indices, any shape; bool, integer, or float holding integral values (e.g. a label tensor
            after ``AsDiscrete``).
        name: argument name used in error messages.
        num_classes: number of classes ``C``.

    Returns:
        int64 array of the same shape.

    Raises:
        ValueError: the dtype is not bool / integer / float, a float value is not a finite integer, or a value
            is outside ``[0, num_classes)``.
    """
    arr = to_numpy(x)
    if arr.dtype == bool:
        arr = arr.astype(np.int64)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name}: expected an integer label array, got dtype {arr.dtype}.")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(
                f"{name}: expected integer class labels, found non-integer values {describe_values(arr)}; "
                "take the argmax / threshold of probabilities first."
            )
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(
            f"{name}: labels must be in [0, {num_classes - 1}] for num_classes={num_classes}, "
            f"found values {describe_values(arr)}."
        )
    return arr


def as_binary_mask(x: Any, name: str) -> np.ndarray:
    """Return ``x`` as a 2-D bool mask (``True`` = cell interior in the ISBI-2012 convention).

    Args:
        x: mask of shape ``(H, W)``, bool or numeric with values in ``{0, 1}``.
        name: argument name used in error messages.

    Returns:
        bool array of shape ``(H, W)`` (``x`` itself when it already is a bool numpy array).

    Raises:
        ValueError: ``x`` is not 2-D, or holds values other than 0 and 1 (e.g. an unthresholded 0/255 PNG).
    """
    arr = to_numpy(x)
    if arr.ndim != 2:
        raise ValueError(
            f"{name}: expected a 2-D (H, W) mask, got shape {tuple(arr.shape)}; squeeze batch/channel "
            "dimensions, and score 3-D stacks slice by slice (the ISBI-2012 challenge averaged per-slice scores)."
        )
    if arr.dtype == bool:
        return arr
    if not np.all(np.isin(arr, (0, 1))):
        raise ValueError(
            f"{name}: expected a binary mask with values in {{0, 1}} (1 = cell interior), found values "
            f"{describe_values(arr)}; threshold first, e.g. `prob > 0.5` or `png > 127` for ISBI label PNGs."
        )
    return arr.astype(bool)


def check_same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    """Raise unless two arrays have the same shape.

    Args:
        a: first array.
        b: second array.
        name_a: name of ``a`` in the error message.
        name_b: name of ``b`` in the error message.

    Raises:
        ValueError: ``a.shape != b.shape``.
    """
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {a.shape} and {b.shape}.")
