"""Volumes in: real MSD hippocampus volumes written as a DICOM series (pydicom), NRRD and MHA (itk) load equal to the
NIfTI of the same volume (values and affine, after the same orientation); a folder with two series, a series with a
missing slice, a 4D NIfTI and a label on another grid are refused naming the file; MSD dataset.json and DICOM series
folders are discovered."""

import json
import os

import itk
import nibabel as nib
import numpy as np
import pytest
from monai.transforms import Orientation

from medpipe.config.data import DataConfig
from medpipe.config.transforms import TransformSpec
from medpipe.data.cases import DataError
from medpipe.data.discovery import discover_cases
from medpipe.data.expectations import build_expectations
from medpipe.data.imagefile import read_image
from medpipe.data.integrity import verify_cases
from medpipe.data.transforms import build_transforms
from medpipe.data.volumes import list_series, load_volume, select_series, volume_geometry
from tests.data.volume_fixtures import (HIPPO, non_ras_affine, real_volume, save_nifti,
                                        write_series)


def ras(t):
    """``(array, affine)`` of a loaded MetaTensor after ``Orientation("RAS")``."""
    o = Orientation(axcodes="RAS", labels=None)(t)
    return o.numpy(), np.asarray(o.affine, dtype=np.float64)


@pytest.fixture
def volume(datasets):
    """A real uint8 hippocampus volume with a non-RAS, non-1 mm affine."""
    arr, _ = real_volume(datasets)
    return arr, non_ras_affine()


def test_dicom_series_loads_equal_to_nifti(tmp_path, volume):
    arr, affine = volume
    nii = save_nifti(tmp_path / "v.nii.gz", arr, affine)
    written = write_series(tmp_path / "series", arr, affine)
    a, b = load_volume(nii), load_volume(tmp_path / "series")
    assert a.shape == b.shape == (1,) + arr.shape
    (av, aa), (bv, ba) = ras(a), ras(b)
    np.testing.assert_array_equal(av, bv)
    np.testing.assert_allclose(aa, ba, atol=1e-4)
    # the header-only geometry is the loader's, and the slices are sorted by position, not by file name
    shape, geo = volume_geometry(tmp_path / "series")
    assert shape == tuple(b.shape[1:])
    np.testing.assert_allclose(geo, np.asarray(b.affine), atol=1e-4)
    info = select_series(tmp_path / "series")
    assert info.n_slices == arr.shape[2] and set(info.files) == {p for p, _ in written}
    assert np.all(np.diff(info.positions) > 0) and info.slice_step() == pytest.approx(2.0)


def test_dicom_series_through_pipeline_chain(tmp_path, volume):
    """build_transforms' LoadImaged reads a folder with the series reader, even with an explicit reader."""
    arr, affine = volume
    nii = save_nifti(tmp_path / "v.nii.gz", arr, affine)
    write_series(tmp_path / "series", arr, affine)
    for reader in (None, "ITKReader"):
        kw = {"keys": ["image"], "ensure_channel_first": True, **({"reader": reader} if reader else {})}
        chain = build_transforms([TransformSpec(name="LoadImaged", **kw),
                                  TransformSpec(name="Orientationd", keys=["image"], axcodes="RAS")])
        a, b = chain({"image": nii})["image"], chain({"image": str(tmp_path / "series")})["image"]
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        np.testing.assert_allclose(np.asarray(a.affine), np.asarray(b.affine), atol=1e-4)


