"""Case discovery, pairing, splits, label mapping and integrity errors on the real ISBI-2012 EM files."""

import os
import shutil

import numpy as np
import pytest

from medpipe.config import DataConfig, SplitConfig, TransformSpec
from medpipe.data.cases import DataError
from medpipe.data.discovery import discover_cases, image_shape
from medpipe.data.integrity import manifest_hash, verify_cases
from medpipe.data.splits import split_cases
from medpipe.data.transforms import build_transforms


@pytest.fixture
def em_cfg():
    return DataConfig(root="isbi2012_em", images="train/image/*.png", labels="train/label/*.png")


def test_pairs_real_em_images(datasets, em_cfg):
    cases = discover_cases(em_cfg)
    assert len(cases) == 30
    for c in cases:
        assert os.path.basename(c["image"]) == os.path.basename(c["label"])
        assert "/train/image/" in c["image"] and "/train/label/" in c["label"]


def test_unpaired_files_named(tmp_path, datasets):
    src = datasets / "isbi2012_em" / "train"
    for sub in ("image", "label"):
        (tmp_path / sub).mkdir()
    for n in ("0", "1", "2"):
        os.symlink(src / "image" / f"{n}.png", tmp_path / "image" / f"{n}.png")
    for n in ("0", "1", "5"):
        os.symlink(src / "label" / f"{n}.png", tmp_path / "label" / f"{n}.png")
    cfg = DataConfig(root=str(tmp_path), images="image/*.png", labels="label/*.png")
    with pytest.raises(DataError, match=r"image\(s\) without a label, e\.g\. .*image/2\.png.*label/5\.png"):
        discover_cases(cfg)


def test_no_match_names_pattern(datasets):
    with pytest.raises(DataError, match=r"no files match 'train/imgs/\*.png'"):
        discover_cases(DataConfig(root="isbi2012_em", images="train/imgs/*.png"))
    with pytest.raises(FileNotFoundError, match="not_there"):
        discover_cases(DataConfig(root="not_there", images="*.png"))


def test_splits_reproducible_and_disjoint(datasets, em_cfg):
    cases = discover_cases(em_cfg)
    a = split_cases(cases, SplitConfig(val_fraction=0.2, seed=3))
    b = split_cases(list(reversed(cases)), SplitConfig(val_fraction=0.2, seed=3))
    c = split_cases(cases, SplitConfig(val_fraction=0.2, seed=4))
    assert a == b
    assert a[1] != c[1]
    assert len(a[1]) == 6 and len(a[0]) == 24
    assert not {x["image"] for x in a[0]} & {x["image"] for x in a[1]}


def test_kfold_covers_every_case_once(datasets, em_cfg):
    cases = discover_cases(em_cfg)
    vals = [split_cases(cases, SplitConfig(kfold=5, fold=k, seed=1))[1] for k in range(5)]
    names = sorted(x["image"] for v in vals for x in v)
    assert names == sorted(x["image"] for x in cases)


def test_explicit_val_list(datasets, em_cfg):
    cases = discover_cases(em_cfg)
    train, val = split_cases(cases, SplitConfig(val=["3.png", "7.png"]))
    assert [os.path.basename(v["image"]) for v in val] == ["3.png", "7.png"] and len(train) == 28
    with pytest.raises(DataError, match="'99.png' is not among"):
        split_cases(cases, SplitConfig(val=["99.png"]))


def test_labels_0_255_become_class_indices(datasets, em_cfg):
    case = discover_cases(em_cfg)[0]
    specs = [TransformSpec(name="LoadImaged", keys=["image", "label"], reader="PILReader", reverse_indexing=False),
             TransformSpec(name="EnsureChannelFirstd", keys=["image", "label"], channel_dim="no_channel"),
             TransformSpec(name="MapLabelValued", keys=["label"], orig_labels=[0, 255], target_labels=[0, 1])]
    out = build_transforms(specs)(dict(case))
    label = np.asarray(out["label"])
    assert label.shape == (1, 512, 512) and out["image"].shape == (1, 512, 512)
    assert set(np.unique(label).tolist()) == {0, 1}
    from PIL import Image

    raw = np.asarray(Image.open(case["label"]))
    # orientation preserved (reverse_indexing: false) and 255 -> 1
    assert np.array_equal(label[0], (raw == 255).astype(label.dtype))


