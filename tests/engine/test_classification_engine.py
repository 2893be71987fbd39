"""Classification metric handler, final evaluation (threshold), nets and the grey transform."""

import logging

import numpy as np
import pytest
import torch

from medpipe.engine.evaluation import SplitPredictions, choose_threshold, evaluate_classifier
from medpipe.engine.metric_handlers import ClassificationMetric

Y = np.array([0, 0, 0, 0, 0, 1, 1, 1])
P1 = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.4, 0.8, 0.9])
PROB = np.stack([1 - P1, P1], axis=1)


def _feed(metric, probs, labels, batch=3):
    """Feed like SupervisedEvaluator after decollation: lists of per-case (C,) and 0-d tensors."""
    for i in range(0, len(labels), batch):
        metric(y_pred=[torch.tensor(p) for p in probs[i:i + batch]], y=[torch.tensor(int(y)) for y in labels[i:i + batch]])


@pytest.mark.parametrize("name,expected", [
    ("accuracy", 5 / 8), ("balanced_accuracy", (3 / 5 + 2 / 3) / 2), ("auc", 13 / 15), ("sensitivity", 2 / 3),
    ("specificity", 3 / 5), ("precision", 1 / 2), ("f1", 4 / 7),
    # mean of -log p(true class) by hand
    ("loss", -np.mean(np.log([0.9, 0.8, 0.7, 0.4, 0.3, 0.4, 0.8, 0.9]))),
])
def test_handler_metric_hand_computed_binary(name, expected):
    metric = ClassificationMetric(name, 2)
    _feed(metric, PROB, Y)
    assert float(metric.aggregate()) == pytest.approx(expected)
    metric.reset()
    assert np.isnan(float(metric.aggregate()))


def test_handler_multiclass_uses_macro_means_and_warns_for_never_predicted_class(caplog):
    y = np.array([0, 1, 2, 2, 1, 0])
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.5, 0.3], [0.5, 0.1, 0.4], [0.3, 0.6, 0.1],
                  [0.6, 0.3, 0.1]])  # argmax [0, 1, 1, 0, 1, 0]: class 2 never predicted
    metric = ClassificationMetric("precision", 3)
    _feed(metric, p, y, batch=4)
    with caplog.at_level(logging.WARNING, logger="medpipe.metrics.classification"):
        value = float(metric.aggregate())
    assert value == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)  # class 2 precision 0/0 -> 0
    assert "never predicted" in caplog.text and "'2'" in caplog.text
    bal = ClassificationMetric("balanced_accuracy", 3)
    _feed(bal, p, y)
    assert float(bal.aggregate()) == pytest.approx((1 + 1 + 0) / 3)


def test_threshold_chosen_on_val_and_applied_to_test():
    val = SplitPredictions(["v"] * 7, np.array([0, 0, 0, 0, 1, 1, 1]),
                           np.stack([1 - np.array([0.1, 0.2, 0.3, 0.55, 0.5, 0.8, 0.9]),
                                     np.array([0.1, 0.2, 0.3, 0.55, 0.5, 0.8, 0.9])], 1))
    test = SplitPredictions(["t"] * 8, Y, PROB)
    assert choose_threshold(0.5, val) == 0.5 and choose_threshold("youden", val) == pytest.approx(0.5)
    ev = evaluate_classifier({"val": val, "test": test}, ["a", "b"], "youden")
    assert ev["threshold"] == pytest.approx(0.5) and ev["test"]["threshold"] == pytest.approx(0.5)
    # the test split never moves the threshold: a test set whose own Youden point differs gives the same threshold
    test2 = SplitPredictions(["t"] * 8, 1 - Y, PROB)
    assert evaluate_classifier({"val": val, "test": test2}, ["a", "b"], "youden")["threshold"] == ev["threshold"]
    one_class = SplitPredictions(["v"] * 2, np.array([1, 1]), PROB[:2])
    assert choose_threshold("youden", one_class) == 0.5
    assert choose_threshold("youden", SplitPredictions([], np.array([0]), np.ones((1, 3)) / 3)) is None


@pytest.mark.parametrize("net,shape", [
    ({"name": "densenet121", "in_channels": 1, "num_classes": 3, "init_features": 8, "growth_rate": 4}, (2, 1, 64, 64)),
    ({"name": "resnet18", "in_channels": 3, "num_classes": 2, "widen_factor": 0.25}, (2, 3, 48, 40)),
    ({"name": "resnet50", "spatial_dims": 3, "in_channels": 1, "num_classes": 2, "widen_factor": 0.125},
     (2, 1, 32, 32, 32)),
    ({"name": "lenet", "in_channels": 3, "num_classes": 2, "input_size": 50}, (2, 3, 50, 50)),
])
def test_classifier_nets_output_logits(net, shape):
    from pydantic import TypeAdapter

    from medpipe.config import NetConfig
    from medpipe.nets import build_net
    from medpipe.nets.factory import prepare_net

    cfg = TypeAdapter(NetConfig).validate_python({**net, "init": "xavier_uniform"})
    model, report = prepare_net(build_net(cfg), cfg)
    assert report is None
    with torch.no_grad():
        out = model.eval()(torch.rand(shape))
    assert out.shape == (shape[0], net["num_classes"]) and torch.isfinite(out).all()


def test_prepare_net_loads_pretrained_weights_except_a_different_head(tmp_path):
    from pydantic import TypeAdapter

    from medpipe.config import NetConfig
    from medpipe.nets import build_net
    from medpipe.nets.factory import prepare_net

    src_cfg = TypeAdapter(NetConfig).validate_python({"name": "resnet18", "num_classes": 3, "widen_factor": 0.25})
    src = build_net(src_cfg)
    torch.save({"net": src.state_dict()}, tmp_path / "best.pt")
    cfg = TypeAdapter(NetConfig).validate_python({"name": "resnet18", "num_classes": 2, "widen_factor": 0.25,
                                                  "pretrained": str(tmp_path / "best.pt")})
    net, report = prepare_net(build_net(cfg), cfg)
    assert [m[0] for m in report.shape_mismatch] == ["fc.weight", "fc.bias"]
    assert torch.equal(net.conv1.weight, src.conv1.weight)


def test_to_grayscale_on_a_real_rgb_xray(datasets):
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    from medpipe.data.transforms import ToGrayscaled

    path = sorted((datasets / "kermany_pneumonia_cxr" / "train" / "NORMAL").glob("*.jpeg"))[0]
    load = Compose([LoadImaged(keys="image", reader="PILReader", reverse_indexing=False),
                    EnsureChannelFirstd(keys="image", channel_dim=-1)])
    rgb = load({"image": str(path)})["image"]
    grey = ToGrayscaled(keys="image")({"image": rgb})["image"]
    assert rgb.shape == (3, 224, 224) and grey.shape == (1, 224, 224)
    assert torch.allclose(grey[0], rgb[0].float(), atol=1e-3)  # the three channels are equal in this data
    assert grey.meta["filename_or_obj"] == str(path)
    with pytest.raises(ValueError, match="1, 3 or 4 channels"):
        ToGrayscaled(keys="image")({"image": torch.zeros(2, 4, 4)})
