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


def link_em(root, datasets, n_labelled: int, n_test: int):
    """``root`` with ``image/``, ``label/`` (the first ``n_labelled`` ISBI-2012 EM training pairs) and ``test/``
    (the first ``n_test`` challenge test images), as symlinks to the real files."""
    src = datasets / "isbi2012_em"
    for sub in ("image", "label", "test"):
        (root / sub).mkdir(parents=True)
    for n in range(n_labelled):
        os.symlink(src / "train" / "image" / f"{n}.png", root / "image" / f"{n}.png")
        os.symlink(src / "train" / "label" / f"{n}.png", root / "label" / f"{n}.png")
    for n in range(n_test):
        os.symlink(src / "test" / f"{n}.png", root / "test" / f"{n}.png")
    return root


@pytest.fixture
def small_em(tmp_path, datasets):
    """A data root with 4 labelled ISBI-2012 EM images and 2 test images (symlinks to the real files)."""
    return link_em(tmp_path / "em", datasets, 4, 2)
