"""Per-label Dice, HD95 / ASD in mm and volumes in mm3: hand-made 3D cases worked out on paper, MONAI, an
independent scipy computation, and real MSD Hippocampus labels."""

import math

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric
from scipy import ndimage

from medpipe import metrics as M

SPACING = (1.0, 1.0, 2.5)


def _cubes():
    """Two 4x4x4 cubes, the second shifted by 2 voxels along the third axis, in an (8, 8, 10) volume."""
    a = np.zeros((8, 8, 10), dtype=np.int64)
    b = np.zeros_like(a)
    a[2:6, 2:6, 2:6] = 1
    b[2:6, 2:6, 4:8] = 1
    return a, b


def test_offset_cubes_hd95_and_asd_in_mm_by_hand():
    """Boundary voxels of a 4^3 cube: 64 - 8 interior = 56. From A to B's boundary (B = A + 2 voxels along z):
    the 12 side voxels at z=4 and the 12 side voxels of A's top face (z=5) lie on B's boundary (0 mm); the 4
    interior voxels of A's top face are inside B, 1 voxel (1 mm) from B's side; the 12 side voxels at z=3 are 1
    slice (2.5 mm) below B's bottom face, the 16 voxels of A's bottom face (z=2) 2 slices (5 mm). B to A is the
    mirror image. HD95: the 95th percentile (index 0.95 * 55 = 52.25 of 56 sorted values; the last 16 are 5 mm)
    = 5 mm. ASD (pooled, both directions equal) = (4 * 1 + 12 * 2.5 + 16 * 5) / 56 = 114 / 56 mm."""
    a, b = _cubes()
    hd = M.per_label_distances(a, b, 2, "hd95", SPACING)
    asd = M.per_label_distances(a, b, 2, "asd", SPACING)
    assert hd.tolist() == pytest.approx([5.0], abs=1e-6)
    assert asd.tolist() == pytest.approx([114 / 56], abs=1e-6)
    # without spacing: voxels (2 slices = 2, 1 slice = 1): HD95 2, ASD (4 * 1 + 12 * 1 + 16 * 2) / 56
    assert M.per_label_distances(a, b, 2, "hd95").tolist() == pytest.approx([2.0], abs=1e-6)
    assert M.per_label_distances(a, b, 2, "asd").tolist() == pytest.approx([48 / 56], abs=1e-6)
    # the same pair on the other axes (spacing 1 there): a 2-voxel shift is 2 mm
    assert M.per_label_distances(np.moveaxis(a, 2, 0), np.moveaxis(b, 2, 0), 2, "hd95",
                                 (2.5, 1.0, 1.0)).tolist() == pytest.approx([5.0], abs=1e-6)
    assert M.per_label_distances(a, b, 2, "hd95", (2.5, 2.5, 1.0)).tolist() == pytest.approx([2.0], abs=1e-6)


def test_empty_mask_rule_in_mm():
    a, _ = _cubes()
    empty = np.zeros_like(a)
    diag_mm = math.sqrt((7 * 1.0) ** 2 + (7 * 1.0) ** 2 + (9 * 2.5) ** 2)
    assert M.image_diagonal(a.shape, SPACING) == pytest.approx(diag_mm)
    assert M.image_diagonal(a.shape) == pytest.approx(math.sqrt(49 + 49 + 81))  # pixels, as before
    for kind in ("hd95", "asd"):
        assert M.per_label_distances(empty, a, 2, kind, SPACING).tolist() == pytest.approx([diag_mm])
        assert M.per_label_distances(a, empty, 2, kind, SPACING).tolist() == pytest.approx([diag_mm])
        assert np.isnan(M.per_label_distances(empty, empty, 2, kind, SPACING)).all()
    # per image of a batch: each image's own spacing gives its diagonal
    y = M.one_hot(a, 2)
    scored = M.boundary_distances(torch.cat([M.one_hot(empty, 2)] * 2), torch.cat([y, y]), "hd95",
                                  [SPACING, (1.0, 1.0, 1.0)])
    assert scored.distances[:, 0].tolist() == pytest.approx([diag_mm, M.image_diagonal(a.shape)])
    assert scored.n_one_empty == 2 and scored.n_both_empty == 0


def _scipy_distances(pred, true, spacing):
    """First principles: boundary voxels (mask minus its 6-connected erosion), the Euclidean distance transform of
    the other boundary's complement with sampling=spacing; HD95 = max of the directed 95th percentiles, ASD = mean
    of both directed sets pooled."""
    def edges(m):
        return m & ~ndimage.binary_erosion(m, border_value=0)

    ep, et = edges(pred), edges(true)
    d_pt = ndimage.distance_transform_edt(~et, sampling=spacing)[ep]
    d_tp = ndimage.distance_transform_edt(~ep, sampling=spacing)[et]
    return max(np.percentile(d_pt, 95), np.percentile(d_tp, 95)), np.concatenate([d_pt, d_tp]).mean()


