import os

import pytest

from medpipe.paths import data_root

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def datasets():
    """Root of the real sample datasets (``$MEDPIPE_DATA`` or ``../shared/datasets``)."""
    root = data_root()
    if not root.is_dir():
        pytest.fail(f"dataset root {root} not found: set MEDPIPE_DATA to the shared/datasets folder")
    return root
