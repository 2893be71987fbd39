"""Command line: ``python -m medpipe.run PIPELINE.yaml [--set key=value ...] [--validate-only]``,
``python -m medpipe.run --resume RUN`` (continue an interrupted run), and under ``torchrun`` distributed
(``torchrun --nproc_per_node N -m medpipe.run PIPELINE.yaml``).

Command line only: validation is :func:`medpipe.config.load_config`, the run
:func:`medpipe.workflow.run_pipeline` (the one flow: YAML -> validated config -> data -> network -> engine ->
metrics -> tracking -> run folder). Nothing imports this module.

Artifacts of a run go to ``<output_dir>/<run name>/`` (:class:`medpipe.runs.RunFolder`):
``config.resolved.yaml``, ``manifest.json`` (the split), ``checkpoints/`` (best and latest), ``metrics.json``,
``data_problems.csv`` (only when the integrity check skipped files), and by task:

* segmentation: ``plots/`` (training curves, overlays) and ``predictions/<split>/`` (masks);
* classification: ``report.md`` (one page: test metrics, threshold, confusion matrix, published anchor),
  ``plots/`` (learning curves, ROC, confusion matrices, misclassified examples) and ``predictions/<split>.csv``;
  with ``slide_infer``, ``slides/`` (per slide a Zarr heatmap, heatmap and overlay PNGs; ``slides.json`` with the
  scores), also summarised in ``metrics.json`` and ``report.md``.

Cross-validation (``data.split.kfold`` without ``fold``, :mod:`medpipe.workflow.cv`): the run folder holds
``config.resolved.yaml``, ``manifest.json`` (all folds), ``cv_summary.json`` / ``.md`` and one run folder per fold,
``fold_<k>/``, as above.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from medpipe.config import ConfigError, load_config
from medpipe.logs import configure_cli_logging
from medpipe.tracking import TrackingError  # no mlflow at import: it is loaded when a run is tracked


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m medpipe.run", description=(
        "Validate, train, evaluate, predict and track a pipeline; --resume continues an interrupted run; under "
        "torchrun (torchrun --nproc_per_node N -m medpipe.run X.yaml) training is distributed data-parallel."))
    p.add_argument("pipeline", nargs="?", help="pipeline YAML file, e.g. pipelines/em_unet.yaml")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its latest checkpoint, logging "
                   "into the same MLflow run: its artifact folder or MLflow run id (its own config is used)")
    p.add_argument("--tracking-uri", help="with --resume RUN_ID: the MLflow store to find the run in (default "
                   "$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.max_epochs=3 (repeatable; values are YAML)")
    p.add_argument("--validate-only", action="store_true", help="validate the pipeline and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _load(args):
    """``(cfg, resume)`` from the pipeline file (with ``--set``) or the run to resume."""
    if args.resume is not None:
        from medpipe.workflow import find_resume  # torch, MONAI, MLflow: imported only when needed

        return find_resume(args.resume, args.tracking_uri)
    return load_config(args.pipeline, args.overrides), None


def _print_result(result) -> None:
    """Where the artifacts and the MLflow run are, and the final metrics."""
    print(f"artifacts: {result.output_dir}")
    for fold in result.folds:  # cross-validation: one child run per fold
        print(f"  fold {fold.output_dir.name}: {fold.output_dir} (MLflow child run {fold.run_id})")
    for k, v in result.metrics.items():
        print(f"  {k}: {v:.4f}")
    if result.run_id:
        print(f"MLflow run {result.run_id} in {result.tracking_uri}")
        print(f"  open it with: mlflow ui --backend-store-uri {result.tracking_uri}")
        if result.model_uri:
            print(f"  model: {result.model_uri}")


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point; returns the process exit code (0 ok, 2 invalid config or data)."""
    parser = _parser()
    args = parser.parse_args(argv)
    configure_cli_logging(args.verbose)
    if args.resume is not None and (args.pipeline or args.overrides):
        parser.error("--resume continues a run with its own config.resolved.yaml: give no pipeline and no --set")
    if args.resume is None and not args.pipeline:
        parser.error("a pipeline YAML file (or --resume RUN) is required")
    try:
        cfg, resume = _load(args)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 2
    except TrackingError as exc:  # the store of --resume cannot be read
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if cfg.data.split.kfold is not None and cfg.data.split.fold is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        print("error: data.split.kfold: a whole cross-validation cannot run under torchrun; run one fold per torchrun "
              "with --set data.split.fold=<k>", file=sys.stderr)
        return 2
    if args.validate_only:
        print(f"{args.pipeline or args.resume}: valid ({cfg.name}, task {cfg.task}, net {cfg.net.name})")
        return 0
    from medpipe.data.cases import DataError  # torch, MONAI, MLflow: imported once the config is valid
    from medpipe.engine.trainer import NonFiniteLossError
    from medpipe.workflow import run_pipeline
    from medpipe.workflow.skeleton import WRITE_ERRNOS

    try:
        result = run_pipeline(cfg, resume=resume)
    except (DataError, FileNotFoundError, TrackingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:  # a full disk, a read-only folder: the user's to fix, in one line
            raise
        print(f"error: cannot write {exc.filename or cfg.output_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:  # torchrun: rank 0 reports
        _print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
