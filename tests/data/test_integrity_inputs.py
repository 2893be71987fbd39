"""Issue 15, items 2 and 5 (data side): the integrity check finds, before the first epoch, every input that would
crash later or silently give wrong results, naming the file, what was found and what was expected.

Broken inputs are built in tmp_path from the real ISBI-2012 EM images, Kermany chest X-rays, MSD hippocampus
volumes and pydicom's CT; the check runs through the task (``task_for(cfg).prepare()``) as a run does.
"""

import os
import shutil

import numpy as np
import pytest
import yaml
from PIL import Image

from medpipe.config import validate_config
from medpipe.data.cases import DataError
from medpipe.data.expectations import KeyExpectation, Window
from medpipe.data.imagefile import ImageFile, read_image
from medpipe.data.integrity import verify_cases
from medpipe.run import main
from medpipe.workflow.skeleton import task_for
from tests.conftest import link_em
from tests.test_run_e2e import MAP, SCALE, _cfg_dict


def _em_cfg(tmp_path, root, **data):
    d = _cfg_dict(tmp_path, root, epochs=1)
    d["data"].update(data)
    return d


def _replace(path, array, **save):
    """Write ``array`` as the image file ``path`` (replacing the symlink to the real file)."""
    os.unlink(path)
    Image.fromarray(array).save(path, **save)


def _em(path):
    return np.asarray(Image.open(os.path.realpath(path)))


def _checkpoints(tmp_path):
    return list((tmp_path / "artifacts").glob("*/checkpoints/*.pt"))


# ------------------------------------------------------------------------------------------------ 1: bit depth
def test_16bit_png_in_an_8bit_pipeline_is_refused_before_training(tmp_path, small_em, capsys):
    bad = small_em / "image" / "1.png"
    _replace(bad, _em(bad).astype(np.uint16) * 257)  # the same EM section, 16 bits per sample
    cfg = validate_config(_em_cfg(tmp_path, small_em))
    with pytest.raises(DataError) as err:
        task_for(cfg).prepare()
    msg = str(err.value)
    assert f"{bad}: PNG, 16-bit grey (mode I;16) with values" in msg
    assert "transforms.train[2] ScaleIntensityRanged expects values in a_min..a_max = 0..255" in msg
    assert "above a_max and would all become b_max 1" in msg and "\n" not in msg

    # the whole run stops before the first epoch (today it trained on a constant image and FINISHED)
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(_em_cfg(tmp_path, small_em)))
    assert main([str(p)]) == 2
    assert str(bad) in capsys.readouterr().err and not _checkpoints(tmp_path)

    # on_bad_image: skip leaves it out and lists it
    data = task_for(validate_config(_em_cfg(tmp_path, small_em, on_bad_image="skip"))).prepare()
    assert [p["file"] for p in data.problems] == [str(bad)] and "16-bit" in data.problems[0]["reason"]
    assert str(bad) not in [c["image"] for c in data.train + data.val]


def test_16bit_png_is_fine_where_the_intensity_transform_is_scale_free(tmp_path, small_em):
    bad = small_em / "image" / "1.png"
    _replace(bad, _em(bad).astype(np.uint16) * 257)
    d = _em_cfg(tmp_path, small_em)
    for chain in ("train", "val"):
        d["transforms"][chain] = [{"name": "NormalizeIntensityd", "keys": ["image"]} if t == SCALE else t
                                  for t in d["transforms"][chain]]
    data = task_for(validate_config(d)).prepare()
    assert len(data.train) + len(data.val) == 4 and data.problems == []


def test_window_rules_keep_ct_windows_and_refuse_scaled_floats(datasets):
    em = np.asarray(Image.open(datasets / "isbi2012_em" / "train" / "image" / "0.png"))
    ct_window = KeyExpectation("transforms.train", "image",
                               window=Window("transforms.train[2] ScaleIntensityRanged", -57, 164, 0.0, 1.0, True))
    hu = em.astype(np.int16) * 8 - 1000  # HU-like values -1000..1040: air and bone clipped, as CT windows do
    assert ct_window.window_problem(ImageFile("ct.nii.gz", hu.shape, hu, kind="NIfTI, int16")) is None
    grey = KeyExpectation("transforms.train", "image",
                          window=Window("transforms.train[2] ScaleIntensityRanged", 0, 255, 0.0, 1.0, True))
    scaled = (em / 255.0).astype(np.float32)  # already 0..1 in a 0..255 pipeline: nearly black after scaling
    reason = grey.window_problem(ImageFile("x.tif", em.shape, scaled, kind="TIFF, 32-bit float grey"))
    assert "nearly constant" in reason and "0..255" in reason
    assert grey.window_problem(ImageFile("x.png", em.shape, em, kind="PNG, 8-bit grey")) is None