def test_truncated_png_named(tmp_path, datasets):
    src = datasets / "isbi2012_em" / "train" / "image" / "0.png"
    bad = tmp_path / "trunc.png"
    bad.write_bytes(src.read_bytes()[: os.path.getsize(src) // 2])
    with pytest.raises(DataError, match=r"trunc\.png: cannot read image"):
        image_shape(str(bad))
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.png: file is empty"):
        image_shape(str(empty))


def test_size_mismatch_named_and_skip_mode(tmp_path, datasets):
    from PIL import Image

    src = datasets / "isbi2012_em" / "train"
    small = tmp_path / "small_label.png"
    Image.open(src / "label" / "1.png").resize((256, 256)).save(small)
    good = {"image": str(src / "image" / "0.png"), "label": str(src / "label" / "0.png")}
    bad = {"image": str(src / "image" / "1.png"), "label": str(small)}
    with pytest.raises(DataError, match=r"small_label\.png: label size \(256, 256\) does not match image .*1\.png"):
        verify_cases([good, bad], "error")
    kept, problems = verify_cases([good, bad], "skip")
    assert kept == [good]
    assert problems[0]["file"] == str(small) and "does not match" in problems[0]["reason"]


def test_manifest_hash_changes_with_content(tmp_path, datasets):
    src = datasets / "isbi2012_em" / "train" / "image"
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    shutil.copy(src / "0.png", a / "x.png")
    shutil.copy(src / "1.png", b / "x.png")
    assert manifest_hash([{"image": str(a / "x.png")}]) != manifest_hash([{"image": str(b / "x.png")}])
    assert manifest_hash([{"image": str(a / "x.png")}]) == manifest_hash([{"image": str(a / "x.png")}])


def test_nifti_and_dicom_load_through_monai_readers(tmp_path):
    """NIfTI (nibabel's bundled test file) and DICOM (pydicom's bundled CT) through LoadImaged."""
    import nibabel.testing
    from pydicom.data import get_testdata_file

    nii = os.path.join(nibabel.testing.data_path, "example4d.nii.gz")
    ct = get_testdata_file("CT_small.dcm")
    assert image_shape(nii) == (128, 96, 24) and image_shape(ct) == (128, 128)
    load = build_transforms([TransformSpec(name="LoadImaged", keys=["image"], image_only=True),
                             TransformSpec(name="EnsureChannelFirstd", keys=["image"])])
    vol = load({"image": nii})["image"]
    assert tuple(vol.shape[1:]) == (128, 96, 24)
    ct_img = build_transforms([TransformSpec(name="LoadImaged", keys=["image"], reader="PydicomReader"),
                               TransformSpec(name="EnsureChannelFirstd", keys=["image"])])({"image": ct})["image"]
    assert tuple(ct_img.shape[-2:]) == (128, 128)
    # a DICOM series is a folder of slices
    series = tmp_path / "series"
    series.mkdir()
    shutil.copy(ct, series / "1.dcm")
    s = build_transforms([TransformSpec(name="LoadImaged", keys=["image"], reader="PydicomReader")])(
        {"image": str(series)})["image"]
    assert 128 in tuple(s.shape)


def test_segmentation_list_file_uses_the_configured_columns(datasets):
    """COVID-QU-Ex's labels.csv pairs each X-ray with its lung mask in `image` / `lung_mask` columns."""
    cfg = DataConfig(root="covid_qu_ex", list_file="labels.csv", image_column="image", label_column="lung_mask")
    cases = discover_cases(cfg)
    assert len(cases) == 600
    for c in cases[:20]:
        assert "/images/" in c["image"] and "/lung masks/" in c["label"]
        assert os.path.basename(c["image"]) == os.path.basename(c["label"]) and os.path.isfile(c["label"])
    bad = DataConfig(root="covid_qu_ex", list_file="labels.csv", label_column="lung_masks")
    with pytest.raises(DataError, match=r"labels\.csv: no 'lung_masks' column.*Did you mean 'lung_mask'\?"):
        discover_cases(bad)
