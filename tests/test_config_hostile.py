"""Hostile and broken pipeline files: refused quickly with one clear message naming the file (issue 15).

Alias bombs, oversized and non-UTF-8 files, non-finite numbers, MONAI bundle expressions and argument values of the
wrong type are all refused at validation, before any data is read or any network built.
"""

import time

import pytest

from medpipe.config import ConfigError, load_config
from medpipe.config.loading import MAX_CONFIG_BYTES, MAX_YAML_ALIASES
from tests.test_config import GOOD, ROOT, _problems, _write

EM_UNET = ROOT / "pipelines" / "em_unet.yaml"

#: 9 levels of 9 aliases: 342 bytes that expand to 9^9 (387 million) strings
BILLION_LAUGHS = "\n".join(
    [f'a: &a [{", ".join(["lol"] * 9)}]']
    + [f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")]) + "\n"


def _refused(path, overrides=None):
    """``(error, seconds)`` of loading a file that must be refused."""
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return info.value, time.perf_counter() - t0


def test_billion_laughs_is_refused_quickly(tmp_path):
    p = tmp_path / "laughs.yaml"
    p.write_text(BILLION_LAUGHS)
    assert p.stat().st_size < 400
    err, seconds = _refused(p)
    assert seconds < 5, f"took {seconds:.1f} s"
    assert str(p) in str(err) and "billion laughs" in str(err) and "refused" in str(err)
    # the same bomb inside a real pipeline, under a key that would be an error anyway
    q = tmp_path / "em.yaml"
    q.write_text(EM_UNET.read_text() + "x:\n" + "".join("  " + line + "\n" for line in BILLION_LAUGHS.splitlines()))
    err, seconds = _refused(q)
    assert seconds < 5 and "billion laughs" in str(err)


def test_too_many_aliases_and_recursive_alias_and_deep_nesting(tmp_path):
    many = EM_UNET.read_text() + "x: &v 1\ny: [" + ", ".join(["*v"] * (MAX_YAML_ALIASES + 1)) + "]\n"
    err, seconds = _refused(_write(tmp_path, many))
    assert seconds < 5 and f"more than {MAX_YAML_ALIASES} alias uses" in str(err)
    err, _ = _refused(_write(tmp_path, GOOD + "x: &r [1, *r]\n"))
    assert "recursive" in str(err) and err.problems[0][1] == GOOD.count("\n") + 1  # the line of the alias
    err, seconds = _refused(_write(tmp_path, GOOD + "x: " + "[" * 5000 + "]" * 5000 + "\n"))
    assert seconds < 5 and "nested more than" in str(err)


def test_a_few_aliases_are_fine(tmp_path):
    text = EM_UNET.read_text().replace("keys: [image, label], reader: PILReader",
                                       "keys: &both [image, label], reader: PILReader", 1)
    head, tail = text.split("&both [image, label]", 1)
    text = head + "&both [image, label]" + tail.replace("keys: [image, label]", "keys: *both")
    assert text.count("*both") > 5
    cfg = load_config(_write(tmp_path, text))
    assert cfg.transforms.val[0].kwargs["keys"] == ["image", "label"]


def test_oversized_file_is_refused_before_reading(tmp_path):
    big = tmp_path / "big.yaml"
    with big.open("wb") as f:
        f.truncate(50 * 1024 * 1024)  # 50 MB (sparse)
    err, seconds = _refused(big)
    assert seconds < 5 and str(big) in str(err) and f"more than the {MAX_CONFIG_BYTES} bytes" in str(err)
    padded = tmp_path / "padded.yaml"  # a valid pipeline, padded with comments past the limit
    padded.write_text(EM_UNET.read_text() + ("# " + "x" * 98 + "\n") * (MAX_CONFIG_BYTES // 100 + 1))
    err, seconds = _refused(padded)
    assert seconds < 5 and "pipelines are a few KB" in str(err)


def test_binary_file_names_the_file(tmp_path):
    p = tmp_path / "image.yaml"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    err, _ = _refused(p)
    assert str(p) in str(err) and "not UTF-8 text" in str(err)


def test_set_value_that_is_not_yaml_is_a_config_error(tmp_path):
    err, _ = _refused(_write(tmp_path, GOOD), ["train.max_epochs=[3"])
    assert "--set train.max_epochs: the value '[3' is not valid YAML" in str(err)


@pytest.mark.parametrize("override,path", [
    ("optimizer.lr=.inf", "optimizer.lr"),
    ("optimizer.lr=.nan", "optimizer.lr"),
    ("optimizer.betas=[0.9, -.inf]", "optimizer.betas.1"),
    ("infer.overlap=.nan", "infer.overlap"),
    ("loss.lambda_dice=.inf", "loss.lambda_dice"),
    ("net.act=[LeakyReLU, {negative_slope: .nan}]", "net.act.1.negative_slope"),
])
def test_non_finite_numbers_are_refused_with_the_field(tmp_path, override, path):
    err, _ = _refused(_write(tmp_path, GOOD), [override])
    assert [p[0] for p in err.problems] == [path], err
    assert "finite" in err.problems[0][2]


def test_non_finite_number_in_the_file_has_its_line(tmp_path):
    err = _problems(tmp_path, GOOD.replace("max_epochs: 2", "max_epochs: 2\n  grad_clip_norm: .nan"))
    line = GOOD.splitlines().index("  max_epochs: 2") + 2
    assert err.problems == [("train.grad_clip_norm", line, "Input should be a finite number (found nan)")]


@pytest.mark.parametrize("value", ["'$1+1'", "'@image'", "'%macro'", "['$import os']"])
def test_bundle_syntax_in_transform_arguments_is_refused(tmp_path, value):
    text = GOOD.replace("channel_dim: no_channel}\n  val", f"channel_dim: no_channel, strict_check: {value}}}\n  val")
    err = _problems(tmp_path, text)
    assert err.problems[0][0] == "transforms.train.1" and err.problems[0][1] == 9
    msg = err.problems[0][2]
    assert "EnsureChannelFirstd: argument 'strict_check" in msg and "MONAI bundle syntax" in msg
    assert "data only" in msg and "expected" not in msg  # one message per value, not a type error too


SCALE = ("    - {name: ScaleIntensityRanged, keys: [image], a_min: 0, a_max: 255, b_min: 0.0, b_max: 1.0, "
         "clip: true}\n")


def _with_train(extra: str) -> str:
    return GOOD.replace("  val:\n", extra + "  val:\n", 1)


@pytest.mark.parametrize("before,after,expected", [
    ("a_min: 0", "a_min: zero", "argument 'a_min' is 'zero' (str); expected float"),
    ("a_min: 0", "a_min: 1e-3", "argument 'a_min' is '1e-3' (str); expected float (a string: write the number "
                                "without quotes and with a decimal point, e.g. 0.001"),
    ("a_max: 255", "a_max: .inf", "argument 'a_max' is inf: not a finite number"),
    ("clip: true", "clip: 'false'", "argument 'clip' is 'false' (str); expected bool"),
    ("keys: [image]", "keys: [[image]]", "argument 'keys' is [['image']] (list); expected KeysCollection"),
])
def test_transform_argument_types_are_checked(tmp_path, before, after, expected):
    err = _problems(tmp_path, _with_train(SCALE.replace(before, after)))
    assert err.problems[0][0] == "transforms.train.2"
    assert err.problems[0][2].startswith("ScaleIntensityRanged: ") and expected in err.problems[0][2]


@pytest.mark.parametrize("spec,expected", [
    ("{name: RandSpatialCropd, keys: [image], roi_size: [32, abc]}", "'roi_size' is [32, 'abc'] (list); "
                                                                     "expected Sequence[int] | int"),
    ("{name: RandSpatialCropd, keys: [image], roi_size: 32.5}", "'roi_size' is 32.5 (float); expected "
                                                               "Sequence[int] | int"),
    ("{name: RandAdjustContrastd, keys: [image], gamma: [0.5, 1, 2]}", "'gamma' is [0.5, 1, 2] (list); expected "
                                                                       "tuple[float, float] | float"),
    ("{name: Resized, keys: [image], spatial_size: [32, 32], mode: 3}", "'mode' is 3 (int); expected SequenceStr"),
    ("{name: LoadImaged, keys: [image], reader: PILReader, reverse_indexing: 'no'}",
     "'reverse_indexing' is 'no' (str); expected bool"),  # an argument of the reader, through LoadImaged
])
def test_wrong_types_in_other_transforms(tmp_path, spec, expected):
    err = _problems(tmp_path, _with_train(f"    - {spec}\n"))
    assert err.problems[0][0] == "transforms.train.2" and expected in err.problems[0][2], err


@pytest.mark.parametrize("spec", [
    "{name: RandSpatialCropd, keys: image, roi_size: 32}",  # a str key, an int size
    "{name: RandAdjustContrastd, keys: [image], gamma: [0.5, 2]}",  # ints for floats
    "{name: Resized, keys: [image, label], spatial_size: [32, 32], mode: [area, nearest]}",
    "{name: CastToTyped, keys: [image], dtype: float32}",  # torch.dtype / DtypeLike from a string: MONAI converts
    "{name: RandFlipd, keys: [image], prob: 1, spatial_axis: null}",
    "{name: ScaleIntensityRanged, keys: [image], a_min: 0, a_max: 255, b_min: null, b_max: null}",
])
def test_values_the_annotation_accepts_are_accepted(tmp_path, spec):
    load_config(_write(tmp_path, _with_train(f"    - {spec}\n")))

