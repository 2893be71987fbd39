"""A trained run as a MONAI bundle: the folder layout of MONAI's bundle specification (``mb_specification``) that
``monai.bundle``, MONAI Label and MONAI Deploy open.

:func:`medpipe.export.export_model` with ``fmt="bundle"`` loads the run (tensors only), writes the TorchScript and
state-dict files and calls :func:`write_bundle_files` for the rest::

    <bundle>/configs/metadata.json    versions, task, data, classes, network_data_format (inputs/outputs)
    <bundle>/configs/inference.json   a monai.bundle.ConfigWorkflow: every _target_ a MONAI class
    <bundle>/models/model.pt          the network's state dict (tensors only)
    <bundle>/models/model.ts          TorchScript
    <bundle>/docs/README.md           how to run it, the run's metrics and model card
    <bundle>/docs/metadata_schema.json  the JSON schema metadata.json is checked against (offline)
    <bundle>/LICENSE                  medpipe's licence for the configs, and the data's licence note

Only pipelines made of MONAI classes become bundles: the nets ``basic_unet``, ``densenet121``, ``resnet18`` and
``resnet50`` (medpipe's ``lenet`` is refused) and MONAI transforms (medpipe's ``ToGrayscaled`` has no MONAI class
that computes it, so it is refused too). :func:`check_bundle_support` says why before anything is written.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from medpipe.bundle_docs import METADATA_SCHEMA, SCHEMA_URL, license_text, readme_md, reported_processing
from medpipe.config import PipelineConfig
from medpipe.runs import TrainedRun

logger = logging.getLogger(__name__)

__all__ = ["BundleError", "BUNDLE_NETS", "check_bundle_support", "network_def", "inference_config",
           "bundle_metadata", "write_docs", "write_bundle_files", "verify_bundle", "run_bundle"]

#: medpipe net name -> MONAI class that builds it in ``inference.json``
BUNDLE_NETS = {"basic_unet": "monai.networks.nets.BasicUNet", "densenet121": "monai.networks.nets.DenseNet121",
               "resnet18": "monai.networks.nets.ResNet", "resnet50": "monai.networks.nets.ResNet"}
_RESNET = {"resnet18": ("basic", [2, 2, 2, 2]), "resnet50": ("bottleneck", [3, 4, 6, 3])}
_CONFIG_SIGILS = ("$", "@", "%")  # what monai.bundle.ConfigParser reads as code, references and macros


class BundleError(ValueError):
    """The run cannot be written as a MONAI bundle (a medpipe-only net or transform, a value MONAI's config parser
    would read as code), or the written bundle fails MONAI's checks."""


# ------------------------------------------------------------------------------------------------ support
def _plain(value: Any, where: str) -> None:
    """Refuse values that ``monai.bundle.ConfigParser`` would not take as plain data: strings starting with ``$``
    (Python expression), ``@`` (reference) or ``%`` (macro), and keys with ``#`` or starting with ``_``."""
    if isinstance(value, str) and value.startswith(_CONFIG_SIGILS):
        raise BundleError(f"{where}: the value {value!r} starts with {value[0]!r}, which a MONAI bundle config reads "
                          "as code or a reference; use a value without it")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str) or "#" in k or k.startswith("_"):
                raise BundleError(f"{where}: key {k!r} cannot be written to a MONAI bundle config "
                                  "(keys with '#' or starting with '_' are MONAI's own syntax)")
            _plain(v, f"{where}.{k}")
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _plain(v, f"{where}[{i}]")


def check_bundle_support(cfg: PipelineConfig) -> None:
    """Raise :class:`BundleError` when the pipeline cannot be a MONAI bundle; return ``None`` when it can.

    Raises:
        BundleError: the net is not a MONAI class (``lenet``), an inference transform is medpipe's own
            (``ToGrayscaled``) or not a class of ``monai.transforms``, or an argument would be read as MONAI
            config syntax; the message names the net or ``transforms.<list>[i]`` and what to do instead.
    """
    from medpipe.config import transform_table

    if cfg.net.name not in BUNDLE_NETS:
        raise BundleError(f"net {cfg.net.name!r} is medpipe's own class, not a MONAI network: a MONAI bundle can "
                          f"only build {', '.join(sorted(BUNDLE_NETS))}; export it with --format torchscript or "
                          "onnx instead")
    where = "transforms.infer" if cfg.transforms.infer is not None else "transforms.val"
    table = transform_table()
    for i, spec in enumerate(cfg.infer_transforms()):
        cls = table.get(spec.name)
        if cls is None or not cls.__module__.startswith("monai."):
            raise BundleError(f"{where}[{i}] {spec.name} is medpipe's own transform and MONAI has no class that "
                              "computes the same: a MONAI bundle uses MONAI classes only; export with --format "
                              "torchscript or onnx (pipeline.json lists it), or train without it")
        _plain(spec.kwargs, f"{where}[{i}] {spec.name}")
    _plain(cfg.net.model_dump(), "net")


