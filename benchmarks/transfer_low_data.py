"""Transfer learning in the low-data regime: ResNet-18 from scratch vs COVID-QU-Ex-pretrained on few Kermany images.

A results script (not a test). It draws a balanced training pool of ``--n`` images (n/2 NORMAL + n/2 PNEUMONIA,
fixed ``--subset-seed``) from the ``train`` rows of ``kermany_pneumonia_cxr/labels.csv``, keeps ALL ``test`` rows
(624), and writes that list to ``<out>/labels_n<n>.csv``. Then, for each seed, it runs
``pipelines/pneumonia_xray_resnet18.yaml`` in this process twice with identical settings except the start:

* ``scratch``: the pipeline's Xavier-uniform initialisation;
* ``pretrained``: ``net.pretrained=<--pretrained>`` and ``train.freeze_backbone_epochs=2``.

Both arms: ``data.list_file=<subset csv>`` (absolute), ``data.split.seed=0`` (the pool's stratified 80/20
train/validation split is the same in every run), ``train.seed=<seed>``, ``train.progress=false``,
``train.batch_size=<--batch-size>`` and ``train.max_epochs=<--epochs>``. Checkpoint (best validation AUC) and
Youden threshold are chosen on the validation part of the pool; the test metrics are at that threshold.

Prints one row per run (test AUC, accuracy, sensitivity, specificity, balanced accuracy, threshold, best epoch,
seconds, MLflow run id), mean +- std (sample std, ddof=1) of test AUC per arm and the paired differences
(pretrained - scratch per seed), and writes the same to ``<out>/results.json`` and ``<out>/results.md``.

Usage::

    nice -n 5 .venv/bin/python benchmarks/transfer_low_data.py [--n 96] [--seeds 0 1 2] [--epochs 5]
        [--batch-size 16] [--pretrained runs:/87d5f4450eff46e6b451ef8e67ec9d64/model]
        [--out artifacts/transfer_low_data]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PIPELINE = ROOT / "pipelines" / "pneumonia_xray_resnet18.yaml"
DEFAULT_PRETRAINED = "runs:/87d5f4450eff46e6b451ef8e67ec9d64/model"
CLASSES = ("NORMAL", "PNEUMONIA")


def _labels_csv() -> Path:
    data_root = Path(os.environ.get("MEDPIPE_DATA", ROOT.parent / "shared" / "datasets"))
    return data_root / "kermany_pneumonia_cxr" / "labels.csv"


def write_subset(src: Path, dest: Path, n: int, seed: int) -> dict:
    """Write ``n/2`` NORMAL + ``n/2`` PNEUMONIA train rows (drawn with ``seed``) and every test row to ``dest``."""
    if n % 2:
        raise SystemExit(f"--n must be even (n/2 per class), got {n}")
    with open(src, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames
        rows = list(reader)
    rng = random.Random(seed)
    chosen = []
    for cls in CLASSES:
        pool = sorted((r for r in rows if r["split"] == "train" and r["label"] == cls), key=lambda r: r["path"])
        if len(pool) < n // 2:
            raise SystemExit(f"only {len(pool)} train rows of class {cls}, need {n // 2}")
        chosen += rng.sample(pool, n // 2)
    test = [r for r in rows if r["split"] == "test"]
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(chosen + test)
    counts = {f"train_{c}": sum(r["label"] == c for r in chosen) for c in CLASSES}
    counts.update({f"test_{c}": sum(r["label"] == c for r in test) for c in CLASSES})
    counts["train_subtypes"] = {s: sum(r["subtype"] == s for r in chosen) for s in sorted({r["subtype"] for r in chosen})}
    return counts


def run_arm(subset: Path, seed: int, arm: str, args) -> dict:
    from medpipe.config import load_config
    from medpipe.workflow import run_pipeline

    overrides = [
        f"data.list_file={subset}",
        "data.split.seed=0",
        f"train.seed={seed}",
        "train.progress=false",
        f"train.batch_size={args.batch_size}",
        f"train.max_epochs={args.epochs}",
    ]
    if arm == "pretrained":
        overrides += [f"net.pretrained={args.pretrained}", "train.freeze_backbone_epochs=2"]
    cfg = load_config(PIPELINE, overrides)
    t0 = time.time()
    res = run_pipeline(cfg)
    wall = time.time() - t0
    m = res.metrics
    return {
        "seed": seed, "arm": arm, "overrides": overrides,
        "test_auc": m["test_auc"], "test_accuracy": m["test_accuracy"],
        "test_sensitivity": m["test_sensitivity"], "test_specificity": m["test_specificity"],
        "test_balanced_accuracy": m["test_balanced_accuracy"], "threshold": m["test_threshold"],
        "best_val_auc": m["best_val_auc"], "best_epoch": int(m["best_epoch"]), "epochs": int(m["epochs"]),
        "seconds": wall, "run_id": res.run_id, "output_dir": str(res.output_dir),
        "split_sizes": _split_sizes(Path(res.output_dir)),
    }


def _split_sizes(run_dir: Path) -> dict:
    """Images per split and class in the run's ``manifest.json`` (the split actually used)."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return {k: {c: sum(case["label"] == i for case in manifest[k]) for i, c in enumerate(CLASSES)}
            for k in ("train", "val", "test")}


