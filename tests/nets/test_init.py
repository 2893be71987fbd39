"""Weight initialisation schemes (medpipe.nets.init)."""

import math

import pytest
import torch
from torch import nn

from medpipe.nets.init import INIT_SCHEMES, init_weights
from medpipe.nets.lenet import LeNet
from medpipe.registry import UnknownNameError


def _net():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(16, 64, 3), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv3d(4, 8, 3), nn.GroupNorm(2, 8), nn.InstanceNorm2d(8, affine=True),
        nn.Flatten(), nn.Linear(512, 256), nn.LayerNorm(256), nn.Linear(256, 10),
    )
    with torch.no_grad():  # make the norm layers' starting values visible
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d, nn.LayerNorm)):
                m.weight.uniform_(2, 3)
                m.bias.uniform_(2, 3)
    return net


def _weighted(net):
    return [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear))]


def _norms(net):
    return [m for m in net.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d, nn.LayerNorm))]


def _fans(w):
    receptive = w[0, 0].numel() if w.dim() > 2 else 1
    return w.shape[1] * receptive, w.shape[0] * receptive  # fan_in, fan_out


def test_default_changes_nothing():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert init_weights(net, "default") is net
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_xavier_uniform_bounds_and_zero_bias():
    net = init_weights(_net(), "xavier_uniform")
    for m in _weighted(net):
        fan_in, fan_out = _fans(m.weight)
        bound = math.sqrt(6.0 / (fan_in + fan_out))  # Glorot & Bengio 2010, eq. 16
        w = m.weight.detach()
        assert w.abs().max() <= bound + 1e-7
        assert w.abs().max() > 0.9 * bound  # fills the interval, not a narrower default
        assert abs(w.std().item() - bound / math.sqrt(3)) < 0.1 * bound / math.sqrt(3)  # var of U(-a, a) = a^2/3
        assert torch.count_nonzero(m.bias) == 0
    for m in _norms(net):
        assert torch.equal(m.weight, torch.ones_like(m.weight)) and torch.count_nonzero(m.bias) == 0


def test_kaiming_normal_fan_out_std_and_zero_bias():
    net = init_weights(_net(), "kaiming_normal")
    for m in _weighted(net):
        _, fan_out = _fans(m.weight)
        std = math.sqrt(2.0 / fan_out)  # He et al. 2015, ReLU gain sqrt(2), mode fan_out
        w = m.weight.detach()
        assert abs(w.mean().item()) < 0.1 * std
        assert abs(w.std().item() - std) < 0.1 * std, (m, w.std().item(), std)
        assert torch.count_nonzero(m.bias) == 0
    for m in _norms(net):
        assert torch.equal(m.weight, torch.ones_like(m.weight)) and torch.count_nonzero(m.bias) == 0


def test_schemes_differ_and_are_seeded():
    torch.manual_seed(1)
    a = init_weights(LeNet(), "xavier_uniform")
    torch.manual_seed(1)
    b = init_weights(LeNet(), "xavier_uniform")
    assert torch.equal(a.features[0].weight, b.features[0].weight)
    k = init_weights(LeNet(), "kaiming_normal")
    assert not torch.equal(a.features[0].weight, k.features[0].weight)
    out = a(torch.rand(2, 3, 28, 28))
    assert out.shape == (2, 2) and torch.isfinite(out).all()


def test_unknown_scheme_suggests():
    with pytest.raises(UnknownNameError, match="Did you mean 'xavier_uniform'"):
        init_weights(LeNet(), "xavier_uniforn")
    assert list(INIT_SCHEMES) == ["default", "xavier_uniform", "kaiming_normal"]
