"""Orthogonal overlays of 3D cases on a real MSD Hippocampus volume, with a fake prediction (its label shifted)
written as NIfTI the way predict_cases writes masks."""

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from medpipe.workflow.plots import orthogonal_slices, plot_orthogonal_overlays, plot_overlays


@pytest.fixture
def hippo_records(datasets, tmp_path):
    root = datasets / "msd_hippocampus"
    records = []
    for n in ("001", "003"):
        image, label = root / "imagesTr" / f"hippocampus_{n}.nii.gz", root / "labelsTr" / f"hippocampus_{n}.nii.gz"
        lab = nib.load(str(label))
        pred = np.roll(np.asarray(lab.dataobj).astype(np.uint8), 2, axis=1)
        mask = tmp_path / f"hippocampus_{n}.nii.gz"
        nib.save(nib.Nifti1Image(pred, nib.load(str(image)).affine), str(mask))  # as predict.write_mask does
        records.append({"image": str(image), "label": str(label), "mask": str(mask)})
    return records


def test_slices_through_the_label_centre_of_mass(datasets):
    img = nib.load(str(datasets / "msd_hippocampus/labelsTr/hippocampus_001.nii.gz"))
    lab = np.asarray(img.dataobj).astype(np.int64)
    centre = ndimage.center_of_mass(lab > 0)
    cuts = orthogonal_slices(lab, img.affine)
    assert cuts == {"axial": (2, round(centre[2])), "coronal": (1, round(centre[1])),
                    "sagittal": (0, round(centre[0]))}
    # another orientation: axes stored as (S, R, A) -> the axial cut is across the first array axis
    swapped = np.moveaxis(lab, 2, 0)
    affine = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    assert orthogonal_slices(swapped, affine)["axial"] == (0, round(centre[2]))
    # empty label: the prediction's centre; both empty: the middle of the volume
    empty = np.zeros_like(lab)
    assert orthogonal_slices(empty, img.affine, lab) == cuts
    assert orthogonal_slices(empty, img.affine)["sagittal"] == (0, (lab.shape[0] - 1) // 2)


def test_plot_orthogonal_overlays_on_real_hippocampus(hippo_records, tmp_path):
    path = plot_orthogonal_overlays(hippo_records, tmp_path / "plots" / "val_orthogonal.png",
                                    class_names=["background", "anterior", "posterior"])
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB")).astype(int)
    assert im.size[1] > 1.5 * im.size[0]  # 2 cases x 3 views = 6 rows of 3 panels
    # the classes are drawn in their colours: blue-ish (anterior) and orange-ish (posterior) pixels exist
    assert ((arr[..., 2] - arr[..., 0]) > 60).sum() > 100 and ((arr[..., 0] - arr[..., 2]) > 60).sum() > 100
    # plot_overlays (the 2D entry point) draws 3D NIfTI masks the same way
    assert plot_overlays(hippo_records, tmp_path / "o.png").is_file()


def test_plot_orthogonal_overlays_refuses_mismatched_shapes(hippo_records, tmp_path):
    bad = tmp_path / "bad.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), np.eye(4)), str(bad))
    with pytest.raises(ValueError, match="prediction shape"):
        plot_orthogonal_overlays([{**hippo_records[0], "mask": str(bad)}], tmp_path / "x.png")
    with pytest.raises(ValueError, match="records is empty"):
        plot_orthogonal_overlays([], tmp_path / "x.png")


def test_read_volume_brings_any_storage_order_to_ras(hippo_records, tmp_path):
    """A mask stored flipped (L instead of R on its first axis, the affine saying so) reads back as the same
    RAS array as the image's grid, so overlays do not depend on how the mask was stored."""
    from medpipe.workflow.plots import read_volume

    label = nib.load(hippo_records[0]["label"])
    flip = nib.orientations.ornt_transform(nib.io_orientation(label.affine), [[0, -1], [1, 1], [2, 1]])
    flipped = label.as_reoriented(flip)
    assert nib.aff2axcodes(flipped.affine) == ("L", "A", "S")
    nib.save(flipped, str(tmp_path / "flipped.nii.gz"))
    arr, affine = read_volume(str(tmp_path / "flipped.nii.gz"))
    orig, orig_affine = read_volume(hippo_records[0]["label"])
    assert np.array_equal(arr, orig) and np.allclose(affine, orig_affine)
    assert not np.array_equal(np.asarray(flipped.dataobj), np.asarray(label.dataobj))
