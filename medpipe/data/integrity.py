"""Checking the files of the cases before training, and fingerprinting them.

:func:`verify_cases` reads every image and label file once (:func:`medpipe.data.imagefile.read_image`) and, from
that one read, finds every input that would crash later or silently give wrong results: truncated, empty or
unreadable files, image / label-mask shape or affine mismatches, volumes with an axis too many (a 4D NIfTI where
the network is 3D), DICOM series folders without one series to read or with a missing slice, NaN / inf values, and, given the pipeline's
:class:`~medpipe.data.expectations.Expectations`, channels, intensity ranges and label values that its transforms
do not expect. All problems are reported at once; :func:`manifest_hash` is the dataset fingerprint a run records.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from medpipe.data.cases import Case, DataError
from medpipe.data.expectations import Expectations, KeyExpectation
from medpipe.data.imagefile import ImageFile, read_image

logger = logging.getLogger(__name__)

__all__ = ["verify_cases", "case_problems", "file_problem", "dims_problem", "affine_problem", "manifest_hash",
           "AFFINE_TOL_MM"]

_MAX_LISTED = 20
#: largest difference between an image's and its label's affine entries (mm) taken as the same grid
AFFINE_TOL_MM = 1e-3


def dims_problem(img: ImageFile, key: str, spatial_dims: Optional[int], in_channels: Optional[int] = None
                 ) -> Optional[str]:
    """Why a volume file has not the axes a ``spatial_dims``-D network expects, or ``None``.

    With ``spatial_dims`` 3, a volume (a file with an affine: NIfTI, NRRD / MetaImage, DICOM series) must have 3
    spatial axes; a 4th axis is allowed only for an ``image`` holding ``in_channels`` channels on it (a multi-modal
    MSD image) or when it has length 1. Other files and other ``spatial_dims`` are not checked.

    Args:
        img: the file as read by :func:`medpipe.data.imagefile.read_image`.
        key: ``"image"`` or ``"label"``.
        spatial_dims: ``net.spatial_dims``, or ``None`` (not checked).
        in_channels: ``net.in_channels``, or ``None``.

    Returns:
        One line saying what was found and what was expected (without the path), or ``None``.
    """
    shape = img.file_shape or img.shape
    if spatial_dims != 3 or img.affine is None:
        return None
    what = "label mask" if key == "label" else "image"
    if len(shape) < 3:
        return f"{img.kind}: a {len(shape)}D {what} of shape {tuple(shape)}; expected a 3D volume (net.spatial_dims 3)"
    extra = tuple(shape[3:])
    if not extra or all(s == 1 for s in extra):
        return None
    if key == "image" and len(extra) == 1 and in_channels is not None and extra[0] == in_channels:
        return None
    channels = f", or a 4th axis of net.in_channels {in_channels} channels" if key == "image" and in_channels else ""
    return (f"{img.kind}: a {len(shape)}D {what} of shape {tuple(shape)}; expected a 3D volume (net.spatial_dims 3"
            f"{channels})")


def _fmt_affine(a) -> str:
    return "[" + "; ".join(" ".join(f"{v:g}" for v in np.round(row, 4)) for row in np.asarray(a)[:3]) + "]"


def affine_problem(image: ImageFile, label: ImageFile, tol: float = AFFINE_TOL_MM) -> Optional[str]:
    """Why a label's grid differs from its image's, or ``None``.

    Args:
        image, label: the two files as read by :func:`medpipe.data.imagefile.read_image`.
        tol: largest difference of an affine entry (mm) taken as equal.

    Returns:
        One line (without the label's path) naming the image, the label's shape or affine (first three rows) and
        the image's, or ``None`` (same shape, affines within ``tol``, or an affine unknown).
    """
    if image.shape and label.shape and image.shape != label.shape:
        return (f"label size {label.shape} does not match image {image.path} size {image.shape}: expected the "
                "image's shape")
    if image.affine is None or label.affine is None:
        return None
    diff = float(np.max(np.abs(np.asarray(image.affine) - np.asarray(label.affine))))
    if diff <= tol:
        return None
    return (f"label affine {_fmt_affine(label.affine)} does not match image {image.path} affine "
            f"{_fmt_affine(image.affine)}: expected the image's affine within {tol:g} mm (largest difference "
            f"{diff:.4g} mm)")


def file_problem(img: ImageFile, expectations: Sequence[KeyExpectation] = ()) -> Optional[str]:
    """The first reason why a read file would crash or mislead training, or ``None``.

    Checked in order: non-finite DICOM rescaling, NaN / inf values (always), then for each chain that loads the
    file its channels, its ``ScaleIntensityRanged`` window and its label values
    (:class:`medpipe.data.expectations.KeyExpectation`).

    Args:
        img: the file as read by :func:`medpipe.data.imagefile.read_image`.
        expectations: the expectations of the chains that load it (empty: only the finite-value checks).

    Returns:
        One line saying what was found and what was expected (without the path), or ``None``.
    """
    if img.nonfinite_scaling:
        return f"{img.kind}: non-finite {img.nonfinite_scaling}; expected finite numbers (every pixel would be NaN)"
    n = img.nonfinite()
    if n:
        return (f"{img.kind}: {n} non-finite value(s) (NaN / inf) among {img.size} values; expected finite "
                "values (a NaN input trains NaN weights): replace them or leave the file out")
    for e in expectations:
        for check in (e.channel_problem, e.window_problem, e.label_problem):
            reason = check(img)
            if reason:
                return reason
    return None


def case_problems(case: Case, expect: Optional[Expectations] = None) -> List[Tuple[str, str]]:
    """Read a case's image (and label-mask) file once and check it.

    Besides :func:`file_problem`: the volume's axes (:func:`dims_problem`, with ``expect.spatial_dims``), a DICOM
    series folder's series and slice gaps (``expect.series_uid``), and the label's shape and affine against the
    image's (:func:`affine_problem`, 1e-3 mm).

    Args:
        case: the case; ``image`` and a string ``label`` are read (a class index is not a file).
        expect: what the pipeline's chains expect of the files (``None``: readability, sizes and finite values).

    Returns:
        ``(file, reason)`` for every bad file of the case (empty when it is good).
    """
    out: List[Tuple[str, str]] = []
    read: Dict[str, ImageFile] = {}
    for key in ("image", "label"):
        path = case.get(key)
        if not isinstance(path, str):
            continue
        try:
            img = read_image(path, expect.series_uid if expect is not None else None)
        except DataError as exc:
            text = str(exc)
            out.append((text.split(": ", 1)[0], text.split(": ", 1)[-1]))
            continue
        read[key] = img
        reason = (dims_problem(img, key, expect.spatial_dims, expect.in_channels) if expect is not None else None) \
            or file_problem(img, expect.for_file(case, key) if expect is not None else ())
        if reason:
            out.append((path, reason))
    if not out and "image" in read and "label" in read:
        reason = affine_problem(read["image"], read["label"])
        if reason:
            out.append((str(case["label"]), reason))
    return out


def verify_cases(cases: Sequence[Case], on_bad_image: str = "error",
                 expect: Optional[Expectations] = None) -> Tuple[List[Case], List[Dict[str, str]]]:
    """Read every image and label file once and check it (:func:`case_problems`), all cases before deciding.

    Classification cases (``label`` an int class index) have only their image read. Every case is checked
    before anything is decided, so one run reports all bad files at once.

    Args:
        cases: cases to check.
        on_bad_image: ``"error"`` raises after the check if any case is bad; ``"skip"`` logs and drops bad cases.
        expect: what the pipeline's transform chains expect (channels, intensity window, label values; built by
            :func:`medpipe.data.expectations.build_expectations`); ``None`` checks readability, sizes and finite
            values only.

    Returns:
        ``(good_cases, problems)`` where each problem is ``{"file": path, "reason": text}`` (one per bad file).

    Raises:
        DataError: with ``on_bad_image="error"`` and bad cases: how many, and each file with its reason (the
            first 20).
    """
    t0 = time.perf_counter()
    good: List[Case] = []
    problems: List[Dict[str, str]] = []
    n_bad = 0
    for case in cases:
        bad = case_problems(case, expect)
        if not bad:
            good.append(case)
            continue
        n_bad += 1
        for file, reason in bad:
            problems.append({"file": file, "reason": reason})
            if on_bad_image == "skip":
                logger.warning("skipping bad case: %s: %s", file, reason)
    logger.info("integrity check: %d cases read in %.2f s, %d bad", len(cases), time.perf_counter() - t0, n_bad)
    if problems and on_bad_image == "error":
        listed = "; ".join(f"{p['file']}: {p['reason']}" for p in problems[:_MAX_LISTED])
        more = f"; and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        raise DataError(f"{n_bad} of {len(cases)} cases are bad: {listed}{more} (set data.on_bad_image: "
                        "skip to report and skip such cases)")
    return good, problems


def manifest_hash(cases: Sequence[Case]) -> str:
    """A dataset fingerprint: SHA-256 over the cases' file names, sizes and contents' first/last 64 KiB.

    Cases are taken in image-path order and their keys in sorted order; a path enters as its base name, its size
    in bytes and its first and last 64 KiB (0 bytes and no content when it is not a file; a folder, a DICOM series,
    adds the names and sizes of its files); class indices, groups
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
            if os.path.isdir(path):  # a DICOM series folder: its files' names and sizes
                for name in sorted(os.listdir(path)):
                    f = os.path.join(path, name)
                    h.update(f"/{name}:{os.path.getsize(f) if os.path.isfile(f) else 0}".encode())
            if os.path.isfile(path):
                with open(path, "rb") as fh:
                    h.update(fh.read(65536))
                    if os.path.getsize(path) > 65536:
                        fh.seek(-65536, os.SEEK_END)
                        h.update(fh.read())
    return h.hexdigest()
