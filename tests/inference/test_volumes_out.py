"""Volumes out: masks predicted through Orientationd / Spacingd and inverted (Invertd) are written as NIfTI with the
INPUT's shape and affine (read back with nibabel) for real hippocampus volumes re-written with a non-RAS orientation
and non-1 mm spacing, as a flipped copy, and as a DICOM series, whose DICOM SEG (highdicom) references every slice
and holds the mask."""

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.inferers import SimpleInferer

from medpipe.config.transforms import TransformSpec
from medpipe.data.transforms import build_transforms
from medpipe.data.volumes import select_series, volume_geometry
from medpipe.inference.predict import predict_cases, write_mask
from tests.data.volume_fixtures import non_ras_affine, real_volume, save_nifti, write_series

hd = pytest.importorskip("highdicom")


def pointwise_net():
    """A 1x1x1 convolution: class 2 where the z-scored intensity is above 1.5, class 1 above 0.5, else 0 (a
    deterministic 'segmentation' whose masks commute with flips, so orientation round trips can be compared)."""
    net = torch.nn.Conv3d(1, 3, 1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([0.0, 1.0, 2.0]).view(3, 1, 1, 1, 1))
        net.bias.copy_(torch.tensor([0.0, -0.5, -2.0]))
    return net


def chain(pixdim=None):
    specs = [TransformSpec(name="LoadImaged", keys=["image"], ensure_channel_first=True),
             TransformSpec(name="Orientationd", keys=["image"], axcodes="RAS")]
    if pixdim:
        specs.append(TransformSpec(name="Spacingd", keys=["image"], pixdim=pixdim, mode="bilinear"))
    specs.append(TransformSpec(name="NormalizeIntensityd", keys=["image"], nonzero=True))
    return build_transforms(specs, "transforms.infer")


def predict(cases, out, pixdim=None):
    return predict_cases(pointwise_net(), cases, chain(pixdim), SimpleInferer(), torch.device("cpu"), out, 3,
                         output_format="nifti", class_names=["background", "anterior", "posterior"],
                         pipeline_name="hippocampus_3d")


@pytest.fixture
def hippo(datasets):
    arr, affine = real_volume(datasets)
    return arr, affine


def test_mask_of_a_reoriented_resampled_input_has_its_shape_and_affine(tmp_path, hippo):
    arr, _ = hippo
    affine = non_ras_affine(spacing=(0.9, 1.3, 2.0))
    src = save_nifti(tmp_path / "odd.nii.gz", arr, affine)
    rec = predict([{"image": src}], tmp_path / "out", pixdim=(1.0, 1.0, 1.0))[0]
    mask = nib.load(rec["mask"])
    assert mask.shape == arr.shape
    np.testing.assert_allclose(mask.affine, affine, atol=1e-5)
    values = np.unique(np.asarray(mask.dataobj))
    assert set(values) <= {0, 1, 2} and len(values) == 3  # a real prediction, not an empty grid


def test_flipped_copy_predicts_the_same_mask_after_inversion(tmp_path, hippo):
    arr, affine = hippo
    orig = save_nifti(tmp_path / "orig.nii.gz", arr, affine)
    flip = np.diag([-1.0, 1.0, -1.0, 1.0])  # axes 0 and 2 reversed, same voxels in space
    flip[0, 3], flip[2, 3] = arr.shape[0] - 1, arr.shape[2] - 1
    flipped = save_nifti(tmp_path / "flipped.nii.gz", arr[::-1, :, ::-1].copy(), affine @ flip)
    recs = predict([{"image": orig}, {"image": flipped}], tmp_path / "out")
    a, b = (nib.load(r["mask"]) for r in recs)
    np.testing.assert_allclose(b.affine, affine @ flip, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(b.dataobj), np.asarray(a.dataobj)[::-1, :, ::-1])


def test_dicom_series_gets_nifti_mask_and_seg_referencing_every_slice(tmp_path, hippo):
    arr, _ = hippo
    affine = non_ras_affine(spacing=(0.9, 1.3, 2.0))
    written = write_series(tmp_path / "series", arr, affine)
    nii = save_nifti(tmp_path / "same.nii.gz", arr, affine)
    rec_series, rec_nii = predict([{"image": str(tmp_path / "series")}, {"image": nii}], tmp_path / "out")
    # the NIfTI mask has the series' shape and affine as medpipe loads it
    shape, geo = volume_geometry(tmp_path / "series")
    m = nib.load(rec_series["mask"])
    assert m.shape == shape
    np.testing.assert_allclose(m.affine, geo, atol=1e-4)
    # the same voxels as the NIfTI input's mask, once both are put in RAS
    ras_series = nib.as_closest_canonical(m)
    ras_nii = nib.as_closest_canonical(nib.load(rec_nii["mask"]))
    np.testing.assert_allclose(ras_series.affine, ras_nii.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(ras_series.dataobj), np.asarray(ras_nii.dataobj))
    assert "dicom_seg" not in rec_nii
    # the SEG: read back with highdicom, every slice referenced, frames equal to the mask's slices
    seg = hd.seg.segread(rec_series["dicom_seg"])
    refs = {item.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence
            for item in s.ReferencedInstanceSequence}
    assert refs == {uid for _, uid in written}
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["anterior", "posterior"]
    info = select_series(tmp_path / "series")
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in info.files]
    frames = seg.get_pixels_by_source_instance(uids, combine_segments=True)
    mask = np.asarray(m.dataobj)
    np.testing.assert_array_equal(frames, mask.transpose(2, 1, 0))
    assert int(seg.NumberOfFrames) == 2 * len(written)


def test_write_mask_refuses_a_mask_off_the_input_grid(tmp_path, hippo):
    arr, affine = hippo
    src = save_nifti(tmp_path / "v.nii.gz", arr, affine)
    with pytest.raises(ValueError, match=r"v\.nii\.gz: shape \(35, 51, 34\) is not the input's shape \(35, 51, 35\)"):
        write_mask(np.zeros((35, 51, 34), np.uint8), tmp_path / "m.nii.gz", 3, src)
    # a singleton axis is not a different grid
    out = write_mask(np.zeros((35, 51, 35, 1), np.uint8), tmp_path / "m.nii.gz", 3, src)
    assert nib.load(str(out)).shape == arr.shape
