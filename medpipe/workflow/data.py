"""The data step of a run: the cases discovered, integrity-checked and split, as one :class:`PreparedData`.

Which files make a case, how they split and what a task adds (class names, loss and sampling weights) is the
task's business (:meth:`medpipe.workflow.tasks.Task.discover`, :meth:`~medpipe.workflow.tasks.Task.split`);
this module holds what every task shares: the prepared-data record, the integrity table and the manifest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from medpipe.data.cases import Case, DataError
from medpipe.data.loaders import class_counts

__all__ = ["Discovered", "PreparedData", "manifest_doc", "check_same_split"]


@dataclass
class Discovered:
    """The cases found under ``data.root`` before splitting.

    Attributes:
        cases: every readable case (``image``, and ``label`` for segmentation or a class index for
            classification; ``group`` / ``split`` when the data has them).
        classes: class names in label order (classification), else ``None``.
        problems: the integrity check's rows ``{"file", "reason"}`` for files skipped (``data.on_bad_image: skip``).
    """

    cases: List[Case]
    classes: Optional[List[str]]
    problems: List[Dict[str, str]]


@dataclass
class PreparedData:
    """The cases of a run, split, with what the task adds.

    Attributes:
        cases: all cases (what ``manifest_sha256`` hashes).
        train, val, test: the split (``test`` may be empty).
        problems: the integrity check's skipped files, ``{"file", "reason"}``.
        classes: class names (classification), else ``None``.
        class_weights: per-class loss weights (``loss.class_weights: balanced``), else ``None``.
        sample_weights: per-training-case sampling weights (``data.sampler: weighted``), else ``None``.
        manifest_sha256: :func:`medpipe.data.integrity.manifest_hash` of ``cases`` when already computed
            (cross-validation: once for all folds), else ``None``.
    """

    cases: List[Case]
    train: List[Case]
    val: List[Case]
    test: List[Case]
    problems: List[Dict[str, str]] = field(default_factory=list)
    classes: Optional[List[str]] = None
    class_weights: Optional[List[float]] = None
    sample_weights: Optional[List[float]] = None
    manifest_sha256: Optional[str] = None

    def tags(self) -> Dict[str, object]:
        """MLflow tags: split sizes, skipped files and, for classification, the classes and per-split counts."""
        out: Dict[str, object] = {"dataset.n_train": len(self.train), "dataset.n_val": len(self.val),
                                  "dataset.n_test": len(self.test), "dataset.n_skipped": len(self.problems)}
        if self.classes is not None:
            out["dataset.classes"] = ",".join(self.classes)
            for name, part in (("train", self.train), ("val", self.val), ("test", self.test)):
                out[f"dataset.class_counts_{name}"] = class_counts(part, len(self.classes)).tolist()
        return out


def manifest_doc(data: PreparedData) -> Dict[str, object]:
    """The content of ``manifest.json``: ``train``, ``val``, ``test`` case lists, ``skipped`` files and, for
    classification, ``classes``."""
    doc: Dict[str, object] = {"train": data.train, "val": data.val, "test": data.test, "skipped": data.problems}
    if data.classes is not None:
        doc["classes"] = data.classes
    return doc


def check_same_split(data: PreparedData, manifest_file: Path) -> None:
    """Resuming: the cases found now must be those the run started with.

    Args:
        data: the cases prepared now.
        manifest_file: the run's ``manifest.json``.

    Raises:
        DataError: a split differs (names the split, the folder and both case counts).
    """
    saved = json.loads(Path(manifest_file).read_text())
    out_dir = Path(manifest_file).parent
    for split in ("train", "val", "test"):
        if saved.get(split, []) != getattr(data, split):
            raise DataError(f"cannot resume {out_dir}: its {split} split (manifest.json, {len(saved.get(split, []))}"
                            f" cases) differs from the data found now ({len(getattr(data, split))} cases); the data "
                            "under data.root changed since the run started")