def _mean_std(xs):
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarise(results, header: str) -> str:
    lines = [header, "",
             "| seed | arm | test AUC | accuracy | sensitivity | specificity | bal. acc. | threshold | best epoch "
             "| val AUC (best) | seconds | MLflow run |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['seed']} | {r['arm']} | {r['test_auc']:.3f} | {100 * r['test_accuracy']:.1f} % "
                     f"| {100 * r['test_sensitivity']:.1f} % | {100 * r['test_specificity']:.1f} % "
                     f"| {100 * r['test_balanced_accuracy']:.1f} % | {r['threshold']:.3g} "
                     f"| {r['best_epoch']} / {r['epochs']} | {r['best_val_auc']:.3f} | {r['seconds']:.0f} "
                     f"| `{r['run_id']}` |")
    lines.append("")
    by = {}
    for r in results:
        by.setdefault(r["arm"], {})[r["seed"]] = r
    for arm in ("scratch", "pretrained"):
        if arm in by:
            vals = [by[arm][s]["test_auc"] for s in sorted(by[arm])]
            for key, name in (("test_auc", "test AUC"), ("test_balanced_accuracy", "bal. acc.")):
                mu, sd = _mean_std([by[arm][s][key] for s in sorted(by[arm])])
                lines.append(f"{arm:>10}: {name} mean +- std = {mu:.3f} +- {sd:.3f} (n={len(vals)} seeds)")
    seeds = sorted(set(by.get("scratch", {})) & set(by.get("pretrained", {})))
    if seeds:
        diffs = [by["pretrained"][s]["test_auc"] - by["scratch"][s]["test_auc"] for s in seeds]
        lines.append("paired test AUC difference (pretrained - scratch): "
                     + ", ".join(f"seed {s}: {d:+.3f}" for s, d in zip(seeds, diffs)))
        mu, sd = _mean_std(diffs)
        lines.append(f"mean +- std of the paired differences: {mu:+.3f} +- {sd:.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=96, help="training-pool size (n/2 per class; 80/20 train/val)")
    p.add_argument("--subset-seed", type=int, default=0, help="seed of the draw of the training pool")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="train.seed values (one pair each)")
    p.add_argument("--epochs", type=int, default=5, help="train.max_epochs for both arms (pipeline default 5)")
    p.add_argument("--batch-size", type=int, default=16, help="train.batch_size for both arms")
    p.add_argument("--pretrained", default=DEFAULT_PRETRAINED, help="net.pretrained of the pretrained arm")
    p.add_argument("--labels", type=Path, default=None, help="source labels.csv (default: $MEDPIPE_DATA/...)")
    p.add_argument("--out", type=Path, default=ROOT / "artifacts" / "transfer_low_data")
    args = p.parse_args(argv)

    os.chdir(ROOT)  # the pipeline's relative paths (artifacts/, sqlite:///mlflow.db) are relative to the repo
    out = args.out.resolve()
    subset = out / f"labels_n{args.n}.csv"
    counts = write_subset(args.labels or _labels_csv(), subset, args.n, args.subset_seed)
    print(f"subset {subset}: {json.dumps(counts)}", flush=True)

    t_start = time.time()
    results = []
    for seed in args.seeds:
        for arm in ("scratch", "pretrained"):
            r = run_arm(subset, seed, arm, args)
            results.append(r)
            print(f"done seed={seed} arm={arm} test_auc={r['test_auc']:.4f} best_epoch={r['best_epoch']} "
                  f"{r['seconds']:.0f}s run={r['run_id']}", flush=True)
            (out / "results.json").write_text(json.dumps(
                {"args": {k: str(v) for k, v in vars(args).items()}, "subset": str(subset), "counts": counts,
                 "results": results, "wall_seconds": time.time() - t_start}, indent=1))
    wall = time.time() - t_start
    sizes = [r["split_sizes"] for r in results]
    same = all(s == sizes[0] for s in sizes)
    header = (f"n={args.n} pool ({counts['train_NORMAL']} NORMAL + {counts['train_PNEUMONIA']} PNEUMONIA, "
              f"subset seed {args.subset_seed}, 80/20 train/val split seed 0: "
              f"train {sizes[0]['train']}, val {sizes[0]['val']}{'' if same else ' (DIFFERS between runs!)'}), "
              f"test = all {counts['test_NORMAL'] + counts['test_PNEUMONIA']} test images; epochs {args.epochs}, "
              f"batch {args.batch_size}; wall {wall / 60:.1f} min")
    text = summarise(results, header)
    print("\n" + text, flush=True)
    (out / "results.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