def test_two_series_in_one_folder(tmp_path, volume):
    arr, affine = volume
    folder = tmp_path / "two"
    write_series(folder, arr, affine, series_uid="1.2.826.0.1.3680043.8.498.1", description="T1 axial")
    half = arr[:, :, :20]
    for p, _ in write_series(tmp_path / "b", half, affine, series_uid="1.2.826.0.1.3680043.8.498.2",
                             description="T2 coronal"):
        os.rename(p, folder / ("b_" + os.path.basename(p)))
    with pytest.raises(DataError, match=r"two: 2 DICOM series found, expected one: 1\.2\.826\.0\.1\.3680043\.8\.498"
                                        r"\.1 \('T1 axial', 35 slices\); 1\.2\.826\.0\.1\.3680043\.8\.498\.2 "
                                        r"\('T2 coronal', 20 slices\); .*data\.series_uid"):
        select_series(folder)
    # the loader refuses it too (not ITK's silent first series), and reads the series named
    with pytest.raises(DataError, match="2 DICOM series found"):
        load_volume(folder)
    assert load_volume(folder, "1.2.826.0.1.3680043.8.498.2").shape == (1,) + half.shape
    assert [s.n_slices for s in list_series(folder)] == [35, 20]
    with pytest.raises(DataError, match=r"none of them is in data\.series_uid"):
        select_series(folder, ["9.9"])
    # the integrity check names the folder; with data.series_uid it passes
    case = {"image": str(folder)}
    with pytest.raises(DataError, match=r"1 of 1 cases are bad: .*two: 2 DICOM series found"):
        verify_cases([case])
    good, _ = verify_cases([case], expect=build_expectations({}, {}, series_uid="1.2.826.0.1.3680043.8.498.1"))
    assert good == [case]


def test_missing_slice_is_a_gap_error(tmp_path, volume):
    arr, affine = volume
    written = write_series(tmp_path / "gap", arr, affine)
    os.remove(written[17][0])  # slice 17 of 35 in position order (written in slice order)
    # the slice normal runs inferior here (left-handed affine): positions ascend from the last slice
    with pytest.raises(DataError, match=r"gap: series .* has a gap of 4 mm between slices at -?[\d.]+ and "
                                        r"-?[\d.]+ mm .*slices 16 and 17 of 34\); expected a step of 2 mm"):
        select_series(tmp_path / "gap")
    bad, problems = verify_cases([{"image": str(tmp_path / "gap")}], on_bad_image="skip")
    assert bad == [] and "a slice is missing" in problems[0]["reason"]
    assert problems[0]["file"].endswith("gap")


def test_4d_nifti_where_3d_expected(tmp_path, volume):
    arr, affine = volume
    four = save_nifti(tmp_path / "four.nii.gz", np.stack([arr, arr], axis=-1), affine)
    three = save_nifti(tmp_path / "three.nii.gz", arr, affine)
    expect = build_expectations({}, {}, in_channels=1, spatial_dims=3)
    with pytest.raises(DataError, match=r"four\.nii\.gz: NIfTI, uint8: a 4D image of shape \(35, 51, 35, 2\); "
                                        r"expected a 3D volume \(net\.spatial_dims 3, or a 4th axis of "
                                        r"net\.in_channels 1 channels\)"):
        verify_cases([{"image": four}], expect=expect)
    # a 4th axis holding in_channels channels is a multi-modal image, not refused; a 2D net is not checked
    assert verify_cases([{"image": four}], expect=build_expectations({}, {}, in_channels=2, spatial_dims=3))[0]
    assert verify_cases([{"image": four}, {"image": three}], expect=build_expectations({}, {}, spatial_dims=2))[0]
    good, problems = verify_cases([{"image": four}, {"image": three}], "skip", expect)
    assert [c["image"] for c in good] == [three] and problems[0]["file"] == four


