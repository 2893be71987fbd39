"""The MONAI cumulative-metric wrappers give the per-image functions' values, averaged over images."""

import numpy as np
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
    _, handlers = build_seg_metric_handlers(["dice", "v_rand", "v_info", "pixel_accuracy"], "dice")
    for key in ("v_rand", "v_info"):
        metric = handlers[key].metric_fn
        assert isinstance(metric, PerImageMetric)
        metric(y_pred=[_onehot(pred)[0], _onehot(pred2)[0]], y=[_onehot(label)[0], _onehot(label2)[0]])
        got = float(metric.aggregate())
        assert got == np.mean([e[key] for e in expected])
        assert 0.5 < got < 1.0
        # the public per-image function is the one the handler wraps
        assert getattr(M, key)(pred, label) == expected[0][key]
    acc = handlers["pixel_accuracy"].metric_fn
    acc(y_pred=_onehot(pred), y=_onehot(label))
    assert float(acc.aggregate()) == M.pixel_accuracy(pred, label)
