"""Classification data on the real CSVs and folders: discovery, classes, stratified / patient-grouped splits,
loss and sampling weights, the integrity check."""

import os
from collections import Counter

import numpy as np
import pytest

from medpipe.config import DataConfig, SplitConfig
from medpipe.data.cases import DataError
from medpipe.data.discovery import discover_classification_cases
from medpipe.data.integrity import manifest_hash, verify_cases
from medpipe.data.loaders import balanced_class_weights, class_counts, inverse_frequency_weights
from medpipe.data.splits import split_classification_cases

KERMANY = dict(root="kermany_pneumonia_cxr", list_file="labels.csv", image_column="path", split_column="split")
IDC = dict(root="idc_breast_histopathology", list_file="labels.csv", image_column="path", label_column="label_idc",
           split_column="split", group_column="patient_id",
           split={"column_values": {"train": "train", "demo_test_set1": "drop", "demo_test_set2": "drop"}})


def test_kermany_csv_with_predefined_test_split(datasets):
    cfg = DataConfig(**KERMANY)
    cases, classes = discover_classification_cases(cfg)
    assert classes == ["NORMAL", "PNEUMONIA"] and len(cases) == 1824
    assert cases == sorted(cases, key=lambda c: c["image"])
    assert all(os.path.isabs(c["image"]) and isinstance(c["label"], int) for c in cases)
    train, val, test = split_classification_cases(cases, cfg.split)
    assert class_counts(test, 2).tolist() == [234, 390]  # the official test split, whole and untouched
    assert all("/test/" in c["image"] for c in test) and not any("/test/" in c["image"] for c in train + val)
    assert class_counts(train, 2).tolist() == [480, 480] and class_counts(val, 2).tolist() == [120, 120]


def test_folder_classes_match_csv_labels(datasets):
    cfg = DataConfig(root="kermany_pneumonia_cxr", images="train/*/*.jpeg", test_images="test/*/*.jpeg",
                     class_from="folder")
    cases, classes = discover_classification_cases(cfg)
    csv_cases, _ = discover_classification_cases(DataConfig(**KERMANY))
    assert classes == ["NORMAL", "PNEUMONIA"]
    assert cases == csv_cases  # same images, labels and predefined splits either way


def test_covid_folder_names_with_spaces_and_given_class_order(datasets):
    cfg = DataConfig(root="covid_qu_ex", list_file="labels.csv", split_column="split",
                     classes=["Normal", "COVID-19", "Non-COVID"])
    cases, classes = discover_classification_cases(cfg)
    assert classes == ["Normal", "COVID-19", "Non-COVID"]
    first = next(c for c in cases if "COVID-19/images" in c["image"])
    assert first["label"] == 1 and "Infection Segmentation Data" in first["image"] and os.path.isfile(first["image"])
    assert Counter(c["split"] for c in cases) == {"train": 450, "val": 150}
    train, val, test = split_classification_cases(cases, cfg.split)
    assert (len(train), len(val), test) == (450, 150, [])  # the predefined val split replaces val_fraction


def test_unknown_class_names_file_line_and_value(datasets, tmp_path):
    cfg = DataConfig(root="mini_mias", list_file="image_labels.csv", image_column="file_png512",
                     classes=["NORMAL", "BENIGN", "MALIGN"])
    with pytest.raises(DataError, match=r"image_labels\.csv, line 24: class 'MALIGNANT' of .*mdb023\.png is not in "
                                        r"data\.classes .* Did you mean 'MALIGN'"):
        discover_classification_cases(cfg)
    with pytest.raises(DataError, match=r"no column 'image' \(data\.image_column\); columns found: refnum, "
                                        r"file_png512, label"):
        discover_classification_cases(DataConfig(root="mini_mias", list_file="image_labels.csv"))
    bad = tmp_path / "l.csv"
    bad.write_text("image,label,split\na.png,x,train\nb.png,y,holdout\n")
    with pytest.raises(DataError, match=r"l\.csv, line 3: split 'holdout' of b\.png is not a known split.*"
                                        r"\{holdout: drop\}"):
        discover_classification_cases(DataConfig(root=str(tmp_path), list_file="l.csv", split_column="split"))


def test_mini_mias_stratified_split_keeps_ratios_and_is_reproducible(datasets):
    cfg = DataConfig(root="mini_mias", list_file="image_labels.csv", image_column="file_png512",
                     classes=["NORMAL", "BENIGN", "MALIGNANT"], split={"test_fraction": 0.2, "seed": 1})
    cases, _ = discover_classification_cases(cfg)
    assert class_counts(cases, 3).tolist() == [207, 63, 52]
    train, val, test = split_classification_cases(cases, cfg.split)
    assert len(train) + len(val) + len(test) == 322
    assert not {c["image"] for c in train} & {c["image"] for c in val + test}
    assert not {c["image"] for c in val} & {c["image"] for c in test}
    whole = class_counts(cases, 3) / 322
    for part in (train, val, test):
        assert np.abs(class_counts(part, 3) / len(part) - whole).max() < 0.02  # stratified
    again = split_classification_cases(list(reversed(cases)), cfg.split)  # input order does not matter
    assert again == (train, val, test)
    other = split_classification_cases(cases, SplitConfig(test_fraction=0.2, seed=2))
    assert other[2] != test
    fold = split_classification_cases(cases, SplitConfig(test_fraction=0.2, kfold=5, fold=3, seed=1))
    assert fold[2] == test and abs(len(fold[1]) - len(fold[0]) / 4) <= 3


