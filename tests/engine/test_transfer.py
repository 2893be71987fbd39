"""Backbone freezing and the freeze-then-fine-tune schedule on a real MONAI SupervisedTrainer."""

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from torch import nn

from medpipe.engine.transfer import (
    FreezeBackbone,
    attach_freeze_schedule,
    freeze_backbone,
    frozen_norm_layers,
    unfreeze_all,
)

HEAD = ["5.weight", "5.bias"]  # the last Linear of _net()


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 2))


def _loader():
    g = torch.Generator().manual_seed(0)
    data = [{"image": torch.rand(1, 8, 8, generator=g) + i % 2, "label": torch.tensor(i % 2)} for i in range(8)]
    return torch.utils.data.DataLoader(data, batch_size=4, shuffle=False)


def _snapshot(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_schedule_on_supervised_trainer():
    net = _net()
    opt = torch.optim.AdamW(net.parameters(), lr=0.05, weight_decay=0.1)  # built over ALL parameters
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=4, train_data_loader=_loader(), network=net,
                                optimizer=opt, loss_function=nn.CrossEntropyLoss())
    handler = attach_freeze_schedule(trainer, net, epochs=2)
    assert isinstance(handler, FreezeBackbone)
    snaps = {0: _snapshot(net)}
    bn_training, conv_trainable = {}, {}

    @trainer.on(Events.EPOCH_COMPLETED)
    def _snap(engine):
        snaps[engine.state.epoch] = _snapshot(net)

    def _record(module, args, output):  # after forward: the mode BN actually ran in
        bn_training.setdefault(trainer.state.epoch, set()).add(module.training)
        conv_trainable.setdefault(trainer.state.epoch, set()).add(net[0].weight.requires_grad)

    net[1].register_forward_hook(_record)
    trainer.run()

    backbone = [k for k in snaps[0] if k not in HEAD and not k.endswith("num_batches_tracked")]
    assert "1.running_mean" in backbone and "0.weight" in backbone
    for epoch in (1, 2):  # frozen: weights AND BatchNorm running statistics untouched
        for k in backbone:
            assert torch.equal(snaps[epoch][k], snaps[0][k]), (epoch, k)
        assert bn_training[epoch] == {False} and conv_trainable[epoch] == {False}
    for epoch in (3, 4):  # fine-tuning: everything moves
        for k in backbone:
            assert not torch.equal(snaps[epoch][k], snaps[epoch - 1][k]), (epoch, k)
        assert bn_training[epoch] == {True} and conv_trainable[epoch] == {True}
    for epoch in (1, 2, 3, 4):  # the head trains throughout
        for k in HEAD:
            assert not torch.equal(snaps[epoch][k], snaps[epoch - 1][k]), (epoch, k)
    assert all(p.requires_grad for p in net.parameters())
    assert frozen_norm_layers(net) == []


def test_frozen_for_the_whole_run_is_released_at_the_end():
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=_loader(), network=net,
                                optimizer=opt, loss_function=nn.CrossEntropyLoss())
    before = _snapshot(net)
    attach_freeze_schedule(trainer, net, epochs=5)
    trainer.run()
    after = net.state_dict()
    assert torch.equal(after["0.weight"], before["0.weight"]) and torch.equal(after["1.running_var"],
                                                                              before["1.running_var"])
    assert not torch.equal(after["5.weight"], before["5.weight"])
    assert all(p.requires_grad for p in net.parameters()) and frozen_norm_layers(net) == []


def test_freeze_and_unfreeze_directly():
    net = _net()
    frozen = freeze_backbone(net, ["5"])  # module names cover their parameters
    assert frozen == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert [n for n, p in net.named_parameters() if p.requires_grad] == HEAD
    net.train()  # as SupervisedTrainer does every iteration
    stats = net[1].running_mean.clone()
    net(torch.rand(4, 1, 8, 8) * 5)
    assert torch.equal(net[1].running_mean, stats) and not net[1].training
    assert frozen_norm_layers(net) == ["1"]
    assert freeze_backbone(net, HEAD) == frozen  # idempotent, no second hook
    assert frozen_norm_layers(net) == ["1"]
    unfreeze_all(net)
    assert all(p.requires_grad for p in net.parameters()) and net[1].training
    net(torch.rand(4, 1, 8, 8) * 5)
    assert not torch.equal(net[1].running_mean, stats)
    with pytest.raises(ValueError, match="match no parameter"):
        freeze_backbone(net, ["classifier"])


def test_default_head_of_monai_resnet():
    from monai.networks.nets import resnet18

    net = resnet18(spatial_dims=2, n_input_channels=1, num_classes=2)
    freeze_backbone(net)
    assert [n for n, p in net.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    assert "bn1" in frozen_norm_layers(net) and not net.bn1.training
    assert all(not n.startswith("fc") for n in frozen_norm_layers(net))
    unfreeze_all(net)
    assert frozen_norm_layers(net) == []


def test_zero_epochs_is_a_no_op_and_negative_is_an_error():
    net = _net()
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=_loader(), network=net,
                                optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
                                loss_function=nn.CrossEntropyLoss())
    handler = attach_freeze_schedule(trainer, net, epochs=0)
    assert not trainer.has_event_handler(handler, Events.EPOCH_STARTED)
    before = _snapshot(net)
    trainer.run()
    assert not torch.equal(net.state_dict()["0.weight"], before["0.weight"])
    with pytest.raises(ValueError, match=">= 0"):
        FreezeBackbone(net, -1)
