"""The slide stage of a classification pipeline (``slide_infer``) and ``split.test_groups``: the bundled
histo_lenet.yaml validates, and each inconsistency is reported at its key and YAML line."""

from pathlib import Path

import pytest

from medpipe.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent
HISTO = (ROOT / "pipelines" / "histo_lenet.yaml").read_text()


def _edit(text: str, old: str, new: str):
    """Replace the one line ``old`` by ``new``; return the text and the 1-based line of ``new``."""
    lines = text.splitlines()
    hits = [i for i, line in enumerate(lines) if line.startswith(old)]
    assert len(hits) == 1, (old, hits)
    lines[hits[0]] = new
    return "\n".join(lines) + "\n", hits[0] + 1


def _problems(tmp_path, text):
    p = tmp_path / "h.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    return {(path, line): msg for path, line, msg in info.value.problems}


def test_histo_pipeline_resolves_its_slide_geometry(tmp_path):
    cfg = load_config(ROOT / "pipelines" / "histo_lenet.yaml")
    si = cfg.slide_infer
    assert cfg.task == "classification" and cfg.net.name == "lenet"
    assert si.roi_size == 50 and cfg.slide_input_size() == (28, 28)  # 50x50 patches area-resized to LeNet's 28
    assert (si.intensity.a_min, si.intensity.a_max, si.intensity.b_min, si.intensity.b_max) == (0, 255, 0, 1)
    assert si.slides[0].label_mask.endswith("patch_label_mask.png") and si.level == 0 and si.mpp is None
    assert cfg.data.split.test_groups == ["8863", "8975"]  # YAML ints -> the CSV's text ids
    assert cfg.data.group_column == "patient_id"


@pytest.mark.parametrize("old, new, path, expect", [
    ("  resize_mode: area", "  resize_mode: bilinear", "slide_infer.resize_mode", "resizes patches with mode 'area'"),
    ("  intensity: {a_min: 0", "  intensity: {a_min: 0, a_max: 1.0}", "slide_infer.intensity",
     "slide windows must be scaled like the patches"),
    ("  class_index: 1", "  class_index: 2", "slide_infer.class_index", "2 >= net.num_classes=2"),
    ("  sw_batch_size: 256", "  input_size: 32", "slide_infer.input_size", "net.input_size is [28, 28]"),
    ("  tile_size: 1024", "  mpp: 4.0", "slide_infer", "give level or mpp, not both"),
    ("  overlap: 0.0", "  overlaps: 0.0", "slide_infer.overlaps", "Did you mean 'overlap'"),
])
def test_slide_infer_problems_name_key_and_line(tmp_path, old, new, path, expect):
    text, line = _edit(HISTO, old, new)
    if path == "slide_infer":  # a model-level problem is reported at the section's line
        line = text.splitlines().index("slide_infer:") + 1
    problems = _problems(tmp_path, text)
    assert (path, line) in problems, problems
    assert expect in problems[(path, line)]


def test_window_must_reach_the_net_as_the_patches_did(tmp_path):
    # no Resized in the val chain: the net would see 50x50 patches in validation but resized slide windows
    lines = HISTO.splitlines()
    val_resize = [i for i, s in enumerate(lines) if "{name: Resized" in s][-1]
    lines.pop(val_resize)
    text = "\n".join(lines) + "\n"
    roi_line = text.splitlines().index("  roi_size: 50                         # one training patch at the slide's "
                                       "scale; resized to net.input_size") + 1
    problems = _problems(tmp_path, text)
    msg = problems[("slide_infer.roi_size", roi_line)]
    assert "transforms.val has no Resized of image to spatial_size [28, 28]" in msg


def test_missing_intensity_and_wrong_task_and_channels(tmp_path):
    start = HISTO.splitlines().index("slide_infer:") + 1
    text, _ = _edit(HISTO, "  intensity: {a_min: 0", "")
    assert ("slide_infer.intensity", start) in _problems(tmp_path, text)  # reported at the section's line
    assert "required key is missing" in _problems(tmp_path, text)[("slide_infer.intensity", start)]

    text, line = _edit(HISTO, "  in_channels: 3", "  in_channels: 1")
    assert "reads RGB slide windows" in _problems(tmp_path, text)[("net.in_channels", line)]

    text, _ = _edit(HISTO, "task: classification", "task: segmentation")
    problems = _problems(tmp_path, text)
    assert "task classification only" in problems[("slide_infer", start)]


def test_test_groups_excludes_test_fraction(tmp_path):
    text, line = _edit(HISTO, "    val_fraction: 0.25", "    val_fraction: 0.25\n    test_fraction: 0.2")
    split_line = HISTO.splitlines().index("  split:") + 1
    problems = _problems(tmp_path, text)
    assert "give only one of test_groups" in problems[("data.split", split_line)]
