"""Head to head with nnU-Net v2 on MSD Hippocampus: the same fold of the same cases, the same wall-clock budget.

A results script (not a test; run it on an otherwise idle machine). nnU-Net is an optional *benchmark* dependency,
installed in its own virtual environment and only ever called through its command-line programs (``subprocess``):
medpipe never imports ``nnunetv2``. Set it up once::

    python3 -m venv /work/nnunet-venv
    echo "torch==2.13.0" > /tmp/nnunet-constraints.txt   # keep the CPU torch: a plain install pulls CUDA wheels
    /work/nnunet-venv/bin/pip install torch==2.13.0
    /work/nnunet-venv/bin/pip install -c /tmp/nnunet-constraints.txt nnunetv2

(measured with nnunetv2 2.8.1, dynamic_network_architectures 0.4.4, torch 2.13.0+cpu.) PyPI's torchvision for Linux
is a CUDA build (0.28.0+cu130, pulled in by timm): next to the CPU torch its compiled operators do not load and
``import torchvision`` fails ("operator torchvision::nms does not exist"), which breaks nnU-Net's trainer search. The
script detects this and then starts each nnU-Net program through its own entry point (read from the installed
console script, same arguments) after defining the two operator schemas that torchvision's import registers kernels
for (:data:`TORCHVISION_SHIM`); nnU-Net's U-Net calls no torchvision operator. With a working torchvision the
programs run as installed. The JSON records which (``nnunet.torchvision_shim``).

What it does, in order (``--work-dir``, default ``/tmp/vs_nnunet``, holds everything but the result file):

1. **Split.** medpipe's own code cuts the cases: the pipeline's ``data`` section through
   :func:`medpipe.data.discovery.discover_cases` and :func:`medpipe.data.splits.split_segmentation_cases` (the calls
   of a medpipe run; ``data.split: {val_fraction: 0.2, seed: 0}``: 176 training, 44 validation cases). After the
   medpipe run its ``manifest.json`` is checked to hold the same validation cases.
2. **nnU-Net raw dataset** ``Dataset004_Hippocampus`` under ``<work>/nnUNet_raw`` (``imagesTr/<case>_0000.nii.gz`` and
   ``labelsTr/<case>.nii.gz`` symlinks to ``$MEDPIPE_DATA/msd_hippocampus``, ``dataset.json`` in the v2 format),
   with ``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` set for every nnU-Net command.
3. ``nnUNetv2_plan_and_preprocess -d 4 -c 3d_fullres --verify_dataset_integrity`` (timed), then
   ``splits_final.json`` whose fold 0 is medpipe's split.
4. ``nnUNetv2_train 4 3d_fullres 0 -tr nnUNetTrainer_5epochs -device cpu``, stopped (SIGTERM to its process group)
   when the budget (``--budget-minutes``) is spent and ``checkpoint_final.pth`` is not written yet; nnU-Net saves
   ``checkpoint_best.pth`` after every epoch that improves its EMA pseudo Dice (always after the first), so a
   stopped run predicts from the newest of ``checkpoint_final`` / ``checkpoint_latest`` / ``checkpoint_best``. With
   no checkpoint at the deadline (the first epoch, 250 iterations, is still running), training goes on until the
   first one is written, at most ``--max-overrun-minutes`` more, and the table shows the seconds it took.
   Once ``checkpoint_final.pth`` exists the trainer is stopped too: its own validation would predict the same
   cases as step 5.
5. ``nnUNetv2_predict -chk <checkpoint> -device cpu`` on the validation images (nnU-Net's default mirroring TTA;
   ``--nnunet-disable-tta`` turns it off).
6. medpipe: ``python -m medpipe.run <pipeline> --set train.max_epochs=N`` with N from ``--medpipe-epochs``:
   an integer, ``yaml`` (the pipeline as shipped) or ``auto`` (default): a one-epoch calibration run (validation
   every epoch) measures the seconds of a training epoch ``t_e`` (``metrics.json`` history) and of a validation
   ``t_v`` (the rest of ``train_seconds``), and N is the largest with ``N t_e + floor(N / val_interval) t_v`` within
   the budget (at least 1). medpipe has no wall-clock stop (``TrainConfig`` offers ``max_epochs`` and
   ``early_stop_patience`` only).
7. Both tools' validation masks (NIfTI on the input grid) are scored by the **same** code: medpipe's per-label
   metrics (:func:`medpipe.metrics.per_label_dice`, :func:`medpipe.metrics.per_label_distances` with the voxel
   spacing of the label's header: HD95 and average surface distance in mm, the empty-mask rule of
   :mod:`medpipe.metrics.distance`); per label the mean over cases (NaN cases left out), ``mean`` the mean of the two
   labels. medpipe's own ``metrics.json`` numbers are kept next to them.
8. Training throughput, voxels per second through the network: patch voxels x samples / training seconds. nnU-Net:
   ``patch_size`` and ``batch_size`` of ``nnUNetPlans.json`` (3d_fullres) x iterations per epoch (250) x completed
   epochs / the sum of its logged ``Epoch time`` (which includes its 50 forward-only validation iterations per
   epoch, so its figure is slightly low). medpipe: the last ``roi_size`` / ``spatial_size`` of the training
   transforms x ``train_samples`` / ``epoch_seconds`` of its ``metrics.json`` history (training iterations only).

Prints one table (Dice anterior / posterior / mean, HD95 and ASD in mm, training, prediction and total seconds,
throughput; the ratio medpipe / nnU-Net) and writes it with the commands, versions, nnU-Net's plan and both
per-case tables to ``--out`` (default ``benchmarks/results/vs_nnunet-<date>.json``).

Usage::

    MEDPIPE_DATA=/work/shared/datasets .venv/bin/python benchmarks/vs_nnunet.py \\
        --pipeline pipelines/hippocampus_3d.yaml --nnunet-bin /work/nnunet-venv/bin --budget-minutes 15
    # smoke test of the whole path (minutes): tiny budget, nnU-Net epochs of 10 iterations, 1 medpipe epoch
    nice -n 10 .venv/bin/python benchmarks/vs_nnunet.py --budget-minutes 1 --nnunet-iters-per-epoch 10 \\
        --medpipe-epochs 1 --out /tmp/vs_nnunet/smoke.json

``--nnunet-iters-per-epoch N`` runs nnU-Net's own ``run_training_entry`` through a three-line wrapper that shortens
the trainer's epoch (:data:`SHORT_EPOCH`). On a CPU nnU-Net's 250-iteration epoch takes longer than a 15-minute
budget, so a stopped ``nnUNetTrainer_5epochs`` would be cut inside its first epoch at its highest learning rate;
``--nnunet-iters-per-epoch auto`` instead measures the seconds per iteration (:func:`calibrate_nnunet`, a few
10-iteration epochs, then discarded) and shortens the epoch so that the trainer's whole 5-epoch poly schedule ends
within the budget, as medpipe's ``--medpipe-epochs auto`` does for medpipe. That is the fair CPU setting; the
shipped CLI (no option) is the fair GPU one. Timed
benchmarks in this repository take ``flock /tmp/medpipe_timed.lock`` (docs/performance.md) so that two of them
never share the CPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATASET_ID, DATASET = 4, "Dataset004_Hippocampus"
CONFIGURATION = "3d_fullres"
LABELS = {"background": 0, "Anterior": 1, "Posterior": 2}
NAMES = ["anterior", "posterior"]
NNUNET_ITERS_PER_EPOCH = 250  # nnUNetTrainer.num_iterations_per_epoch
CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")


# ------------------------------------------------------------------------------------------------ helpers
def _stem(path: str) -> str:
    """``hippocampus_001`` of ``.../hippocampus_001.nii.gz``."""
    name = Path(path).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def run_logged(cmd: Sequence[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
               ) -> tuple[float, str]:
    """Run ``cmd`` to completion with stdout and stderr into ``log``.

    Returns:
        ``(seconds, stdout + stderr text)``.

    Raises:
        RuntimeError: non-zero exit, with the command, the log file and its last lines.
    """
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.call(list(cmd), stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    secs = time.perf_counter() - t0
    text = log.read_text(errors="replace")
    if rc != 0:
        tail = "\n".join(text.splitlines()[-25:])
        raise RuntimeError(f"command failed (exit {rc}): {shlex.join(cmd)}\nlog: {log}\n{tail}")
    return secs, text


def tool_versions(nnunet_python: Path) -> dict[str, str]:
    """Versions of the packages of both environments that the numbers depend on."""
    from importlib.metadata import version

    out = {"python": platform.python_version(), "medpipe_torch": version("torch"), "monai": version("monai")}
    code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "['nnunetv2', 'torch', 'dynamic_network_architectures', 'batchgeneratorsv2', 'SimpleITK', 'numpy']}))")
    try:
        res = subprocess.run([str(nnunet_python), "-c", code], capture_output=True, text=True, check=True)
        out.update({f"nnunet_env_{k}": v for k, v in json.loads(res.stdout).items()})
    except (OSError, subprocess.CalledProcessError, ValueError) as exc:
        out["nnunet_env_error"] = str(exc)
    return out


# ------------------------------------------------------------------------------------------------ split and data
def medpipe_split(pipeline: Path) -> tuple[list[dict], list[dict]]:
    """``(train, val)`` cases exactly as a medpipe run of ``pipeline`` cuts them (its ``data`` section through
    :func:`medpipe.data.discovery.discover_cases` and :func:`medpipe.data.splits.split_segmentation_cases`).

    Raises:
        RuntimeError: the pipeline's data define a test split (nnU-Net's fold would differ).
    """
    from medpipe.config import load_config
    from medpipe.data.discovery import discover_cases
    from medpipe.data.splits import split_segmentation_cases

    cfg = load_config(pipeline)
    train, val, test = split_segmentation_cases(discover_cases(cfg.data), cfg.data.split)
    if test:
        raise RuntimeError(f"{pipeline}: the data define a test split of {len(test)} cases; expected train/val only")
    return train, val


def _link(src: str, dst: Path) -> None:
    """Symlink ``dst`` -> ``src``, replacing an older link."""
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    dst.symlink_to(os.path.abspath(src))


def build_raw_dataset(raw_root: Path, cases: Sequence[dict]) -> Path:
    """nnU-Net v2 raw dataset ``Dataset004_Hippocampus`` of ``cases`` (symlinks; ``dataset.json`` v2).

    Returns:
        The dataset folder.
    """
    folder = raw_root / DATASET
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    for c in cases:
        _link(c["image"], folder / "imagesTr" / f"{_stem(c['image'])}_0000.nii.gz")
        _link(c["label"], folder / "labelsTr" / f"{_stem(c['image'])}.nii.gz")
    meta = {"channel_names": {"0": "MRI"}, "labels": LABELS, "numTraining": len(cases), "file_ending": ".nii.gz",
            "name": "Hippocampus", "description": "MSD Task04 Hippocampus, medpipe's copy (PROVENANCE.md)"}
    (folder / "dataset.json").write_text(json.dumps(meta, indent=1))
    return folder


def write_splits(preprocessed: Path, train: Sequence[dict], val: Sequence[dict]) -> Path:
    """``splits_final.json`` whose fold 0 is medpipe's split (nnU-Net reads ``splits[fold]``)."""
    path = preprocessed / DATASET / "splits_final.json"
    split = {"train": sorted(_stem(c["image"]) for c in train), "val": sorted(_stem(c["image"]) for c in val)}
    path.write_text(json.dumps([split], indent=1))
    return path


