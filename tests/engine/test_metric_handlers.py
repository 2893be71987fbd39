"""The MONAI cumulative-metric wrappers give the per-image functions' values, averaged over images."""

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from medpipe import metrics as M
from medpipe.engine.metric_handlers import PerImageMetric, build_seg_metric_handlers


def _onehot(mask):
    m = torch.as_tensor(mask.astype(np.int64))
    return torch.stack([m == 0, m == 1]).float()[None]  # (1, 2, H, W)


def test_per_image_metric_matches_functions_on_real_label(datasets):
    label = (np.asarray(Image.open(datasets / "isbi2012_em/train/label/0.png")) > 127).astype(np.int64)
    label2 = (np.asarray(Image.open(datasets / "isbi2012_em/train/label/1.png")) > 127).astype(np.int64)
    pred = ndimage.binary_erosion(label, iterations=2).astype(np.int64)
    pred2 = ndimage.binary_dilation(label2, iterations=1).astype(np.int64)
    expected = [M.rand_and_info_scores(pred > 0, label > 0), M.rand_and_info_scores(pred2 > 0, label2 > 0)]
    _, handlers = build_seg_metric_handlers(["dice", "v_rand_unthinned", "v_info_unthinned", "pixel_accuracy"],
                                            "dice")
    for key in ("v_rand_unthinned", "v_info_unthinned"):
        metric = handlers[key].metric_fn
        assert isinstance(metric, PerImageMetric)
        metric(y_pred=[_onehot(pred)[0], _onehot(pred2)[0]], y=[_onehot(label)[0], _onehot(label2)[0]])
        got = float(metric.aggregate())
        score = key.replace("_unthinned", "")  # rand_and_info_scores names its (unthinned) scores v_rand / v_info
        assert got == np.mean([e[score] for e in expected])
        assert 0.5 < got < 1.0
        # the public per-image function is the one the handler wraps
        assert getattr(M, key)(pred, label) == expected[0][score]
    acc = handlers["pixel_accuracy"].metric_fn
    acc(y_pred=_onehot(pred), y=_onehot(label))
    assert float(acc.aggregate()) == M.pixel_accuracy(pred, label)


def _softmax2(cell_prob):
    """(H, W) cell probability -> (2, H, W) float32 softmax-like tensor (channel 1 = cell)."""
    p = torch.as_tensor(cell_prob, dtype=torch.float32)
    return torch.stack([1 - p, p])


def test_isbi_handler_equals_isbi2012_scores_over_the_run(datasets):
    """The official v_rand / v_info handlers accumulate the per-slice, per-threshold table over all iterations
    and give isbi2012_scores of all slices (max over thresholds of the mean over slices)."""
    from medpipe.engine.metric_handlers import ISBI2012Metric

    labels, probs = [], []
    rng = np.random.default_rng(1)
    for n in range(3):
        lab = (np.asarray(Image.open(datasets / f"isbi2012_em/train/label/{n}.png"))[:192, :192] > 127)
        prob = np.clip(ndimage.gaussian_filter(lab.astype(float), 1.5 + n) + rng.normal(0, 0.2, lab.shape), 0, 1)
        labels.append(lab.astype(np.int64))
        probs.append(_softmax2(prob))
    key, handlers = build_seg_metric_handlers(["dice", "v_rand", "v_info"], "v_rand")
    metrics = {"v_rand": key["v_rand"].metric_fn, "v_info": handlers["v_info"].metric_fn}
    cell = np.stack([p[1].double().numpy() for p in probs])  # the float32 probability the handler sees
    expected = M.isbi2012_scores(cell, np.stack(labels))
    per_slice_best = np.mean([M.isbi2012_scores(c, lab)["v_rand"] for c, lab in zip(cell, labels)])
    for name, metric in metrics.items():
        assert isinstance(metric, ISBI2012Metric)
        metric(y_pred=probs[:2], y=[_onehot(lab)[0] for lab in labels[:2]])  # two iterations: 2 + 1 slices
        metric(y_pred=probs[2:], y=[_onehot(lab)[0] for lab in labels[2:]])
        assert float(metric.aggregate()) == pytest.approx(expected[name], rel=1e-12)
        assert metric.best_threshold == expected[f"{name}_threshold"]
    assert expected["v_rand"] != pytest.approx(per_slice_best)  # the max of the mean, not the mean of maxima
    # more than two classes: the cell probability is 1 - P(class 0)
    three = torch.stack([probs[0][0], probs[0][1] * 0.5, probs[0][1] * 0.5])
    m3 = ISBI2012Metric("v_rand")
    m3(y_pred=[three], y=[_onehot(labels[0])[0]])
    assert float(m3.aggregate()) == pytest.approx(M.isbi2012_scores(1 - three[0].double().numpy(), labels[0])["v_rand"])
