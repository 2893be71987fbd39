"""The ``data`` section: where the images are, how they are split and cached (:class:`DataConfig`,
:class:`SplitConfig`)."""

from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional

from pydantic import Field, field_validator, model_validator

from medpipe.config.base import StrictModel

__all__ = ["SplitConfig", "DataConfig"]


class SplitConfig(StrictModel):
    """How the labelled cases are split into training and validation.

    Exactly one method is used: an explicit ``val`` list of image file names (or paths relative to
    ``data.root``), a random ``val_fraction``, or ``kfold`` folds. Random methods are deterministic given
    ``seed`` (cases are sorted by path before shuffling with ``numpy.random.default_rng``).

    Cross-validation: with ``kfold: K`` and no ``fold``, a run trains all K folds (each case is in exactly one
    validation fold), tracked as one MLflow parent run with a child run per fold, and reports the mean and
    standard deviation over folds of every final metric (:mod:`medpipe.workflow.cv`). ``fold: k`` trains fold k only.

    Predefined splits (both tasks): a list file's ``data.split_column`` names each row's split, mapped by
    ``column_values`` (``drop`` leaves the rows out; an unmapped value is an error naming file, line and value); a
    predefined val split replaces ``val``/``val_fraction``/``kfold`` (a warning says so) and cannot be
    cross-validated. Segmentation rows of a predefined test split are never trained or validated on.

    Classification adds: an optional ``test_fraction`` held out first when
    there is no predefined test split, stratification by class (``stratify``) and grouping by
    ``data.group_column`` (no patient in two splits), with scikit-learn's ``StratifiedShuffleSplit``,
    ``StratifiedKFold`` and ``StratifiedGroupKFold`` seeded by ``seed``. A grouped ``val_fraction`` f is
    approximated by one fold of ``round(1 / f)`` group folds. ``test_groups`` names the patients of the test
    split instead (all their rows). The test split is never used for model selection.
    """

    val: Optional[List[str]] = Field(None, description="explicit validation images (file names or relative paths)")
    val_fraction: Optional[float] = Field(None, gt=0, lt=1, description="fraction of cases held out for validation")
    kfold: Optional[int] = Field(None, ge=2, description="number of folds for k-fold cross-validation")
    fold: Optional[int] = Field(None, ge=0, description="with kfold: train only this fold (0-based; its "
                                "cases are the validation split); unset: cross-validate, i.e. train all folds")
    seed: int = Field(0, description="seed of the split's shuffle")
    test_fraction: Optional[float] = Field(None, gt=0, lt=1, description="classification: fraction held out as a "
                                           "test split when the data has no predefined test split")
    stratify: bool = Field(True, description="classification: keep the class ratios in every split")
    column_values: Dict[str, Literal["train", "val", "test", "drop"]] = Field(
        {"train": "train", "val": "val", "test": "test"},
        description="data.split_column value -> split (drop: leave the rows out)")
    test_groups: Optional[List[str]] = Field(
        None, min_length=1, description="classification with data.group_column: these groups (patient ids) "
        "make the test split, all their rows whatever their split_column value (e.g. the patient of a "
        "slide that is scored after training); instead of test_fraction")

    @field_validator("test_groups", mode="before")
    @classmethod
    def _groups_as_str(cls, v: Any) -> Any:
        # patient ids such as 8863 are read from YAML as ints; the CSV column holds them as text
        return [str(g) if isinstance(g, int) and not isinstance(g, bool) else g for g in v] \
            if isinstance(v, list) else v

    @model_validator(mode="after")
    def _one_method(self) -> "SplitConfig":
        chosen = [k for k in ("val", "val_fraction", "kfold") if getattr(self, k) is not None]
        if len(chosen) > 1:
            raise ValueError(f"give only one of val, val_fraction, kfold; found {', '.join(chosen)}")
        if not chosen:
            self.val_fraction = 0.2
            self.__pydantic_fields_set__.discard("val_fraction")  # a default, not the user's choice
        if self.test_fraction is not None and (self.val_fraction or 0) + self.test_fraction >= 1:
            raise ValueError(f"val_fraction + test_fraction must be < 1, found {self.val_fraction} + "
                             f"{self.test_fraction}")
        if self.test_groups is not None and self.test_fraction is not None:
            raise ValueError("give only one of test_groups (named patients) and test_fraction (random patients)")
        if self.fold is not None and self.kfold is None:
            raise ValueError(f"fold={self.fold} needs kfold (the number of folds), e.g. kfold: 5")
        if self.kfold is not None and self.fold is not None and self.fold >= self.kfold:
            raise ValueError(f"fold must be < kfold={self.kfold}, found fold={self.fold}")
        return self