def nnunet_env(work: Path) -> dict[str, str]:
    """The environment of every nnU-Net command: its three folders under ``work``."""
    env = dict(os.environ)
    for key, sub in (("nnUNet_raw", "nnUNet_raw"), ("nnUNet_preprocessed", "nnUNet_preprocessed"),
                     ("nnUNet_results", "nnUNet_results")):
        env[key] = str(work / sub)
        (work / sub).mkdir(parents=True, exist_ok=True)
    return env


def plan_summary(plans_file: Path) -> dict:
    """What nnU-Net planned for 3d_fullres: patch, batch, spacing, normalisation, network depth and widths."""
    plans = json.loads(plans_file.read_text())
    c = plans["configurations"][CONFIGURATION]
    arch = c.get("architecture", {})
    kw = arch.get("arch_kwargs", {})
    return {"patch_size": c["patch_size"], "batch_size": c["batch_size"], "spacing": c["spacing"],
            "median_image_size_in_voxels": c.get("median_image_size_in_voxels"),
            "normalization_schemes": c.get("normalization_schemes"),
            "use_mask_for_norm": c.get("use_mask_for_norm"),
            "network": arch.get("network_class_name"), "n_stages": kw.get("n_stages"),
            "features_per_stage": kw.get("features_per_stage"), "strides": kw.get("strides"),
            "kernel_sizes": kw.get("kernel_sizes"), "n_conv_per_stage": kw.get("n_conv_per_stage"),
            "n_conv_per_stage_decoder": kw.get("n_conv_per_stage_decoder")}


