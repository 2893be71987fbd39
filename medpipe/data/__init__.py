"""medpipe.data: from files on disk to MONAI batches.

Modules, one job each (import from them; this package imports nothing, so importing
:mod:`medpipe.data.custom_transforms` from the config stays light):

- :mod:`~medpipe.data.cases`: the :class:`~medpipe.data.cases.Case` dict, ``DataError``, ``resolve_root``;
- :mod:`~medpipe.data.discovery`: finding cases (globs, list files, MSD ``dataset.json``), reader checks, image shapes;
- :mod:`~medpipe.data.volumes`: 3D volumes: DICOM series folders (series choice, slice order, gaps), NRRD / MHA,
  header geometry (shape and affine);
- :mod:`~medpipe.data.splits`: train / validation / test splits and cross-validation folds;
- :mod:`~medpipe.data.integrity`: reading every file once before training, the dataset fingerprint;
- :mod:`~medpipe.data.loaders`: MONAI datasets and loaders, class counts and weights;
- :mod:`~medpipe.data.transforms`, :mod:`~medpipe.data.custom_transforms`: transform chains by name;
- :mod:`~medpipe.data.wsi`: windowed whole-slide image reading (a package, one module per backend);
- :mod:`~medpipe.data.patches`: tissue masks and patch extraction from slides (command line:
  ``python -m medpipe.data.patches``).
"""
