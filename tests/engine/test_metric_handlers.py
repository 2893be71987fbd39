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


def _hippo_cases(datasets, spacing=(0.8, 1.2, 2.5)):
    """Two real MSD Hippocampus labels and shifted copies as predictions, as the evaluator hands them to the
    handlers: lists of one-hot (3, H, W, D) MetaTensors whose affine has the given spacing."""
    import nibabel as nib
    from monai.data import MetaTensor

    affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
    preds, labels, raw = [], [], []
    for n, shift in (("003", 2), ("004", -1)):
        lab = np.asarray(nib.load(str(datasets / f"msd_hippocampus/labelsTr/hippocampus_{n}.nii.gz")).dataobj)
        lab = lab.astype(np.int64)
        pred = np.roll(lab, shift, axis=2)
        raw.append((pred, lab))
        for m, out in ((pred, preds), (lab, labels)):
            out.append(MetaTensor(M.one_hot(m, 3)[0], affine=affine))
    return preds, labels, raw


def test_per_label_dice_handlers_equal_monai_dice_per_class(datasets):
    from monai.handlers import IgniteMetricHandler
    from monai.metrics import DiceMetric

    from medpipe.engine.metric_handlers import ASDMetric, ClassDiceMetric, HD95Metric

    key, extra = build_seg_metric_handlers(["dice", "hd95", "asd", "volume"], "dice", num_classes=3,
                                           class_names=["background", "anterior", "posterior"])
    assert list(key) == ["dice"] and sorted(extra) == ["asd", "dice_anterior", "dice_posterior", "hd95"]
    assert isinstance(extra["asd"].metric_fn, ASDMetric) and isinstance(extra["hd95"].metric_fn, HD95Metric)
    preds, labels, _ = _hippo_cases(datasets)
    monai = torch.cat([DiceMetric(include_background=False, reduction="none")(p[None], t[None])
                       for p, t in zip(preds, labels)])  # (2 cases, 2 classes); the volumes differ in size
    for c, name in ((1, "dice_anterior"), (2, "dice_posterior")):
        handler = extra[name]
        assert isinstance(handler, IgniteMetricHandler) and isinstance(handler.metric_fn, ClassDiceMetric)
        handler.metric_fn(y_pred=preds, y=labels)
        assert float(handler.metric_fn.aggregate()) == pytest.approx(float(monai[:, c - 1].mean()), abs=1e-6)
    # two classes: no per-class handlers; default names class_<k>
    assert sorted(build_seg_metric_handlers(["dice", "hd95"], "dice")[1]) == ["hd95"]
    assert "dice_class_2" in build_seg_metric_handlers(["dice"], "dice", num_classes=3)[1]
    with pytest.raises(ValueError, match="not a score"):
        build_seg_metric_handlers(["dice", "volume"], "volume")


def test_distance_handlers_take_the_spacing_of_the_batch(datasets):
    """HD95 / ASD of MetaTensor batches are in mm from their affine: equal to the per-label functions at that
    spacing; a plain tensor (or the identity affine of a PNG) gives pixels, as before."""
    from medpipe.engine.metric_handlers import ASDMetric, HD95Metric

    spacing = (0.8, 1.2, 2.5)
    preds, labels, raw = _hippo_cases(datasets, spacing)
    for metric, kind in ((HD95Metric(), "hd95"), (ASDMetric(), "asd")):
        per_image = metric(y_pred=preds, y=labels)  # the list form the ignite handler passes
        expected = [M.per_label_distances(p, t, 3, kind, spacing) for p, t in raw]
        assert per_image.shape == (2, 2)
        assert per_image.numpy() == pytest.approx(np.stack(expected), abs=1e-4)
        assert float(metric.aggregate()) == pytest.approx(float(np.mean(expected)), abs=1e-4)
        plain = metric.__class__()(y_pred=[p.as_tensor() for p in preds], y=[t.as_tensor() for t in labels])
        assert plain.numpy() == pytest.approx(np.stack([M.per_label_distances(p, t, 3, kind) for p, t in raw]),
                                              abs=1e-4)
        assert not np.allclose(plain.numpy(), per_image.numpy())


def test_hd95_of_a_png_batch_is_in_pixels_as_before(datasets):
    from monai.metrics import HausdorffDistanceMetric
    from monai.transforms import EnsureChannelFirst, LoadImage

    from medpipe.engine.metric_handlers import HD95Metric

    label = LoadImage(image_only=True, reader="PILReader", reverse_indexing=False)(
        str(datasets / "isbi2012_em/train/label/0.png"))
    label = EnsureChannelFirst(channel_dim="no_channel")(label)[:, :128, :128]
    assert M.spacing_from_affine(label.affine, 2) == (1.0, 1.0)
    lab = (label[0].numpy() > 127).astype(np.int64)
    pred = ndimage.binary_erosion(lab, iterations=2).astype(np.int64)
    from monai.data import MetaTensor

    y = MetaTensor(M.one_hot(lab, 2)[0], affine=label.affine)  # the PNG's (identity) affine
    got = HD95Metric()(y_pred=[torch.as_tensor(M.one_hot(pred, 2)[0])], y=[y])
    want = HausdorffDistanceMetric(include_background=False, percentile=95)(M.one_hot(pred, 2), M.one_hot(lab, 2))
    assert float(got) == float(want) and float(got) > 0
