"""Checking the files of the cases before training, and fingerprinting them.

:func:`verify_cases` reads every image once (truncated, empty or unreadable files; image / label-mask size
mismatches) and reports all problems at once; :func:`manifest_hash` is the dataset fingerprint a run records.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Dict, List, Sequence, Tuple

from medpipe.data.cases import Case, DataError
from medpipe.data.discovery import image_shape

logger = logging.getLogger(__name__)

__all__ = ["verify_cases", "manifest_hash"]


def verify_cases(cases: Sequence[Case], on_bad_image: str = "error") -> Tuple[List[Case], List[Dict[str, str]]]:
    """Read every image and label image once; check readability and that image and label sizes match.

    Classification cases (``label`` an int class index) have only their image read
    (:func:`medpipe.data.discovery.image_shape`). Every case is checked before anything is decided, so one run
    reports all bad files at once.

    Args:
        cases: cases to check.
        on_bad_image: ``"error"`` raises after the check if any case is bad; ``"skip"`` logs and drops bad cases.

    Returns:
        ``(good_cases, problems)`` where each problem is ``{"file": path, "reason": text}``.

    Raises:
        DataError: with ``on_bad_image="error"`` and bad cases: how many, and each file with its reason (the
            first 20).
    """
    good, problems = [], []
    for case in cases:
        try:
            shape = image_shape(case["image"])
            if isinstance(case.get("label"), str):  # a label image (segmentation); class indices need no check
                lshape = image_shape(case["label"])
                if shape and lshape and shape != lshape:
                    raise DataError(
                        f"{case['label']}: label size {lshape} does not match image {case['image']} size {shape}"
                    )
        except DataError as exc:
            text = str(exc)
            problems.append({"file": text.split(": ", 1)[0], "reason": text.split(": ", 1)[-1]})
            if on_bad_image == "skip":
                logger.warning("skipping bad case: %s", text)
            continue
        good.append(case)
    if problems and on_bad_image == "error":
        listed = "; ".join(f"{p['file']}: {p['reason']}" for p in problems[:20])
        more = f"; and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DataError(f"{len(problems)} of {len(cases)} cases are bad: {listed}{more} (set data.on_bad_image: "
                        "skip to report and skip such cases)")
    return good, problems


def manifest_hash(cases: Sequence[Case]) -> str:
    """A dataset fingerprint: SHA-256 over the cases' file names, sizes and contents' first/last 64 KiB.

    Cases are taken in image-path order and their keys in sorted order; a path enters as its base name, its size
    in bytes and its first and last 64 KiB (0 bytes and no content when it is not a file); class indices, groups
    and split names enter as ``key=value``. Renaming a data folder keeps the hash; editing a file's ends changes it.

    Args:
        cases: the cases (any order).

    Returns:
        The hex digest (64 characters).
    """
    h = hashlib.sha256()
    for case in sorted(cases, key=lambda c: c["image"]):
        for key in sorted(case):
            path = case[key]  # type: ignore[literal-required]
            if not isinstance(path, str) or key in ("group", "split"):  # class index, patient id, split name
                h.update(f"{key}={path}".encode())
                continue
            h.update(f"{key}={os.path.basename(path)}:{os.path.getsize(path) if os.path.isfile(path) else 0}".encode())
            if os.path.isfile(path):
                with open(path, "rb") as fh:
                    h.update(fh.read(65536))
                    if os.path.getsize(path) > 65536:
                        fh.seek(-65536, os.SEEK_END)
                        h.update(fh.read())
    return h.hexdigest()
