"""Config layout versions: a resolved config written before ``schema_version`` existed still loads (upgraded to
the current version), a newer version is refused naming file, version and the newest supported, and the resolved
config written beside every run loads back to the same config."""

import glob
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from medpipe.config import (CURRENT_SCHEMA_VERSION, ConfigError, PipelineConfig, load_config, resolved_dict,
                            upgrade_config_dict, validate_config)
from medpipe.config.schema import UPGRADES

ROOT = Path(__file__).resolve().parent.parent
PIPELINES = sorted(glob.glob(str(ROOT / "pipelines" / "*.yaml")))
#: config.resolved.yaml of an em_unet run made by medpipe before schema_version existed (version 0), started as
#: ``python -m medpipe.run pipelines/em_unet.yaml --set train.progress=false``
V0_EM_UNET = ROOT / "tests" / "data" / "fixtures" / "config_v0_em_unet.resolved.yaml"


def test_upgrade_table_has_one_step_per_older_version():
    assert CURRENT_SCHEMA_VERSION == 1
    assert sorted(UPGRADES) == list(range(CURRENT_SCHEMA_VERSION))


def test_pre_versioning_resolved_config_is_version_0_and_upgrades():
    raw = yaml.safe_load(V0_EM_UNET.read_text())
    assert "schema_version" not in raw
    up = upgrade_config_dict(raw, str(V0_EM_UNET))
    assert list(up)[0] == "schema_version" and up["schema_version"] == 1
    assert {k: v for k, v in up.items() if k != "schema_version"} == raw
    assert "schema_version" not in raw  # the input is not modified


def test_pre_versioning_resolved_config_loads_to_the_pipeline_it_came_from():
    old = load_config(V0_EM_UNET)
    assert old.schema_version == CURRENT_SCHEMA_VERSION
    pipeline = load_config(ROOT / "pipelines" / "em_unet.yaml", ["train.progress=false"])
    assert resolved_dict(old) == resolved_dict(pipeline)


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: Path(p).name)
def test_resolved_dict_round_trips_through_load(path, tmp_path):
    resolved = resolved_dict(load_config(path))
    assert list(resolved)[0] == "schema_version" and resolved["schema_version"] == CURRENT_SCHEMA_VERSION
    out = tmp_path / "config.resolved.yaml"
    out.write_text(yaml.safe_dump(resolved, sort_keys=False))
    assert resolved_dict(load_config(out)) == resolved


def test_newer_version_is_refused_with_file_version_and_newest(tmp_path):
    text = V0_EM_UNET.read_text().replace("name: em_unet\n", "name: em_unet\nschema_version: 7\n", 1)
    path = tmp_path / "config.resolved.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert len(info.value.problems) == 1
    key, line, msg = info.value.problems[0]
    assert key == "schema_version" and line == 2
    assert "is 7" in msg and "newest supported: 1" in msg
    assert str(path) in str(info.value) and "line 2" in str(info.value)


@pytest.mark.parametrize("bad", ["one", "1.5", "true", "-1", "[1]"])
def test_schema_version_must_be_an_integer(tmp_path, bad):
    path = tmp_path / "p.yaml"
    path.write_text(f"schema_version: {bad}\n" + V0_EM_UNET.read_text())
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [("schema_version", 1, "must be a non-negative integer (the version of the config "
                                    f"layout), found {yaml.safe_load(bad)!r}")]


def test_validate_config_upgrades_and_refuses_too():
    raw = yaml.safe_load(V0_EM_UNET.read_text())
    assert validate_config(raw, "run/config.resolved.yaml").schema_version == 1
    with pytest.raises(ConfigError, match=r"(?s)run/config.resolved.yaml: 1 problem.*schema_version: is 2"):
        validate_config({**raw, "schema_version": 2}, "run/config.resolved.yaml")


def test_model_alone_accepts_the_current_version_only():
    raw = upgrade_config_dict(yaml.safe_load(V0_EM_UNET.read_text()), "x")
    assert PipelineConfig.model_validate(raw).schema_version == 1
    with pytest.raises(ValidationError, match="validates version 1"):
        PipelineConfig.model_validate({**raw, "schema_version": 0})
