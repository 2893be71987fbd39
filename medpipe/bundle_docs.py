"""The documents of a MONAI bundle written by :mod:`medpipe.bundle`: ``docs/README.md``, ``LICENSE`` and the JSON
schema of ``configs/metadata.json`` (``docs/metadata_schema.json``).

The schema is kept here so that the check runs offline.
``monai.bundle.verify_metadata`` downloads the schema named by the metadata's ``schema`` field (a release file of
MONAI-extra-test-data) unless the file it is told to save it to already exists; medpipe writes this schema into the
bundle (``docs/metadata_schema.json``) and passes that file, so nothing is downloaded. The schema is MONAI's bundle
metadata schema as committed to Project-MONAI/MONAI-extra-test-data (``bundle/schema.json``, Apache-2.0, March
2022), with the two changes MONAI's published bundle specification (``docs/source/mb_specification.rst``) made to
it (``authors``, not ``authorship``; no ``dataset_dir`` among the required keys) and the one MONAI's code made since:
``required_packages_version`` replaces ``optional_packages_version`` (``monai.bundle.utils.DEPRECATED_ID_MAPPING``;
MONAI 1.6 renames the old key when it reads a metadata file, overwriting a ``required_packages_version`` given with
it). It is a reconstruction, not a byte copy of the published file, which cannot be fetched offline.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any, Dict, Optional

from medpipe.model_card import run_model_card
from medpipe.runs import TrainedRun

__all__ = ["SCHEMA_URL", "METADATA_SCHEMA", "reported_processing", "readme_md", "license_text"]

#: the ``schema`` a bundle's metadata names: MONAI's published metadata schema (what ``verify_metadata`` downloads
#: when not given a local file)
SCHEMA_URL = ("https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
              "meta_schema_20240725.json")

_TENSOR_REQUIRED = ["type", "format", "num_channels", "spatial_shape", "dtype", "value_range"]


def _tensor() -> Dict[str, Any]:
    """Schema of one tensor format specifier (an input or output of ``network_data_format``)."""
    return {"type": "object",
            "properties": {"type": {"type": "string"}, "format": {"type": "string"},
                           "num_channels": {"type": "integer"}, "spatial_shape": {"type": "array"},
                           "dtype": {"type": "string"},
                           "value_range": {"type": "array", "items": {"type": "number"}},
                           "is_patch_data": {"type": "boolean"}, "channel_def": {"type": "object"}},
            "required": list(_TENSOR_REQUIRED)}


def _described(kind: str, text: str) -> Dict[str, str]:
    return {"description": text, "type": kind}


METADATA_SCHEMA: Dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-04/schema#",
    "type": "object",
    "properties": {
        "schema": _described("string", "URL of the schema file."),
        "version": _described("string", "version number of the model package."),
        "changelog": _described("object", "dictionary relating previous version names to strings describing the "
                                          "version."),
        "monai_version": _described("string", "version of MONAI the model package was generated on."),
        "pytorch_version": _described("string", "version of PyTorch the model package was generated on."),
        "numpy_version": _described("string", "version of NumPy the model package was generated on."),
        "required_packages_version": _described("object", "dictionary relating required package names to their "
                                                          "versions."),
        "task": _described("string", "plain-language description of what the model is meant to do."),
        "description": _described("string", "longer form plain-language description of what the model is, what it "
                                            "does, etc."),
        "authors": _described("string", "state author(s) of the model package."),
        "copyright": _described("string", "state copyright of the model package."),
        "data_source": _described("string", "where to download or prepare the data used in this model package."),
        "data_type": _described("string", "type of the data, like: `dicom`, `nibabel`, etc."),
        "image_classes": _described("string", "description for every class of the input image."),
        "label_classes": _described("string", "description for every class of the input label."),
        "pred_classes": _described("string", "description for every class of the output prediction."),
        "eval_metrics": _described("object", "dictionary relating evaluation metrics to the achieved scores."),
        "intended_use": _described("string", "what the model package is to be used for, ie. what task it "
                                             "accomplishes."),
        "references": _described("array", "list of published referenced relating to the model package."),
        "network_data_format": {
            "description": "defines the format, shape, and meaning of inputs and outputs to the model.",
            "type": "object",
            "properties": {
                "inputs": {"type": "object", "properties": {"image": _tensor(), "label": _tensor()},
                           "required": ["image"]},
                "outputs": {"type": "object", "properties": {"pred": _tensor()}, "required": ["pred"]},
            },
            "required": ["inputs", "outputs"],
        },
    },
    "required": ["schema", "version", "monai_version", "pytorch_version", "numpy_version",
                 "required_packages_version", "task", "description", "authors", "copyright", "image_classes",
                 "label_classes", "pred_classes", "eval_metrics", "network_data_format"],
}


def reported_processing(trained: TrainedRun) -> Dict[str, Any]:
    """What the run reported and the server applies after the network, for an export's user to apply the same:
    test-time augmentation (``infer.tta``), and the temperature and OOD threshold of a classifier (``metrics.json``
    ``calibration`` / ``ood``) or the post-processing spec of a segmenter (``metrics.json`` ``postprocessing``).

    Returns:
        JSON-serialisable ``{"tta": {...}, "temperature": T or None, "ood": {...} or None}`` (classifiers) or
        ``{"tta": {...}, "postprocess": spec or None}`` (segmenters), each with how to apply it.
    """
    cfg = trained.cfg
    seg = cfg.task == "segmentation"
    out: Dict[str, Any] = {"tta": {
        "enabled": trained.tta, "spatial_axes": cfg.infer.tta_axes if cfg.infer is not None else None,
        "how": "mean of the softmax over the 2^n copies of the input mirrored along every combination of "
               "spatial_axes (0 = first spatial axis; null = all)" + (", each output mirrored back before the mean"
                                                                      if seg else "")
               + " (medpipe.inference.tta.tta_softmax)"}}
    if seg:
        out["postprocess"] = trained.postprocess
        out["postprocess_how"] = ("medpipe.inference.postprocess.apply_postprocess(mask, postprocess) on the argmax "
                                  "mask (chosen on validation as nnU-Net does)" if trained.postprocess else "none")
        return out
    out["temperature"] = trained.temperature
    out["temperature_how"] = ("probabilities = softmax(logits / temperature) (Guo et al. 2017; fitted on "
                              "validation)" if trained.temperature else "none: probabilities = softmax(logits)")
    out["ood"] = ({**trained.ood, "how": ("score of the raw logits (no temperature): energy = -logsumexp(logits), "
                                          "max_softmax = 1 - max softmax(logits); out of distribution when score > "
                                          "threshold")} if trained.ood else None)
    return out


def readme_md(trained: TrainedRun, meta: Dict[str, Any]) -> str:
    """``docs/README.md``: what the bundle is, how to run and check it, the verification, metrics and model card."""
    cfg = trained.cfg
    v = meta["medpipe"]["verification"]
    lines = [f"# {cfg.name}: a MONAI bundle exported by medpipe", "",
             "**Research software, not a medical device.** " + meta["task"] + f" with `{cfg.net.name}`; "
             + meta["pred_classes"] + ".", "",
             "## Run", "", "```bash", "cd <this folder>",
             "python -m monai.bundle run --config_file configs/inference.json --dataset_dir /path/to/images",
             "```", "",
             f"Reads `dataset_dir/*.{meta['data_type']}`, writes "
             + ("`eval/<image>_seg.*` masks" if cfg.task == "segmentation" else "`eval/predictions.csv` (class "
                "probabilities)") + ". `--datalist \"['a.png', 'b.png']\"` names files instead; "
             "`--device \"\\$torch.device('cpu')\"` forces the CPU.", "",
             "## Checks", "", "```bash",
             "python -m monai.bundle verify_metadata --meta_file configs/metadata.json "
             "--filepath docs/metadata_schema.json",
             "python -m monai.bundle verify_net_in_out network_def --meta_file configs/metadata.json "
             "--config_file configs/inference.json", "```", "",
             "`docs/metadata_schema.json` is the schema the export checked `metadata.json` against, offline (MONAI's "
             "bundle metadata schema); without `--filepath` MONAI downloads the one named by `schema`.", ""]
    if v:
        lines += ["At export, on the real image `" + str(v.get("image")) + "`: TorchScript vs original max |logit "
                  f"difference| {v.get('max_abs_logit_diff')}; this bundle run through `monai.bundle` vs medpipe's "
                  f"own inference: max |probability difference| {v.get('bundle_max_abs_prob_diff')}, same decision: "
                  f"{v.get('bundle_same_decision')}.", ""]
    lines += ["## What the server applies after the network", "", "```json",
              json.dumps(meta["medpipe"].get("reported", {}), indent=1), "```", "",
              "`configs/inference.json` applies the temperature (`ScaleIntensityd` by 1 / temperature before the "
              "softmax); test-time augmentation and a segmenter's post-processing are not in it: apply them as "
              "described above to reproduce the served answer.", ""]
    lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| `{m}` | {x:.4f} |" for m, x in meta["eval_metrics"].items()] + [""]
    text = run_model_card(trained.folder.path if trained.folder is not None else None, cfg, trained.metrics or {},
                          trained.manifest, trained.run_id)
    return "\n".join(lines) + "\n" + text.replace("\n# ", "\n## ").replace("# Model card", "## Model card", 1)


def _apache_text() -> Optional[str]:
    """The Apache License 2.0 text, from an installed package that ships it (MONAI), or ``None``."""
    try:
        dist = importlib.metadata.distribution("monai")
        for f in dist.files or []:
            if Path(str(f)).name.upper().startswith("LICENSE"):
                text = f.read_text()
                if "Apache License" in text and "Version 2.0" in text:
                    return text
    except (importlib.metadata.PackageNotFoundError, OSError):
        pass
    return None


def license_text(meta: Dict[str, Any]) -> str:
    """``LICENSE``: what each part is under (configs and docs: medpipe's Apache-2.0; weights: bound by the data's
    licence, quoted from its PROVENANCE.md), then the Apache-2.0 text when available."""
    head = ["This bundle was written by medpipe (Apache License 2.0).", "",
            "- configs/ and docs/: Apache License 2.0 (below; https://www.apache.org/licenses/LICENSE-2.0).",
            "- models/ (weights learned from data): their use is bound by the licence of the training data:",
            *["  " + line for line in meta["medpipe"]["data"]],
            "- The MONAI classes that configs/ names are MONAI's (Apache License 2.0).", "",
            "Research software, not a medical device.", ""]
    text = _apache_text()
    return "\n".join(head) + ("\n" + text if text else "")
