"""Tests for medpipe.metrics.classification: hand-computed cases, sklearn / MONAI cross-checks, flat names."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from medpipe.metrics import (
    classification_metrics,
    confusion_matrix,
    flat_classification_metrics,
    mean_cross_entropy,
    select_metric,
    youden_threshold,
)

Y_BIN = np.array([0, 0, 0, 0, 0, 1, 1, 1])
P_BIN = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.4, 0.8, 0.9])


def test_confusion_matrix_hand_computed():
    cm = confusion_matrix([0, 1, 2, 2, 1, 0], [0, 1, 1, 0, 1, 0], num_classes=4)
    expected = np.array([[2, 0, 0, 0], [0, 2, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(cm, expected)
    assert cm.dtype == np.int64
    with pytest.raises(ValueError, match="labels must be in"):
        confusion_matrix([0, 1, 4], [0, 1, 1], num_classes=3)


def test_binary_classification_hand_computed():
    # threshold 0.5 -> pred = [0,0,0,1,1,0,1,1]; confusion [[3, 2], [1, 2]]
    # class 1: TP=2 FN=1 FP=2 TN=3 -> sens 2/3, spec 3/5, prec 2/4, F1 = 2*(1/2)(2/3)/(1/2+2/3) = 4/7
    # class 0: TP=3 FN=2 FP=1 TN=2 -> sens 3/5, spec 2/3, prec 3/4, F1 = 2/3
    # AUC: positives {.4,.8,.9} vs negatives {.1,.2,.3,.6,.7}: 3+5+5 = 13 of 15 pairs ordered correctly
    m = classification_metrics(Y_BIN, np.stack([1 - P_BIN, P_BIN], axis=1), class_names=["normal", "pneumonia"])
    assert m["confusion_matrix"] == [[3, 2], [1, 2]]
    assert m["threshold"] == 0.5
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["balanced_accuracy"] == pytest.approx((3 / 5 + 2 / 3) / 2)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(4 / 7)
    assert m["roc_auc"] == pytest.approx(13 / 15)
    normal = m["per_class"]["normal"]
    assert (normal["sensitivity"], normal["specificity"], normal["precision"]) == pytest.approx((3 / 5, 2 / 3, 3 / 4))
    assert normal["f1"] == pytest.approx(2 / 3)
    assert normal["support"] == 5
    assert m["macro_precision"] == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert m["macro_sensitivity"] == pytest.approx(m["balanced_accuracy"])


def test_binary_threshold_and_1d_probabilities():
    # threshold 0.65 -> pred = [0,0,0,0,1,0,1,1]: class 1 TP=2 FP=1 FN=1 TN=4
    m = classification_metrics(torch.from_numpy(Y_BIN), torch.from_numpy(P_BIN), threshold=0.65)
    assert m["threshold"] == 0.65
    assert m["confusion_matrix"] == [[4, 1], [1, 2]]
    assert m["specificity"] == pytest.approx(4 / 5)
    assert m["roc_auc"] == pytest.approx(13 / 15)  # AUC does not depend on the threshold


def test_multiclass_class_never_predicted():
    y_true = np.array([0, 1, 2, 2, 1, 0])
    y_prob = np.array(
        [
            [0.7, 0.2, 0.1],
            [0.1, 0.6, 0.3],
            [0.2, 0.5, 0.3],
            [0.5, 0.1, 0.4],
            [0.3, 0.6, 0.1],
            [0.6, 0.3, 0.1],
        ]
    )  # argmax = [0, 1, 1, 0, 1, 0]: class 2 never predicted
    m = classification_metrics(y_true, y_prob)
    assert m["threshold"] is None
    assert m["confusion_matrix"] == [[2, 0, 0], [0, 2, 0], [1, 1, 0]]
    c2 = m["per_class"]["2"]
    assert c2["precision"] == 0.0 and c2["sensitivity"] == 0.0 and c2["f1"] == 0.0
    assert c2["specificity"] == pytest.approx(1.0)  # TN = 4, FP = 0
    assert m["per_class"]["1"]["precision"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["macro_precision"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    # class 2 AUC by hand: positives {.3, .4} vs negatives {.1, .3, .1, .1}: .3 -> 3 wins + 1 tie (0.5), .4 -> 4
    assert c2["roc_auc"] == pytest.approx(7.5 / 8)
    assert m["macro_roc_auc"] == pytest.approx(roc_auc_score(y_true, y_prob, multi_class="ovr", average="macro"))
    with pytest.raises(ValueError, match="only applies to binary"):
        classification_metrics(y_true, y_prob, threshold=0.5)


def test_class_absent_from_y_true_gives_nan_auc(caplog):
    y_true = np.array([0, 1, 0, 1])
    y_prob = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.4, 0.5, 0.1], [0.1, 0.8, 0.1]])
    with caplog.at_level(logging.WARNING, logger="medpipe.metrics.classification"):
        m = classification_metrics(y_true, y_prob, class_names=["a", "b", "c"])
    assert math.isnan(m["per_class"]["c"]["roc_auc"])
    assert "'c'" in caplog.text
    # AUC(a) = 1.0 (0.8, 0.4 > 0.2, 0.1); AUC(b) = 1.0 (0.7, 0.8 > 0.1, 0.5) -> macro over present classes = 1.0
    assert m["macro_roc_auc"] == pytest.approx(1.0)


def test_classification_output_is_json_serialisable_plain_python():
    m = classification_metrics(Y_BIN, P_BIN)
    text = json.dumps(m)
    assert json.loads(text)["confusion_matrix"] == [[3, 2], [1, 2]]

    def check(x):
        if isinstance(x, dict):
            for v in x.values():
                check(v)
        elif isinstance(x, list):
            for v in x:
                check(v)
        else:
            assert x is None or type(x) in (float, int, str), type(x)

    check(m)


def test_classification_input_validation():
    with pytest.raises(ValueError, match="softmax"):
        classification_metrics(Y_BIN, P_BIN * 3)
    with pytest.raises(ValueError, match="rows"):
        classification_metrics(Y_BIN[:-1], P_BIN)
    with pytest.raises(ValueError, match="class_names"):
        classification_metrics(Y_BIN, P_BIN, class_names=["only-one"])
    with pytest.raises(ValueError, match="threshold"):
        classification_metrics(Y_BIN, P_BIN, threshold=1.5)


def test_youden_threshold_hand_found():
    y = np.array([0, 0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.55, 0.5, 0.8, 0.9])
    # thresholds high -> low (TPR, FPR, J): .9 (1/3, 0, .33), .8 (2/3, 0, .67), .55 (2/3, 1/4, .42),
    # .5 (1, 1/4, .75), .3 (1, 1/2, .5), ... -> best threshold 0.5 with J = 0.75
    assert youden_threshold(y, p) == pytest.approx(0.5)
    # the rule `p >= threshold` used by classification_metrics reproduces that operating point
    m = classification_metrics(y, p, threshold=youden_threshold(y, p))
    assert m["sensitivity"] + m["specificity"] - 1 == pytest.approx(0.75)
    # ties go to the highest threshold: J = 0.5 at both 0.8 and 0.35 here
    assert youden_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="both classes"):
        youden_threshold([1, 1, 1], [0.2, 0.5, 0.9])


def test_agrees_with_monai_metrics():
    from monai.metrics import ConfusionMatrixMetric, compute_roc_auc

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 40)
    logits = rng.normal(size=(40, 3)) + 1.5 * np.eye(3)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    res = classification_metrics(y, p)
    onehot_y = torch.nn.functional.one_hot(torch.tensor(y), 3).float()
    onehot_p = torch.nn.functional.one_hot(torch.tensor(p.argmax(1)), 3).float()
    auc = compute_roc_auc(torch.tensor(p), onehot_y, average="macro")
    assert res["macro_roc_auc"] == pytest.approx(float(auc))
    for ours, theirs in (("sensitivity", "sensitivity"), ("specificity", "specificity"), ("precision", "precision")):
        cm = ConfusionMatrixMetric(metric_name=theirs, include_background=True, reduction="sum_batch")
        cm(onehot_p, onehot_y)
        per_class = cm.aggregate()[0]  # (C,): confusion counts summed over the cases, then per class
        got = [res["per_class"][str(c)][ours] for c in range(3)]
        assert got == pytest.approx(per_class.flatten().tolist()), ours


def test_flat_metrics_names():
    res = classification_metrics(Y_BIN, P_BIN, class_names=["NORMAL", "PNEUMONIA"], threshold=0.65)
    flat = flat_classification_metrics(res, "test_")
    assert flat["test_auc"] == pytest.approx(13 / 15) and flat["test_threshold"] == 0.65
    assert flat["test_specificity"] == pytest.approx(4 / 5) and "test_NORMAL_precision" in flat
    res3 = classification_metrics([0, 1, 2], np.eye(3), class_names=["COVID-19", "Non COVID", "n"])
    flat3 = flat_classification_metrics(res3)
    assert "threshold" not in flat3 and "Non_COVID_f1" in flat3 and flat3["COVID-19_auc"] == 1.0
    assert select_metric(res3, "sensitivity") == res3["macro_sensitivity"]


def test_mean_cross_entropy_hand_computed_and_clipped():
    prob = np.stack([1 - P_BIN, P_BIN], axis=1)
    assert mean_cross_entropy(Y_BIN, prob) == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.7, 0.4, 0.3, 0.4, 0.8, 0.9])))
    assert mean_cross_entropy([1], [[1.0, 0.0]]) == pytest.approx(-math.log(1e-12))
    with pytest.raises(ValueError, match="mean_cross_entropy"):
        mean_cross_entropy(Y_BIN, P_BIN)


def test_select_metric_binary_positive_class_and_unknown_name():
    res = classification_metrics(Y_BIN, P_BIN)
    assert select_metric(res, "auc") == res["roc_auc"] and select_metric(res, "f1") == res["f1"]
    with pytest.raises(KeyError):
        select_metric(res, "kappa")