# ------------------------------------------------------------------------------------------------ nnU-Net training
#: defines the two operators whose fake kernels torchvision registers unguarded at import: a CUDA torchvision wheel
#: (PyPI has no other for Linux) next to the CPU torch cannot load its ``_C`` ops, and ``import torchvision`` (by
#: timm, by dynamic_network_architectures' Primus, by nnU-Net's trainer search) then fails with
#: "operator torchvision::nms does not exist". nnU-Net's U-Net never calls a torchvision operator.
TORCHVISION_SHIM = ("import torch; _tv = torch.library.Library('torchvision', 'DEF')\n"
                    "for _op in ('nms', 'qnms'):\n"
                    "    _tv.define(_op + '(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')\n")
#: shortens nnU-Net's epoch (smoke tests only): the trainer built by ``get_trainer_from_args``
SHORT_EPOCH = ("import nnunetv2.run.run_training as _rt; _get = _rt.get_trainer_from_args\n"
               "def _short(*a, **k):\n"
               "    t = _get(*a, **k); t.num_iterations_per_epoch = {n}; t.num_val_iterations_per_epoch = {v}; return t\n"
               "_rt.get_trainer_from_args = _short\n")


def torchvision_broken(nnunet_python: Path) -> bool:
    """True when ``import torchvision`` fails in the nnU-Net environment for want of its compiled operators."""
    res = subprocess.run([str(nnunet_python), "-c", "import torchvision"], capture_output=True, text=True,
                         check=False)
    return res.returncode != 0 and "torchvision::" in res.stderr


