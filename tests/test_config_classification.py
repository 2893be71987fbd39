"""Classification config: task / net / metric consistency, new data fields, each problem with its path and line."""

import textwrap

import pytest

from medpipe.config import ConfigError, load_config

CLS = """\
name: c
task: classification
data:
  root: kermany_pneumonia_cxr
  list_file: labels.csv
  image_column: path
  split_column: split
transforms:
  train:
    - {name: LoadImaged, keys: [image], reader: PILReader, reverse_indexing: false}
    - {name: EnsureChannelFirstd, keys: [image], channel_dim: -1}
  val:
    - {name: LoadImaged, keys: [image], reader: PILReader, reverse_indexing: false}
    - {name: EnsureChannelFirstd, keys: [image], channel_dim: -1}
net:
  name: densenet121
  in_channels: 3
  num_classes: 2
train:
  max_epochs: 2
"""


def _load(tmp_path, text, overrides=None):
    p = tmp_path / "c.yaml"
    p.write_text(textwrap.dedent(text))
    return load_config(p, overrides)


def _problems(tmp_path, text, overrides=None):
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text, overrides)
    return info.value.problems


def test_task_dependent_defaults(tmp_path):
    cfg = _load(tmp_path, CLS)
    assert cfg.task == "classification" and cfg.infer is None
    assert cfg.loss.name == "cross_entropy"
    assert cfg.metrics.key_metric == "auc"  # two classes
    assert cfg.metrics.names == ["accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity", "precision",
                                 "f1"]
    assert cfg.metrics.threshold == 0.5 and cfg.net.init == "default" and cfg.net.pretrained is None
    three = _load(tmp_path, CLS, ["net.num_classes=3"])
    assert three.metrics.key_metric == "balanced_accuracy"
    y = _load(tmp_path, CLS, ["metrics.threshold=youden", "net.name=resnet50"])
    assert y.metrics.threshold == "youden" and y.net.conv1_t_stride == 2


def test_classifier_nets_validate_their_own_fields(tmp_path):
    lenet = _load(tmp_path, CLS, ["net={name: lenet, in_channels: 3, num_classes: 2, input_size: 50}"])
    assert lenet.net.input_size == 50 and lenet.net.padding == 2
    probs = _problems(tmp_path, CLS, ["net={name: resnet18, num_classes: 2, dropout_prob: 0.2}"])
    assert probs[0][0] == "net.dropout_prob" and "unknown key" in probs[0][2] and "widen_factor" in probs[0][2]
    probs = _problems(tmp_path, CLS.replace("name: densenet121", "name: densenet12"))
    assert probs[0][0] == "net.name" and probs[0][1] == 16 and "Did you mean 'densenet121'" in probs[0][2]
    probs = _problems(tmp_path, CLS, ["net.init=xavier"])
    assert probs[0][0] == "net.init" and "xavier_uniform" in probs[0][2]


def test_task_and_net_must_match_with_line(tmp_path):
    probs = _problems(tmp_path, CLS.replace("task: classification", "task: segmentation"))
    assert ("net.name", 16) == probs[0][:2] and "is a classifier" in probs[0][2]
    seg_net = CLS.replace("name: densenet121\n  in_channels: 3\n  num_classes: 2", "name: basic_unet")
    probs = _problems(tmp_path, seg_net)
    assert probs[0][:2] == ("net.name", 16) and "needs one of densenet121, resnet18, resnet50, lenet" in probs[0][2]


def test_metrics_must_fit_the_task(tmp_path):
    probs = _problems(tmp_path, CLS + "metrics: {names: [auc, dice], key_metric: v_rand}\n")
    paths = {p[0]: p for p in probs}
    assert paths["metrics"][2].startswith("key_metric 'v_rand' must be one of names")
    probs = _problems(tmp_path, CLS + "metrics:\n  names: [auc, dice]\n  key_metric: auc\n")
    assert probs == [("metrics.names.1", 22, "'dice' is not a classification metric; allowed: accuracy, "
                      "balanced_accuracy, auc, sensitivity, specificity, precision, f1")]
    probs = _problems(tmp_path, CLS + "loss: {name: dice_ce}\n")
    assert probs[0][0] == "loss.name" and probs[0][1] == 21
    probs = _problems(tmp_path, CLS, ["net.num_classes=3", "metrics.threshold=youden"])
    assert probs[0][0] == "metrics.threshold" and "two-class" in probs[0][2]
    probs = _problems(tmp_path, CLS, ["metrics.threshold=1.5"])
    assert probs[0][0].startswith("metrics.threshold")


def test_data_fields_checked_against_the_task(tmp_path):
    probs = _problems(tmp_path, CLS.replace("  list_file: labels.csv\n  image_column: path\n  split_column: split\n",
                                            "  images: train/*/*.jpeg\n"))
    assert probs[0][:2] == ("data.images", 5) and "class_from: folder" in probs[0][2]
    probs = _problems(tmp_path, CLS, ["data.classes=[NORMAL, PNEUMONIA, OTHER]"])
    assert probs[0][0] == "data.classes" and "net.num_classes is 2" in probs[0][2]
    probs = _problems(tmp_path, CLS, ["data.classes=[NORMAL, NORMAL]"])
    assert probs[0][0] == "data.classes" and "duplicates ['NORMAL']" in probs[0][2]
    probs = _problems(tmp_path, CLS, ["data.split.column_values={train: train, demo: holdout}"])
    assert probs[0][0] == "data.split.column_values.demo" and "'drop'" in probs[0][2]
    probs = _problems(tmp_path, CLS, ["data.sampler=balanced"])
    assert probs[0][0] == "data.sampler" and "'weighted'" in probs[0][2]
    probs = _problems(tmp_path, CLS, ["loss.class_weights=[1.0, 2.0, 3.0]"])
    assert probs[0][0] == "loss.class_weights" and "net.num_classes=2" in probs[0][2]
    assert _load(tmp_path, CLS, ["loss.class_weights=balanced", "data.sampler=weighted"]).loss.class_weights \
        == "balanced"


def test_transfer_fields(tmp_path):
    cfg = _load(tmp_path, CLS, ["net.pretrained=runs:/abc/model", "train.freeze_backbone_epochs=1"])
    assert cfg.net.pretrained == "runs:/abc/model" and cfg.train.freeze_backbone_epochs == 1
    probs = _problems(tmp_path, CLS, ["train.freeze_backbone_epochs=1"])
    assert probs[0][0] == "train.freeze_backbone_epochs" and "net.pretrained" in probs[0][2]
    probs = _problems(tmp_path, CLS, ["net.pretrained=x.pt", "train.freeze_backbone_epochs=2"])
    assert "never be fine-tuned" in probs[0][2]
    probs = _problems(tmp_path, CLS, ["net.pretrained_sha256=abc"])
    assert probs[0][0] == "net.pretrained_sha256"


def test_segmentation_rejects_classification_settings(tmp_path):
    from tests.test_config import GOOD

    cfg = _load(tmp_path, GOOD)
    assert cfg.loss.name == "dice_ce" and cfg.metrics.names == ["dice", "pixel_accuracy"]
    assert cfg.metrics.key_metric == "dice"
    probs = _problems(tmp_path, GOOD, ["data.classes=[a, b]", "loss.class_weights=balanced",
                                       "metrics.names=[dice, auc]"])
    assert {p[0] for p in probs} == {"data.classes", "loss.class_weights", "metrics.names.1"}
    probs = _problems(tmp_path, GOOD.replace("infer:\n  roi_size: [64, 64]\n", ""))
    assert probs == [("infer", None, "required for task segmentation (sliding-window roi_size, overlap, ...)")]
