"""Deterministic train / validation / test splits and cross-validation folds of cases.

Both tasks honour a split the data predefines (``data.split_column``; ``test_groups`` for classification), then
split the remaining training pool by ``data.split``: explicit validation files (``val``), one fold of ``kfold``,
or ``val_fraction``. Segmentation shuffles with ``numpy.random.default_rng(seed)``; classification uses
scikit-learn splitters (stratified by class, grouped by patient). Cases are sorted by image path first, so the
result does not depend on their input order.
"""

from __future__ import annotations

import logging
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from medpipe.data.cases import Case, DataError, case_labels

logger = logging.getLogger(__name__)

__all__ = [
    "split_cases",
    "split_segmentation_cases",
    "split_classification_cases",
    "cross_validation_folds",
]


# ------------------------------------------------------------------------------------------------ shared
def _predefined_partition(cases: Sequence[Case], test_groups=frozenset()) -> Tuple[List[Case], List[Case], List[Case]]:
    """``(pool, val, test)`` by each case's predefined ``split`` (``train`` when it has none); cases of a group in
    ``test_groups`` go to test whatever their split. Both tasks use it."""
    pre: dict = {"train": [], "val": [], "test": []}
    for c in cases:
        pre["test" if c.get("group") in test_groups else c.get("split", "train")].append(c)
    return pre["train"], pre["val"], pre["test"]


def _warn_unused_split_settings(val: Sequence[Case], split_cfg) -> None:
    """Log that a predefined validation split makes the user's ``val`` / ``val_fraction`` / ``kfold`` unused."""
    explicit = {"val", "val_fraction", "kfold"} & set(split_cfg.model_fields_set)
    if explicit:
        logger.warning("the data defines a validation split (%d cases); data.split.%s is not used",
                       len(val), ", ".join(sorted(explicit)))


def _fold_index(split_cfg=None, k: Optional[int] = None, fold: Optional[int] = None) -> int:
    """The validation fold of a single k-fold run; a clear error when none is chosen (cross-validation)."""
    if split_cfg is not None:
        k, fold = split_cfg.kfold, split_cfg.fold
    if fold is None:
        raise DataError(f"data.split.kfold={k} without data.split.fold means cross-validation (all folds): run it "
                        "with medpipe.cv.run_cross_validation (medpipe.run does), or set data.split.fold to train "
                        "one fold")
    return int(fold)


# ------------------------------------------------------------------------------------------------ segmentation
def split_cases(cases: Sequence[Case], split_cfg) -> Tuple[List[Case], List[Case]]:
    """Deterministic train/validation split of segmentation cases (:func:`split_segmentation_cases` without its
    test split: cases of a predefined test split are held out of both, with a warning).

    Args:
        cases: labelled cases (any order; they are sorted by image path first).
        split_cfg: :class:`medpipe.config.SplitConfig`.

    Returns:
        ``(train, val)`` lists of cases.

    Raises:
        DataError: see :func:`split_segmentation_cases`.
    """
    train, val, test = split_segmentation_cases(cases, split_cfg)
    if test:
        logger.warning("%d cases of the data's predefined test split (data.split_column) are held out: neither "
                       "trained nor validated on", len(test))
    return train, val


