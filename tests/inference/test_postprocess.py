"""nnU-Net's post-processing choice (largest connected component) on real hippocampus and EM labels."""

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from sklearn.metrics import f1_score

from medpipe.inference.postprocess import apply_postprocess, choose_postprocess, class_dice, keep_largest_component


@pytest.fixture
def hippo(datasets):
    """Four real MSD hippocampus label volumes (0 background, 1 anterior, 2 posterior), each union one component."""
    files = sorted((datasets / "msd_hippocampus" / "labelsTr").glob("*.nii.gz"))[:4]
    return [np.asarray(nib.load(str(f)).dataobj).astype(np.int64) for f in files]


def _largest_by_scipy(mask, labels):
    """Independent: scipy.ndimage.label with full connectivity, keep the biggest component of the union."""
    union = np.isin(mask, labels)
    comp, n = ndimage.label(union, ndimage.generate_binary_structure(mask.ndim, mask.ndim))
    if n <= 1:
        return mask.copy()
    keep = np.argmax(np.bincount(comp.ravel())[1:]) + 1
    out = mask.copy()
    out[union & (comp != keep)] = 0
    return out


def _dice_by_sklearn(pairs, c):
    """Mean over cases of F1 (= Dice) of class c, cases with neither prediction nor truth left out."""
    vals = [f1_score((t == c).ravel(), (p == c).ravel()) for p, t in pairs if (p == c).any() or (t == c).any()]
    return float(np.mean(vals))


def _with_blobs(label, rng):
    """The true label plus a spurious 3x3x3 blob of class 1 and one of class 2 far from it (in empty corners)."""
    pred = label.copy()
    pred[:3, :3, :3] = 1
    pred[-3:, -3:, -3:] = 2
    assert not label[:3, :3, :3].any() and not label[-3:, -3:, -3:].any()
    return pred


def test_keep_largest_component_equals_scipy(hippo):
    rng = np.random.default_rng(0)
    for label in hippo:
        pred = _with_blobs(label, rng)
        for labels in ([1, 2], [1], [2]):
            np.testing.assert_array_equal(keep_largest_component(pred, labels), _largest_by_scipy(pred, labels))
    with pytest.raises(ValueError, match="foreground classes"):
        keep_largest_component(hippo[0], [0, 1])


def test_all_foreground_step_is_chosen_when_it_helps_every_class(hippo):
    rng = np.random.default_rng(0)
    pairs = [(_with_blobs(t, rng), t) for t in hippo]
    spec = choose_postprocess(pairs, 3)
    assert spec["steps"] == [[1, 2]] and spec["n_cases"] == 4
    for c in (1, 2):
        assert spec["val_dice_per_class_before"][c - 1] == pytest.approx(_dice_by_sklearn(pairs, c), abs=1e-12)
        assert spec["val_dice_per_class_after"][c - 1] == pytest.approx(1.0)  # the blobs were the only error
    before = np.mean([_dice_by_sklearn(pairs, c) for c in (1, 2)])
    assert spec["val_dice_before"] == pytest.approx(before, abs=1e-12) and spec["val_dice_after"] == 1.0
    # the spec is JSON and applies to any mask
    again = json.loads(json.dumps(spec))
    for p, t in pairs:
        np.testing.assert_array_equal(apply_postprocess(p, again), t)


def test_per_class_step_when_all_foreground_would_remove_a_class(hippo):
    pairs = []
    for t in hippo:
        pred = t.copy()
        near_anterior = ndimage.binary_dilation(t == 1, ndimage.generate_binary_structure(3, 3), iterations=2)
        pred[(pred == 2) & near_anterior] = 0  # the posterior part, cut off where it touches the anterior one
        pred[:3, :3, :3] = 1  # and a spurious anterior blob
        comp, n = ndimage.label(pred > 0, ndimage.generate_binary_structure(3, 3))
        assert n >= 3  # precondition: the union is several components, the largest is not all of the foreground
        pairs.append((pred, t))
    spec = choose_postprocess(pairs, 3)
    # all foreground together would delete a whole class in some case: rejected (a class's Dice falls)
    all_fg = class_dice([(keep_largest_component(p, [1, 2]), t) for p, t in pairs], 3)
    assert np.any(all_fg < np.asarray(spec["val_dice_per_class_before"]))
    assert [1] in spec["steps"] and [1, 2] not in spec["steps"]
    cleaned = [(_largest_by_scipy(p, [1]), t) for p, t in pairs]
    assert spec["val_dice_per_class_after"][0] == pytest.approx(_dice_by_sklearn(cleaned, 1), abs=1e-12)
    assert spec["val_dice_per_class_after"][0] > spec["val_dice_per_class_before"][0]


def test_nothing_is_chosen_for_em_cells(datasets):
    """EM cell interiors are hundreds of components: keeping the largest would destroy the prediction."""
    pairs = []
    for n in range(2):
        t = (np.asarray(Image.open(datasets / "isbi2012_em" / "train" / "label" / f"{n}.png"))[:128, :128] > 127)
        pred = ndimage.binary_erosion(t, iterations=1).astype(np.int64)
        pairs.append((pred, t.astype(np.int64)))
    spec = choose_postprocess(pairs, 2)
    assert spec["steps"] == [] and spec["val_dice_after"] == spec["val_dice_before"]
    assert spec["val_dice_before"] == pytest.approx(_dice_by_sklearn(pairs, 1), abs=1e-12)
    np.testing.assert_array_equal(apply_postprocess(pairs[0][0], spec), pairs[0][0])
    np.testing.assert_array_equal(apply_postprocess(pairs[0][0], None), pairs[0][0])


def test_bad_inputs_are_named(hippo):
    with pytest.raises(ValueError, match="no validation case"):
        choose_postprocess([], 3)
    with pytest.raises(ValueError, match=r"pairs\[0\]: prediction shape"):
        choose_postprocess([(hippo[0], hippo[1])], 3)
    with pytest.raises(ValueError, match=r"class indices in \[0, 2\)"):
        choose_postprocess([(hippo[0], hippo[0])], 2)
    with pytest.raises(ValueError, match="unknown method"):
        apply_postprocess(hippo[0], {"method": "open", "steps": []})
    with pytest.raises(ValueError, match="steps must be"):
        apply_postprocess(hippo[0], {"steps": [1, 2]})
