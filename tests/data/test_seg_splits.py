"""Segmentation splits predefined by a list file's data.split_column (COVID-QU-Ex lung masks), with the same
mapping (data.split.column_values) and errors as classification."""

import csv
import logging

import pytest

from medpipe.config import DataConfig, SplitConfig
from medpipe.data.cases import DataError
from medpipe.data.discovery import discover_cases
from medpipe.data.splits import cross_validation_folds, split_cases, split_segmentation_cases


def _cfg(**kw):
    base = dict(root="covid_qu_ex", list_file="labels.csv", label_column="lung_mask", split_column="split")
    return DataConfig(**{**base, **kw})


def _rows(datasets):
    with open(datasets / "covid_qu_ex" / "labels.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _write(tmp_path, rows, name="subset.csv"):
    path = tmp_path / name
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return str(path)


def test_predefined_train_val_split_of_covid_qu_ex(datasets, caplog):
    rows = _rows(datasets)
    cfg = _cfg(split={"val_fraction": 0.3})
    cases = discover_cases(cfg)
    assert len(cases) == 600 and {c["split"] for c in cases} == {"train", "val"}
    with caplog.at_level(logging.WARNING, logger="medpipe.data.splits"):
        train, val, test = split_segmentation_cases(cases, cfg.split)
    assert "val_fraction is not used" in caplog.text  # the data's own split wins, and says so
    assert (len(train), len(val), test) == (450, 150, [])
    root = str(datasets / "covid_qu_ex") + "/"
    assert sorted(c["image"][len(root):] for c in val) == sorted(r["image"] for r in rows if r["split"] == "val")
    assert all("/Val/" in c["image"] and "/lung masks/" in c["label"] for c in val)
    assert all("/Train/" in c["image"] for c in train)
    assert split_cases(cases, cfg.split) == (train, val)
    assert split_segmentation_cases(list(reversed(cases)), cfg.split) == (train, val, test)  # order-free


def test_column_values_map_drop_and_test(datasets, tmp_path, caplog):
    rows = _rows(datasets)
    picked = ([r for r in rows if r["split"] == "train"][:4] + [r for r in rows if r["split"] == "val"][:3])
    picked[-1] = {**picked[-1], "split": "holdout", "lung_mask": ""}  # a test row may be unlabelled
    cfg = _cfg(list_file=_write(tmp_path, picked),
               split={"column_values": {"train": "train", "val": "val", "holdout": "test"}})
    train, val, test = split_segmentation_cases(discover_cases(cfg), cfg.split)
    assert (len(train), len(val), len(test)) == (4, 2, 1) and "label" not in test[0]
    with caplog.at_level(logging.WARNING, logger="medpipe.data.splits"):
        assert split_cases(discover_cases(cfg), cfg.split) == (train, val)
    assert "1 cases of the data's predefined test split" in caplog.text
    dropped = _cfg(list_file=cfg.list_file,
                   split={"column_values": {"train": "train", "val": "val", "holdout": "drop"}})
    assert len(discover_cases(dropped)) == 6
    # no predefined val split: the training pool is split by val_fraction as without a split column
    pool = _cfg(list_file=cfg.list_file, split={"column_values": {"train": "train", "val": "train",
                                                                  "holdout": "drop"}, "val_fraction": 0.34})
    train, val, test = split_segmentation_cases(discover_cases(pool), pool.split)
    assert (len(train), len(val), test) == (4, 2, [])


def test_split_errors_name_file_line_and_value(datasets, tmp_path):
    rows = _rows(datasets)[:3]
    bad = _cfg(list_file=_write(tmp_path, [rows[0], rows[1], {**rows[2], "split": "tst"}]))
    with pytest.raises(DataError, match=r"subset\.csv, line 4: split 'tst' of .*covid_.*\.png is not a known split; "
                                        r"expected one of train, val, test\. Map it in data\.split\.column_values"):
        discover_cases(bad)
    missing = _cfg(list_file=bad.list_file, split_column="fold")
    with pytest.raises(DataError, match=r"subset\.csv: no column 'fold' \(data\.split_column\); columns found: "
                                        r"image, lung_mask, infection_mask, split, label"):
        discover_cases(missing)
    unlabelled = _cfg(list_file=_write(tmp_path, [rows[0], {**rows[1], "lung_mask": ""}], "u.csv"))
    with pytest.raises(DataError, match=r"u\.csv, line 3: image .* is in the train split .* empty 'lung_mask'"):
        discover_cases(unlabelled)
    only_val = _cfg(list_file=_write(tmp_path, [{**r, "split": "val"} for r in rows], "v.csv"))
    with pytest.raises(DataError, match="leaves 0 for training"):
        split_segmentation_cases(discover_cases(only_val), only_val.split)
    all_dropped = _cfg(list_file=bad.list_file, split={"column_values": {"train": "drop", "tst": "drop"}})
    with pytest.raises(DataError, match="all dropped by data.split.column_values"):
        discover_cases(all_dropped)


def test_predefined_validation_split_cannot_be_cross_validated(datasets):
    cfg = _cfg(split={"kfold": 3})
    with pytest.raises(DataError, match=r"defines a validation split.*column_values"):
        cross_validation_folds(discover_cases(cfg), cfg.split, task="segmentation")
    assert SplitConfig().column_values == {"train": "train", "val": "val", "test": "test"}


def test_segmentation_config_accepts_split_column_only_with_a_list_file(tmp_path):
    from tests.test_config import GOOD, _problems

    err = _problems(tmp_path, GOOD.replace("  labels: train/label/*.png\n",
                                           "  labels: train/label/*.png\n  split_column: split\n"))
    assert err.problems[0][0] == "data.split_column" and "needs data.list_file" in err.problems[0][2]
    err = _problems(tmp_path, GOOD.replace("  labels: train/label/*.png\n",
                                           "  labels: train/label/*.png\n  group_column: patient\n"))
    assert err.problems[0][0] == "data.group_column" and "classification setting" in err.problems[0][2]