def split_segmentation_cases(cases: Sequence[Case], split_cfg) -> Tuple[List[Case], List[Case], List[Case]]:
    """Deterministic train / validation / test split of segmentation cases.

    Cases carrying a predefined ``split`` (a list file's ``data.split_column``, mapped by
    ``data.split.column_values``; see :func:`medpipe.data.discovery.discover_cases`) go to that split, as for
    classification (:func:`split_classification_cases` shares the code). A predefined validation split replaces
    ``val`` / ``val_fraction`` / ``kfold`` (a warning names the unused setting); without one, the validation split
    of the training pool comes from ``val`` (file names), ``kfold``/``fold`` or ``val_fraction``, shuffled with
    ``numpy.random.default_rng(seed)`` after sorting by image path (so the input order does not matter).

    Args:
        cases: segmentation cases ``{"image", "label"[, "split"]}`` from
            :func:`medpipe.data.discovery.discover_cases`.
        split_cfg: :class:`medpipe.config.SplitConfig`.

    Returns:
        ``(train, val, test)`` case lists sorted by image path; ``test`` is the predefined test split (empty if
        the data has none; unlabelled ``data.test_images`` are not among the cases).

    Raises:
        DataError: an explicit validation file is not among the cases, ``kfold`` has more folds than cases or no
            ``fold``, or a split leaves training or validation empty.
    """
    cases = sorted(cases, key=lambda c: c["image"])
    pool, val, test = _predefined_partition(cases)
    if val:
        _warn_unused_split_settings(val, split_cfg)
        if not pool:
            raise DataError(f"split of {len(cases)} cases leaves 0 for training and {len(val)} for validation "
                            "(data.split_column marks no row as train)")
        return pool, val, test
    train, val = _split_pool(pool, split_cfg)
    return train, val, test


def _split_pool(cases: List[Case], split_cfg) -> Tuple[List[Case], List[Case]]:
    """Train / validation split of a segmentation training pool (sorted by image path) by ``val``, ``kfold`` or
    ``val_fraction``."""
    n = len(cases)
    if split_cfg.val is not None:
        wanted = list(split_cfg.val)
        val_idx = []
        for name in wanted:
            hits = [i for i, c in enumerate(cases) if c["image"].endswith(os.sep + name) or c["image"] == name]
            if not hits:
                raise DataError(f"data.split.val: {name!r} is not among the {n} discovered images")
            val_idx.extend(hits)
        val_set = set(val_idx)
    else:
        order = np.random.default_rng(split_cfg.seed).permutation(n)
        if split_cfg.kfold is not None:
            if n < split_cfg.kfold:
                raise DataError(f"data.split.kfold={split_cfg.kfold} needs at least that many cases, found {n}")
            folds = np.array_split(order, split_cfg.kfold)
            val_set = set(folds[_fold_index(split_cfg)].tolist())
        else:
            n_val = max(1, int(round(n * split_cfg.val_fraction)))
            val_set = set(order[:n_val].tolist())
    train = [c for i, c in enumerate(cases) if i not in val_set]
    val = [c for i, c in enumerate(cases) if i in val_set]
    if not train or not val:
        raise DataError(f"split of {n} cases leaves {len(train)} for training and {len(val)} for validation")
    return train, val


# ------------------------------------------------------------------------------------------------ classification
def _groups(cases: Sequence[Case]) -> Optional[np.ndarray]:
    if cases and all("group" in c for c in cases):
        return np.array([c["group"] for c in cases])
    return None


def _holdout(cases: List[Case], fraction: float, stratify: bool, seed: int, what: str) -> Tuple[List, List]:
    """Split off about ``fraction`` of ``cases`` (stratified by label, grouped by ``group`` when present)."""
    from sklearn import model_selection as ms

    y, groups = case_labels(cases), _groups(cases)
    idx = np.arange(len(cases))
    try:
        if groups is not None:
            n_splits = max(2, int(round(1.0 / fraction)))
            n_groups = len(set(groups.tolist()))
            if n_groups < n_splits:
                raise DataError(f"{what}: {n_groups} groups (patients) cannot be split {fraction:g} / "
                                f"{1 - fraction:g} by group; need at least {n_splits}")
            splitter = (ms.StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed) if stratify
                        else ms.GroupKFold(n_splits, shuffle=True, random_state=seed))
            keep, held = next(splitter.split(idx, y, groups))
        else:
            splitter = (ms.StratifiedShuffleSplit(1, test_size=fraction, random_state=seed) if stratify
                        else ms.ShuffleSplit(1, test_size=fraction, random_state=seed))
            keep, held = next(splitter.split(idx, y))
    except ValueError as exc:
        raise DataError(f"{what}: cannot split {len(cases)} cases ({exc})") from None
    return [cases[i] for i in sorted(keep)], [cases[i] for i in sorted(held)]


