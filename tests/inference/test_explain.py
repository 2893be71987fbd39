"""Grad-CAM / Grad-CAM++ heatmaps (medpipe.inference.explain) and their plot grid, on real chest X-rays and
histology patches with small randomly initialised classifiers of every kind medpipe builds."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import TypeAdapter
from torch import nn

from medpipe.config import CLASSIFICATION_NETS, NetConfig
from medpipe.config.loading import load_config
from medpipe.data.transforms import build_transforms
from medpipe.inference.explain import class_activation_maps, default_target_layer, overlay_heatmap
from medpipe.nets.factory import build_net
from medpipe.workflow.explain_plots import pick_samples, plot_explanations

ROOT = Path(__file__).resolve().parents[2]

#: small versions of every classifier (random init); in_channels 1 for X-rays, 3 for the histology LeNet.
TINY = {
    "densenet121": {"in_channels": 1, "init_features": 8, "growth_rate": 4, "bn_size": 2},
    "resnet18": {"in_channels": 1},
    "resnet50": {"in_channels": 1, "widen_factor": 0.125},
    "lenet": {"in_channels": 3, "input_size": 28},
}
EXPECTED_LAYER = {"densenet121": "class_layers.relu", "resnet18": "layer4", "resnet50": "layer4",
                  "lenet": "features.4"}


def tiny_net(name):
    torch.manual_seed(0)
    cfg = TypeAdapter(NetConfig).validate_python({"name": name, "spatial_dims": 2, "num_classes": 2, **TINY[name]})
    return build_net(cfg)


def _rows(csv_path, split, label_column, labels, n):
    with open(csv_path) as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == split]
    return [r for lab in labels for r in [r for r in rows if r[label_column] == lab][:n]]


@pytest.fixture(scope="module")
def cxr(datasets):
    """4 real Kermany test X-rays (2 NORMAL, 2 PNEUMONIA): paths, labels, the pneumonia_xray validation
    transforms and the network inputs ``(4, 1, 64, 64)``."""
    cfg = load_config(ROOT / "pipelines" / "pneumonia_xray.yaml")
    tf = build_transforms(cfg.transforms.val)
    rows = _rows(datasets / "kermany_pneumonia_cxr" / "labels.csv", "test", "label", ["NORMAL", "PNEUMONIA"], 2)
    paths = [str(datasets / "kermany_pneumonia_cxr" / r["path"]) for r in rows]
    labels = [0 if r["label"] == "NORMAL" else 1 for r in rows]
    x = torch.stack([torch.as_tensor(tf({"image": p, "label": y})["image"]) for p, y in zip(paths, labels)])
    return paths, labels, tf, x.float()


@pytest.fixture(scope="module")
def patches(datasets):
    """4 real IDC histology patches through the histo_lenet validation transforms: ``(4, 3, 28, 28)``, plus paths."""
    cfg = load_config(ROOT / "pipelines" / "histo_lenet.yaml")
    tf = build_transforms(cfg.transforms.val)
    rows = _rows(datasets / "idc_breast_histopathology" / "labels.csv", "train", "label_idc", ["0", "1"], 2)
    paths = [str(datasets / "idc_breast_histopathology" / r["path"]) for r in rows]
    x = torch.stack([torch.as_tensor(tf({"image": p})["image"]) for p in paths])
    return paths, [int(r["label_idc"]) for r in rows], x.float()


def _input_for(name, cxr, patches):
    return patches[2] if name == "lenet" else cxr[3]


@pytest.mark.parametrize("name", CLASSIFICATION_NETS)
def test_default_layer_is_the_last_convolutional_block(name, cxr, patches):
    net = tiny_net(name).eval()
    layer = default_target_layer(net)
    assert layer == EXPECTED_LAYER[name]
    modules = dict(net.named_modules())
    assert layer in modules
    finished, shapes = [], {}

    def record(name):
        def hook(module, inputs, output):
            finished.append(name)
            shapes.setdefault(name, output.shape)
        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in modules.items() if n]
    x = _input_for(name, cxr, patches)
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
    assert all(finished.index(c) < finished.index(layer) for c in convs), "a convolution runs after the target"
    assert len(shapes[layer]) == 4 and min(shapes[layer][2:]) >= 2  # a spatial map, not the pooled vector


@pytest.mark.parametrize("name", CLASSIFICATION_NETS)
@pytest.mark.parametrize("kind", ["gradcam", "gradcampp"])
def test_maps_shape_range_on_real_images(name, kind, cxr, patches):
    net = tiny_net(name)
    x = _input_for(name, cxr, patches)
    maps = class_activation_maps(net, x, kind=kind)
    assert maps.shape == (len(x), *x.shape[2:]) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0.0 and maps.max() <= 1.0
    for m in maps:  # per image min-max: 0 and 1 reached, unless there is no positive evidence at all (all 0,
        # which random weights can give: every location's weighted sum negative)
        assert m.min() == 0.0 and (m.max() == pytest.approx(1.0) or m.max() == 0.0)


def test_grad_cam_equals_hand_computation(patches):
    """Selvaraju et al. 2017, eq. 1-2, computed with torch.autograd: alpha_k = mean over positions of
    d y_c / d A_k, map = ReLU(sum_k alpha_k A_k), bilinear to the input size, min-max per image."""
    net = tiny_net("lenet").eval()
    x = patches[2]
    classes = [0, 1, 1, 0]
    ours = class_activation_maps(net, x, class_index=classes, kind="gradcam")
    acts = net.features[:5](x).detach().requires_grad_(True)
    logits = net.classifier(net.features[5](acts))
    score = logits[torch.arange(len(x)), torch.as_tensor(classes)].sum()
    (grad,) = torch.autograd.grad(score, acts)
    cam = F.relu((grad.mean((2, 3), keepdim=True) * acts).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)[:, 0].detach().numpy()
    lo, hi = cam.min((1, 2), keepdims=True), cam.max((1, 2), keepdims=True)
    expected = np.where(hi > lo, (cam - lo) / np.where(hi > lo, hi - lo, 1), 0)
    np.testing.assert_allclose(ours, expected, atol=1e-5)


@pytest.mark.parametrize("kind", ["gradcam", "gradcampp"])
def test_batch_equals_single_images_and_default_is_prediction(kind, cxr):
    net = tiny_net("resnet18")
    x = cxr[3]
    with torch.no_grad():
        pred = net.eval()(x).argmax(1).numpy()
    together = class_activation_maps(net, x, kind=kind)
    explicit = class_activation_maps(net, x, class_index=pred, kind=kind)
    one_by_one = np.stack([class_activation_maps(net, x[i:i + 1], int(pred[i]), kind=kind)[0] for i in range(len(x))])
    np.testing.assert_allclose(together, explicit, atol=1e-6)
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    mixed = class_activation_maps(net, x, class_index=[0, 1, 0, 1], kind=kind)
    np.testing.assert_allclose(mixed[1], class_activation_maps(net, x[1:2], 1, kind=kind)[0], atol=1e-5)


class QuadrantNet(nn.Module):
    """Conv features at half resolution, copied into four channel groups each masked to one image quadrant
    (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right); the logit of class q is the mean of group q."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(inplace=True))
        self.quadrants = QuadrantMask()

    def forward(self, x):
        q = self.quadrants(self.features(x))  # (B, 4 * 4, h, w)
        return q.reshape(len(x), 4, 4, *q.shape[2:]).mean((2, 3, 4))  # (B, 4)


