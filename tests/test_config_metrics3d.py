"""Config of the 3D / multi-class metrics: asd and volume names, class_names, which cannot select checkpoints."""

from tests.test_config import GOOD, _problems, _write, load_config


def test_asd_volume_and_class_names_validate(tmp_path):
    cfg = load_config(_write(tmp_path, GOOD + "metrics: {names: [dice, hd95, asd, volume], "
                                              "class_names: [background, lung]}\n"))
    assert cfg.metrics.names == ["dice", "hd95", "asd", "volume"] and cfg.metrics.key_metric == "dice"
    assert cfg.metrics.class_names == ["background", "lung"]


def test_distances_and_volume_are_never_the_key(tmp_path):
    line = GOOD.count("\n") + 1
    for key, words in (("asd", "lower-is-better"), ("volume", "not a score")):
        err = _problems(tmp_path, GOOD + f"metrics: {{names: [dice, {key}], key_metric: {key}}}\n")
        assert err.problems[0][0] == "metrics.key_metric" and err.problems[0][1] == line
        assert words in err.problems[0][2] and "dice" in err.problems[0][2]


def test_bad_class_names_are_refused_with_the_reason(tmp_path):
    err = _problems(tmp_path, GOOD + "metrics: {class_names: [background, left lung]}\n")
    assert err.problems[0][0].startswith("metrics.class_names") and "metric key" in err.problems[0][2]
    err = _problems(tmp_path, GOOD + "metrics: {class_names: [background, lung, lung]}\n")
    assert "distinct" in err.problems[0][2]
