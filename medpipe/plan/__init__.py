"""Planning a pipeline from the data (``python -m medpipe.plan DATA``): nnU-Net-style self-configuration that hands
back a readable, commented, validated YAML.

* :func:`plan` (:mod:`~medpipe.plan.planner`): the whole path, returning a :class:`Plan` (fingerprint, validated
  :class:`medpipe.config.PipelineConfig`, YAML text, timing);
* :func:`detect_layout` (:mod:`~medpipe.plan.layout`): the ``data`` section from a folder, list file, MSD
  ``dataset.json`` or pipeline YAML;
* :func:`compute_fingerprint` (:mod:`~medpipe.plan.fingerprint`): shapes, spacings, channels, intensities,
  labels, objects, class balance, groups, files;
* :func:`plan_sections` (:mod:`~medpipe.plan.rules`): the rules, each with its source;
* :func:`measure` / :func:`epochs_for_budget` (:mod:`~medpipe.plan.budget`): epochs from timed real steps;
* :func:`to_yaml` (:mod:`~medpipe.plan.yamlout`): the commented YAML.
"""

from medpipe.plan.budget import BudgetError, Timing, epochs_for_budget, measure
from medpipe.plan.fingerprint import compute_fingerprint, write_fingerprint
from medpipe.plan.layout import Layout, LayoutError, detect_layout
from medpipe.plan.planner import Plan, parse_budget, plan
from medpipe.plan.rules import patch_size_rule, plan_sections, target_spacing_rule
from medpipe.plan.yamlout import to_yaml

__all__ = ["plan", "Plan", "parse_budget", "detect_layout", "Layout", "LayoutError", "compute_fingerprint",
           "write_fingerprint", "plan_sections", "patch_size_rule", "target_spacing_rule", "measure",
           "epochs_for_budget", "Timing", "BudgetError", "to_yaml"]
