import dataclasses
import math

import numpy as np
import pytest
import torch
from PIL import Image

from medpipe.data.wsi import open_slide, read_region
from medpipe.inference.slide import predict_slide_heatmap
from medpipe.inference.slide_scoring import score_heatmap
from medpipe.inference.slide_settings import IntensityRange, SlideInferSettings
from medpipe.nets.lenet import LeNet


@pytest.fixture(scope="module")
def region(datasets):
    root = datasets / "idc_breast_histopathology/reconstructed_region"
    return root / "patient8863_mosaic.jpg", np.asarray(Image.open(root / "patient8863_patch_label_mask.png"))


def _cells(values, patch=2):
    """(ny, nx) per-cell values -> (ny*patch, nx*patch) constant blocks."""
    return np.kron(np.asarray(values, float), np.ones((patch, patch)))


# ------------------------------------------------------------------------------------------ score_heatmap
def test_score_hand_computed():
    labels = _cells([[1, 2, 0], [2, 1, 1]]).astype(np.uint8)  # 2 IDC, 3 non-IDC, 1 background cell
    heat = _cells([[0.2, 0.9, 0.99], [0.3, 0.4, 0.35]])
    r = score_heatmap(heat, labels, 2)
    # pos {0.9, 0.3} vs neg {0.2, 0.4, 0.35}: 0.9 beats 3, 0.3 beats 1 -> 4 of 6 pairs
    assert r["auc"] == pytest.approx(4 / 6)
    assert (r["n_patches"], r["n_pos"], r["n_neg"], r["n_uncovered"]) == (5, 2, 3, 0)
    # threshold 0.5: TP 1 (0.9), FN 1 (0.3), TN 3, FP 0
    assert r["sensitivity"] == 0.5 and r["specificity"] == 1.0 and r["balanced_accuracy"] == 0.75
    assert r["f1"] == pytest.approx(2 / 3)
    assert r["mean_score_pos"] == pytest.approx(0.6) and r["mean_score_neg"] == pytest.approx(0.95 / 3)
    # ties count one half: pos {0.5} vs neg {0.5, 0.1} -> (0.5 + 1) / 2
    tie = score_heatmap(_cells([[0.5, 0.5, 0.1]]), _cells([[2, 1, 1]]).astype(int), 2)
    assert tie["auc"] == pytest.approx(0.75)


def test_score_is_the_patch_mean_with_partial_border_cells():
    # 5 x 5 heatmap, 3 x 3 patches: cells (0,0) full, (0,1) 3x2, (1,0) 2x3, (1,1) 2x2
    heat = np.arange(25, dtype=float).reshape(5, 5) / 100
    labels = np.ones((5, 5), int)
    labels[3:, :3] = 2  # cell (1, 0) is IDC
    r = score_heatmap(heat, labels, 3, return_patches=True)
    expect = {(0, 0): heat[:3, :3].mean(), (0, 3): heat[:3, 3:].mean(), (3, 0): heat[3:, :3].mean(),
              (3, 3): heat[3:, 3:].mean()}
    got = {tuple(yx): s for yx, s in zip(r["patch_yx"].tolist(), r["patch_score"])}
    assert got == pytest.approx(expect)
    # IDC cell mean 0.185 beats non-IDC 0.06 and 0.085, not 0.21
    assert r["patch_label"].tolist() == [1, 1, 2, 1] and r["auc"] == pytest.approx(2 / 3)