def _kfold(cases: List[Case], k: int, fold: Optional[int], stratify: bool, seed: int) -> Tuple[List, List]:
    """Fold ``fold`` of a ``k``-fold split (stratified by label, grouped by ``group`` when present)."""
    from sklearn import model_selection as ms

    y, groups = case_labels(cases), _groups(cases)
    idx = np.arange(len(cases))
    try:
        if groups is not None:
            splitter = (ms.StratifiedGroupKFold(k, shuffle=True, random_state=seed) if stratify
                        else ms.GroupKFold(k, shuffle=True, random_state=seed))
            folds = list(splitter.split(idx, y, groups))
        else:
            splitter = (ms.StratifiedKFold(k, shuffle=True, random_state=seed) if stratify
                        else ms.KFold(k, shuffle=True, random_state=seed))
            folds = list(splitter.split(idx, y))
    except ValueError as exc:
        raise DataError(f"data.split.kfold={k}: cannot split {len(cases)} cases ({exc})") from None
    keep, held = folds[_fold_index(split_cfg=None, k=k, fold=fold)]
    return [cases[i] for i in sorted(keep)], [cases[i] for i in sorted(held)]


def _check_test_groups(cases: Sequence[Case], test_groups: set) -> None:
    """Raise when a ``data.split.test_groups`` entry is not a group of the data (lists the first 20 groups)."""
    found = {c.get("group") for c in cases}
    unknown = sorted(test_groups - found)
    if unknown:
        known = sorted(g for g in found if g is not None)
        raise DataError(f"data.split.test_groups: group(s) {unknown} not found in data.group_column "
                        f"(groups: {', '.join(known[:20])}{' ...' if len(known) > 20 else ''})")


def _check_disjoint_groups(pool: Sequence[Case], val: Sequence[Case], test: Sequence[Case]) -> None:
    """Raise when a group (patient) is in two of the splits."""
    groups = {name: {c["group"] for c in part if "group" in c} for name, part in
              (("train", pool), ("val", val), ("test", test))}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = sorted(groups[a] & groups[b])
        if both:
            raise DataError(
                f"group(s) {both[:5]} are in both the {a} and the {b} split (data.group_column): the same patient "
                f"must not be in two splits. If a predefined split causes this, map it to drop in "
                f"data.split.column_values")


def split_classification_cases(cases: Sequence[Case], split_cfg) -> Tuple[List[Case], List[Case], List[Case]]:
    """Deterministic train / validation / test split of classification cases.

    Order of decisions: cases of a group named in ``test_groups`` go to test (whatever their predefined
    split); other cases with a predefined ``split`` go there; without a predefined test split,
    ``test_fraction`` (if set) is held out of the training pool first; without a predefined val split, the
    validation split comes from ``val`` (file names), ``kfold``/``fold`` or ``val_fraction`` of what remains.
    Stratified by class (``stratify``) and grouped by ``group`` when the cases have one, via scikit-learn
    (``StratifiedShuffleSplit``, ``StratifiedKFold``, ``StratifiedGroupKFold``) seeded by ``seed``; the cases
    are sorted by image path first, so the result does not depend on their input order.

    Args:
        cases: from :func:`medpipe.data.discovery.discover_classification_cases`.
        split_cfg: :class:`medpipe.config.SplitConfig`.

    Returns:
        ``(train, val, test)`` case lists (``test`` may be empty), each sorted by image path.

    Raises:
        DataError: a split would be empty, a class cannot be stratified (too few cases), an explicit validation
            file is unknown, a group (patient) ends up in two splits (predefined splits included; the message
            names the group and suggests mapping a split to ``drop``), or a ``test_groups`` entry is not a
            group of the data.
    """
    cases = sorted(cases, key=lambda c: c["image"])
    test_groups = set(getattr(split_cfg, "test_groups", None) or [])
    if test_groups:
        _check_test_groups(cases, test_groups)
    pool, val, test = _predefined_partition(cases, test_groups)
    if not test and split_cfg.test_fraction is not None:
        pool, test = _holdout(pool, split_cfg.test_fraction, split_cfg.stratify, split_cfg.seed,
                              "data.split.test_fraction")
    if val:
        _warn_unused_split_settings(val, split_cfg)
    elif split_cfg.val is not None:
        names = list(split_cfg.val)
        unknown = [n for n in names if not any(c["image"].endswith(os.sep + n) or c["image"] == n for c in pool)]
        if unknown:
            raise DataError(f"data.split.val: {unknown[0]!r} is not among the {len(pool)} training-pool images")
        val = [c for c in pool if any(c["image"].endswith(os.sep + n) or c["image"] == n for n in names)]
        pool = [c for c in pool if c not in val]
    elif split_cfg.kfold is not None:
        pool, val = _kfold(pool, split_cfg.kfold, split_cfg.fold, split_cfg.stratify, split_cfg.seed)
    else:
        pool, val = _holdout(pool, split_cfg.val_fraction, split_cfg.stratify, split_cfg.seed,
                             "data.split.val_fraction")
    if not pool or not val:
        raise DataError(f"split of {len(cases)} cases leaves {len(pool)} for training and {len(val)} for "
                        "validation")
    _check_disjoint_groups(pool, val, test)
    return pool, val, test


