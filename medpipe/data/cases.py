"""What a case is, the data error type, and where a pipeline's data lives.

A *case* is a dict, the input format of MONAI dictionary transforms and datasets (:class:`Case`):

* segmentation: ``{"image": path, "label": path}`` (``label`` absent for unlabelled images), plus ``"split"``
  (``train``/``val``/``test``) when a list file's ``data.split_column`` defines splits;
* classification: ``{"image": path, "label": int class index}``, plus ``"group"`` (patient id, str) when
  ``data.group_column`` is set and ``"split"`` (``train``/``val``/``test``) when the data defines splits.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, TypedDict, Union

import numpy as np

from medpipe.paths import data_root

__all__ = ["Case", "DataError", "resolve_root", "case_labels"]


class Case(TypedDict, total=False):
    """One case: the dict MONAI dictionary transforms and datasets take.

    Keys (all optional to the type checker; ``image`` is always present in practice):
        image: absolute path of the image file (or of a DICOM series folder).
        label: segmentation: absolute path of the label-mask file (absent for an unlabelled image);
            classification: the class index (``int``, position in the class names).
        group: patient (or other grouping) id, ``str``, from ``data.group_column``; cases of one group never
            straddle two splits.
        split: ``"train"``, ``"val"`` or ``"test"``, the split the data itself assigns (``data.split_column``
            mapped by ``data.split.column_values``, or ``data.test_images``).
    """

    image: str
    label: Union[str, int]
    group: str
    split: str


class DataError(ValueError):
    """Bad or inconsistent input data; the message names the file(s) and what was expected."""


def resolve_root(root: str) -> Path:
    """The data folder of a pipeline: ``root`` if absolute, else relative to :func:`medpipe.paths.data_root`.

    Args:
        root: ``data.root`` of the pipeline (``~`` is expanded).

    Returns:
        The folder, an existing directory.

    Raises:
        FileNotFoundError: the folder does not exist (names it and how the data root is set).
    """
    p = Path(os.path.expanduser(root))
    if not p.is_absolute():
        p = data_root() / p
    if not p.is_dir():
        raise FileNotFoundError(
            f"data.root {root!r} resolves to {p}, which is not a folder (relative roots are resolved against "
            f"$MEDPIPE_DATA, now {data_root()})"
        )
    return p


def case_labels(cases: Sequence[Case]) -> np.ndarray:
    """The class indices of classification cases.

    Args:
        cases: classification cases (``label`` an int class index, or a string of one).

    Returns:
        ``(N,)`` ``int64`` array, ``cases[i]["label"]`` in order.

    Raises:
        KeyError: a case has no ``label``. ValueError: a label is not an integer.
    """
    return np.array([int(c["label"]) for c in cases], dtype=np.int64)
