"""Where medpipe finds the bundled real datasets.

The data root is ``$MEDPIPE_DATA`` when set, else ``../shared/datasets`` beside the project root (the layout
of this repository's checkout). A relative ``data.root`` in a pipeline YAML is resolved against it, so pipeline
files hold no machine-specific paths and no expressions.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def data_root() -> Path:
    """Return the dataset root directory.

    Returns:
        ``Path(os.environ["MEDPIPE_DATA"])`` if the variable is set, else ``<project>/../shared/datasets``.
        The directory is not required to exist; callers that read from it raise ``FileNotFoundError`` naming it.
    """
    env = os.environ.get("MEDPIPE_DATA")
    if env:
        return Path(env).expanduser().resolve()
    return (PROJECT_ROOT.parent / "shared" / "datasets").resolve()
