"""HD95 (95th-percentile Hausdorff distance, pixels) on real COVID-QU-Ex lung masks: equal to MONAI's
HausdorffDistanceMetric and to an independent scipy computation; empty masks scored as documented; never a key
metric."""

import csv
import logging
import math

import numpy as np
import pytest
import torch
from monai.metrics import HausdorffDistanceMetric
from PIL import Image
from scipy import ndimage

from medpipe.engine.metric_handlers import HD95Metric, build_seg_metric_handlers


def _lung_masks(datasets, n=2):
    root = datasets / "covid_qu_ex"
    with open(root / "labels.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "val"][:n]
    return [np.asarray(Image.open(root / r["lung_mask"])) > 127 for r in rows]


def _onehot(mask):
    m = torch.as_tensor(np.asarray(mask, dtype=np.int64))
    return torch.stack([m == 0, m == 1]).float()[None]  # (1, 2, H, W)


def _scipy_hd95(pred, true):
    """Symmetric HD95 from first principles: boundary pixels (mask minus its erosion), Euclidean distance
    transform of the other boundary's complement, 95th percentile (linear interpolation) of each direction, max."""
    def edges(m):
        return m & ~ndimage.binary_erosion(m, border_value=0)

    ep, et = edges(pred), edges(true)
    d_pt = ndimage.distance_transform_edt(~et)[ep]
    d_tp = ndimage.distance_transform_edt(~ep)[et]
    return max(np.percentile(d_pt, 95), np.percentile(d_tp, 95))


def test_hd95_equals_monai_and_scipy_on_real_lung_masks(datasets):
    true1, true2 = _lung_masks(datasets)
    assert true1.shape == (256, 256) and 0.05 < true1.mean() < 0.6
    pred1 = ndimage.binary_dilation(true1, iterations=4)          # boundary moved out by about 4 pixels
    pred2 = ndimage.shift(true2.astype(np.uint8), (0, 7), order=0) > 0  # shifted 7 pixels sideways
    pred2[:30] = False

    ours, monai = HD95Metric(), HausdorffDistanceMetric(include_background=False, percentile=95)
    y_pred, y = torch.cat([_onehot(pred1), _onehot(pred2)]), torch.cat([_onehot(true1), _onehot(true2)])
    per_image = ours(y_pred=y_pred, y=y)
    assert per_image.shape == (2, 1)
    assert torch.allclose(per_image, monai(y_pred=y_pred, y=y))
    expected = [_scipy_hd95(pred1, true1), _scipy_hd95(pred2, true2)]
    assert per_image[:, 0].tolist() == pytest.approx(expected, abs=1e-4)
    assert 3.0 <= expected[0] <= 5.0 and expected[1] >= 7.0  # the distances the masks were moved by
    assert float(ours.aggregate()) == pytest.approx(float(monai.aggregate()), abs=1e-5)
    assert float(ours.aggregate()) == pytest.approx(np.mean(expected), abs=1e-4)
    assert float(HD95Metric()(y_pred=_onehot(true1), y=_onehot(true1))) == 0.0


def test_empty_prediction_scores_the_diagonal_and_both_empty_is_left_out(datasets, caplog):
    true1, true2 = _lung_masks(datasets)
    empty = np.zeros_like(true1)
    metric = HD95Metric()
    good = ndimage.binary_dilation(true2, iterations=2)
    values = metric(y_pred=torch.cat([_onehot(empty), _onehot(good), _onehot(empty)]),
                    y=torch.cat([_onehot(true1), _onehot(true2), _onehot(empty)]))
    diagonal = math.sqrt(2 * 255 ** 2)  # 360.6 px for a 256 x 256 image
    assert values[0, 0] == pytest.approx(diagonal)
    assert values[1, 0] == pytest.approx(_scipy_hd95(good, true2), abs=1e-4)
    assert torch.isnan(values[2, 0])
    # MONAI alone gives NaN for the empty prediction (with a warning), and its mean silently skips it
    with pytest.warns(UserWarning, match="prediction of class 1 is all 0"):
        assert torch.isnan(HausdorffDistanceMetric(include_background=False, percentile=95)(
            y_pred=_onehot(empty), y=_onehot(true1)))
    with caplog.at_level(logging.WARNING, logger="medpipe.engine.metric_handlers"):
        mean = float(metric.aggregate())
    assert mean == pytest.approx((diagonal + float(values[1, 0])) / 2, abs=1e-4)
    assert "1 image(s) with an empty prediction" in caplog.text and "left out of the mean" in caplog.text
    metric.reset()
    assert metric.n_one_empty == 0 and metric.n_both_empty == 0
    metric(y_pred=_onehot(empty), y=_onehot(empty))
    assert math.isnan(float(metric.aggregate()))  # no defined value at all: NaN, not MONAI's 0


def test_seg_handlers_include_hd95_but_never_as_key():
    from monai.handlers import IgniteMetricHandler

    key, extra = build_seg_metric_handlers(["dice", "hd95", "pixel_accuracy"], "dice")
    assert list(key) == ["dice"] and sorted(extra) == ["hd95", "pixel_accuracy"]
    assert isinstance(extra["hd95"], IgniteMetricHandler) and isinstance(extra["hd95"].metric_fn, HD95Metric)
    assert extra["hd95"].metric_fn.percentile == 95 and extra["hd95"].metric_fn.include_background is False
    with pytest.raises(ValueError, match="lower-is-better"):
        build_seg_metric_handlers(["dice", "hd95"], "hd95")


def test_hd95_config(tmp_path):
    from tests.test_config import GOOD, _problems, load_config, _write

    err = _problems(tmp_path, GOOD + "metrics: {names: [dice, hd95], key_metric: hd95}\n")
    assert err.problems[0][0] == "metrics.key_metric" and err.problems[0][1] == GOOD.count("\n") + 1
    assert "lower-is-better" in err.problems[0][2] and "dice" in err.problems[0][2]
    err = _problems(tmp_path, GOOD + "metrics: {names: [hd95]}\n")
    assert err.problems[0][0] == "metrics.names" and "higher-is-better" in err.problems[0][2]
    cfg = load_config(_write(tmp_path, GOOD + "metrics: {names: [hd95, pixel_accuracy]}\n"))
    assert cfg.metrics.key_metric == "pixel_accuracy"  # the default key skips the distance
