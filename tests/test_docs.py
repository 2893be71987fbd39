"""The docs stay true: the config reference is the schema's, and README's set-up commands exist."""

import re
from pathlib import Path

from medpipe.config.doc import render

ROOT = Path(__file__).resolve().parent.parent


def test_config_reference_is_generated_from_schema():
    committed = (ROOT / "docs" / "config_reference.md").read_text()
    assert committed.strip() == render().strip(), (
        "docs/config_reference.md is stale: run `python -m medpipe.config.doc > docs/config_reference.md`")


def test_readme_starts_with_the_two_commands_and_they_exist():
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```", 2)[1]
    commands = re.findall(r"^make (\w+)", first_block, flags=re.M)
    assert commands == ["demo", "test"]
    makefile = (ROOT / "Makefile").read_text()
    for target in commands:
        assert re.search(rf"^{target}:", makefile, flags=re.M), target
    assert "pip install torch==2.13.0" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_yaml_examples_validate():
    """Every ```yaml block in README.md is a complete, valid pipeline (users copy them)."""
    import yaml

    from medpipe.config import validate_config

    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert len(blocks) >= 2
    tasks = {validate_config(yaml.safe_load(b), "README.md").task for b in blocks}
    assert tasks == {"segmentation", "classification"}