# ------------------------------------------------------------------------------------------------ 2: NaN / inf
def test_nan_in_a_float_tiff_is_reported(tmp_path, small_em):
    bad = small_em / "image" / "2.tif"
    img = _em(small_em / "image" / "2.png").astype(np.float32)
    img[100, 200] = np.nan
    img[5, 5] = np.inf
    os.unlink(small_em / "image" / "2.png")
    Image.fromarray(img).save(bad)  # mode F TIFF, read by PILReader
    d = _em_cfg(tmp_path, small_em, images="image/*")
    with pytest.raises(DataError, match=rf"{bad}: TIFF, 32-bit float grey \(mode F\): 2 non-finite value\(s\) "
                                        r"\(NaN / inf\) among 262144 values; expected finite values"):
        task_for(validate_config(d)).prepare()


def _hippocampus_cfg(tmp_path, root):
    load = [{"name": "LoadImaged", "keys": ["image", "label"]},
            {"name": "EnsureChannelFirstd", "keys": ["image", "label"]}]
    return {"name": "hip", "task": "segmentation", "output_dir": str(tmp_path / "artifacts"),
            "data": {"root": str(root), "images": "images/*.nii.gz", "labels": "labels/*.nii.gz",
                     "split": {"val_fraction": 0.5, "seed": 0}},
            "transforms": {"train": load + [{"name": "NormalizeIntensityd", "keys": ["image"]}],
                           "val": load + [{"name": "NormalizeIntensityd", "keys": ["image"]}]},
            "net": {"name": "basic_unet", "spatial_dims": 3, "out_channels": 3, "features": [4, 4, 8, 16, 32, 4]},
            "train": {"max_epochs": 1, "device": "cpu"}, "infer": {"roi_size": [32, 32, 32]}}


def test_nan_in_a_nifti_volume_is_reported(tmp_path, datasets):
    import nibabel as nib

    src = datasets / "msd_hippocampus"
    root = tmp_path / "hip"
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    for name in ("hippocampus_001.nii.gz", "hippocampus_003.nii.gz"):
        shutil.copy(src / "imagesTr" / name, root / "images" / name)
        shutil.copy(src / "labelsTr" / name, root / "labels" / name)
    bad = root / "images" / "hippocampus_003.nii.gz"
    vol = nib.load(bad)
    arr = np.asarray(vol.dataobj, dtype=np.float32)
    arr[10, 20, 15] = np.nan
    nib.save(nib.Nifti1Image(arr, vol.affine), bad)
    cfg = validate_config(_hippocampus_cfg(tmp_path, root))
    with pytest.raises(DataError, match=rf"^1 of 2 cases are bad: {bad}: NIfTI, float32: 1 non-finite value"):
        task_for(cfg).prepare()


def test_dicom_with_nan_rescale_slope_is_reported(tmp_path):
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.RescaleSlope = "NaN"
    bad = tmp_path / "nan_slope.dcm"
    ds.save_as(bad)
    assert read_image(str(bad)).nonfinite_scaling == "RescaleSlope NaN"
    _, problems = verify_cases([{"image": str(bad), "label": 0}], "skip")
    assert problems == [{"file": str(bad), "reason": problems[0]["reason"]}]
    assert "non-finite RescaleSlope NaN; expected finite numbers" in problems[0]["reason"]


# ------------------------------------------------------------------------------------------------ 3: test images
def test_truncated_unlabelled_test_image_is_found_before_training(tmp_path, small_em, capsys):
    bad = small_em / "test" / "1.png"
    data = bad.read_bytes()
    os.unlink(bad)
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"^1 of 6 cases are bad: {bad}: cannot read image"):
        task_for(validate_config(_em_cfg(tmp_path, small_em))).prepare()

    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(_em_cfg(tmp_path, small_em)))
    assert main([str(p)]) == 2  # before training: no checkpoint written
    assert str(bad) in capsys.readouterr().err and not _checkpoints(tmp_path)

    data = task_for(validate_config(_em_cfg(tmp_path, small_em, on_bad_image="skip"))).prepare()
    assert [c["image"] for c in data.test] == [str(small_em / "test" / "0.png")]
    assert [p["file"] for p in data.problems] == [str(bad)]


def test_test_images_are_checked_against_the_inference_chain(tmp_path, small_em):
    bad = small_em / "test" / "0.png"
    _replace(bad, _em(bad).astype(np.uint16) * 257)
    with pytest.raises(DataError, match=rf"{bad}: PNG, 16-bit grey .* transforms.infer\[2\] ScaleIntensityRanged"):
        task_for(validate_config(_em_cfg(tmp_path, small_em))).prepare()


# ------------------------------------------------------------------------------------------------ 4: channels, labels
def test_rgba_image_in_a_grey_pipeline_is_named_with_channels(tmp_path, small_em):
    bad = small_em / "image" / "0.png"
    _replace(bad, np.asarray(Image.fromarray(_em(bad)).convert("RGBA")))
    with pytest.raises(DataError) as err:
        task_for(validate_config(_em_cfg(tmp_path, small_em))).prepare()
    assert (f"{bad}: PNG, 8-bit RGBA (mode RGBA): 4 channels (RGBA), but transforms.train[1] EnsureChannelFirstd "
            "(channel_dim: no_channel) expects a one-channel (grey) file; expected a file with 1 (grey) "
            "channels") in str(err.value)