def test_patient_grouped_split_never_shares_a_patient(datasets):
    cfg = DataConfig(**{**IDC, "split": {**IDC["split"], "test_fraction": 0.2, "seed": 0}})
    cases, classes = discover_classification_cases(cfg)
    assert classes == ["0", "1"] and len(cases) == 2000  # demo sets (patient 8975 again) dropped
    train, val, test = split_classification_cases(cases, cfg.split)
    patients = [{c["group"] for c in part} for part in (train, val, test)]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    assert len(set().union(*patients)) == 19
    for part in (val, test):  # both classes in every split, roughly the overall ratio
        frac = class_counts(part, 2)[1] / len(part)
        assert 0.25 < frac < 0.75
    assert split_classification_cases(cases, cfg.split) == (train, val, test)


def test_predefined_split_sharing_a_patient_is_an_error(datasets):
    split = {"column_values": {"train": "train", "demo_test_set1": "test", "demo_test_set2": "drop"}}
    cfg = DataConfig(**{**IDC, "split": split})
    cases, _ = discover_classification_cases(cfg)
    with pytest.raises(DataError, match=r"group\(s\) \['8975'\] are in both the train and the test split.*drop"):
        split_classification_cases(cases, cfg.split)


def test_class_and_sample_weights():
    cases = [{"image": str(i), "label": lab} for i, lab in enumerate([0] * 6 + [1] * 2 + [2] * 4)]
    # n / (C n_c) = 12 / (3 * 6), 12 / (3 * 2), 12 / (3 * 4)
    assert balanced_class_weights(cases, ["a", "b", "c"]) == pytest.approx([2 / 3, 2.0, 1.0])
    w = inverse_frequency_weights(cases, 3)
    assert w[0] == pytest.approx(1 / 6) and w[6] == pytest.approx(1 / 2)
    for c in range(3):  # every class gets the same total sampling weight
        assert sum(wi for wi, case in zip(w, cases) if case["label"] == c) == pytest.approx(1.0)
    with pytest.raises(DataError, match=r"class\(es\) \['d'\] have no training case"):
        balanced_class_weights(cases, ["a", "b", "c", "d"])


def test_weighted_sampler_draws_classes_evenly():
    import torch

    from medpipe.data.loaders import build_loader

    labels = [0] * 90 + [1] * 10
    cases = [{"image": str(i), "label": lab} for i, lab in enumerate(labels)]
    ds = torch.utils.data.TensorDataset(torch.tensor(labels))
    loader = build_loader(ds, 50, True, sample_weights=inverse_frequency_weights(cases, 2), seed=0)
    drawn = torch.cat([b[0] for _ in range(20) for b in loader])
    assert len(drawn) == 2000 and abs(float(drawn.float().mean()) - 0.5) < 0.05


def test_integrity_check_on_classification_images(datasets, tmp_path):
    src = datasets / "kermany_pneumonia_cxr" / "train" / "NORMAL"
    good = sorted(os.listdir(src))[:2]
    (tmp_path / "A").mkdir()
    (tmp_path / "B").mkdir()
    for name in good:
        os.symlink(src / name, tmp_path / "A" / name)
    data = (src / good[0]).read_bytes()
    (tmp_path / "B" / "truncated.jpeg").write_bytes(data[: len(data) // 3])
    (tmp_path / "B" / "empty.jpeg").write_bytes(b"")
    (tmp_path / "B" / "text.jpeg").write_text("not an image")
    (tmp_path / "B" / "ok.jpeg").symlink_to(src / good[1])
    cases, _ = discover_classification_cases(DataConfig(root=str(tmp_path), images="*/*.jpeg", class_from="folder"))
    kept, problems = verify_cases(cases, "skip")
    assert len(kept) == 3 and all(c["label"] in (0, 1) for c in kept)
    reasons = {os.path.basename(p["file"]): p["reason"] for p in problems}
    assert set(reasons) == {"truncated.jpeg", "empty.jpeg", "text.jpeg"}
    assert "empty" in reasons["empty.jpeg"] and "cannot read image" in reasons["text.jpeg"]
    with pytest.raises(DataError, match=r"^3 of 6 cases are bad: .*\.jpeg.*on_bad_image: skip") as err:
        verify_cases(cases, "error")
    assert all(name in str(err.value) for name in reasons)  # every bad file is named at once
    assert len(manifest_hash(kept)) == 64 and manifest_hash(kept) != manifest_hash(kept[:2])