# ------------------------------------------------------------------------------------------------ cross-validation
def cross_validation_folds(cases: Sequence[Case], split_cfg, task: str = "classification"
                           ) -> Tuple[List[Tuple[List[Case], List[Case]]], List[Case]]:
    """All ``split_cfg.kfold`` folds of a cross-validation, and the test split held out before them.

    Fold ``k`` is exactly what a single run with ``data.split.fold: k`` trains on (the same functions,
    :func:`split_classification_cases` / :func:`split_segmentation_cases`, with ``fold = k``), so the folds are
    stratified by class (and grouped by patient when the cases have a ``group``) and deterministic given ``seed``.

    Args:
        cases: from :func:`medpipe.data.discovery.discover_classification_cases` (classification) or
            :func:`medpipe.data.discovery.discover_cases`.
        split_cfg: :class:`medpipe.config.SplitConfig` with ``kfold`` set (``fold`` is ignored).
        task: ``"classification"`` or ``"segmentation"`` (its test split is only a predefined one from
            ``data.split_column``; unlabelled ``data.test_images`` are not cases).

    Returns:
        ``(folds, test)``: ``folds[k] = (train_k, val_k)``, case lists sorted by image path; ``test`` the held-out
        test cases (predefined or ``test_fraction``; empty if none), the same for every fold.

    Raises:
        DataError: ``kfold`` is not set; the data defines its own validation split (``data.split_column``), which
            leaves nothing to cross-validate; or a fold cannot be made (see :func:`split_classification_cases`).
        RuntimeError: the folds are not a partition of the training pool (a bug, not a data problem).
    """
    k = split_cfg.kfold
    if k is None:
        raise DataError("cross-validation needs data.split.kfold (the number of folds), e.g. kfold: 5")
    predefined_val = [c["image"] for c in cases if c.get("split") == "val"]
    if predefined_val:
        raise DataError(f"data.split.kfold={k}: the data defines a validation split ({len(predefined_val)} "
                        f"cases, e.g. {predefined_val[0]}) in data.split_column, so there is nothing to "
                        "cross-validate; map it to train in data.split.column_values (e.g. {val: train}) or "
                        "remove kfold")
    folds: List[Tuple[List[Case], List[Case]]] = []
    test: List[Case] = []
    for fold in range(k):
        one = split_cfg.model_copy(update={"fold": fold})
        if task == "classification":
            train, val, test_k = split_classification_cases(cases, one)
        else:
            train, val, test_k = split_segmentation_cases(cases, one)
        if fold and test_k != test:
            raise RuntimeError(f"fold {fold}: the held-out test split differs from fold 0's")
        test = test_k
        folds.append((train, val))
    pool = sorted(c["image"] for c in folds[0][0] + folds[0][1])
    vals = sorted(c["image"] for _, val in folds for c in val)
    if vals != pool:
        raise RuntimeError(f"the {k} validation folds do not cover the {len(pool)} training-pool cases exactly once")
    return folds, test