def test_score_mask_at_another_resolution_and_coverage():
    labels = _cells([[1, 2], [2, 1]], patch=1).astype(int)  # one mask pixel per patch
    heat = _cells([[0.1, 0.8], [0.7, 0.9]], patch=4)  # 8 x 8 heatmap, 4 x 4 patches
    r = score_heatmap(heat, labels, 4)
    assert r["n_patches"] == 4 and r["auc"] == 0.5  # pos {0.8, 0.7} vs neg {0.1, 0.9}
    cov = np.ones((8, 8), bool)
    cov[4:, 4:] = False  # the 0.9 patch was never inferred: scores 0
    r = score_heatmap(heat, labels, 4, coverage=cov)
    assert r["n_uncovered"] == 1 and r["auc"] == 1.0 and r["mean_score_neg"] == pytest.approx(0.05)
    half = heat.copy()
    half[:2] = 0.0  # only half of the 0.1/0.8 patches covered: their mean is over the covered half
    cov = np.ones((8, 8), bool)
    cov[:2] = False
    assert score_heatmap(half, labels, 4, coverage=cov)["mean_score_pos"] == pytest.approx(0.75)


def test_score_edge_cases():
    one_class = score_heatmap(np.full((4, 4), 0.3), np.ones((4, 4), int), 2)
    assert math.isnan(one_class["auc"]) and one_class["n_neg"] == 4 and one_class["n_pos"] == 0
    with pytest.raises(ValueError, match="aspect ratio"):
        score_heatmap(np.zeros((10, 10)), np.zeros((10, 20), int), 2)
    with pytest.raises(ValueError, match=r"heatmap must be \(H, W\)"):
        score_heatmap(np.zeros((2, 10, 10)), np.zeros((10, 10), int), 2)


def test_score_real_idc_mask(region):
    _, mask = region
    perfect = score_heatmap((mask == 2).astype(np.float32), mask, 50)
    assert (perfect["n_patches"], perfect["n_pos"], perfect["n_neg"]) == (979, 207, 772)
    assert perfect["auc"] == 1.0 and perfect["f1"] == 1.0
    assert score_heatmap((mask == 1).astype(np.float32), mask, 50)["auc"] == 0.0


# ------------------------------------------------------------------------------------------ predict
def test_intensity_range_matches_monai():
    from monai.transforms import ScaleIntensityRange

    x = torch.linspace(-20, 300, 50)
    ref = ScaleIntensityRange(0, 255, -1, 1, clip=True)(x)
    torch.testing.assert_close(IntensityRange(0, 255, -1, 1)(x.clone()), torch.as_tensor(ref))
    ref = ScaleIntensityRange(0, 255, 0, 1, clip=False)(x)
    torch.testing.assert_close(IntensityRange(0, 255, clip=False)(x.clone()), torch.as_tensor(ref))
    with pytest.raises(ValueError, match="empty"):
        IntensityRange(3, 3)


def test_predict_real_region(region, tmp_path):
    path, mask = region
    torch.manual_seed(0)
    net = LeNet(in_channels=3, num_classes=2, input_size=28).train()
    settings = SlideInferSettings(roi_size=50, intensity=IntensityRange(0, 255), sw_batch_size=32, tile_size=1024)
    res = predict_slide_heatmap(net, path, settings, out_dir=tmp_path, input_size=28)
    assert net.training  # mode restored
    assert res.shape == (2351, 2801) and res.level == 0 and res.mpp is None
    assert res.settings == {"roi_size": [50, 50], "input_size": [28, 28], "overlap": 0.0, "mode": "constant",
                            "sw_batch_size": 32, "tile_size": 1024, "activation": "softmax", "min_tissue": 0.0,
                            "intensity": "[0, 255] -> [0.0, 1.0] clipped"}
    assert res.zarr_path.is_dir() and res.heatmap_png.is_file() and res.overlay_png.is_file()
    w = math.ceil(2801 / 3)  # f = ceil(2801 / 1024) = 3
    for png in (res.heatmap_png, res.overlay_png):
        assert Image.open(png).size == (w, math.ceil(2351 / 3)) and Image.open(png).mode == "RGB"
    # tissue skipping: every labelled IDC/non-IDC patch is tissue; most of the white background is skipped
    assert 0.3 * res.n_windows < res.n_windows_run < 0.8 * res.n_windows
    assert res.n_windows == math.ceil(2351 / 50) * math.ceil(2801 / 50) and res.tiles_per_second > 0
    heat = res.heatmap()
    assert heat.shape == (2351, 2801) and heat.dtype == np.float32 and 0 <= heat.min() and heat.max() <= 1
    # a window's value is the network's softmax on that window, scaled to [0, 1] and area-resized to 28 x 28
    with open_slide(path) as s:
        win = torch.from_numpy(read_region(s, (1000, 1500), (50, 50))).float()[None] / 255
    with torch.no_grad():
        net.eval()
        p = torch.softmax(net(torch.nn.functional.interpolate(win, size=(28, 28), mode="area")), 1)[0, 1].item()
    np.testing.assert_allclose(heat[1000:1050, 1500:1550], p, atol=1e-5)
    import zarr

    cov = zarr.open_group(str(res.zarr_path), mode="r")["weight"][:] > 0
    score = score_heatmap(heat, mask, 50, coverage=cov)
    assert score["n_patches"] == 979 and 0.0 <= score["auc"] <= 1.0
    assert score["n_uncovered"] < 0.05 * 979  # the Otsu mask keeps (nearly) all annotated tissue


