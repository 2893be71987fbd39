"""MONAI DynUNet from config (``net.name: dyn_unet``), nnU-Net's topology rule, and BasicUNet in 3D."""

import pytest
import torch
from pydantic import ValidationError

from medpipe.config.net import BasicUNetNet, DynUNetNet
from medpipe.nets import build_net
from medpipe.nets.dynunet import nnunet_topology


def _dyn(**kw):
    base = dict(name="dyn_unet", in_channels=1, out_channels=3, filters=[4, 8, 16, 32])
    return DynUNetNet(**{**base, **kw})


def test_topology_of_msd_hippocampus_is_nnunets_plan():
    """nnU-Net v2's 3d_fullres plan for Task04 Hippocampus (patch 40x56x40 at 1 mm): four stages, three 2x
    poolings along every axis, 3x3x3 kernels. By hand: 40 -> 20 -> 10 -> 5 and 56 -> 28 -> 14 -> 7, then every
    axis is below 2 * 4 voxels and pooling stops."""
    kernels, strides, divisible = nnunet_topology([40, 56, 40], [1.0, 1.0, 1.0])
    assert strides == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert kernels == [[3, 3, 3]] * 4
    assert divisible == [8, 8, 8]


def test_topology_pools_while_at_least_eight_and_waits_on_coarse_axes():
    # 2D 512x512: 512 / 2^7 = 4 is the first size below 8 -> seven poolings
    kernels, strides, divisible = nnunet_topology([512, 512])
    assert len(strides) == 8 and divisible == [128, 128] and kernels == [[3, 3]] * 8
    # one axis of 16 and one of 64: 16 -> 8 -> 4 stops that axis; the other goes on alone while >= 12
    # (64 -> 32 -> 16 -> 8; 8 < 12 stops)
    _, strides, divisible = nnunet_topology([16, 64])
    assert strides == [[1, 1], [2, 2], [2, 2], [1, 2]] and divisible == [4, 8]
    # anisotropic 5 x 1 x 1 mm: the coarse axis is neither pooled nor convolved until the others reach 4 mm
    # (spacing 1 -> 2 -> 4: within 2x of 5), as nnU-Net's planner does for thick-slice data
    kernels, strides, _ = nnunet_topology([20, 160, 160], [5.0, 1.0, 1.0])
    assert strides[:4] == [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2]]
    assert kernels[:3] == [[1, 3, 3], [1, 3, 3], [3, 3, 3]] and kernels[-1] == [3, 3, 3]


@pytest.mark.parametrize("dims,patch", [(2, [32, 48]), (3, [32, 48, 32])])
@pytest.mark.parametrize("deep", [False, True])
def test_dynunet_shapes(dims, patch, deep):
    net = build_net(_dyn(spatial_dims=dims, patch_size=patch, deep_supervision=deep, deep_supr_num=2))
    x = torch.randn(2, 1, *patch)
    net.train()
    out = net(x)
    assert out.shape == ((2, 3, 3, *patch) if deep else (2, 3, *patch))  # (B, 1 + deep_supr_num, C, *spatial)
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (2, 3, *patch)  # eval: the main output only
        if deep:  # the stacked main output is the eval output (same weights, instance norm has no running stats)
            torch.testing.assert_close(out[:, 0].detach(), net(x))


def test_dynunet_explicit_topology_and_res_blocks():
    net = build_net(_dyn(spatial_dims=3, strides=[1, 2, [2, 2, 1]], kernel_size=[3, 3, [3, 3, 1]],
                         filters=[4, 8, 16], res_block=True))
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 1, 16, 16, 8)).shape == (1, 3, 16, 16, 8)
    assert net.strides == [1, 2, [2, 2, 1]] and net.upsample_kernel_size == [2, [2, 2, 1]]


def test_dynunet_default_filters_are_nnunets():
    net = build_net(DynUNetNet(name="dyn_unet", patch_size=[40, 56, 40], out_channels=3))
    assert net.filters == [32, 64, 128, 256]


@pytest.mark.parametrize("kw,message", [
    (dict(), "strides"),
    (dict(patch_size=[16, 16]), "spatial_dims"),
    (dict(strides=[1, 2]), "at least 3 stages"),
    (dict(strides=[1, 2, 2], kernel_size=[3, 3]), "kernel_size has 2 stages"),
    (dict(strides=[1, 2, [2, 2]]), "3 ints"),
    (dict(strides=[1, 2, 2], deep_supervision=True, deep_supr_num=2), "deep_supr_num 2"),
    (dict(strides=[1, 2, 2, 2], filters=[4, 8]), "filters has 2 values"),
    (dict(patch_size=[16, 16, 16], kernel_size=[3, 3, 3]), "kernel_size without strides"),
])
def test_dynunet_config_errors(kw, message):
    with pytest.raises(ValidationError, match=message):
        DynUNetNet(**{"name": "dyn_unet", "spatial_dims": 3, **kw})


def test_dynunet_derived_topology_errors_name_the_field():
    with pytest.raises(ValueError, match=r"net.patch_size \[36, 50, 36\] is not divisible by \[8, 8, 8\].*"
                                         r"use \[40, 56, 40\]"):
        build_net(_dyn(patch_size=[36, 50, 36]))
    with pytest.raises(ValueError, match="pools it 1 time"):
        build_net(_dyn(patch_size=[8, 12, 8]))
    with pytest.raises(ValueError, match="net.deep_supr_num 3 must be less than the 3 up-samplings"):
        build_net(_dyn(patch_size=[40, 56, 40], deep_supervision=True, deep_supr_num=3))


def test_basic_unet_3d():
    net = build_net(BasicUNetNet(name="basic_unet", spatial_dims=3, in_channels=1, out_channels=3,
                                 features=(4, 4, 8, 16, 32, 4)))
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 1, 32, 48, 32)).shape == (1, 3, 32, 48, 32)