def test_label_with_other_shape_or_affine(tmp_path, datasets):
    img, aff = real_volume(datasets)
    lab, lab_aff = real_volume(datasets, label=True)
    np.testing.assert_array_equal(aff, lab_aff)  # the real pair is on one grid
    image = save_nifti(tmp_path / "img.nii.gz", img, aff)
    ok = save_nifti(tmp_path / "ok.nii.gz", lab, aff)
    cropped = save_nifti(tmp_path / "cropped.nii.gz", lab[:, :, :-1], aff)
    shifted_aff = aff.copy()
    shifted_aff[0, 3] += 0.01  # 10 micrometres: above the 1e-3 mm tolerance
    shifted = save_nifti(tmp_path / "shifted.nii.gz", lab, shifted_aff)
    tiny_aff = aff.copy()
    tiny_aff[1, 3] += 5e-4  # under the tolerance
    tiny = save_nifti(tmp_path / "tiny.nii.gz", lab, tiny_aff)
    assert verify_cases([{"image": image, "label": ok}, {"image": image, "label": tiny}])[0]
    with pytest.raises(DataError, match=r"cropped\.nii\.gz: label size \(35, 51, 34\) does not match image "
                                        r".*img\.nii\.gz size \(35, 51, 35\)"):
        verify_cases([{"image": image, "label": cropped}])
    with pytest.raises(DataError, match=r"shifted\.nii\.gz: label affine \[1 0 0 1\.01; .*\] does not match image "
                                        r".*img\.nii\.gz affine \[1 0 0 1; .*\]: expected the image's affine within "
                                        r"0\.001 mm \(largest difference 0\.01 mm\)"):
        verify_cases([{"image": image, "label": shifted}])


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_itk_files_load_equal_to_nifti(tmp_path, volume, suffix):
    arr, affine = volume
    nii = save_nifti(tmp_path / "v.nii.gz", arr, affine)
    # write with itk from the NIfTI (its reader turns RAS into ITK's LPS), as a user converting a file would
    path = str(tmp_path / f"v{suffix}")
    itk.imwrite(itk.imread(nii), path)
    a, b = load_volume(nii), load_volume(path)
    (av, aa), (bv, ba) = ras(a), ras(b)
    np.testing.assert_array_equal(av, bv)
    np.testing.assert_allclose(aa, ba, atol=1e-4)
    shape, geo = volume_geometry(path)
    assert shape == arr.shape
    np.testing.assert_allclose(geo, np.asarray(b.affine), atol=1e-4)
    f = read_image(path)
    assert f.shape == arr.shape and f.kind.startswith(suffix[1:].upper())
    np.testing.assert_allclose(f.affine, affine, atol=1e-4)


def test_msd_dataset_json_as_list_file(datasets):
    cfg = DataConfig(root=str(datasets / HIPPO), list_file="dataset.json")
    cases = discover_cases(cfg)
    listed = json.loads((datasets / HIPPO / "dataset.json").read_text())["training"]
    assert len(cases) == len(listed) == 220
    first = cases[0]
    assert first["image"] == str(datasets / HIPPO / "imagesTr" / "hippocampus_001.nii.gz")
    assert first["label"] == str(datasets / HIPPO / "labelsTr" / "hippocampus_001.nii.gz")
    assert all(os.path.isfile(c["image"]) and os.path.isfile(c["label"]) for c in cases)
    # and the real pairs pass the volume checks (shape, affine, 3D)
    expect = build_expectations({}, {}, in_channels=1, spatial_dims=3)
    assert len(verify_cases(cases[:3], expect=expect)[0]) == 3


def test_glob_matches_series_folders(tmp_path, datasets, volume):
    arr, affine = volume
    lab, _ = real_volume(datasets, label=True)
    for name in ("p1", "p2"):
        write_series(tmp_path / "images" / name, arr, affine)
        (tmp_path / "labels").mkdir(exist_ok=True)
        # the label on the series' grid as the loader sees it: its geometry from the series itself
        shape, geo = volume_geometry(tmp_path / "images" / name)
        save_nifti(tmp_path / "labels" / f"{name}.nii.gz", np.flip(lab, 2).copy(), geo)
    (tmp_path / "images" / "notes").mkdir()  # a folder without DICOM files is no image
    cfg = DataConfig(root=str(tmp_path), images="images/*", labels="labels/*.nii.gz")
    cases = discover_cases(cfg)
    assert [os.path.basename(c["image"]) for c in cases] == ["p1", "p2"]
    good, problems = verify_cases(cases, expect=build_expectations({}, {}, in_channels=1, spatial_dims=3))
    assert len(good) == 2 and not problems
    f = read_image(cases[0]["image"])
    assert f.shape == arr.shape and f.kind.startswith("DICOM series")


def test_series_uid_config_field():
    assert DataConfig(root="x", images="*", series_uid="1.2.3").series_uid == ["1.2.3"]
    assert DataConfig(root="x", images="*", series_uid=["1.2", "1.3"]).series_uid == ["1.2", "1.3"]
    assert DataConfig(root="x", images="*").series_uid is None
    with pytest.raises(Exception):
        DataConfig(root="x", images="*", series_uid=5)
    assert nib  # nibabel is the reference reader of the NIfTI side