def test_predict_errors(region, tmp_path):
    path, _ = region
    net = LeNet(input_size=28)
    with pytest.raises(ValueError, match="say how slide intensities are scaled"):
        SlideInferSettings(roi_size=28, intensity=None)
    with pytest.raises(ValueError, match="callable or 'none'"):
        SlideInferSettings(roi_size=28, intensity="raw")
    with pytest.raises(ValueError, match="positive int"):
        SlideInferSettings(roi_size=0, intensity="none")
    raw = SlideInferSettings(roi_size=28, intensity="none")
    with pytest.raises(FileNotFoundError, match="nope.svs"):
        predict_slide_heatmap(net, tmp_path / "nope.svs", raw, out_dir=tmp_path)
    with pytest.raises(ValueError, match="level 2 is out of range.*0..0"):
        predict_slide_heatmap(net, path, dataclasses.replace(raw, level=2), out_dir=tmp_path)


def test_settings_from_the_config_section(region, tmp_path):
    """``cfg.slide_infer`` goes in as it is: every value the pipeline sets reaches the inference."""
    from medpipe.config import SlideInferConfig

    path, _ = region
    si = SlideInferConfig(slides=[{"image": str(path)}], roi_size=50, intensity={"a_min": 0, "a_max": 255},
                          overlap=0.5, mode="gaussian", sigma_scale=0.25, sw_batch_size=7, tile_size=512, level=0,
                          tissue=False, min_tissue=0.1, tissue_channel="grey", tissue_max_size=512, backend="pil",
                          class_index=0, thumbnail_size=64, alpha=0.3, resize_mode="bilinear")
    s = SlideInferSettings.from_config(si)
    assert s.intensity == IntensityRange(0.0, 255.0, 0.0, 1.0, True)
    expect = {k: getattr(si, k) for k in ("roi_size", "overlap", "mode", "sigma_scale", "sw_batch_size", "tile_size",
                                          "level", "mpp", "resize_mode", "class_index", "tissue", "min_tissue",
                                          "tissue_channel", "tissue_max_size", "backend", "thumbnail_size", "alpha")}
    assert {k: getattr(s, k) for k in expect} == expect and s.activation == "softmax"
    si = si.model_copy(update={"overlap": 0.0, "mode": "constant", "tile_size": 4096, "class_index": 1,
                               "tissue": True, "min_tissue": 0.0, "tissue_channel": "saturation"})
    torch.manual_seed(0)
    net = LeNet(in_channels=3, num_classes=2, input_size=28)
    a = predict_slide_heatmap(net, path, si, out_dir=tmp_path / "a", input_size=28)
    b = predict_slide_heatmap(net, path, SlideInferSettings.from_config(si), out_dir=tmp_path / "b", input_size=28)
    assert a.settings == b.settings and a.settings["intensity"] == "[0.0, 255.0] -> [0.0, 1.0] clipped"
    np.testing.assert_array_equal(a.heatmap(), b.heatmap())
    assert Image.open(a.heatmap_png).size == (64, 54)