def nnunet_command(bin_dir: Path, program: str, args: Sequence[str], shim: bool = False,
                   iters_per_epoch: int | None = None) -> list[str]:
    """An nnU-Net command line: the program as installed, or, with ``shim`` (:data:`TORCHVISION_SHIM`) or
    ``iters_per_epoch`` (:data:`SHORT_EPOCH`), its own entry point (read from the console script) called by the
    environment's python after those lines, with the same arguments.

    Raises:
        FileNotFoundError: ``program`` is not in ``bin_dir``.
    """
    script = bin_dir / program
    if not script.is_file():
        raise FileNotFoundError(f"{script}: not found; --nnunet-bin must be the bin folder of an nnunetv2 install")
    if not shim and iters_per_epoch is None:
        return [str(script), *args]
    m = re.search(r"^from (\S+) import (\w+)", script.read_text(errors="replace"), re.MULTILINE)
    if m is None:
        raise RuntimeError(f"{script}: no 'from MODULE import ENTRY' line (not a console script?)")
    code = TORCHVISION_SHIM if shim else ""
    if iters_per_epoch is not None:
        code += SHORT_EPOCH.format(n=int(iters_per_epoch), v=max(1, int(iters_per_epoch) // 5))
    code += f"import sys; sys.argv[0] = {program!r}\nfrom {m.group(1)} import {m.group(2)}\nsys.exit({m.group(2)}())\n"
    return [str(bin_dir / "python"), "-c", code, *args]


def _newest_checkpoint(fold_dir: Path) -> Path | None:
    """``checkpoint_final.pth`` if written, else the newest of the others (None if none)."""
    if (fold_dir / CHECKPOINTS[0]).is_file():
        return fold_dir / CHECKPOINTS[0]
    found = [fold_dir / n for n in CHECKPOINTS[1:] if (fold_dir / n).is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the trainer's process group (its data-augmentation workers too), SIGKILL after 30 s."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _checkpoint_settled(path: Path) -> bool:
    """No write to ``path`` in the last 5 seconds (a stop never cuts a ``torch.save`` short)."""
    return time.time() - path.stat().st_mtime > 5


def train_nnunet(cmd: list[str], env: dict[str, str], fold_dir: Path, log: Path, budget_s: float,
                 overrun_s: float) -> dict:
    """Run nnU-Net's training under the wall-clock budget (module docstring, step 4).

    Returns:
        ``{"wall_seconds", "stopped_by", "checkpoint"}``; ``stopped_by`` is ``finished`` (the process ended),
        ``final_checkpoint``, ``budget`` or ``overrun``.

    Raises:
        RuntimeError: the trainer failed, or wrote no checkpoint at all.
    """
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    stopped_by = "finished"
    try:
        while proc.poll() is None:
            time.sleep(2)
            elapsed = time.perf_counter() - t0
            ckpt = _newest_checkpoint(fold_dir)
            final = fold_dir / CHECKPOINTS[0]
            if final.is_file() and _checkpoint_settled(final):
                stopped_by = "final_checkpoint"
            elif elapsed >= budget_s and ckpt is not None and _checkpoint_settled(ckpt):
                stopped_by = "budget"
            elif elapsed >= budget_s + overrun_s:
                stopped_by = "overrun"
            else:
                continue
            wall = time.perf_counter() - t0
            _stop(proc)
            break
        else:
            wall = time.perf_counter() - t0
    finally:
        _stop(proc)
    if stopped_by == "finished" and proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise RuntimeError(f"nnU-Net training failed (exit {proc.returncode}), log {log}:\n{tail}")
    ckpt = _newest_checkpoint(fold_dir)
    if ckpt is None:
        raise RuntimeError(f"nnU-Net wrote no checkpoint in {wall:.0f} s ({stopped_by}); log {log}")
    return {"wall_seconds": wall, "stopped_by": stopped_by, "checkpoint": ckpt.name}


#: iterations per epoch of the calibration run of ``--nnunet-iters-per-epoch auto``
CALIB_ITERS = 10


def calibrate_nnunet(cmd: list[str], env: dict[str, str], fold_dir: Path, log: Path, budget_s: float,
                     n_epochs: int) -> dict:
    """Iterations per epoch for which nnU-Net's whole schedule fits the budget (``--nnunet-iters-per-epoch auto``).

    Runs the trainer with epochs of :data:`CALIB_ITERS` training iterations (and ``CALIB_ITERS // 5`` validation
    ones, the ratio of nnU-Net's 250 / 50) until its log shows three epoch times, then stops it. The seconds per
    iteration ``t`` are the mean of the second and third epoch over :data:`CALIB_ITERS` (the first holds start-up
    work); the start-up ``s0`` is the wall time to the first epoch's end minus one epoch. Returns
    ``floor((budget - s0) / (n_epochs * t))`` iterations (at least 1) with the measurements.

    Raises:
        RuntimeError: the trainer ended or ran 20 minutes without logging three epochs.
    """
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    first_end = None
    try:
        while True:
            time.sleep(1)
            epochs = nnunet_epochs(fold_dir)
            if epochs and first_end is None:
                first_end = time.perf_counter() - t0
            if len(epochs) >= 3:
                break
            if proc.poll() is not None or time.perf_counter() - t0 > 1200:
                raise RuntimeError(f"nnU-Net calibration logged {len(epochs)} epochs (log {log})")
    finally:
        _stop(proc)
    per_iter = (epochs[1] + epochs[2]) / 2 / CALIB_ITERS
    startup = max(0.0, first_end - epochs[0]) if first_end is not None else 0.0
    iters = max(1, math.floor((budget_s - startup) / (n_epochs * per_iter)))
    print(f"[nnU-Net] calibration: {per_iter:.2f} s per iteration (validation share included), start-up "
          f"{startup:.0f} s -> {n_epochs} epochs of {iters} iterations", flush=True)
    return {"epoch_seconds": epochs, "seconds_per_iteration": per_iter, "startup_seconds": startup,
            "iterations_per_epoch": iters, "log": str(log)}


def nnunet_epochs(fold_dir: Path) -> list[float]:
    """Seconds of each completed epoch, from the ``Epoch time: X s`` lines of nnU-Net's training log."""
    times: list[float] = []
    for log in sorted(fold_dir.glob("training_log_*.txt")):
        times += [float(m) for m in re.findall(r"Epoch time: ([0-9.]+) s", log.read_text(errors="replace"))]
    return times


# ------------------------------------------------------------------------------------------------ scoring
def score_case(pred_path: Path, label_path: str, num_classes: int = 3) -> dict[str, float]:
    """Per-label Dice, HD95 and ASD (mm) of one predicted mask file against its label file.

    medpipe's per-label metrics (:func:`medpipe.metrics.per_label_dice`, :func:`medpipe.metrics.per_label_distances`
    at the spacing of the label's NIfTI header). Both files must share shape and affine.

    Raises:
        ValueError: shapes or affines differ (names both files).
    """
    import nibabel as nib

    from medpipe.metrics import per_label_dice, per_label_distances

    pimg, limg = nib.load(str(pred_path)), nib.load(str(label_path))
    pred = np.rint(np.asanyarray(pimg.dataobj)).astype(np.int64)
    lab = np.rint(np.asanyarray(limg.dataobj)).astype(np.int64)
    if pred.shape != lab.shape or not np.allclose(pimg.affine, limg.affine, atol=1e-3):
        raise ValueError(f"{pred_path}: shape {pred.shape} / affine differ from its label {label_path} "
                         f"(shape {lab.shape}); expected the input grid")
    spacing = [float(v) for v in limg.header.get_zooms()[:3]]
    row: dict[str, float] = {}
    for key, values in (("dice", per_label_dice(pred, lab, num_classes)),
                        ("hd95", per_label_distances(pred, lab, num_classes, "hd95", spacing)),
                        ("asd", per_label_distances(pred, lab, num_classes, "asd", spacing))):
        for name, v in zip(NAMES, values):
            row[f"{key}_{name}"] = float(v)
    return row


def score_folder(pred_dir: Path, val: Sequence[dict]) -> dict:
    """Score every validation case's ``<case>.nii.gz`` in ``pred_dir``.

    Returns:
        ``{"per_case": {case: row}, "mean": {metric: mean over cases}}`` with ``<metric>_mean`` the mean of the two
        labels' means.

    Raises:
        FileNotFoundError: a validation case has no mask.
    """
    per_case = {}
    for c in val:
        path = pred_dir / f"{_stem(c['image'])}.nii.gz"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no predicted mask for validation case {c['image']}")
        per_case[_stem(c["image"])] = score_case(path, c["label"])
    keys = list(next(iter(per_case.values())))
    mean = {k: float(np.nanmean([r[k] for r in per_case.values()])) for k in keys}
    for metric in ("dice", "hd95", "asd"):
        mean[f"{metric}_mean"] = float(np.mean([mean[f"{metric}_{n}"] for n in NAMES]))
    return {"per_case": per_case, "mean": mean}


# ------------------------------------------------------------------------------------------------ medpipe
def _patch_size(pipeline: Path) -> list[int] | None:
    """The training sample's spatial size: the last ``roi_size`` / ``spatial_size`` of the training transforms."""
    from medpipe.config import load_config

    size = None
    for t in load_config(pipeline).transforms.train:
        args = t.kwargs
        size = args.get("roi_size", args.get("spatial_size", size))
    return [int(v) for v in size] if size is not None else None


def run_medpipe(pipeline: Path, work: Path, overrides: Sequence[str], tag: str) -> dict:
    """``python -m medpipe.run`` with ``overrides`` (artifacts and MLflow store under ``work``).

    Returns:
        ``{"wall_seconds", "folder", "metrics", "command"}`` (``metrics``: its ``metrics.json``).
    """
    sets = [f"output_dir={work / 'medpipe_artifacts'}", f"tracking.tracking_uri=sqlite:///{work / 'mlflow.db'}",
            "train.progress=false", *overrides]
    cmd = [sys.executable, "-m", "medpipe.run", str(pipeline)] + [a for s in sets for a in ("--set", s)]
    secs, text = run_logged(cmd, work / f"medpipe_{tag}.log", cwd=REPO)
    m = re.search(r"^artifacts: (.+)$", text, re.MULTILINE)
    if m is None:
        raise RuntimeError(f"medpipe run printed no 'artifacts:' line; log {work / f'medpipe_{tag}.log'}")
    folder = Path(m.group(1).strip())
    return {"wall_seconds": secs, "folder": str(folder), "command": shlex.join(cmd),
            "metrics": json.loads((folder / "metrics.json").read_text())}


def epochs_for_budget(calib: dict, budget_s: float, val_interval: int) -> tuple[int, dict]:
    """Largest epoch count whose training fits ``budget_s``, from a one-epoch run validating every epoch."""
    hist = calib["metrics"]["history"]["train"]
    t_epoch = float(np.mean([h["epoch_seconds"] for h in hist]))
    t_val = max(0.0, float(calib["metrics"]["final"]["train_seconds"]) - sum(h["epoch_seconds"] for h in hist))
    n = 1
    while (n + 1) * t_epoch + ((n + 1) // val_interval) * t_val <= budget_s:
        n += 1
    return n, {"epoch_seconds": t_epoch, "validation_seconds": t_val}


def medpipe_throughput(metrics: dict, patch: list[int] | None) -> float | None:
    """Training voxels per second: samples x patch voxels / training-epoch seconds (``metrics.json`` history)."""
    hist = metrics["history"]["train"]
    secs = sum(h["epoch_seconds"] for h in hist)
    if patch is None or secs <= 0:
        return None
    return sum(h["train_samples"] for h in hist) * math.prod(patch) / secs


# ------------------------------------------------------------------------------------------------ the two sides
def nnunet_side(args, work: Path, cases: Sequence[dict], train: Sequence[dict], val: Sequence[dict]) -> dict:
    """Steps 2-5 and 7 of the module docstring for nnU-Net; returns its part of the result."""
    import shutil

    for sub in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnunet_val_in", "nnunet_val_pred"):
        shutil.rmtree(work / sub, ignore_errors=True)  # our own work folder: no stale checkpoint or plan is reused
    env = nnunet_env(work)
    build_raw_dataset(work / "nnUNet_raw", cases)
    b = Path(args.nnunet_bin)
    shim = torchvision_broken(b / "python")
    cmds: dict[str, str] = {}

    def command(key: str, program: str, prog_args: list[str], iters: int | None = None) -> list[str]:
        cmds[key] = shlex.join([program, *prog_args])
        how = " (its entry point, after the torchvision shim)" if shim else ""
        how += f" (epochs of {iters} iterations)" if iters else ""
        print(f"[nnU-Net] {cmds[key]}{how}", flush=True)
        return nnunet_command(b, program, prog_args, shim, iters)

    plan_cmd = command("plan_and_preprocess", "nnUNetv2_plan_and_preprocess",
                       ["-d", str(DATASET_ID), "-c", CONFIGURATION, "--verify_dataset_integrity",
                        "-np", str(args.processes), "-npfp", str(args.processes)])
    plan_s, _ = run_logged(plan_cmd, work / "nnunet_plan.log", env=env)
    plan = plan_summary(work / "nnUNet_preprocessed" / DATASET / "nnUNetPlans.json")
    write_splits(work / "nnUNet_preprocessed", train, val)

    train_args = [str(DATASET_ID), CONFIGURATION, "0", "-tr", args.nnunet_trainer, "-device", "cpu"]
    fold_dir = work / "nnUNet_results" / DATASET / f"{args.nnunet_trainer}__nnUNetPlans__{CONFIGURATION}" / "fold_0"
    calibration = None
    if args.nnunet_iters_per_epoch == "auto":
        calibration = calibrate_nnunet(command("calibrate", "nnUNetv2_train", train_args, CALIB_ITERS), env,
                                       fold_dir, work / "nnunet_calibrate.log", args.budget_minutes * 60,
                                       args.nnunet_epochs)
        shutil.rmtree(fold_dir.parent, ignore_errors=True)
        args.nnunet_iters_per_epoch = calibration["iterations_per_epoch"]
    elif args.nnunet_iters_per_epoch is not None:
        args.nnunet_iters_per_epoch = int(args.nnunet_iters_per_epoch)
    train_cmd = command("train", "nnUNetv2_train", train_args, args.nnunet_iters_per_epoch)
    tr = train_nnunet(train_cmd, env, fold_dir, work / "nnunet_train.log", args.budget_minutes * 60,
                      args.max_overrun_minutes * 60)
    epochs = nnunet_epochs(fold_dir)

    val_in, val_out = work / "nnunet_val_in", work / "nnunet_val_pred"
    val_in.mkdir(parents=True, exist_ok=True)
    for c in val:
        _link(c["image"], val_in / f"{_stem(c['image'])}_0000.nii.gz")
    pred_cmd = command("predict", "nnUNetv2_predict",
                       ["-i", str(val_in), "-o", str(val_out), "-d", str(DATASET_ID), "-c", CONFIGURATION,
                        "-f", "0", "-tr", args.nnunet_trainer, "-chk", tr["checkpoint"], "-device", "cpu",
                        "-npp", str(args.processes), "-nps", str(args.processes), "--disable_progress_bar",
                        *(["--disable_tta"] if args.nnunet_disable_tta else [])])
    pred_s, _ = run_logged(pred_cmd, work / "nnunet_predict.log", env=env)
    iters = args.nnunet_iters_per_epoch or NNUNET_ITERS_PER_EPOCH
    vox = len(epochs) * iters * plan["batch_size"] * math.prod(plan["patch_size"])
    return {"commands": cmds, "torchvision_shim": shim, "env": {k: env[k] for k in sorted(env) if "nnUNet" in k},
            "plan": plan, "plan_seconds": plan_s, "calibration": calibration, "train": tr,
            "epochs_completed": len(epochs),
            "epoch_seconds": epochs, "iterations_per_epoch": iters, "predict_seconds": pred_s,
            "train_seconds": tr["wall_seconds"], "total_seconds": plan_s + tr["wall_seconds"] + pred_s,
            "throughput_voxels_per_s": vox / sum(epochs) if epochs else None,
            "scores": score_folder(val_out, val)}


def medpipe_side(args, work: Path, val: Sequence[dict]) -> dict:
    """Steps 6-7 of the module docstring for medpipe; returns its part of the result."""
    from medpipe.config import load_config

    pipeline = Path(args.pipeline)
    cfg = load_config(pipeline, list(args.overrides))
    out: dict = {"pipeline": str(pipeline), "overrides": list(args.overrides)}
    if args.medpipe_epochs == "auto":
        print(f"[medpipe] calibration: 1 epoch of {pipeline}", flush=True)
        calib = run_medpipe(pipeline, work, [*args.overrides, "train.max_epochs=1", "train.val_interval=1"], "calib")
        n, timing = epochs_for_budget(calib, args.budget_minutes * 60, cfg.train.val_interval)
        out["calibration"] = {"wall_seconds": calib["wall_seconds"], "command": calib["command"], **timing}
    elif args.medpipe_epochs == "yaml":
        n = cfg.train.max_epochs
    else:
        n = int(args.medpipe_epochs)
    print(f"[medpipe] {n} epochs of {pipeline}", flush=True)
    run = run_medpipe(pipeline, work, [*args.overrides, f"train.max_epochs={n}"], "run")
    manifest = json.loads((Path(run["folder"]) / "manifest.json").read_text())
    if sorted(c["image"] for c in manifest["val"]) != sorted(c["image"] for c in val):
        raise RuntimeError(f"{run['folder']}/manifest.json: medpipe validated other cases than nnU-Net's fold 0")
    final = run["metrics"]["final"]
    patch = _patch_size(pipeline)
    out.update({"command": run["command"], "folder": run["folder"], "max_epochs": n, "patch_size": patch,
                "batch_size": cfg.train.batch_size, "final_metrics": final,
                "epochs_completed": len(run["metrics"]["history"]["train"]),
                "train_seconds": float(final["train_seconds"]), "total_seconds": run["wall_seconds"],
                "predict_seconds": run["wall_seconds"] - float(final["train_seconds"]),
                "throughput_voxels_per_s": medpipe_throughput(run["metrics"], patch),
                "scores": score_folder(Path(run["folder"]) / "predictions" / "val", val)})
    return out


# ------------------------------------------------------------------------------------------------ report
ROWS = [("Dice anterior", "dice_anterior", "{:.4f}"), ("Dice posterior", "dice_posterior", "{:.4f}"),
        ("Dice mean", "dice_mean", "{:.4f}"), ("HD95 anterior (mm)", "hd95_anterior", "{:.2f}"),
        ("HD95 posterior (mm)", "hd95_posterior", "{:.2f}"), ("HD95 mean (mm)", "hd95_mean", "{:.2f}"),
        ("ASD mean (mm)", "asd_mean", "{:.3f}")]
TIMES = [("epochs completed", "epochs_completed", "{:d}"), ("training s", "train_seconds", "{:.0f}"),
         ("total s (prep+train+predict)", "total_seconds", "{:.0f}"),
         ("training voxels/s", "throughput_voxels_per_s", "{:,.0f}")]


def _cell(fmt: str, v) -> str:
    """One formatted value ('n/a' for None / NaN)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return fmt.format(v)


def table(nn: dict, mp: dict) -> str:
    """The comparison as a fixed-width text table (ratio = medpipe / nnU-Net)."""
    lines = [f"{'':30s} {'nnU-Net':>12s} {'medpipe':>12s} {'medpipe/nnU-Net':>16s}"]
    pairs = [(label, fmt, nn["scores"]["mean"][k], mp["scores"]["mean"][k]) for label, k, fmt in ROWS]
    pairs += [(label, fmt, nn.get(k), mp.get(k)) for label, k, fmt in TIMES]
    for label, fmt, a, b in pairs:
        ratio = b / a if a and b is not None and a is not None and math.isfinite(a) and math.isfinite(b) else None
        lines.append(f"{label:30s} {_cell(fmt, a):>12s} {_cell(fmt, b):>12s} {_cell('{:.3f}', ratio):>16s}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pipeline", default=str(REPO / "pipelines" / "hippocampus_3d.yaml"), help="medpipe pipeline")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override of the medpipe pipeline (repeatable), as medpipe.run's --set")
    p.add_argument("--nnunet-bin", default="/work/nnunet-venv/bin", help="bin folder of the nnU-Net environment")
    p.add_argument("--work-dir", default="/tmp/vs_nnunet", help="nnU-Net folders, logs, medpipe artifacts")
    p.add_argument("--budget-minutes", type=float, default=15.0, help="training wall-clock budget of each tool")
    p.add_argument("--max-overrun-minutes", type=float, default=30.0,
                   help="nnU-Net without a checkpoint at the deadline trains on until its first one, at most this")
    p.add_argument("--nnunet-trainer", default="nnUNetTrainer_5epochs", help="nnU-Net trainer class (-tr)")
    p.add_argument("--nnunet-iters-per-epoch", default=None,
                   help="N: nnU-Net epochs of N iterations; 'auto': as many as a measured iteration time lets the "
                        "trainer's whole schedule (5 epochs) finish within the budget; default: its 250 iterations, "
                        "CLI as shipped, stopped at the budget")
    p.add_argument("--nnunet-epochs", type=int, default=5,
                   help="epochs of --nnunet-trainer's schedule (5 for nnUNetTrainer_5epochs), for 'auto' iterations")
    p.add_argument("--nnunet-disable-tta", action="store_true", help="nnUNetv2_predict --disable_tta")
    p.add_argument("--processes", type=int, default=min(2, os.cpu_count() or 1),
                   help="nnU-Net preprocessing / export processes (-np, -npfp, -npp, -nps)")
    p.add_argument("--medpipe-epochs", default="auto", help="'auto' (calibrated to the budget), 'yaml' or N")
    p.add_argument("--out", default=None, help="result JSON (default benchmarks/results/vs_nnunet-<date>.json)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run both sides, print the table, write the JSON; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.medpipe_epochs not in ("auto", "yaml") and not args.medpipe_epochs.isdigit():
        raise SystemExit(f"--medpipe-epochs: expected 'auto', 'yaml' or a positive integer, got {args.medpipe_epochs}")
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now()
    train, val = medpipe_split(Path(args.pipeline))
    cases = sorted([*train, *val], key=lambda c: c["image"])
    print(f"split: {len(train)} train / {len(val)} validation cases (medpipe's data.split of {args.pipeline})")
    result = {"date": started.isoformat(timespec="seconds"), "host": {"cpus": os.cpu_count(),
              "load_avg_at_start": os.getloadavg(), "nice": os.nice(0)},
              "versions": tool_versions(Path(args.nnunet_bin) / "python"), "budget_minutes": args.budget_minutes,
              "argv": sys.argv, "val_cases": [_stem(c["image"]) for c in val]}
    result["nnunet"] = nnunet_side(args, work, cases, train, val)
    result["medpipe"] = medpipe_side(args, work, val)
    text = table(result["nnunet"], result["medpipe"])
    result["table"] = text
    print(text)
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"vs_nnunet-{started:%Y%m%d}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
