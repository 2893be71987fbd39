import pytest
import torch

from medpipe.nets.lenet import LeNet


@pytest.mark.parametrize(
    "in_channels,num_classes,input_size,padding",
    [(3, 2, 28, 2), (1, 10, 28, 0), (3, 2, 50, 2), (3, 3, (28, 40), 2), (4, 1, 16, 0)],
)
def test_output_shape(in_channels, num_classes, input_size, padding):
    torch.manual_seed(0)
    net = LeNet(in_channels=in_channels, num_classes=num_classes, input_size=input_size, padding=padding)
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    out = net(torch.rand(5, in_channels, h, w))
    assert out.shape == (5, num_classes)
    assert out.dtype == torch.float32


def test_seed_architecture():
    net = LeNet(in_channels=3, num_classes=2)  # seed: 28x28 RGB, 'same' padding
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    dense = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(c.out_channels, c.kernel_size, c.padding) for c in convs] == [(20, (5, 5), (2, 2)), (50, (5, 5), (2, 2))]
    assert [(d.in_features, d.out_features) for d in dense] == [(50 * 7 * 7, 500), (500, 2)]
    assert LeNet(padding=0).classifier[1].in_features == 50 * 4 * 4  # 1998 'valid' convolutions


def test_logits_not_softmax():
    torch.manual_seed(0)
    out = LeNet()(torch.rand(4, 3, 28, 28) * 10)
    assert not torch.allclose(out.sum(1), torch.ones(4))


def test_bad_args():
    with pytest.raises(ValueError, match="spatial_dims"):
        LeNet(spatial_dims=3)
    with pytest.raises(ValueError, match="input_size"):
        LeNet(input_size=8, padding=0)
    with pytest.raises(ValueError, match="input_size"):
        LeNet(input_size=(28, 28, 28))
    with pytest.raises(ValueError, match="in_channels"):
        LeNet(in_channels=0)
    with pytest.raises(ValueError, match="padding"):
        LeNet(padding=-1)
