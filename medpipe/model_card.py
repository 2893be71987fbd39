"""The model card of a run: ``model_card.md`` in every run folder, logged to MLflow and shipped with exports.

A one-page description in the spirit of Mitchell et al., "Model Cards for Model Reporting" (FAT* 2019), with the
sections a reader of a medical-imaging model asks for: what the model is, what it is for and not for (it is research
software, not a medical device), the data it saw and the data's source and licence (from the dataset's
``PROVENANCE.md`` when the data root has one), the metrics the run computed (with their 95 % intervals where the run
computed them: ``<metric>_ci_low`` / ``<metric>_ci_high``), how it was trained, and its limitations.

Everything on the card is read from the run (config, manifest, metrics); nothing is written down by hand.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Dict, List, Optional

from medpipe.config import PipelineConfig
from medpipe.data.cases import resolve_root

__all__ = ["MODEL_CARD_FILE", "data_card", "reported_lines", "model_card_md", "run_model_card", "write_model_card"]

MODEL_CARD_FILE = "model_card.md"

_PROVENANCE_FIELDS = re.compile(r"^\s*[-*]?\s*(Source|Licen[cs]e|Citation|Cite|Paper)\b", re.IGNORECASE)


def data_card(cfg: PipelineConfig) -> List[str]:
    """Source, licence and citation lines of the dataset under ``data.root``, from its ``PROVENANCE.md`` (the
    lines starting with Source / Licence / Citation, and the bullets of a ``## Licence ...`` section).

    Returns:
        Markdown lines; a line saying where to record them when the data root has no ``PROVENANCE.md`` (or does not
        exist on this machine).
    """
    try:
        provenance = resolve_root(cfg.data.root) / "PROVENANCE.md"
    except FileNotFoundError:
        provenance = None
    if provenance is None or not provenance.is_file():
        return [f"- Source and licence: not recorded (no PROVENANCE.md in `{cfg.data.root}`); state them before "
                "sharing this model."]
    lines, in_licence = [], False
    for line in provenance.read_text(errors="replace").splitlines():
        if line.startswith("#"):
            in_licence = "licen" in line.lower()
            continue
        if _PROVENANCE_FIELDS.match(line) or (in_licence and line.strip().startswith(("-", "*"))):
            lines.append("- " + line.strip().lstrip("-* ").strip())
    return lines or [f"- See `{provenance}` (no source or licence line found in it)."]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4f}"
    return str(value)


def _metric_rows(final: Dict[str, float]) -> List[str]:
    """One row per evaluation metric (``best_val_*``, ``test_*``, ``slide_*``), with its interval when present."""
    rows = ["| metric | value | 95 % interval |", "|---|---|---|"]
    for key, value in final.items():
        if not key.startswith(("best_val_", "test_", "slide_")) or key.endswith(("_ci_low", "_ci_high", "seconds")):
            continue
        low, high = final.get(f"{key}_ci_low"), final.get(f"{key}_ci_high")
        interval = f"{_fmt(low)} - {_fmt(high)}" if low is not None and high is not None else "not computed"
        rows.append(f"| `{key}` | {_fmt(value)} | {interval} |")
    return rows


def _input_size(cfg: PipelineConfig) -> str:
    """The classifier's input size, from the last resize or crop of ``transforms.val``."""
    size = None
    for spec in cfg.transforms.val:
        kw = spec.kwargs
        if spec.name.startswith(("Resize", "CenterSpatialCrop", "SpatialPad")):
            size = kw.get("spatial_size", kw.get("roi_size", size))
    return f"{list(size)} pixels" if isinstance(size, (list, tuple)) else "the size of its images"


def _model_lines(cfg: PipelineConfig) -> List[str]:
    net = cfg.net
    args = {k: v for k, v in net.model_dump().items() if k != "name" and v not in (None, "default", False)}
    shown = ", ".join(f"{k}={v}" for k, v in args.items())
    lines = [f"- Task: {cfg.task}; network: `{net.name}` ({shown})."]
    if cfg.task == "segmentation":
        lines.append(f"- Input: {net.in_channels} channel(s), inferred with a sliding window of "
                     f"{list(cfg.infer.roi_size)} pixels (overlap {cfg.infer.overlap}); output: {net.out_channels} "
                     "class scores per pixel (softmax, argmax).")
    else:
        lines.append(f"- Input: {net.in_channels} channel(s) at {_input_size(cfg)}; output: {cfg.num_classes} class "
                     "probabilities (softmax).")
    if getattr(net, "pretrained", None):
        lines.append(f"- Initial weights: `{net.pretrained}`.")
    return lines


def _data_lines(cfg: PipelineConfig, manifest: Optional[Dict[str, Any]]) -> List[str]:
    lines = [f"- Data root: `{cfg.data.root}`."]
    if manifest:
        sizes = ", ".join(f"{len(manifest.get(s, []))} {s}" for s in ("train", "val", "test") if s in manifest)
        lines.append(f"- Cases: {sizes}; skipped by the integrity check: {len(manifest.get('skipped', []))}.")
        if manifest.get("classes"):
            lines.append(f"- Classes: {', '.join(manifest['classes'])}.")
    lines.append(f"- Split: `{cfg.data.split.model_dump(exclude_none=True)}`"
                 + (f", grouped by `{cfg.data.group_column}`" if cfg.data.group_column else "") + ".")
    return lines + data_card(cfg)


def _num(value: Any) -> str:
    return _fmt(float(value)) if isinstance(value, (int, float)) else "n/a"


def reported_lines(metrics: Dict[str, Any]) -> List[str]:
    """Calibration, out-of-distribution and post-processing lines of ``metrics.json`` (``calibration``, ``ood``,
    ``postprocessing``), each only when the run reported it; ``[]`` otherwise."""
    lines = []
    cal = metrics.get("calibration")
    if isinstance(cal, dict) and cal.get("temperature") is not None:
        lines.append(f"- Calibration: temperature scaling (Guo et al. 2017), T = {_num(cal['temperature'])} fitted "
                     "on validation; served and exported probabilities are softmax(logits / T).")
        for split in ("val", "test"):
            got = cal.get(split) or {}
            if got:
                lines.append(f"  - {split}: expected calibration error {_num(got.get('ece_before'))} -> "
                             f"{_num(got.get('ece_after'))}, negative log-likelihood {_num(got.get('nll_before'))} "
                             f"-> {_num(got.get('nll_after'))} (before -> after).")
    ood = metrics.get("ood")
    if isinstance(ood, dict) and ood.get("threshold") is not None:
        lines.append(f"- Out-of-distribution score: `{ood.get('score')}` of the logits; threshold "
                     f"{_num(ood['threshold'])} (fitted so that {_num(ood.get('coverage'))} of the validation cases "
                     "score below it); every served answer says whether an input is above it.")
    post = metrics.get("postprocessing")
    if isinstance(post, dict):
        shown = {k: v for k, v in post.items() if not k.startswith("val_dice")}
        lines.append(f"- Post-processing chosen on validation (nnU-Net's rule): `{shown}`; validation Dice "
                     f"{_num(post.get('val_dice_before'))} -> {_num(post.get('val_dice_after'))}.")
    return lines


def model_card_md(cfg: PipelineConfig, metrics: Dict[str, Any], manifest: Optional[Dict[str, Any]] = None,
                  run_id: Optional[str] = None) -> str:
    """The text of ``model_card.md``.

    Args:
        cfg: the run's validated pipeline.
        metrics: the run's ``metrics.json`` document (``final``, and for classifiers ``threshold``,
            ``threshold_rule``).
        manifest: the run's ``manifest.json`` (split sizes, classes), or ``None``.
        run_id: the MLflow run, or ``None`` when not tracked.

    Returns:
        Markdown.
    """
    final = metrics.get("final", {})
    lines = [f"# Model card: {cfg.name}", "",
             "**Research software, not a medical device.** Not validated for diagnosis, treatment or any clinical "
             "decision; its numbers describe the data below and nothing else.", "",
             "## Model", "", *_model_lines(cfg), "",
             "## Intended use", "",
             f"- Research on {cfg.task} of images like those below: reproducing, comparing and extending the "
             "pipeline `" + cfg.name + "`.",
             "- Out of scope: clinical use; images of another modality, body part, site, scanner or population than "
             "the training data; any use without re-validation on the target data.",
             *([f"- Trained for DICOM Modality {', '.join(cfg.data.modality or ['any'])}, Body Part Examined "
                f"{', '.join(cfg.data.body_part or ['any'])}; the server refuses other DICOM uploads."]
               if cfg.data.modality or cfg.data.body_part else []), "",
             "## Data", "", *_data_lines(cfg, manifest), "",
             "## Metrics", "",
             "Computed by the run on its validation split (`best_val_*`, the split that selected the checkpoint, so "
             "optimistic) and, where there is one, on the held-out test split (`test_*`).", "",
             *_metric_rows(final), ""]
    if metrics.get("threshold") is not None:
        lines += [f"Operating threshold {metrics['threshold']:.4f} ({metrics.get('threshold_rule')}).", ""]
    reported = reported_lines(metrics)
    if reported:
        lines += ["## Calibration, unusual inputs and post-processing", "", *reported, ""]
    if cfg.infer is not None and cfg.infer.tta:
        lines += ["Predictions average the softmax over mirrored copies of the input (test-time augmentation, axes "
                  f"{cfg.infer.tta_axes or 'all'}).", ""]
    lines += ["## Training", "",
              f"- {int(final.get('epochs', cfg.train.max_epochs))} epochs (best {int(final.get('best_epoch', 0))} by "
              f"`{cfg.metrics.key_metric}`), batch size {cfg.train.batch_size}, optimizer `{cfg.optimizer.name}` "
              f"(lr {cfg.optimizer.lr}), loss `{cfg.loss.name}`, seed {cfg.train.seed}; "
              f"{final.get('train_seconds', 0.0) / 60:.1f} min of training.",
              f"- MLflow run: `{run_id or 'not tracked'}`. Reproduce: `python -m medpipe.run config.resolved.yaml`.",
              "", "## Limitations", "",
              "- Small public research data sets, resized and subsampled as their PROVENANCE.md says; the defaults are "
              "sized for a CPU, not for the best possible accuracy.",
              "- No external validation: performance on other sites, scanners or populations is unknown.",
              "- Intervals, where present, cover the sampling of these cases only, not the choice of data or model."]
    if cfg.report.anchor:
        lines += [f"- Published reference for this task: {cfg.report.anchor}"]
    return "\n".join(lines) + "\n"


def run_model_card(folder: Optional[Path], cfg: PipelineConfig, metrics: Dict[str, Any],
                   manifest: Optional[Dict[str, Any]] = None, run_id: Optional[str] = None) -> str:
    """The model card of a trained run: its ``model_card.md`` when the run folder has one, else made now from the
    run's config, metrics and manifest (runs made before model cards, or a model loaded from MLflow)."""
    card = Path(folder) / MODEL_CARD_FILE if folder is not None else None
    if card is not None and card.is_file():
        return card.read_text(errors="replace")
    return model_card_md(cfg, metrics, manifest, run_id)


def write_model_card(folder: Path, cfg: PipelineConfig, metrics: Dict[str, Any],
                     manifest: Optional[Dict[str, Any]] = None, run_id: Optional[str] = None) -> Path:
    """Write ``<folder>/model_card.md`` (:func:`model_card_md`) and return its path."""
    path = Path(folder) / MODEL_CARD_FILE
    path.write_text(model_card_md(cfg, metrics, manifest, run_id))
    return path