# ------------------------------------------------------------------------------------------ inference.json
def network_def(net) -> Dict[str, Any]:
    """``network_def`` of ``inference.json``: the MONAI class and arguments that rebuild the run's network.

    Args:
        net: the run's net config (``cfg.net``).

    Returns:
        ``{"_target_": "monai.networks.nets.<Class>", **arguments}`` whose ``state_dict`` keys equal medpipe's.

    Raises:
        BundleError: the net has no MONAI class.
    """
    if net.name == "basic_unet":
        kw = {k: v for k, v in net.model_dump().items() if k not in ("name", "init")}
        return {"_target_": BUNDLE_NETS[net.name], **{k: list(v) if isinstance(v, tuple) else v
                                                       for k, v in kw.items()}}
    if net.name == "densenet121":
        return {"_target_": BUNDLE_NETS[net.name], "spatial_dims": net.spatial_dims, "in_channels": net.in_channels,
                "out_channels": net.num_classes, "init_features": net.init_features,
                "growth_rate": net.growth_rate, "bn_size": net.bn_size, "dropout_prob": net.dropout_prob}
    if net.name in _RESNET:
        block, layers = _RESNET[net.name]
        return {"_target_": BUNDLE_NETS[net.name], "block": block, "layers": layers,
                "block_inplanes": [64, 128, 256, 512], "spatial_dims": net.spatial_dims,
                "n_input_channels": net.in_channels, "num_classes": net.num_classes,
                "conv1_t_size": net.conv1_t_size, "conv1_t_stride": net.conv1_t_stride,
                "no_max_pool": net.no_max_pool, "shortcut_type": net.shortcut_type,
                "widen_factor": net.widen_factor}
    raise BundleError(f"net {net.name!r} has no MONAI class")


def _image_ext(cfg: PipelineConfig) -> str:
    """The file extension of the run's images (``.png``, ``.nii.gz``, ...) from ``data.images``, else ``.png``."""
    pattern = (cfg.data.images or "").lower()
    for ext in (".nii.gz", ".nii", ".png", ".jpeg", ".jpg", ".tif", ".tiff", ".pgm", ".dcm", ".mha", ".nrrd"):
        if pattern.endswith(ext):
            return ext
    return ".png"


def _postprocessing(cfg: PipelineConfig, temperature: Optional[float] = None,
                    postprocess: Optional[Dict[str, Any]] = None) -> List[Dict[str, Any]]:
    """The logits divided by the run's ``temperature`` (``ScaleIntensityd``, factor ``1 / T - 1``: MONAI multiplies
    by ``1 + factor``), softmax, the inverse of the spatial pre-processing, a copy of the probabilities (``prob``),
    argmax, the run's post-processing (:func:`_keep_largest`) and the mask writer (PNG 0/255 for two classes, class
    indices otherwise; NIfTI for 3D or ``output_format: nifti``)."""
    post: List[Dict[str, Any]] = [{"_target_": "monai.transforms.Activationsd", "keys": "pred", "softmax": True}]
    if temperature:
        post.insert(0, {"_target_": "monai.transforms.ScaleIntensityd", "keys": "pred", "minv": None, "maxv": None,
                        "factor": 1.0 / float(temperature) - 1.0})
    if cfg.task == "classification":
        return post
    png = cfg.infer.output_format == "png" and cfg.net.spatial_dims == 2
    two = cfg.net.out_channels == 2
    post += [{"_target_": "monai.transforms.Invertd", "keys": "pred", "transform": "@preprocessing",
              "orig_keys": "image", "nearest_interp": False, "to_tensor": True},
             {"_target_": "monai.transforms.CopyItemsd", "keys": "pred", "names": "prob"},
             {"_target_": "monai.transforms.AsDiscreted", "keys": "pred", "argmax": True},
             *_keep_largest(postprocess),
             {"_target_": "monai.transforms.SaveImaged", "keys": "pred", "output_dir": "@output_dir",
              "output_postfix": "seg", "output_ext": ".png" if png else ".nii.gz", "resample": False,
              "output_dtype": "uint8", "scale": 255 if (png and two) else None,
              "separate_folder": False, "print_log": False}]
    load = cfg.infer_transforms()[0].kwargs if cfg.infer_transforms() else {}
    if png and load.get("reverse_indexing") is False:
        # the image was read as stored, (H, W); PILWriter swaps the two axes when writing, so swap them first
        post.insert(-1, {"_target_": "monai.transforms.Transposed", "keys": "pred", "indices": [0, 2, 1]})
    return post


