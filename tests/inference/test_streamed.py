import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from medpipe.data.patches import tissue_mask
from medpipe.data.wsi import open_slide, read_region, slide_from_array
from medpipe.inference.streamed import render_heatmap, streamed_sliding_window_inference, window_starts


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(6, 2, 3, padding=1)
    ).eval()


@pytest.fixture(scope="module")
def crop(datasets):
    """A real 300 x 420 RGB tissue crop (IDC slide region of patient 8863), uint8 (3, 300, 420)."""
    with open_slide(datasets / "idc_breast_histopathology/reconstructed_region/patient8863_mosaic.jpg") as s:
        return read_region(s, (900, 1000), (300, 420))


def test_window_starts_match_monai():
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    for size, roi, ov in [(300, 64, 0.25), (420, 48, 0.3), (97, 97, 0.5), (1000, 28, 0.0), (130, 64, 0.9)]:
        interval = _get_scan_interval((size,), (roi,), 1, (ov,))
        expect = [s[0].start for s in dense_patch_slices((size,), (roi,), interval)]
        assert window_starts(size, roi, ov) == expect


@pytest.mark.parametrize(
    "roi,overlap,mode,tile",
    [((64, 64), 0.25, "gaussian", 128), ((64, 48), (0.5, 0.3), "constant", 100), ((320, 64), 0.25, "gaussian", 320)],
)
def test_equals_monai_sliding_window(crop, tmp_path, roi, overlap, mode, tile):
    net = _net()
    x = torch.from_numpy(crop).float()[None] * (1 / 255)  # the same explicit scaling on both sides
    with torch.no_grad():
        ref = sliding_window_inference(x, roi, 4, net, overlap=overlap, mode=mode)[0].numpy()
    out = streamed_sliding_window_inference(
        crop, net, roi, sw_batch_size=4, overlap=overlap, mode=mode, out=tmp_path / "pred.zarr",
        tile_size=tile, chunk_size=64, intensity_scale=1 / 255,
    )
    assert tile < max(crop.shape[1:])  # really tiled
    got = out["prob"][:]
    assert got.shape == ref.shape == (2, 300, 420) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert out.attrs["n_windows_run"] == out.attrs["n_windows"]


def test_zarr_layout_on_disk(crop, tmp_path):
    import zarr

    streamed_sliding_window_inference(crop, _net(), 64, out=tmp_path / "p.zarr", tile_size=128, chunk_size=64,
                                      intensity_scale=1 / 255)
    g = zarr.open_group(str(tmp_path / "p.zarr"), mode="r")
    assert g["prob"].shape == (2, 300, 420) and g["prob"].chunks == (2, 64, 64)
    assert g["weight"].shape == (300, 420) and g["weight"].chunks == (64, 64)
    assert g.attrs["roi_size"] == [64, 64] and g.attrs["intensity_scale"] == pytest.approx(1 / 255)
    assert (g["weight"][:] > 0).all()


def test_classifier_output_is_painted(crop):
    from medpipe.nets.lenet import LeNet

    torch.manual_seed(0)
    net = LeNet(in_channels=3, num_classes=2).eval()
    out = streamed_sliding_window_inference(crop[:, :84, :112], net, 28, overlap=0.0, tile_size=56,
                                            intensity_scale=1 / 255, activation="softmax")["prob"][:]
    with torch.no_grad():
        p = torch.softmax(net(torch.from_numpy(crop[:, 28:56, 56:84]).float()[None] / 255), 1)[0].numpy()
    np.testing.assert_allclose(out[:, 28:56, 56:84], np.broadcast_to(p[:, None, None], (2, 28, 28)), atol=1e-6)
    np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-5)


def test_background_windows_skipped(datasets):
    with open_slide(datasets / "wsi_samples/kidney-48-5.tif") as k:  # a small tissue fragment on glass
        s = slide_from_array(read_region(k, (300, 0), (500, 800)))
    tissue = tissue_mask(s)
    calls = []
    net0 = _net()

    def net(x):
        calls.append(len(x))
        return net0(x)

    full = streamed_sliding_window_inference(s, net0, 64, overlap=0.25, tile_size=256, intensity_scale=1 / 255)
    skip = streamed_sliding_window_inference(s, net, 64, sw_batch_size=4, overlap=0.25, tile_size=256,
                                             tissue=tissue, intensity_scale=1 / 255)
    assert 0 < skip.attrs["n_windows_run"] < 0.1 * skip.attrs["n_windows"]
    # one probe call for the channel count, then constant-shape batches (the last one per tile zero-padded)
    assert calls[0] == 1 and set(calls[1:]) == {4} and 4 * (len(calls) - 1) >= skip.attrs["n_windows_run"]
    p_skip, w_skip, p_full, w_full = skip["prob"][:], skip["weight"][:], full["prob"][:], full["weight"][:]
    assert (p_skip[:, w_skip == 0] == 0).all() and (w_skip == 0).mean() > 0.8
    same = w_skip == w_full  # pixels whose windows all ran give the same result as without skipping
    assert same[tissue[0]].all()
    np.testing.assert_allclose(p_skip[:, same & (w_skip > 0)], p_full[:, same & (w_skip > 0)], atol=1e-6)


def test_heatmap_thumbnail(datasets, tmp_path):
    with open_slide(datasets / "wsi_samples/kidney-48-5.tif") as s:
        g = streamed_sliding_window_inference(s, _net(), 128, overlap=0.0, tile_size=512, chunk_size=256,
                                              intensity_scale=1 / 255, activation="softmax",
                                              out=tmp_path / "k.zarr")
        rgb = render_heatmap(tmp_path / "k.zarr", tmp_path / "heat.png", channel=1, max_size=200, slide=s)
    assert rgb.shape == (113, 187, 3) and rgb.dtype == np.uint8  # ceil(901/8), ceil(1493/8)
    assert (tmp_path / "heat.png").is_file()
    assert g["prob"].shape == (2, 901, 1493)


def test_bad_arguments(crop):
    with pytest.raises(ValueError, match="tile_size"):
        streamed_sliding_window_inference(crop, _net(), 64, tile_size=32)
    with pytest.raises(ValueError, match="predictor output shape"):
        streamed_sliding_window_inference(crop, lambda x: x[:, :, :10], 64, tile_size=128)
    with pytest.raises(ValueError, match="mode"):
        streamed_sliding_window_inference(crop, _net(), 64, mode="linear")