@pytest.fixture
def small_cxr_rgb(tmp_path, datasets):
    """Four real chest X-ray JPEGs (RGB) per class in class folders."""
    src = datasets / "kermany_pneumonia_cxr" / "train"
    for label in ("NORMAL", "PNEUMONIA"):
        (tmp_path / "cxr" / label).mkdir(parents=True)
        for name in sorted(os.listdir(src / label))[:4]:
            os.symlink(src / label / name, tmp_path / "cxr" / label / name)
    return tmp_path / "cxr"


def _cxr_cfg(tmp_path, root, grey):
    d = yaml.safe_load(open(os.path.join(os.path.dirname(__file__), "..", "..", "pipelines", "pneumonia_xray.yaml")))
    d["output_dir"] = str(tmp_path / "artifacts")
    d["data"] = {"root": str(root), "images": "*/*", "class_from": "folder", "split": {"val_fraction": 0.5}}
    if not grey:  # an RGB network: no ToGrayscaled, 3 input channels
        for chain in ("train", "val"):
            d["transforms"][chain] = [t for t in d["transforms"][chain] if t["name"] != "ToGrayscaled"]
        d["net"]["in_channels"] = 3
    return d


def test_rgba_image_in_an_rgb_classifier_names_net_in_channels(tmp_path, small_cxr_rgb):
    bad = small_cxr_rgb / "NORMAL" / "rgba.png"
    Image.open(next((small_cxr_rgb / "NORMAL").iterdir())).convert("RGBA").save(bad)
    with pytest.raises(DataError) as err:
        task_for(validate_config(_cxr_cfg(tmp_path, small_cxr_rgb, grey=False))).prepare()
    assert (f"{bad}: PNG, 8-bit RGBA (mode RGBA): 4 channels (RGBA), but transforms.train gives the network 4 "
            "channels but net.in_channels is 3; expected a file with 3 (RGB) channels") in str(err.value)
    # the shipped grey chain (ToGrayscaled drops alpha) takes the same file, and the RGB JPEGs
    data = task_for(validate_config(_cxr_cfg(tmp_path, small_cxr_rgb, grey=True))).prepare()
    assert len(data.train) + len(data.val) == 9 and data.problems == []


def test_label_with_values_0_128_names_the_map(tmp_path, small_em):
    bad = small_em / "label" / "2.png"
    _replace(bad, (_em(bad) // 255 * 128).astype(np.uint8))
    with pytest.raises(DataError) as err:
        task_for(validate_config(_em_cfg(tmp_path, small_em))).prepare()
    assert (f"{bad}: label values {{0, 128}} found, {{128}} not expected: transforms.train[3] MapLabelValued maps "
            "orig_labels [0, 255] to target_labels [0, 1], and net.out_channels 2 means class indices 0..1; "
            "expected values {0, 1, 255}") in str(err.value)


def test_label_values_without_a_map_must_be_class_indices(tmp_path, small_em):
    d = _em_cfg(tmp_path, small_em)
    for chain in ("train", "val"):
        d["transforms"][chain] = [t for t in d["transforms"][chain] if t != MAP]
    with pytest.raises(DataError, match=r"^4 of 6 cases are bad: .*label values \{0, 255\} found, \{255\} not "
                                        r"expected: net.out_channels 2 means class indices 0..1; expected values "
                                        r"\{0, 1\}"):
        task_for(validate_config(d)).prepare()


def test_every_bad_file_is_named_at_once_and_skip_keeps_the_rest(tmp_path, datasets):
    small_em = link_em(tmp_path / "em6", datasets, 6, 2)
    sixteen, rgba, label = small_em / "image" / "1.png", small_em / "image" / "0.png", small_em / "label" / "2.png"
    _replace(sixteen, _em(sixteen).astype(np.uint16) * 257)
    _replace(rgba, np.asarray(Image.fromarray(_em(rgba)).convert("RGBA")))
    _replace(label, (_em(label) // 255 * 128).astype(np.uint8))
    truncated = small_em / "test" / "1.png"
    data = truncated.read_bytes()
    os.unlink(truncated)
    truncated.write_bytes(data[:1000])
    d = _em_cfg(tmp_path, small_em, split={"val": ["5.png"]})
    with pytest.raises(DataError, match=r"^4 of 8 cases are bad: ") as err:
        task_for(validate_config(d)).prepare()
    assert all(str(f) in str(err.value) for f in (sixteen, rgba, label, truncated))
    d["data"]["on_bad_image"] = "skip"
    data = task_for(validate_config(d)).prepare()
    assert sorted(p["file"] for p in data.problems) == sorted(map(str, (sixteen, rgba, label, truncated)))
    assert [c["image"] for c in data.train + data.val] == [str(small_em / "image" / f"{n}.png") for n in (3, 4, 5)]
    assert [c["image"] for c in data.test] == [str(small_em / "test" / "0.png")]