def _keep_largest(spec: Optional[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """MONAI transforms of a post-processing spec (:func:`medpipe.inference.postprocess.choose_postprocess`) after
    the argmax: one ``KeepLargestConnectedComponentd`` per step, with the same arguments as
    :func:`medpipe.inference.postprocess.keep_largest_component` (``applied_labels`` = the step's classes,
    class-index input, the classes' union as one foreground), so the bundle's masks are the run's."""
    if not spec:
        return []
    return [{"_target_": "monai.transforms.KeepLargestConnectedComponentd", "keys": "pred",
             "applied_labels": [int(v) for v in step], "is_onehot": False, "independent": False}
            for step in spec.get("steps") or []]


def _handlers(cfg: PipelineConfig) -> List[Dict[str, Any]]:
    """Checkpoint loading (``torch.load(weights_only=True)`` in MONAI's ``CheckpointLoader``), and for classifiers
    the CSV of class probabilities."""
    handlers: List[Dict[str, Any]] = [
        {"_target_": "monai.handlers.CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
         "load_dict": {"model": "@network"}, "map_location": "@device"}]
    if cfg.task == "classification":
        handlers.append({"_target_": "monai.handlers.ClassificationSaver", "output_dir": "@output_dir",
                         "filename": "predictions.csv",
                         "batch_transform": "$lambda batch: [item['image'].meta for item in batch]",
                         "output_transform": "$monai.handlers.from_engine(['pred'])"})
    return handlers


def inference_config(cfg: PipelineConfig, temperature: Optional[float] = None,
                     postprocess: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The content of ``configs/inference.json``: a ``monai.bundle.ConfigWorkflow`` (``workflow_type="infer"``).

    The images are ``dataset_dir/*<ext>`` (override ``--dataset_dir DIR`` or ``--datalist "[...]"``); they go
    through the run's inference transforms, the network (sliding window of ``infer.roi_size`` for segmenters), a
    softmax, ``Invertd``, argmax, and ``SaveImaged`` into ``output_dir`` (``<bundle>/eval``), or for classifiers a
    ``predictions.csv`` of class probabilities. Every ``_target_`` is a MONAI class. A classifier's ``temperature``
    divides the logits before the softmax; a segmenter's ``postprocess`` spec (``metrics.json`` ``postprocessing``)
    becomes ``KeepLargestConnectedComponentd`` after the argmax.

    Raises:
        BundleError: from :func:`check_bundle_support`.
    """
    check_bundle_support(cfg)
    pre = [{"_target_": f"monai.transforms.{t.name}", **t.kwargs} for t in cfg.infer_transforms()]
    if cfg.task == "segmentation":
        inf = cfg.infer
        inferer = {"_target_": "monai.inferers.SlidingWindowInferer", "roi_size": list(inf.roi_size),
                   "sw_batch_size": inf.sw_batch_size, "overlap": inf.overlap, "mode": inf.mode,
                   "sigma_scale": inf.sigma_scale, "padding_mode": inf.padding_mode}
    else:
        inferer = {"_target_": "monai.inferers.SimpleInferer"}
    return {
        "imports": ["$import glob"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "/workspace/data",
        "datalist": f"$list(sorted(glob.glob(@dataset_dir + '/*{_image_ext(cfg)}')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": network_def(cfg.net),
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "monai.transforms.Compose", "transforms": pre},
        "dataset": {"_target_": "monai.data.Dataset", "data": "$[{'image': i} for i in @datalist]",
                    "transform": "@preprocessing"},
        "dataloader": {"_target_": "monai.data.DataLoader", "dataset": "@dataset", "batch_size": 1,
                       "shuffle": False, "num_workers": 0},
        "inferer": inferer,
        "postprocessing": {"_target_": "monai.transforms.Compose",
                           "transforms": _postprocessing(cfg, temperature, postprocess)},
        "handlers": _handlers(cfg),
        "evaluator": {"_target_": "monai.engines.SupervisedEvaluator", "device": "@device",
                      "val_data_loader": "@dataloader", "network": "@network", "inferer": "@inferer",
                      "postprocessing": "@postprocessing", "val_handlers": "@handlers", "amp": False},
        "initialize": [],
        "run": ["$@evaluator.run()"],
    }


# ------------------------------------------------------------------------------------------ metadata.json
_REFERENCES = {
    "basic_unet": ["Falk T. et al. U-Net: deep learning for cell counting, detection, and morphometry. Nature "
                   "Methods 16, 67-70 (2019). https://doi.org/10.1038/s41592-018-0261-2"],
    "densenet121": ["Huang G. et al. Densely connected convolutional networks. CVPR 2017. "
                    "https://arxiv.org/abs/1608.06993"],
    "resnet18": ["He K. et al. Deep residual learning for image recognition. CVPR 2016. "
                 "https://arxiv.org/abs/1512.03385"],
}
_REFERENCES["resnet50"] = _REFERENCES["resnet18"]
_MONAI_REF = "MONAI Consortium. MONAI: Medical Open Network for AI. https://doi.org/10.5281/zenodo.4323058"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _spec_of(cfg: PipelineConfig, name: str) -> Optional[Dict[str, Any]]:
    """Arguments of the first inference transform called ``name``, or ``None``."""
    return next((t.kwargs for t in cfg.infer_transforms() if t.name == name), None)


def _value_range(cfg: PipelineConfig) -> List[float]:
    """``[min, max]`` of the network input when the last intensity transform clips to a range, else ``[]``."""
    scale = _spec_of(cfg, "ScaleIntensityRanged") or {}
    if scale.get("clip") and scale.get("b_min") is not None and scale.get("b_max") is not None:
        return [float(scale["b_min"]), float(scale["b_max"])]
    return []


def _input_shape(cfg: PipelineConfig) -> Tuple[List[Any], bool]:
    """``(spatial_shape, is_patch_data)`` of the network input: the sliding window of segmenters, the resize target
    of classifiers, else sizes a multiple of 32 (the classifiers' five 2x reductions)."""
    if cfg.task == "segmentation":
        return list(cfg.infer.roi_size), True
    for name in ("Resized", "ResizeWithPadOrCropd", "CenterSpatialCropd"):
        size = (_spec_of(cfg, name) or {}).get("spatial_size" if name != "CenterSpatialCropd" else "roi_size")
        if isinstance(size, (list, tuple)) and all(isinstance(s, int) and s > 0 for s in size):
            return list(size), False
    return ["32*n"] * cfg.net.spatial_dims, False


def _class_names(trained: TrainedRun) -> List[str]:
    """Output channel names: the classifier's classes, or for segmenters the label values each channel stands for
    (from ``MapLabelValued`` of the validation transforms when present)."""
    cfg = trained.cfg
    if cfg.task == "classification":
        return list(trained.classes or [f"class {i}" for i in range(cfg.net.num_classes)])
    k = cfg.net.out_channels
    mapping = next((t.kwargs for t in cfg.transforms.val if t.name == "MapLabelValued"), None)
    if mapping and len(mapping.get("target_labels", [])) == len(mapping.get("orig_labels", [])):
        orig = dict(zip(mapping["target_labels"], mapping["orig_labels"]))
        return [f"class {i} (label value {orig[i]} in the training masks)" if i in orig else f"class {i}"
                for i in range(k)]
    return ["background"] + [f"class {i}" for i in range(1, k)] if k == 2 else [f"class {i}" for i in range(k)]


def _data_lines(cfg: PipelineConfig, manifest: Optional[Dict[str, Any]]) -> List[str]:
    """Source and licence lines of the training data (:func:`medpipe.model_card.data_card`), looking also beside
    the real files of the manifest's first image when ``data.root`` has no ``PROVENANCE.md`` (a root of links)."""
    from medpipe.model_card import data_card

    lines = data_card(cfg)
    if not lines[0].startswith("- Source and licence: not recorded"):
        return lines
    first = next((c.get("image") for split in ("train", "val", "test") for c in (manifest or {}).get(split) or []
                  if isinstance(c, dict) and isinstance(c.get("image"), str)), None)
    if first and Path(first).exists():
        for parent in list(Path(first).resolve().parents)[:4]:
            if (parent / "PROVENANCE.md").is_file():
                return data_card(cfg.model_copy(update={"data": cfg.data.model_copy(update={"root": str(parent)})}))
    return lines


def bundle_metadata(trained: TrainedRun, verification: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The content of ``configs/metadata.json`` (MONAI's bundle metadata, checked by ``verify_metadata``).

    Args:
        trained: the loaded run.
        verification: what the export measured, kept under ``medpipe.verification``.

    Returns:
        The metadata: versions, task, data, classes, ``eval_metrics`` (the run's final metrics) and
        ``network_data_format`` (input ``image``: channels, spatial shape, float32, value range; output ``pred``:
        logits of each class, channel names).

    Raises:
        BundleError: a class name or data line would be read as MONAI config syntax.
    """
    cfg, net = trained.cfg, trained.cfg.net
    k = net.out_channels if cfg.task == "segmentation" else net.num_classes
    names = _class_names(trained)
    shape, patch = _input_shape(cfg)
    data = _data_lines(cfg, trained.manifest)
    source = next((x[2:] for x in data if x.lower().startswith("- source")), data[0][2:])
    source = source.split(":", 1)[1].strip() if source.lower().startswith("source:") else source
    vr = _value_range(cfg)
    seg = cfg.task == "segmentation"
    decision = ("argmax over the channels" if seg or trained.threshold is None else
                f"class 1 ({names[1]}) when its probability >= {trained.threshold:.4f}, else class 0")
    if trained.temperature:
        decision = f"probabilities softmax(logits / {trained.temperature:.6g}); " + decision
    meta = {
        "schema": SCHEMA_URL, "version": "0.1.0",
        "changelog": {"0.1.0": f"exported by medpipe {_version('medpipe')} from run {trained.source}"},
        "monai_version": _version("monai"), "pytorch_version": _version("torch").split("+")[0],
        "numpy_version": _version("numpy"),
        "required_packages_version": {"pytorch-ignite": _version("pytorch-ignite"),
                                      **({"nibabel": _version("nibabel")} if _image_ext(cfg).startswith(".nii")
                                         else {"pillow": _version("pillow")})},
        "name": cfg.name,
        "task": f"{net.spatial_dims}D {'segmentation' if seg else 'classification'} into {k} classes",
        "description": f"medpipe pipeline {cfg.name}: {net.name} trained by medpipe; inference.json reproduces "
                       "medpipe's inference (its transforms, " + ("sliding window, " if seg else "")
                       + "softmax" + (", Invertd" if seg else "") + ").",
        "authors": "not recorded by medpipe (the people who trained run " + Path(str(trained.source)).name + ")",
        "copyright": "the authors of the run; configs under Apache-2.0, weights under the data licence (LICENSE)",
        "data_source": source, "data_type": _image_ext(cfg).lstrip("."),
        "image_classes": f"{net.in_channels} channel(s), float32" + (f", intensity scaled to {vr}" if vr else ""),
        "label_classes": ("one channel of class indices: " if seg else "one class index per image: ")
                         + "; ".join(f"{i} = {n}" for i, n in enumerate(names)),
        "pred_classes": f"{k} channels of logits (softmax in postprocessing), channel i = class i; decision: "
                        + decision,
        "eval_metrics": {m: v for m, v in ((trained.metrics or {}).get("final") or {}).items()
                         if isinstance(v, (int, float)) and not m.endswith(("seconds", "epoch", "epochs"))},
        "intended_use": "Research only: not a medical device, not for diagnosis or any clinical decision.",
        "references": _REFERENCES.get(net.name, []) + [_MONAI_REF],
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "n/a",
                                 "num_channels": net.in_channels, "spatial_shape": shape, "dtype": "float32",
                                 "value_range": vr, "is_patch_data": patch, "channel_def": {"0": "image"}}},
            "outputs": {"pred": {"type": "image" if seg else "probabilities", "format": "labels" if seg else "classes",
                                 "num_channels": k, "spatial_shape": shape if seg else [1, k], "dtype": "float32",
                                 "value_range": [], "is_patch_data": patch,
                                 "channel_def": {str(i): n for i, n in enumerate(names)}}}},
        "medpipe": {"pipeline": cfg.name, "task": cfg.task, "net": net.name, "source": str(trained.source),
                    "run_id": trained.run_id, "classes": trained.classes, "threshold": trained.threshold,
                    "reported": reported_processing(trained), "data": data, "verification": verification or {}},
    }
    _plain({k_: v for k_, v in meta.items() if k_ != "schema"}, "metadata")
    return meta


def write_docs(trained: TrainedRun, out_dir: Path, verification: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Write ``configs/metadata.json`` (with ``verification``), ``docs/README.md``, ``docs/metadata_schema.json``
    and ``LICENSE`` into the bundle folder ``out_dir``; returns the metadata.

    Raises:
        BundleError: from :func:`bundle_metadata`.
    """
    out_dir = Path(out_dir)
    meta = bundle_metadata(trained, verification)
    for sub in ("configs", "docs"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    (out_dir / "configs" / "metadata.json").write_text(json.dumps(meta, indent=2))
    (out_dir / "docs" / "metadata_schema.json").write_text(json.dumps(METADATA_SCHEMA, indent=2))
    (out_dir / "docs" / "README.md").write_text(readme_md(trained, meta))
    (out_dir / "LICENSE").write_text(license_text(meta))
    return meta


def write_bundle_files(trained: TrainedRun, out_dir: Path, verification: Optional[Dict[str, Any]] = None
                       ) -> Dict[str, Any]:
    """Write ``configs/inference.json``, ``models/model.pt`` (the state dict, tensors only) and :func:`write_docs`
    into ``out_dir`` (``models/model.ts`` is written by :mod:`medpipe.export`).

    Returns:
        The metadata written.

    Raises:
        BundleError: from :func:`check_bundle_support` or :func:`bundle_metadata`.
        OSError: a file cannot be written.
    """
    import torch

    out_dir = Path(out_dir)
    infer = inference_config(trained.cfg, trained.temperature, trained.postprocess)
    meta = write_docs(trained, out_dir, verification)
    (out_dir / "models").mkdir(parents=True, exist_ok=True)
    (out_dir / "configs" / "inference.json").write_text(json.dumps(infer, indent=2))
    torch.save({k: v.detach().cpu() for k, v in trained.net.state_dict().items()}, out_dir / "models" / "model.pt")
    return meta


# ------------------------------------------------------------------------------------------ MONAI's checks
def verify_bundle(out_dir: Path) -> None:
    """``monai.bundle.verify_metadata`` (against ``docs/metadata_schema.json``: nothing is downloaded) and
    ``monai.bundle.verify_net_in_out`` (``network_def`` on a random input of the metadata's shape, on the CPU).

    Raises:
        BundleError: either check failed (MONAI's message), or ``jsonschema`` is missing (with the install command).
    """
    from monai.bundle import verify_metadata, verify_net_in_out

    try:
        import jsonschema  # noqa: F401
    except ImportError:
        raise BundleError("checking a bundle's metadata needs jsonschema: pip install 'medpipe[export]'") from None
    out_dir = Path(out_dir)
    meta, schema = out_dir / "configs" / "metadata.json", out_dir / "docs" / "metadata_schema.json"
    try:
        verify_metadata(meta_file=str(meta), filepath=str(schema))
        verify_net_in_out(net_id="network_def", meta_file=str(meta),
                          config_file=str(out_dir / "configs" / "inference.json"), device="cpu", n=1, any=32)
    except Exception as exc:  # MONAI raises ValueError / KeyError / RuntimeError with its own text
        raise BundleError(f"{out_dir}: MONAI's bundle check failed: {type(exc).__name__}: {exc}") from exc


def run_bundle(out_dir: Path, images: List[str], output_dir: Path, device: str = "cpu") -> List[Dict[str, Any]]:
    """Run the bundle's ``configs/inference.json`` with ``monai.bundle.ConfigWorkflow`` on ``images``.

    Args:
        out_dir: the bundle folder.
        images: image files (the ``datalist``).
        output_dir: where the bundle writes its masks / ``predictions.csv``.
        device: ``cpu`` or ``cuda[:N]``.

    Returns:
        The post-processed outputs of the last batch (one dict per image: ``pred`` (the mask for segmenters, the
        class probabilities for classifiers) and, for segmenters, ``prob`` (``(K, *spatial)`` probabilities on the
        image's grid)).
    """
    import re

    from monai.bundle import ConfigWorkflow

    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ValueError(f"device {device!r}: expected cpu, cuda or cuda:N")
    out_dir = Path(out_dir)
    wf = ConfigWorkflow(config_file=str(out_dir / "configs" / "inference.json"),
                        meta_file=str(out_dir / "configs" / "metadata.json"), logging_file=False,
                        workflow_type="infer", bundle_root=str(out_dir), datalist=[str(i) for i in images],
                        output_dir=str(output_dir), device=f"$torch.device('{device}')")
    wf.initialize()
    wf.run()
    output = wf.evaluator.state.output
    wf.finalize()
    return list(output)
