"""Command line: ``python -m medpipe.run PIPELINE.yaml [--set key=value ...] [--validate-only]``.

Wires the one flow: YAML -> validated config -> data -> network -> engine -> metrics -> tracking ->
artifacts. Library modules never import this one.

Artifacts of a run go to ``<output_dir>/<run name>/``:
``config.resolved.yaml``, ``manifest.json`` (the split), ``checkpoints/`` (best and latest),
``metrics.json``, ``plots/`` (training curves, overlays) and ``predictions/<split>/`` (masks).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import yaml

from medpipe.config import ConfigError, PipelineConfig, flatten, load_config, resolved_dict

logger = logging.getLogger("medpipe.run")


@dataclass
class RunResult:
    """What a pipeline run produced."""

    output_dir: Path
    metrics: Dict[str, float]
    run_id: Optional[str] = None
    tracking_uri: Optional[str] = None
    model_uri: Optional[str] = None
    predictions: Dict[str, List[Dict]] = field(default_factory=dict)
    seconds: float = 0.0


def _run_dir(cfg: PipelineConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = cfg.tracking.run_name or cfg.name
    base = Path(cfg.output_dir) / f"{name}-{stamp}"
    out, i = base, 1
    while out.exists():
        out, i = Path(f"{base}-{i}"), i + 1
    return out


def run_pipeline(cfg: PipelineConfig) -> RunResult:
    """Train, evaluate and predict a validated pipeline; track it in MLflow.

    Raises:
        medpipe.data.datasets.DataError: bad or inconsistent data (names the file).
        Any exception from training; the MLflow run is then marked ``FAILED`` and checkpoints written so far
        stay in ``<run dir>/checkpoints``.
    """
    import torch

    from medpipe.data.datasets import (build_dataset, build_loader, discover_cases, discover_images,
                                       manifest_hash, resolve_root, split_cases, verify_cases)
    from medpipe.data.transforms import build_transforms
    from medpipe.engine.trainer import build_engines, build_evaluator, seed_everything
    from medpipe.inference.predict import predict_cases
    from medpipe.inference.sliding import build_inferer
    from medpipe.nets import build_net
    from medpipe.plots import plot_history, plot_overlays
    from medpipe.tracking import Tracker, env_summary, git_commit, library_versions

    t0 = time.time()
    out_dir = _run_dir(cfg)
    out_dir.mkdir(parents=True)
    resolved = resolved_dict(cfg)
    (out_dir / "config.resolved.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))

    seed_everything(cfg.train.seed, cfg.train.deterministic)
    cases = discover_cases(cfg.data)
    problems: List[Dict] = []
    if cfg.data.verify:
        cases, problems = verify_cases(cases, cfg.data.on_bad_image)
    train_cases, val_cases = split_cases(cases, cfg.data.split)
    test_cases: List[Dict] = []
    if cfg.data.test_images:
        test_cases = [{"image": f} for f in discover_images(resolve_root(cfg.data.root), cfg.data.test_images)]
    manifest = {"train": train_cases, "val": val_cases, "test": test_cases, "skipped": problems}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))

    tracker = Tracker(cfg.tracking, cfg.name)
    with tracker:
        tracker.log_params(flatten(resolved))
        tracker.set_tags({
            "pipeline": cfg.name, "task": cfg.task, "output_dir": str(out_dir.resolve()),
            "git_commit": git_commit(Path(__file__).parent) or "none",
            "dataset.manifest_sha256": manifest_hash(cases),
            "dataset.n_train": len(train_cases), "dataset.n_val": len(val_cases), "dataset.n_test": len(test_cases),
            "dataset.n_skipped": len(problems),
            **{f"version.{k}": v for k, v in library_versions().items()}, **env_summary(),
        })
        tracker.log_artifact(out_dir / "config.resolved.yaml")
        tracker.log_artifact(out_dir / "manifest.json")

        train_tf = build_transforms(cfg.transforms.train, "transforms.train")
        val_tf = build_transforms(cfg.transforms.val, "transforms.val")
        infer_tf = build_transforms(cfg.infer_transforms(), "transforms.infer")
        cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else out_dir / "cache"
        progress = cfg.train.progress
        train_ds = build_dataset(train_cases, train_tf, cfg.data, cache_dir / "train", progress)
        val_ds = build_dataset(val_cases, val_tf, cfg.data, cache_dir / "val", progress)
        train_loader = build_loader(train_ds, cfg.train.batch_size, True, cfg.data.num_workers, cfg.train.seed)
        val_loader = build_loader(val_ds, cfg.train.val_batch_size, False, cfg.data.num_workers, cfg.train.seed)

        net = build_net(cfg.net)
        engines = build_engines(cfg, net, train_loader, val_loader, out_dir / "checkpoints")
        tracker.attach(engines)
        logger.info("training %s: %d train / %d val cases, %d epochs on %s", cfg.name, len(train_cases),
                    len(val_cases), cfg.train.max_epochs, engines.device)
        engines.trainer.run()
        train_seconds = time.time() - t0

        # Final evaluation with the best checkpoint (the one selected on the key validation metric).
        best = engines.best_checkpoint
        if best is not None:
            state = torch.load(best, map_location=engines.device, weights_only=True)
            engines.net.load_state_dict(state.get("net", state))
        final_eval = build_evaluator(cfg, engines.net, val_loader, engines.device)
        final_eval.run()
        final = {f"best_val_{k}": float(v) for k, v in final_eval.state.metrics.items()}
        final["best_epoch"] = float(_best_epoch(tracker.history, cfg.metrics.key_metric))
        final["train_seconds"] = train_seconds

        inferer = build_inferer(cfg.infer)
        predictions: Dict[str, List[Dict]] = {}
        for split in cfg.infer.splits:
            split_cases_ = val_cases if split == "val" else test_cases
            if not split_cases_:
                continue
            predictions[split] = predict_cases(
                engines.net, split_cases_, infer_tf, inferer, engines.device, out_dir / "predictions" / split,
                cfg.net.out_channels, cfg.infer.output_format, cfg.infer.save_probabilities, progress)
        final["total_seconds"] = time.time() - t0
        tracker.log_metrics(final)
        (out_dir / "metrics.json").write_text(json.dumps({"final": final, "history": tracker.history}, indent=1))

        plots = out_dir / "plots"
        plot_history(tracker.history, plots / "training_curves.png", title=cfg.name)
        if predictions.get("val"):
            plot_overlays(predictions["val"], plots / "val_overlays.png")
        for p in ("metrics.json", "plots", "predictions"):
            tracker.log_artifact(out_dir / p, None if p == "metrics.json" else p)
        model_uri = tracker.log_model(engines.net)
    return RunResult(out_dir, final, tracker.run_id, cfg.tracking.tracking_uri if tracker.enabled else None,
                     model_uri, predictions, time.time() - t0)


def _best_epoch(history: Dict[str, list], key: str) -> int:
    vals = history.get("val", [])
    if not vals:
        return 0
    return max(vals, key=lambda r: r.get(key, float("-inf")))["epoch"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m medpipe.run", description=__doc__.split("\n")[0])
    p.add_argument("pipeline", help="pipeline YAML file, e.g. pipelines/em_unet.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.max_epochs=3 (repeatable; values are YAML)")
    p.add_argument("--validate-only", action="store_true", help="validate the pipeline and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point; returns the process exit code (0 ok, 2 invalid config or data)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        cfg = load_config(args.pipeline, args.overrides)
    except (ConfigError, FileNotFoundError) as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.validate_only:
        print(f"{args.pipeline}: valid ({cfg.name}, task {cfg.task}, net {cfg.net.name})")
        return 0
    from medpipe.data.datasets import DataError

    try:
        result = run_pipeline(cfg)
    except (DataError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"artifacts: {result.output_dir}")
    for k, v in result.metrics.items():
        print(f"  {k}: {v:.4f}")
    if result.run_id:
        print(f"MLflow run {result.run_id} in {result.tracking_uri}")
        print(f"  open it with: mlflow ui --backend-store-uri {result.tracking_uri}")
        if result.model_uri:
            print(f"  model: {result.model_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
