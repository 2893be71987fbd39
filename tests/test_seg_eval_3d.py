"""Per-case scores of 3D multi-class segmentations on the original grid (medpipe.workflow.seg_eval): per-label
Dice / HD95 / ASD in mm and volumes in mm3 of real MSD Hippocampus volumes, the spacing taken from the label's file
on its own grid, per-case columns, means and intervals; 2D PNG cases keep spacing 1."""

import csv

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medpipe import metrics as M
from medpipe.config.evaluation import IntervalsConfig
from medpipe.workflow.seg_eval import (SplitScores, case_scores, label_and_spacing, label_on_grid,
                                       seg_metric_columns, summarize_split, write_per_case_csv)

NAMES = ["dice", "hd95", "asd", "volume", "pixel_accuracy"]
CLASSES = ["background", "anterior", "posterior"]
SPACING = (0.8, 1.2, 2.5)


def _anisotropic_copy(datasets, tmp_path, n):
    """A real hippocampus image/label pair rewritten with an affine of spacing SPACING (same voxels)."""
    out = {}
    for key, sub in (("image", "imagesTr"), ("label", "labelsTr")):
        img = nib.load(str(datasets / "msd_hippocampus" / sub / f"hippocampus_{n}.nii.gz"))
        affine = img.affine.copy()
        affine[:3, :3] = np.diag(SPACING)
        path = tmp_path / sub / f"hippocampus_{n}.nii.gz"
        path.parent.mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), str(path))
        out[key] = str(path)
    return out


def _val_chain():
    """A 3D validation chain: load, channel first, RAS, resample to 1 mm (the label keeps its file grid)."""
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, NormalizeIntensityd, Orientationd, Spacingd

    return Compose([LoadImaged(keys=["image", "label"]), EnsureChannelFirstd(keys=["image", "label"]),
                    Orientationd(keys=["image", "label"], axcodes="RAS"),
                    Spacingd(keys=["image", "label"], pixdim=(1.0, 1.0, 1.0), mode=("bilinear", "nearest")),
                    NormalizeIntensityd(keys="image", nonzero=True)])


def _fake_prediction(label, shift):
    pred = np.roll(label, shift, axis=1)
    pred[(pred == 2) & ~ndimage.binary_erosion(pred == 2)] = 0
    return pred


def test_label_and_spacing_on_the_file_grid(datasets, tmp_path):
    case = _anisotropic_copy(datasets, tmp_path, "003")
    label, spacing = label_and_spacing(case, _val_chain())
    from_file = np.asarray(nib.load(case["label"]).dataobj).astype(np.int64)
    assert spacing == pytest.approx(SPACING) and np.array_equal(label, from_file)  # not resampled to 1 mm
    assert np.array_equal(label_on_grid(case, _val_chain()), label)


def test_label_and_spacing_of_a_png_is_one(datasets):
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, MapLabelValued

    em = datasets / "isbi2012_em" / "train"
    chain = Compose([LoadImaged(keys=["image", "label"], reader="PILReader", reverse_indexing=False),
                     EnsureChannelFirstd(keys=["image", "label"], channel_dim="no_channel"),
                     MapLabelValued(keys="label", orig_labels=[0, 255], target_labels=[0, 1])])
    label, spacing = label_and_spacing({"image": str(em / "image/0.png"), "label": str(em / "label/0.png")}, chain)
    assert spacing == (1.0, 1.0) and label.shape == (512, 512) and set(np.unique(label)) == {0, 1}


def test_case_scores_per_label_in_mm_equal_the_metric_functions(datasets, tmp_path):
    case = _anisotropic_copy(datasets, tmp_path, "004")
    label, spacing = label_and_spacing(case, _val_chain())
    pred = _fake_prediction(label, 2)
    prob = np.stack([pred == c for c in range(3)]).astype(np.float32)
    row, table = case_scores(prob, pred, label, NAMES, 3, spacing=spacing, class_names=CLASSES)
    assert table is None and list(row) == seg_metric_columns(NAMES, 3, CLASSES)
    assert list(row)[:3] == ["dice", "dice_anterior", "dice_posterior"]
    dice = M.per_label_dice(pred, label, 3)
    assert [row["dice_anterior"], row["dice_posterior"]] == pytest.approx(dice.tolist())
    assert row["dice"] == pytest.approx(dice.mean())
    for kind in ("hd95", "asd"):
        d = M.per_label_distances(pred, label, 3, kind, SPACING)
        assert [row[f"{kind}_anterior"], row[f"{kind}_posterior"]] == pytest.approx(d.tolist())
        assert row[kind] == pytest.approx(d.mean())
    assert row["hd95_anterior"] >= 2 * 1.2 - 1e-6  # shifted by 2 voxels of 1.2 mm
    voxel = 0.8 * 1.2 * 2.5
    assert row["volume_true_anterior_mm3"] == pytest.approx(np.sum(label == 1) * voxel)
    assert row["volume_pred_posterior_mm3"] == pytest.approx(np.sum(pred == 2) * voxel)
    assert row["volume_pred_posterior_mm3"] < row["volume_true_posterior_mm3"]  # the eroded class
    # without spacing: voxels; default class names
    plain, _ = case_scores(prob, pred, label, ["hd95"], 3)
    assert list(plain) == ["hd95", "hd95_class_1", "hd95_class_2"]
    assert plain["hd95_class_1"] == pytest.approx(M.per_label_distances(pred, label, 3, "hd95")[0])
    with pytest.raises(ValueError, match="expected 3 names"):
        case_scores(prob, pred, label, ["dice"], 3, class_names=["background", "anterior"])


def test_two_classes_keep_one_column_per_metric():
    assert seg_metric_columns(["dice", "hd95", "v_rand"], 2) == ["dice", "hd95", "v_rand"]
    assert seg_metric_columns(["volume"], 2) == ["volume_pred_class_1_mm3", "volume_true_class_1_mm3"]


def test_split_means_intervals_and_csv(datasets, tmp_path):
    scores = SplitScores()
    rows = []
    for n, shift in (("003", 1), ("004", 2), ("006", -1), ("007", 3)):
        case = _anisotropic_copy(datasets, tmp_path, n)
        label, spacing = label_and_spacing(case, _val_chain())
        pred = _fake_prediction(label, shift)
        prob = np.stack([pred == c for c in range(3)]).astype(np.float32)
        scored = case_scores(prob, pred, label, NAMES, 3, spacing=spacing, class_names=CLASSES)
        scores.add(case["image"], scored)
        rows.append(scored[0])
    values, cis, columns, official = summarize_split(scores, NAMES, IntervalsConfig(n_resamples=200, seed=3))
    assert list(values) == list(columns) == seg_metric_columns(NAMES, 3, CLASSES) and official == {}
    for key, value in values.items():
        col = [r[key] for r in rows]
        assert value == pytest.approx(np.mean(col)) and columns[key] == pytest.approx(col)
        low, high = cis[key]
        assert min(col) - 1e-9 <= low <= high <= max(col) + 1e-9, key
    # the split's Dice is the mean over cases of each case's mean over classes = the mean of the per-label Dice
    assert values["dice"] == pytest.approx((values["dice_anterior"] + values["dice_posterior"]) / 2)
    path = write_per_case_csv(tmp_path / "val_per_case.csv", scores.images, columns)
    with open(path, newline="") as fh:
        header = next(csv.reader(fh))
    assert header == ["image", *seg_metric_columns(NAMES, 3, CLASSES)]