class DataConfig(StrictModel):
    """Where the images are and how they are cached.

    Paths: ``root`` is absolute or relative to the dataset root (``$MEDPIPE_DATA``, default
    ``../shared/datasets``); ``images``, ``labels`` and ``test_images`` are glob patterns relative to
    ``root`` (``**`` allowed). Labels are paired to images by their path relative to the glob's fixed prefix
    with the extension removed (``train/image/3.png`` <-> ``train/label/3.png``). Alternatively ``list_file``
    names a CSV (columns ``image``, ``label``) or JSON (a list of ``{"image": ..., "label": ...}``) with paths
    relative to ``root``, or is a Medical Segmentation Decathlon ``dataset.json`` (its ``training`` list; paths
    relative to the file's folder). An image may be a DICOM series folder (a glob matching folders, or a list-file
    row naming one); ``series_uid`` picks the series of a folder holding several.

    Classification: the class of each image comes from the list file's ``label_column`` (class names, e.g.
    ``PNEUMONIA``), or with ``images`` and ``class_from: folder`` from each image's parent folder name (then
    ``test_images`` is a labelled test split). ``split_column`` names predefined splits, ``group_column`` patient
    ids (see :class:`SplitConfig`). An image whose class is not in ``classes`` is an error naming file and value.
    """

    root: str = Field(..., description="dataset folder, absolute or relative to the data root")
    images: Optional[str] = Field(None, description="glob of training/validation images, relative to root")
    labels: Optional[str] = Field(None, description="glob of label images paired to `images` by file stem")
    list_file: Optional[str] = Field(None, description="CSV/JSON list of image/label pairs instead of globs")
    test_images: Optional[str] = Field(None, description="glob of unlabelled images to predict after training")
    split: SplitConfig = Field(default_factory=SplitConfig)
    cache: Literal["none", "memory", "disk"] = Field(
        "memory", description="none: load every epoch; memory: monai CacheDataset; disk: monai PersistentDataset"
    )
    cache_rate: float = Field(1.0, ge=0, le=1, description="fraction of cases cached in memory (cache: memory)")
    cache_dir: Optional[str] = Field(None, description="folder for cache: disk (default <output_dir>/cache)")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes (0: load in the main process); "
                             "re-created every epoch so that their random transforms are re-seeded (exact resume)")
    loader: Literal["dataloader", "thread"] = Field(
        "dataloader", description="monai.data.DataLoader, or ThreadDataLoader (batches prepared in a background "
        "thread while the network computes; see docs/performance.md)")
    cache_on_device: bool = Field(
        False, description="cache: memory: keep the cached tensors on the training device (ToDeviced before the "
        "first random transform), so random transforms run on the GPU; needs num_workers: 0 (use loader: thread); "
        "a no-op on CPU")
    on_bad_image: Literal["error", "skip"] = Field(
        "error", description="a file the integrity check refuses (unreadable or truncated, image/label size "
        "mismatch, NaN or infinite values, channels or bit depth / value range the transforms do not expect, label "
        "values the label transforms do not map): stop naming every bad file, or report it in data_problems.csv and "
        "skip it"
    )
    verify: bool = Field(True, description="read every training, validation and test file once before training and "
                         "check it against what the transform chains expect (see on_bad_image)")
    # classification
    image_column: str = Field("image", description="list_file column (JSON key) holding the image path")
    label_column: str = Field("label", description="list_file column holding the label (a mask path for "
                              "segmentation, a class name for classification)")
    split_column: Optional[str] = Field(None, description="list_file column naming each row's predefined split "
                                        "(train / val / test; see split.column_values); both tasks")
    group_column: Optional[str] = Field(None, description="classification: list_file column with a patient / "
                                        "group id; no group is ever in two splits")
    class_from: Optional[Literal["folder"]] = Field(None, description="classification with `images`: the class "
                                                    "is the name of each image's parent folder")
    classes: Optional[List[str]] = Field(None, min_length=2, description="classification: ordered class names "
                                         "(index = position); default: the sorted names found in the data")
    modality: Optional[List[str]] = Field(None, description="DICOM Modality codes (0008,0060) of the data the "
                                          "model is trained for, e.g. [CR, DX]; a served DICOM of another modality "
                                          "is refused (or flagged, see serve --allow-mismatch)")
    body_part: Optional[List[str]] = Field(None, description="DICOM Body Part Examined values (0018,0015) the model "
                                           "is trained for, e.g. [CHEST]; checked like modality")
    series_uid: Optional[List[str]] = Field(
        None, description="DICOM series folders holding several series: the SeriesInstanceUID(s) to read (one per "
        "folder; a single UID may be given as a string); unset, such a folder is an error listing its series with "
        "their descriptions and slice counts")
    sampler: Literal["none", "weighted"] = Field("none", description="classification: weighted = "
                                                 "torch WeightedRandomSampler by inverse class frequency")

    @field_validator("series_uid", mode="before")
    @classmethod
    def _uid_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, v: Optional[List[str]]) -> Optional[List[str]]:
        if v is not None and len(set(v)) != len(v):
            dup = sorted({c for c in v if v.count(c) > 1})
            raise ValueError(f"class names must be unique, found duplicates {dup}")
        return v

    @model_validator(mode="after")
    def _source(self) -> "DataConfig":
        if self.list_file is None and self.images is None:
            raise ValueError("give `images` (a glob) or `list_file` (CSV/JSON)")
        if self.list_file is not None and (self.images is not None or self.labels is not None):
            raise ValueError("give either `list_file` or `images`/`labels` globs, not both")
        if self.cache_on_device and (self.cache != "memory" or self.num_workers):
            raise ValueError("cache_on_device needs cache: memory and num_workers: 0 (tensors on a GPU cannot be "
                             f"shared with worker processes); found cache: {self.cache}, num_workers: "
                             f"{self.num_workers}")
        return self
