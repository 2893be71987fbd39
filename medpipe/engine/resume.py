"""Checkpoints that survive a crash, and resuming from them.

Every epoch the trainer writes ``checkpoints/latest_checkpoint_<epoch>.pt`` with ignite's ``Checkpoint`` and an
atomic ``DiskSaver`` (serialised to a temporary file in the same folder, then ``os.replace``-d to the final name).
The two newest are kept, because ignite deletes the oldest file *before* writing the new one: a process killed
while saving leaves the previous epoch's checkpoint complete, never a truncated one. The checkpoint holds everything
the next epoch depends on:

* ``net``, ``optimizer``, ``scheduler`` (when configured), ``scaler`` (the AMP ``GradScaler``, CUDA with
  ``train.amp``), ``trainer`` (ignite state: epoch, iteration);
* ``rng``: the global Python, NumPy, torch (CPU and every CUDA device) generator states (:class:`RNGState`);
* ``history``: the per-epoch training and validation records (:class:`History`), so curves and reports of a
  resumed run cover all its epochs;
* ``best``: which ``best_*.pt`` is the best so far and its score; ``early_stop``: the early-stopping counter;
  ``evaluator``: the evaluator's best metric and epoch.

The data pipeline's randomness (shuffling order, random crops and flips) is re-seeded at the start of every epoch
from ``(train.seed, epoch, rank)`` (:class:`EpochReseed`), so epoch *e* draws the same samples whether the run
started at epoch 1 or resumed at *e*, with or without worker processes. Together these make a resumed run on
CPU reach the same weights as an uninterrupted one with the same seed (``tests/test_resume.py`` checks them to a
relative 1e-5). Resume with the number of processes the run started with:
under ``torchrun`` the epoch length depends on it.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Dict, List

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = ["RNGState", "History", "EpochReseed", "StateAttributes", "epoch_seed"]



class RNGState:
    """The process-wide random generator states as a checkpointable object (``state_dict`` /
    ``load_state_dict``): Python ``random``, NumPy's global ``RandomState``, torch's CPU generator and every
    CUDA device's generator. Stored as tensors and plain numbers, so the checkpoint loads with
    ``torch.load(weights_only=True)``."""

    def state_dict(self) -> Dict[str, Any]:
        """The generator states (tensors and plain numbers: loadable with ``weights_only=True``)."""
        name, keys, pos, has_gauss, cached = np.random.get_state()
        version, internal, gauss = random.getstate()
        out = {
            "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64),
                       "gauss": gauss},
            "numpy": {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            out["cuda"] = torch.cuda.get_rng_state_all()
        return out

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore the generator states written by :meth:`state_dict`."""
        py = state["python"]
        random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
        n = state["numpy"]
        np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                             n["cached_gaussian"]))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class History:
    """Per-epoch records of a training run: ``{"train": [{"epoch", "train_loss", "lr", ...}],
    "val": [{"epoch", <metric>: value, ...}]}``, the source of the training-curve plots and ``metrics.json``.

    ``attach(trainer, evaluator)`` appends one train record per trainer epoch (from ``trainer.state.metrics``,
    so attach it after the handler that computes ``train_loss``) and one val record per evaluation, stamped with the
    trainer's epoch. ``load_state_dict`` refills :attr:`data` in place (callers may hold a reference to it).
    """

    def __init__(self) -> None:
        self.data: Dict[str, List[Dict[str, float]]] = {"train": [], "val": []}

    def attach(self, trainer, evaluator) -> None:
        """Record each epoch's ``trainer.state.metrics`` (training) and ``evaluator.state.metrics`` (validation),
        with the trainer's epoch."""
        from ignite.engine import Events

        @trainer.on(Events.EPOCH_COMPLETED)
        def _train(engine):
            rec = {"epoch": engine.state.epoch}
            rec.update({k: float(v) for k, v in engine.state.metrics.items()})
            self.data["train"].append(rec)

        @evaluator.on(Events.EPOCH_COMPLETED)
        def _val(engine):
            rec = {"epoch": trainer.state.epoch}
            rec.update({k: float(v) for k, v in engine.state.metrics.items()})
            self.data["val"].append(rec)

    def state_dict(self) -> Dict[str, Any]:
        """``{"train": [record, ...], "val": [record, ...]}`` (copies of the records)."""
        return {k: [dict(r) for r in v] for k, v in self.data.items()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Replace the records by a checkpoint's."""
        for k in list(self.data):
            self.data[k][:] = [dict(r) for r in state.get(k, [])]


class StateAttributes:
    """Some attributes of an object (e.g. an ignite ``State``'s ``best_metric``) as a checkpointable object."""

    def __init__(self, obj: Any, names: List[str]) -> None:
        self.obj, self.names = obj, list(names)

    def state_dict(self) -> Dict[str, Any]:
        """The named attributes' values."""
        return {n: getattr(self.obj, n, None) for n in self.names}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Set the named attributes from a checkpoint."""
        for n in self.names:
            if n in state:
                setattr(self.obj, n, state[n])


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The data seed of one epoch on one process: a 63-bit integer derived from ``(seed, epoch, rank)`` with
    ``numpy.random.SeedSequence`` (independent streams for every epoch and rank)."""
    hi, lo = (int(v) for v in np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(rank)])
              .generate_state(2, dtype=np.uint32))
    return ((hi << 32) | lo) & ((1 << 63) - 1)


class EpochReseed:
    """Re-seed a data loader at the start of every epoch from :func:`epoch_seed` ``(seed, epoch, rank)``.

    Sets the loader's ``generator`` (shuffling / weighted sampling order and, with worker processes, the
    workers' seeds, which MONAI's ``worker_init_fn`` passes on to the random transforms) and, without worker
    processes, the random transforms of the dataset directly (``monai.data.utils.set_rnd``). Epoch *e*'s
    samples then depend only on ``(seed, e, rank)``, which is what makes a resumed run repeat an uninterrupted one.
    Worker processes must be re-created every epoch for this (``persistent_workers=False``, as
    :func:`medpipe.data.loaders.build_loader` does).

    Args:
        loader: a ``torch.utils.data.DataLoader`` built with a ``generator``.
        seed: ``train.seed``.
        rank: the process rank in distributed training (0 otherwise).
    """

    def __init__(self, loader, seed: int, rank: int = 0) -> None:
        self.loader, self.seed, self.rank = loader, int(seed), int(rank)

    def attach(self, trainer) -> None:
        """Re-seed on every ``EPOCH_STARTED`` of ``trainer``."""
        from ignite.engine import Events

        trainer.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine) -> None:
        s = epoch_seed(self.seed, engine.state.epoch, self.rank)
        gen = getattr(self.loader, "generator", None)
        if gen is not None:
            gen.manual_seed(s)
        if getattr(self.loader, "num_workers", 0) == 0:
            from monai.data.utils import set_rnd

            set_rnd(self.loader.dataset, s % (2**32))
