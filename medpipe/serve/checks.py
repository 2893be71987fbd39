"""Whether a DICOM upload is the kind of image the served model was trained on.

A chest X-ray classifier calls a CT slice (pydicom's ``CT_small.dcm``) "PNEUMONIA" at 85-98 %: its answer on an image
of another modality or body part means nothing. When the pipeline names what it was trained on
(``data.modality``, e.g. ``[CR, DX]``, and ``data.body_part``, e.g. ``[CHEST]``), a DICOM upload's *Modality*
(0008,0060) and *Body Part Examined* (0018,0015) are compared with them (case and surrounding spaces ignored; a
missing Body Part Examined is a mismatch too, since nothing says the image is of the expected part). A mismatch is
refused with 422 and one line naming the tag, the value found and the values expected; with ``allow_mismatch``
(``python -m medpipe.serve --allow-mismatch``) it is answered, and the answer carries the same lines as
``warnings``.

PNG and JPEG uploads carry no such tags and are not checked. The standard library only (no torch).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from medpipe.serve.images import DecodedImage, InputError

__all__ = ["DICOM_TAGS", "dicom_expectations", "dicom_mismatches", "check_dicom_upload"]

#: config field -> (DICOM keyword, tag) it is checked against
DICOM_TAGS: Dict[str, Tuple[str, str]] = {"modality": ("Modality", "(0008,0060)"),
                                          "body_part": ("BodyPartExamined", "(0018,0015)")}


def dicom_expectations(cfg) -> Dict[str, List[str]]:
    """``{DICOM keyword: allowed values}`` from ``cfg.data.modality`` / ``cfg.data.body_part`` (only those set)."""
    out = {}
    for field_name, (keyword, _) in DICOM_TAGS.items():
        values = getattr(cfg.data, field_name, None)
        if values:
            out[keyword] = [str(v) for v in values]
    return out


def _norm(value: Optional[str]) -> str:
    return str(value or "").strip().upper()


def dicom_mismatches(dataset, cfg) -> List[str]:
    """One line per checked tag of ``dataset`` (a ``pydicom.Dataset``) whose value is not among the pipeline's.

    Returns:
        e.g. ``["DICOM Modality (0008,0060) is 'CT'; model 'x' was trained on CR, DX"]``; ``[]`` when everything
        fits or nothing is expected.
    """
    problems, expectations = [], dicom_expectations(cfg)
    for field_name, (keyword, tag) in DICOM_TAGS.items():
        expected = expectations.get(keyword)
        if not expected:
            continue
        raw = dataset.get(keyword) if dataset is not None else None
        found = _norm(raw)
        if found in {_norm(v) for v in expected}:
            continue
        what = f"is {str(raw).strip()!r}" if found else "is missing"
        problems.append(f"DICOM {keyword} {tag} {what}; model {cfg.name!r} was trained on {', '.join(expected)} "
                        f"(data.{field_name})")
    return problems


def check_dicom_upload(decoded: DecodedImage, cfg, allow_mismatch: bool = False) -> List[str]:
    """Check a DICOM upload against the pipeline's ``data.modality`` / ``data.body_part``.

    Args:
        decoded: the upload (:func:`medpipe.serve.images.decode_upload`); PNG/JPEG uploads are not checked.
        cfg: the served run's ``PipelineConfig``.
        allow_mismatch: answer a mismatch with warnings instead of refusing it.

    Returns:
        The warnings (``[]`` when the upload fits, is not DICOM, or nothing is expected).

    Raises:
        InputError: 422 on a mismatch when ``allow_mismatch`` is false; the one-line message names each tag, the
            value found and the values expected, and the server flag that answers anyway.
    """
    if decoded.format != "dicom":
        return []
    problems = dicom_mismatches(decoded.dataset, cfg)
    if problems and not allow_mismatch:
        raise InputError(422, "; ".join(problems) + ": refused, its answer would mean nothing (serve "
                         "--allow-mismatch answers with a warning instead)")
    return [p + ": the answer may mean nothing" for p in problems]
