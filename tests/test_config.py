"""Pipeline config: every bundled pipeline validates; each class of bad config is reported with path and line."""

import glob
import textwrap
from pathlib import Path

import pytest

from medpipe.config import ConfigError, PipelineConfig, apply_overrides, load_config

ROOT = Path(__file__).resolve().parent.parent
PIPELINES = sorted(glob.glob(str(ROOT / "pipelines" / "*.yaml")))

GOOD = """\
name: t
data:
  root: isbi2012_em
  images: train/image/*.png
  labels: train/label/*.png
transforms:
  train:
    - {name: LoadImaged, keys: [image, label], reader: PILReader, reverse_indexing: false}
    - {name: EnsureChannelFirstd, keys: [image, label], channel_dim: no_channel}
  val:
    - {name: LoadImaged, keys: [image, label], reader: PILReader, reverse_indexing: false}
    - {name: EnsureChannelFirstd, keys: [image, label], channel_dim: no_channel}
net:
  name: basic_unet
  features: [8, 8, 16, 32, 64, 8]
train:
  max_epochs: 2
infer:
  roi_size: [64, 64]
"""


def _write(tmp_path, text):
    p = tmp_path / "p.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def _problems(tmp_path, text, overrides=None):
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text), overrides)
    return info.value


def test_bundled_pipelines_exist():
    assert any(p.endswith("em_unet.yaml") for p in PIPELINES)


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: Path(p).name)
def test_every_pipeline_validates(path):
    cfg = load_config(path)
    assert isinstance(cfg, PipelineConfig)
    assert cfg.name


def test_good_config_defaults(tmp_path):
    cfg = load_config(_write(tmp_path, GOOD))
    assert cfg.tracking.tracking_uri == "sqlite:///mlflow.db"
    assert cfg.data.split.val_fraction == 0.2
    assert cfg.optimizer.name == "adamw"
    assert cfg.net.features == (8, 8, 16, 32, 64, 8)


def test_unknown_key_names_line_and_suggests(tmp_path):
    err = _problems(tmp_path, GOOD.replace("  labels: train", "  labls: train"))
    assert len(err.problems) == 1
    path, line, msg = err.problems[0]
    assert path == "data.labls" and line == 5
    assert "Did you mean 'labels'" in msg and "Allowed keys:" in msg and "list_file" in msg
    assert "p.yaml" in str(err) and "line 5" in str(err)


def test_unknown_key_inside_discriminated_net(tmp_path):
    err = _problems(tmp_path, GOOD.replace("  features:", "  featurs:"))
    path, line, msg = err.problems[0]
    assert path == "net.featurs" and line == 15
    assert "Did you mean 'features'" in msg and "out_channels" in msg


def test_wrong_type(tmp_path):
    err = _problems(tmp_path, GOOD.replace("max_epochs: 2", "max_epochs: lots"))
    path, line, msg = err.problems[0]
    assert path == "train.max_epochs" and line == 17 and "integer" in msg and "'lots'" in msg


def test_misspelled_net(tmp_path):
    err = _problems(tmp_path, GOOD.replace("name: basic_unet", "name: basic_unt"))
    path, line, msg = err.problems[0]
    assert path == "net.name" and line == 14 and "Did you mean 'basic_unet'" in msg


def test_misspelled_transform(tmp_path):
    err = _problems(tmp_path, GOOD.replace("name: EnsureChannelFirstd, keys: [image, label], channel_dim: no_channel}\n  val",
                                           "name: EnsureChanelFirstd, keys: [image, label], channel_dim: no_channel}\n  val"))
    path, line, msg = err.problems[0]
    assert path == "transforms.train.1" and line == 9
    assert "unknown transform 'EnsureChanelFirstd'" in msg and "Did you mean 'EnsureChannelFirstd'" in msg


def test_array_transform_name_suggests_dictionary_version(tmp_path):
    text = GOOD.replace("    - {name: EnsureChannelFirstd, keys: [image, label], channel_dim: no_channel}\n  val",
                        "    - {name: ScaleIntensity, keys: [image]}\n  val")
    msg = _problems(tmp_path, text).problems[0][2]
    assert "ScaleIntensityd" in msg


def test_bad_transform_argument(tmp_path):
    err = _problems(tmp_path, GOOD.replace("channel_dim: no_channel}\n  val", "chanel_dim: no_channel}\n  val"))
    path, line, msg = err.problems[0]
    assert path == "transforms.train.1" and line == 9
    assert "unknown argument 'chanel_dim'" in msg and "Did you mean 'channel_dim'" in msg


