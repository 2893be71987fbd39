"""The config package: light to import, its public names at ``medpipe.config``, the reference page generator runs
as a module, and the transform table holds MONAI's dictionary transforms plus medpipe's own."""

import subprocess
import sys
from pathlib import Path

import medpipe.config as C

ROOT = Path(__file__).resolve().parent.parent


def test_import_needs_neither_torch_nor_monai():
    code = "import medpipe.config, sys; print('torch' in sys.modules, 'monai' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False"]


def test_public_names():
    for name in C.__all__:
        assert hasattr(C, name), name
    for name in ("PipelineConfig", "ConfigError", "load_config", "validate_config", "apply_overrides",
                 "resolved_dict", "flatten", "LOWER_IS_BETTER_METRICS", "NetConfig", "DataConfig", "SplitConfig",
                 "TrackingConfig", "TransformSpec", "check_transform_args", "SEGMENTATION_NETS",
                 "CLASSIFICATION_NETS", "CrossFieldError", "transform_table", "upgrade_config_dict"):
        assert name in C.__all__, name


def test_reference_page_generator_runs_as_a_module():
    out = subprocess.run([sys.executable, "-m", "medpipe.config.doc"], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    assert out.stdout.startswith("# Pipeline config reference\n") and "| `schema_version` | int |" in out.stdout
    assert "RuntimeWarning" not in out.stderr


def test_transform_table_has_monai_and_own_dictionary_transforms():
    from monai.transforms import ScaleIntensityRanged

    from medpipe.data.custom_transforms import ToGrayscaled

    table = C.transform_table()
    assert table["ScaleIntensityRanged"] is ScaleIntensityRanged and table["ToGrayscaled"] is ToGrayscaled
    assert "ScaleIntensityRange" not in table  # array transforms are not allowed
    assert C.transform_table() is table  # built once
