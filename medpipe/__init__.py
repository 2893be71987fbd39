"""medpipe: declarative, reproducible medical-imaging deep-learning pipelines on MONAI.

Importing the package is cheap: it imports neither torch nor MONAI nor MLflow. The stages live in
submodules (``medpipe.config``, ``medpipe.data``, ``medpipe.nets``, ``medpipe.engine``,
``medpipe.inference``, ``medpipe.tracking``) and are imported where used.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load_config"]


def load_config(path, overrides=None):
    """Load and validate a pipeline YAML; see :func:`medpipe.config.load_config`."""
    from medpipe.config import load_config as _load

    return _load(path, overrides=overrides)