class QuadrantMask(nn.Module):
    """``(B, C, h, w)`` -> ``(B, 4 C, h, w)``: the features masked to each quadrant in turn."""

    def forward(self, f):
        h, w = f.shape[2:]
        masks = torch.zeros(4, 1, h, w, dtype=f.dtype)
        masks[0, :, : h // 2, : w // 2] = masks[1, :, : h // 2, w // 2:] = 1
        masks[2, :, h // 2:, : w // 2] = masks[3, :, h // 2:, w // 2:] = 1
        return torch.cat([f * m for m in masks], dim=1)


@pytest.mark.parametrize("kind", ["gradcam", "gradcampp"])
def test_heatmap_peaks_in_the_quadrant_that_decides_the_class(kind, cxr):
    net = QuadrantNet()
    x = cxr[3][:1]  # a real chest X-ray, (1, 1, 64, 64)
    H, W = x.shape[2:]
    for q in range(4):
        heat = class_activation_maps(net, x, class_index=q, kind=kind, layer="quadrants")[0]
        r, c = np.unravel_index(heat.argmax(), heat.shape)
        assert (int(r >= H // 2), int(c >= W // 2)) == divmod(q, 2), f"class {q}: peak at {(r, c)}"
        rows, cols = (slice(0, H // 2), slice(H // 2, H))[q // 2], (slice(0, W // 2), slice(W // 2, W))[q % 2]
        assert heat[rows, cols].sum() > 0.95 * heat.sum()  # the rest is the bilinear border only


def test_wrong_layer_kind_or_class_is_refused(cxr):
    net = tiny_net("densenet121")
    with pytest.raises(ValueError, match=r"layer='features\.denseblock9'.*features\.denseblock4.*class_layers\.relu"):
        class_activation_maps(net, cxr[3], layer="features.denseblock9")
    with pytest.raises(ValueError, match="kind='cam'"):
        class_activation_maps(net, cxr[3], kind="cam")
    with pytest.raises(ValueError, match="class_index: 7"):
        class_activation_maps(net, cxr[3], class_index=7)
    with pytest.raises(ValueError, match="class_index: expected None, an int or 4 ints"):
        class_activation_maps(net, cxr[3], class_index=[0, 1])
    with pytest.raises(ValueError, match="x: expected"):
        class_activation_maps(net, cxr[3][0, 0])
    assert not any(m._forward_hooks or m._backward_hooks for m in net.modules())


def test_network_left_as_it_was(cxr):
    net = tiny_net("resnet18")
    net.train()
    net.layer1.eval()  # e.g. frozen batch norm: a mixed state must come back as it was
    net.conv1.weight.requires_grad_(False)
    net.fc.weight.grad = torch.full_like(net.fc.weight, 0.5)  # a gradient being accumulated
    modes = {n: m.training for n, m in net.named_modules()}
    flags = {n: p.requires_grad for n, p in net.named_parameters()}
    inplace = {n: m.inplace for n, m in net.named_modules() if hasattr(m, "inplace")}
    state = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        class_activation_maps(net, cxr[3])
    with torch.inference_mode():
        class_activation_maps(net, cxr[3], kind="gradcampp", layer="layer3")
    assert {n: m.training for n, m in net.named_modules()} == modes
    assert {n: p.requires_grad for n, p in net.named_parameters()} == flags
    assert {n: m.inplace for n, m in net.named_modules() if hasattr(m, "inplace")} == inplace
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())  # BN statistics untouched
    assert torch.equal(net.fc.weight.grad, torch.full_like(net.fc.weight, 0.5))
    assert all(p.grad is None for n, p in net.named_parameters() if n != "fc.weight")
    assert not any(m._forward_hooks or m._backward_hooks for m in net.modules())
    net.fc.weight.grad = None
    F.cross_entropy(net(cxr[3]), torch.tensor([0, 0, 1, 1])).backward()  # training still works, no hook left
    assert net.layer4[0].conv1.weight.grad is not None and net.conv1.weight.grad is None


def test_overlay_heatmap(cxr):
    img = np.asarray(Image.open(cxr[0][0]))  # real (224, 224, 3) uint8
    grey = img[..., 0]
    heat = np.zeros((64, 64), np.float32)
    heat[:32, :32] = 1.0
    out = overlay_heatmap(grey, heat, alpha=0.4)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(overlay_heatmap(grey, heat, alpha=0.0), np.repeat(grey[..., None], 3, -1))
    np.testing.assert_array_equal(overlay_heatmap(img, heat, alpha=0.0), img)
    full = overlay_heatmap(np.zeros((8, 8), np.uint8), np.linspace(0, 1, 64).reshape(8, 8), alpha=1.0)
    assert full[-1, -1, 0] > 100 and full[-1, -1, 1:].max() < 10  # jet: 1 -> dark red
    assert full[0, 0, 2] > 100 and full[0, 0, :2].max() < 10  # 0 -> dark blue
    hot, cold = out[:100, :100].astype(int), out[-100:, -100:].astype(int)
    assert (hot[..., 0] - hot[..., 2]).mean() > (cold[..., 0] - cold[..., 2]).mean() + 50
    with pytest.raises(ValueError, match="alpha"):
        overlay_heatmap(grey, heat, alpha=1.5)


def test_pick_samples_takes_classes_in_turn():
    labels = [0] * 10 + [1] * 5 + [2] * 1
    pick = pick_samples(labels, 6)
    assert [labels[i] for i in pick] == [0, 1, 2, 0, 1, 0]
    assert len(set(pick.tolist())) == 6 and pick[0] == 0 and 9 in pick.tolist()
    np.testing.assert_array_equal(pick_samples([1, 0], 8), [0, 1])
    assert len(pick_samples(labels, 0)) == 0


def _png(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_plot_explanations_xray(cxr, tmp_path):
    paths, labels, tf, _ = cxr
    net = tiny_net("densenet121")
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4]])
    out = plot_explanations(net, paths, labels, probs, ["NORMAL", "PNEUMONIA"], tmp_path / "plots" / "explain.png",
                            kind="gradcampp", transform=tf, max_images=3, title="pneumonia_xray: test",
                            preds=[0, 1, 1, 1])
    assert out == tmp_path / "plots" / "explain.png"
    arr = _png(out)
    assert arr.shape[0] > 200 and arr.shape[1] > 400 and arr.std() > 10
    empty = plot_explanations(net, [], [], np.zeros((0, 2)), ["a", "b"], tmp_path / "empty.png")
    assert _png(empty).size > 0
    with pytest.raises(ValueError, match="equal lengths"):
        plot_explanations(net, paths, labels[:2], probs, ["NORMAL", "PNEUMONIA"], tmp_path / "x.png")


def test_plot_explanations_patches_without_transform(patches, tmp_path):
    paths, labels, _ = patches
    net = tiny_net("lenet")
    big = type(net)(in_channels=3, num_classes=2, input_size=50)  # files read as they are: 50x50 RGB
    sizes = {Image.open(p).size for p in paths}
    assert sizes == {(50, 50)}
    out = plot_explanations(big, paths, labels, np.full((4, 2), 0.5), ["non-IDC", "IDC"], tmp_path / "h.png")
    assert _png(out).std() > 10