@pytest.fixture(scope="module")
def hippo(datasets):
    """A real MSD Hippocampus label (0 background, 1 anterior, 2 posterior) and a fake prediction: the label
    shifted by 2 voxels along the second axis, its posterior part eroded once."""
    img = nib.load(str(datasets / "msd_hippocampus" / "labelsTr" / "hippocampus_003.nii.gz"))
    label = np.asarray(img.dataobj).astype(np.int64)
    pred = np.roll(label, 2, axis=1)
    post = ndimage.binary_erosion(pred == 2)
    pred[(pred == 2) & ~post] = 0
    return label, pred, tuple(float(z) for z in img.header.get_zooms()[:3])


def test_per_label_dice_equals_monai_and_hand_on_real_hippocampus(hippo):
    label, pred, _ = hippo
    assert set(np.unique(label)) == {0, 1, 2}
    got = M.per_label_dice(pred, label, 3)
    onehot = [torch.nn.functional.one_hot(torch.as_tensor(m), 3).permute(3, 0, 1, 2)[None].float()
              for m in (pred, label)]
    monai = DiceMetric(include_background=False, reduction="none")(*onehot)[0].numpy()
    hand = [2 * np.sum((pred == c) & (label == c)) / (np.sum(pred == c) + np.sum(label == c)) for c in (1, 2)]
    assert got.shape == (2,) and got == pytest.approx(monai, abs=1e-6) and got == pytest.approx(hand, abs=1e-6)
    assert 0.3 < got.min() < got.max() < 0.95
    assert np.mean(got) == pytest.approx(M.dice_score(pred, label, num_classes=3), abs=1e-6)
    # a class absent from the ground truth is NaN (left out of means), as MONAI's ignore_empty
    no_post = np.where(label == 2, 0, label)
    assert np.isnan(M.per_label_dice(pred, no_post, 3)[1])


def test_per_label_distances_equal_scipy_on_real_hippocampus_at_anisotropic_spacing(hippo):
    label, pred, zooms = hippo
    assert zooms == (1.0, 1.0, 1.0)
    spacing = (0.8, 1.2, 2.5)  # as if the volume had been acquired with thick slices
    hd = M.per_label_distances(pred, label, 3, "hd95", spacing)
    asd = M.per_label_distances(pred, label, 3, "asd", spacing)
    for c in (1, 2):
        exp_hd, exp_asd = _scipy_distances(pred == c, label == c, spacing)
        assert hd[c - 1] == pytest.approx(exp_hd, abs=1e-4) and asd[c - 1] == pytest.approx(exp_asd, abs=1e-4)
    assert (hd > asd).all() and (hd >= 1.2).all()  # moved by 2 voxels of 1.2 mm along the second axis


def test_volumes_in_mm3(hippo):
    label, pred, _ = hippo
    got = M.label_volumes(label, 3, (0.8, 1.2, 2.5))
    assert got.tolist() == pytest.approx([np.sum(label == 1) * 2.4, np.sum(label == 2) * 2.4])
    assert M.label_volumes(label, 3).tolist() == [float(np.sum(label == 1)), float(np.sum(label == 2))]
    assert 500 < got.min() < got.max() < 12000  # a hippocampus: a few thousand voxels (PROVENANCE.md)
    with pytest.raises(ValueError, match="spacing: expected 3 values"):
        M.label_volumes(label, 3, (1.0, 1.0))


def test_label_names_and_spacing_checks():
    assert M.label_names(3) == ["class_1", "class_2"]
    assert M.label_names(3, ["background", "anterior", "posterior"]) == ["anterior", "posterior"]
    with pytest.raises(ValueError, match="expected 3 names"):
        M.label_names(3, ["background", "anterior"])
    with pytest.raises(ValueError, match="distinct names"):
        M.label_names(3, ["background", "a b", "c"])
    assert M.batch_spacing(None, 2, 3) == [(1.0, 1.0, 1.0)] * 2
    assert M.batch_spacing((1, 1, 2.5), 3, 3) == [(1.0, 1.0, 2.5)] * 3
    assert M.batch_spacing([(1, 1, 2), (2, 2, 2)], 2, 3) == [(1.0, 1.0, 2.0), (2.0, 2.0, 2.0)]
    with pytest.raises(ValueError, match="expected 3 values per image"):
        M.batch_spacing((1.0, 1.0), 1, 3)
    with pytest.raises(ValueError, match="positive finite"):
        M.batch_spacing((1.0, 0.0, 1.0), 1, 3)
    aff = np.diag([0.8, 1.2, 2.5, 1.0])
    aff[:3, :3] = aff[:3, :3] @ np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]])  # axes swapped: column norms
    assert M.spacing_from_affine(aff, 3) == pytest.approx((1.2, 0.8, 2.5))
    with pytest.raises(ValueError, match="same shape"):
        M.per_label_dice(np.zeros((4, 4, 4), int), np.zeros((4, 4, 5), int), 3)
