"""Test-time mirroring (nnU-Net's): the mean softmax over the 2^n flipped copies, on a real EM crop."""

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from medpipe.inference.tta import mirror_combinations, tta_softmax


@pytest.fixture
def em_crop(datasets):
    """A real 48 x 40 ISBI-2012 EM crop (non-square, so mirrored axes cannot be confused), (1, 1, H, W)."""
    img = np.asarray(Image.open(datasets / "isbi2012_em" / "train" / "image" / "0.png"), dtype=np.float32) / 255
    return torch.from_numpy(img[100:148, 200:240].copy())[None, None]


def _net(out=3):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, out, (5, 3), padding=(2, 1))).eval()


def _by_hand(net, x, axes):
    """Independent: numpy flips of every subset of the axes, softmax with numpy, flipped back, averaged."""
    maps = []
    for r in range(len(axes) + 1):
        for subset in itertools.combinations(axes, r):
            xi = np.flip(x.numpy(), [a + 2 for a in subset]).copy()
            z = net(torch.from_numpy(xi)).detach().double().numpy()
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            maps.append(np.flip(p, [a + 2 for a in subset]))
    return np.mean(maps, axis=0), len(maps)


@torch.no_grad()
def test_mean_softmax_over_all_mirrored_copies(em_crop):
    net = _net()
    for axes in (None, [0], [1], [1, 0]):
        got = tta_softmax(net, em_crop, axes)
        want, n = _by_hand(net, em_crop, [0, 1] if axes is None else axes)
        assert n == 2 ** (2 if axes is None else len(axes))
        assert got.shape == (1, 3, 48, 40) and got.dtype == torch.float32
        np.testing.assert_allclose(got.numpy(), want, atol=1e-6)
        np.testing.assert_allclose(got.sum(1).numpy(), 1.0, atol=1e-6)
    # no axis: exactly the plain softmax; a mirror-asymmetric net is changed by mirroring
    assert torch.equal(tta_softmax(net, em_crop, []), torch.softmax(net(em_crop), 1))
    assert (tta_softmax(net, em_crop) - torch.softmax(net(em_crop), 1)).abs().max() > 1e-3


@torch.no_grad()
def test_mirror_equivariant_network_is_unchanged_and_3d_axes(em_crop):
    net = torch.nn.Conv2d(1, 2, 1)  # a 1x1 convolution commutes with every flip
    np.testing.assert_allclose(tta_softmax(net, em_crop).numpy(), torch.softmax(net(em_crop), 1).numpy(),
                               atol=1e-6)
    assert mirror_combinations(3) == [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]
    assert mirror_combinations(3, [2]) == [(), (4,)]


@torch.no_grad()
def test_classifier_without_flip_back(em_crop):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48 * 40, 2)).eval()
    got = tta_softmax(net, em_crop, flip_back=False)
    views = [torch.flip(em_crop, d) if d else em_crop for d in [(), (2,), (3,), (2, 3)]]
    want = torch.stack([torch.softmax(net(v), 1) for v in views]).mean(0)
    assert got.shape == (1, 2)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-7)
    with pytest.raises(ValueError, match="flip_back=False"):
        tta_softmax(net, em_crop)


def test_bad_axes_are_named(em_crop):
    with pytest.raises(ValueError, match=r"spatial_axes.*\[0, 2\)"):
        tta_softmax(_net(), em_crop, [2])
    with pytest.raises(ValueError, match="distinct"):
        tta_softmax(_net(), em_crop, [0, 0])
    with pytest.raises(ValueError, match="x: expected"):
        tta_softmax(_net(), torch.zeros(1, 3))


@torch.no_grad()
def test_predict_case_with_tta_through_the_sliding_window(tmp_path, datasets):
    """predict_case(tta=True) on a real EM image = mean of the softmax of the sliding window over flipped inputs."""
    from monai.inferers import SlidingWindowInferer
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, ScaleIntensityRanged

    from medpipe.inference.predict import predict_case

    img = np.asarray(Image.open(datasets / "isbi2012_em" / "train" / "image" / "1.png"))[:70, :90]
    Image.fromarray(img).save(tmp_path / "crop.png")
    tf = Compose([LoadImaged(keys="image", reader="PILReader", reverse_indexing=False),
                  EnsureChannelFirstd(keys="image", channel_dim="no_channel"),
                  ScaleIntensityRanged(keys="image", a_min=0, a_max=255, b_min=0, b_max=1, clip=True)])
    net, inferer = _net(2), SlidingWindowInferer(roi_size=(32, 32), sw_batch_size=4, overlap=0.25)
    got = predict_case(net, {"image": str(tmp_path / "crop.png")}, tf, inferer, "cpu", tta=True, tta_axes=[1])
    x = torch.from_numpy(img.astype(np.float32) / 255)[None, None]
    plain = torch.softmax(inferer(x, net), 1)
    flipped = torch.flip(torch.softmax(inferer(torch.flip(x, [3]), net), 1), [3])
    assert got.shape == (2, 70, 90)
    np.testing.assert_allclose(got, ((plain + flipped) / 2)[0].numpy(), atol=1e-6)
    no_tta = predict_case(net, {"image": str(tmp_path / "crop.png")}, tf, inferer, "cpu")
    np.testing.assert_allclose(no_tta, plain[0].numpy(), atol=1e-6)