def test_typo_in_reader_argument_passed_through_kwargs(tmp_path):
    err = _problems(tmp_path, GOOD.replace("reverse_indexing: false}\n    - {name: EnsureChannelFirstd, keys: [image, label], channel_dim: no_channel}\n  val",
                                           "reverse_indxing: false}\n    - {name: EnsureChannelFirstd, keys: [image, label], channel_dim: no_channel}\n  val"))
    assert "Did you mean 'reverse_indexing'" in err.problems[0][2]


def test_missing_required_transform_argument(tmp_path):
    err = _problems(tmp_path, GOOD.replace("    - {name: EnsureChannelFirstd, keys: [image, label], channel_dim: no_channel}\n  val",
                                           "    - {name: RandFlipd, prob: 0.5}\n  val"))
    assert "missing required argument(s) keys" in err.problems[0][2]


def test_all_problems_reported_at_once_sorted_by_line(tmp_path):
    text = GOOD.replace("  labels: train", "  labls: train").replace("max_epochs: 2", "max_epochs: -1").replace(
        "name: basic_unet", "name: basic_unt")
    err = _problems(tmp_path, text)
    lines = [p[1] for p in err.problems]
    assert len(err.problems) == 3 and lines == sorted(lines)
    assert "3 problems" in str(err)


def test_missing_section(tmp_path):
    err = _problems(tmp_path, GOOD.replace("train:\n  max_epochs: 2\n", ""))
    assert ("train", None, "required key is missing") in err.problems


def test_duplicate_key(tmp_path):
    err = _problems(tmp_path, GOOD.replace("train:\n  max_epochs: 2\n", "train:\n  max_epochs: 2\n  max_epochs: 3\n"))
    assert err.problems == [("train.max_epochs", 18, "duplicate key")]


def test_yaml_syntax_error_has_line(tmp_path):
    err = _problems(tmp_path, GOOD.replace("  max_epochs: 2", "  max_epochs: [2"))
    assert err.problems[0][1] is not None and "YAML syntax error" in err.problems[0][2]


def test_cross_field_checks(tmp_path):
    err = _problems(tmp_path, GOOD.replace("roi_size: [64, 64]", "roi_size: [64, 64, 64]"))
    assert "net.spatial_dims" in err.problems[0][2]
    err = _problems(tmp_path, GOOD + "metrics: {names: [dice], key_metric: v_rand}\n")
    assert err.problems[0][0] == "metrics"
    err = _problems(tmp_path, GOOD.replace("  labels: train/label/*.png\n",
                                           "  labels: train/label/*.png\n  split: {val_fraction: 0.2, kfold: 5}\n"))
    assert "only one of" in err.problems[0][2]


def test_overrides(tmp_path):
    cfg = load_config(_write(tmp_path, GOOD), ["train.max_epochs=7", "infer.roi_size=[32, 32]",
                                                "transforms.train.1.channel_dim=no_channel", "optimizer.lr=0.01"])
    assert cfg.train.max_epochs == 7 and cfg.infer.roi_size == [32, 32] and cfg.optimizer.lr == 0.01
    err = _problems(tmp_path, GOOD, ["train.max_epoch=7"])
    assert err.problems[0][0] == "train.max_epoch" and "Did you mean 'max_epochs'" in err.problems[0][2]
    with pytest.raises(ValueError):
        apply_overrides({}, ["no_equals_sign"])


def test_infer_transforms_drop_label(tmp_path):
    cfg = load_config(_write(tmp_path, GOOD))
    specs = cfg.infer_transforms()
    assert [s.name for s in specs] == ["LoadImaged", "EnsureChannelFirstd"]
    assert all(s.kwargs["keys"] == ["image"] for s in specs)


def test_no_code_in_yaml(tmp_path):
    # python object tags are refused by safe_load; import paths are not transform names
    err = _problems(tmp_path, GOOD.replace("name: EnsureChannelFirstd, keys: [image, label], channel_dim: no_channel}\n  val",
                                           "name: os.system, keys: [image]}\n  val"))
    assert "unknown transform 'os.system'" in err.problems[0][2]
    with pytest.raises(ConfigError):
        load_config(_write(tmp_path, GOOD.replace("max_epochs: 2", "max_epochs: !!python/object/apply:os.getpid []")))
