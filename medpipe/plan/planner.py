"""``plan(DATA)``: layout -> fingerprint -> rules -> timed budget -> a validated, commented pipeline.

The library call behind ``python -m medpipe.plan``; each step is its own module (:mod:`~medpipe.plan.layout`,
:mod:`~medpipe.plan.fingerprint`, :mod:`~medpipe.plan.rules`, :mod:`~medpipe.plan.budget`,
:mod:`~medpipe.plan.yamlout`).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from medpipe.plan.budget import BudgetError, Timing, epochs_for_budget, measure
from medpipe.plan.fingerprint import compute_fingerprint
from medpipe.plan.layout import Layout, detect_layout
from medpipe.plan.rules import MIN_EPOCHS, MIN_SEG_STEPS, TINY_SIDE, plan_sections, size_candidates
from medpipe.plan.yamlout import to_yaml

__all__ = ["Plan", "plan", "parse_budget", "split_cases_of"]

logger = logging.getLogger(__name__)


@dataclass
class Plan:
    """A planned pipeline.

    Attributes:
        fingerprint: :func:`medpipe.plan.fingerprint.compute_fingerprint`'s dict (with ``timing`` added).
        config: the validated :class:`medpipe.config.PipelineConfig`.
        data: the config as plain data, as written.
        why: dotted key -> reason.
        yaml: the commented YAML text (validates to ``config``).
        timing: the :class:`~medpipe.plan.budget.Timing` the epochs were chosen from.
        tried: candidates timed: classification input sizes (``{"size", "max_epochs"}``), segmentation
            networks (``{"network", "optimizer_steps"}``).
    """

    fingerprint: Dict
    config: object
    data: Dict
    why: Dict[str, str]
    yaml: str
    timing: Timing
    tried: List[Dict] = field(default_factory=list)


def parse_budget(text: str) -> float:
    """Seconds of a budget written ``15min``, ``900s``, ``1h``, ``1.5h`` or a plain number of minutes.

    Raises:
        ValueError: anything else (names the text and the forms accepted).
    """
    t = str(text).strip().lower().replace(" ", "")
    for unit, mult in (("min", 60), ("m", 60), ("h", 3600), ("s", 1)):
        if t.endswith(unit):
            t, scale = t[: -len(unit)], mult
            break
    else:
        scale = 60
    try:
        value = float(t) * scale
    except ValueError:
        raise ValueError(f"--budget {text!r}: expected e.g. 15min, 900s, 1h or a number of minutes") from None
    if value <= 0:
        raise ValueError(f"--budget {text!r}: must be positive")
    return value


def split_cases_of(layout: Layout):
    """``(train, val, test, all labelled cases, class names)`` of the layout's data section, split as a run
    splits them."""
    from medpipe.config import DataConfig
    from medpipe.data.discovery import discover_cases, discover_classification_cases
    from medpipe.data.splits import split_classification_cases, split_segmentation_cases

    data_cfg = DataConfig(**layout.data)
    split = data_cfg.split
    if split.kfold and split.fold is None:  # cross-validation: fold 0 stands for every fold's size
        split = split.model_copy(update={"fold": 0})
    if layout.task == "classification":
        cases, classes = discover_classification_cases(data_cfg)
        train, val, test = split_classification_cases(cases, split)
        return train, val, test, cases, classes
    cases = discover_cases(data_cfg)
    labelled = [c for c in cases if c.get("label")]
    train, val, test = split_segmentation_cases(labelled, split)
    return train, val, test, labelled, None


def _budgeted(cfg: Dict, why: Dict, train, val, test, budget_s: float, n_steps: int, net=None):
    """Validate the draft, time it, set epochs / val_interval / warm-up; returns (PipelineConfig, Timing)."""
    from medpipe.config import validate_config

    draft = validate_config(cfg, "<plan>")
    timing = measure(draft, train, val, test, n_steps=n_steps, net=net)
    split = draft.data.split
    folds = split.kfold if split.kfold and split.fold is None else 1
    epochs, vi, reason = epochs_for_budget(timing, budget_s / folds)
    if folds > 1:
        reason = f"{folds}-fold cross-validation, {budget_s / folds / 60:.1f} min per fold: " + reason
    cfg["train"]["max_epochs"], cfg["train"]["val_interval"] = epochs, vi
    why["train.max_epochs"] = reason
    why["train.val_interval"] = f"{epochs // vi} validation passes of {timing.n_val} cases"
    if epochs < 4:
        cfg["scheduler"].pop("warmup_epochs", None)
    return timing


def _plan_classification(fp, layout, device, name, train, val, test, budget_s, n_steps, net):
    """The largest input size at which ResNet-18 trains >= MIN_EPOCHS (timed, from the largest); for tiny images
    (median side <= TINY_SIDE) LeNet at their own size before any downscaling. Returns (cfg, why, timing, tried)."""
    cands = [(size, False) for size in size_candidates(fp["shape"]["median"])]
    if min(fp["shape"]["median"]) <= TINY_SIDE and net is None:
        cands.insert(1, (cands[0][0], True))
    tried: List[Dict] = []
    for i, (size, small) in enumerate(cands):
        cfg, why = plan_sections(fp, layout, device, name, size, small_net=small)
        label = f"{'LeNet' if small else 'ResNet-18'} {size} px"
        try:
            timing = _budgeted(cfg, why, train, val, test, budget_s, n_steps, net)
        except BudgetError:  # not one epoch at this size: try the next smaller one
            tried.append({"size": size, "network": label, "max_epochs": 0})
            if i == len(cands) - 1:
                raise
            continue
        tried.append({"size": size, "network": label, "max_epochs": cfg["train"]["max_epochs"],
                      "timing": timing.as_dict()})
        if cfg["train"]["max_epochs"] >= MIN_EPOCHS or i == len(cands) - 1:
            break
    sizes = ", ".join(f"{t['network']}: {t['max_epochs']} epochs" for t in tried)
    median = "x".join(f"{s:g}" for s in fp["shape"]["median"])
    why["transforms.train.resize"] = (f"the largest input size that trains >= {MIN_EPOCHS} epochs in the budget "
                                      f"({sizes}; median image {median})")
    return cfg, why, timing, tried


def _plan_segmentation(fp, layout, device, name, train, val, test, budget_s, n_steps, net):
    """nnU-Net's topology when the budget trains it for >= MIN_SEG_STEPS optimizer steps, else the compact network
    when it trains more steps (both timed); returns (cfg, why, timing, tried)."""
    cfg, why = plan_sections(fp, layout, device, name)
    try:
        timing = _budgeted(cfg, why, train, val, test, budget_s, n_steps, net)
        steps, error = cfg["train"]["max_epochs"] * timing.steps_per_epoch, None
    except BudgetError as e:
        timing, steps, error = None, 0, e
    tried = [{"network": "nnU-Net topology", "optimizer_steps": steps}]
    if steps >= MIN_SEG_STEPS or net is not None:  # a given net (tests) is timed as it is
        if error is not None:
            raise error
        return cfg, why, timing, tried
    cfg2, why2 = plan_sections(fp, layout, device, name, compact=True)
    try:
        timing2 = _budgeted(cfg2, why2, train, val, test, budget_s, n_steps, net)
    except BudgetError:
        if timing is None:
            raise
        return cfg, why, timing, tried
    steps2 = cfg2["train"]["max_epochs"] * timing2.steps_per_epoch
    tried.append({"network": "compact", "optimizer_steps": steps2})
    if timing is not None and steps2 <= steps:
        return cfg, why, timing, tried
    why2["net.filters"] += f" (timed: nnU-Net's topology {steps} steps, this one {steps2})"
    return cfg2, why2, timing2, tried


def plan(source, task: Optional[str] = None, budget_s: float = 900.0, device: str = "cpu",
         name: Optional[str] = None, columns: Optional[Dict[str, str]] = None, max_cases: int = 200,
         modality: Optional[Sequence[str]] = None, n_steps: int = 3, net=None, command: str = "",
         fingerprint_path: Optional[str] = None) -> Plan:
    """Plan a pipeline for the data at ``source``.

    Args:
        source: ``DATA`` (:mod:`medpipe.plan.layout`).
        task: ``segmentation`` / ``classification`` or ``None`` (detected).
        budget_s: wall-clock budget of the planned run, seconds (start-up to the last prediction).
        device: ``cpu`` or ``cuda``: the run's device, where the steps are timed.
        name: pipeline name (default: the data folder's name).
        columns: list-file columns (``image``, ``label``, ``split``, ``group``) instead of detected ones.
        max_cases: images read for the fingerprint.
        modality: imaging modality (``CT``, ``MRI``, ...) when the data does not say.
        n_steps: optimizer steps timed per candidate.
        net: a network timed instead of the planned one (tests).
        command: the command line, written into the YAML header.
        fingerprint_path: where the fingerprint will be written: set as ``report.fingerprint`` so the run logs it.

    Returns:
        The :class:`Plan`.

    Raises:
        LayoutError, FileNotFoundError: ``source`` not understood / missing.
        medpipe.data.cases.DataError: a file read for the fingerprint is unreadable (names the files).
        BudgetError: the budget fits no epoch.
        RuntimeError: ``device`` is ``cuda`` and no GPU is visible (the budget must be timed on the device).
        medpipe.config.ConfigError: a planned pipeline does not validate (a bug: please report it).
    """
    import torch

    from medpipe.config import validate_config

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no GPU visible; the budget is timed on the device the run will use, "
                           "so plan on the GPU machine")
    layout = detect_layout(source, task, columns)
    train, val, test, cases, classes = split_cases_of(layout)
    if layout.task == "classification":
        layout.label_names = classes
    fp = compute_fingerprint(cases, layout.task, classes, max_cases, modality or layout.modality)
    if fp["bad_files"]:  # the timing would read them too: name them now rather than fail inside a transform
        from medpipe.data.cases import DataError

        shown = "; ".join(b["error"] if b["file"] in b["error"] else f"{b['file']}: {b['error']}"
                          for b in fp["bad_files"][:3])
        raise DataError(f"{len(fp['bad_files'])} of the {fp['num_read'] + len(fp['bad_files'])} files read for the "
                        f"fingerprint cannot be read ({shown}); repair or remove them, then plan again")
    if layout.task == "classification":
        cfg, why, timing, tried = _plan_classification(fp, layout, device, name, train, val, test, budget_s,
                                                       n_steps, net)
    else:
        cfg, why, timing, tried = _plan_segmentation(fp, layout, device, name, train, val, test, budget_s, n_steps,
                                                     net)
    if fingerprint_path:
        cfg["report"] = {"fingerprint": str(fingerprint_path)}
        why["report.fingerprint"] = "this plan's dataset fingerprint, logged with the run"
    for k, v in layout.why.items():
        why.setdefault(f"data.{k}", v)
    fp["timing"] = timing.as_dict()
    fp["split_sizes"] = {"train": len(train), "val": len(val), "test": len(test)}
    header = [f"Planned by medpipe.plan on {dt.date.today().isoformat()} from {layout.source}",
              f"({fp['num_cases']} cases, {fp['dimensionality']}D, median shape "
              f"{'x'.join(f'{s:g}' for s in fp['shape']['median'])}"
              + (f" at {'x'.join(f'{s:g}' for s in fp['spacing_mm']['median'])} mm" if fp.get("spacing_mm") else "")
              + f", {'/'.join(fp['channel_kinds'])}). Every planned value says why; edit freely.",
              *([f"Command: {command}"] if command else []), ""]
    text = to_yaml(cfg, why, header)
    import yaml

    config = validate_config(yaml.safe_load(text), "<planned yaml>")
    return Plan(fp, config, cfg, why, text, timing, tried)
