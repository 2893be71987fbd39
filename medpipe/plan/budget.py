"""The compute budget: epochs and validation interval such that a run fits ``--budget`` on its device, from a few
timed real steps.

:func:`measure` times, on the device the run will use and with the planned transforms, network, loss and optimizer:

* ``cache_s``: the deterministic start of the training chain (load, channels, resampling, normalisation) per
  case, what ``data.cache: memory`` does once for every case;
* ``augment_s``: the random rest of the chain per case, every epoch;
* ``step_s``: one optimizer step on a real batch (forward, loss, backward, step; median of ``n_steps`` after one
  warm-up step);
* ``infer_s``: predicting one validation case as the run does (segmentation: sliding window over the whole
  image; classification: a forward pass per image of a validation batch).

:func:`epochs_for_budget` then solves ``start + cache + E (epoch + validation / val_interval) + final <= budget``
for the largest ``E`` (a multiple of the validation interval, so the last epoch is validated), with at most
:data:`MAX_VALIDATIONS` validations. ``start`` (:data:`START_S`) and the final scoring (every validation and test
case predicted twice: scored, then written) are estimates from the measured ``infer_s``; the rest is measured.
No timing here is a guess: a 10x slower step gives about 10x fewer epochs (``tests/test_plan.py`` checks with a
deliberately slow network).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Sequence, Tuple

__all__ = ["Timing", "measure", "samples_per_case", "epochs_for_budget", "BudgetError", "START_S", "MAX_VALIDATIONS"]

#: seconds of a run before its first epoch besides loading data: imports, MLflow run, integrity check of a few
#: hundred files (measured 20-40 s for the shipped pipelines on the 2-core CPU, docs/plan.md)
START_S = 30.0
#: at most this many validations in a run (each is a full pass over the validation cases)
MAX_VALIDATIONS = 6


class BudgetError(ValueError):
    """The budget does not fit one epoch; the message gives the measured seconds."""


@dataclass
class Timing:
    """Measured seconds (see the module docstring) and the run's sizes.

    Attributes:
        cache_s, augment_s, step_s, infer_s: seconds per case / per step (module docstring).
        steps_per_epoch: optimizer steps per epoch (``ceil(n_train / batch_size)``, the last partial batch
            dropped for classification).
        n_cases, n_train, n_val, n_test: case counts of the split.
        device: the torch device timed on.
    """

    cache_s: float
    augment_s: float
    step_s: float
    infer_s: float
    steps_per_epoch: int
    n_cases: int
    n_train: int
    n_val: int
    n_test: int
    device: str = "cpu"

    def epoch_s(self) -> float:
        """Seconds of one training epoch: augmentation of every training case plus the optimizer steps."""
        return self.n_train * self.augment_s + self.steps_per_epoch * self.step_s

    def validation_s(self) -> float:
        """Seconds of one validation pass."""
        return self.n_val * self.infer_s

    def fixed_s(self) -> float:
        """Start-up, caching every case, and the final scoring and writing of validation and test predictions."""
        return START_S + self.n_cases * self.cache_s + 2 * (self.n_val + self.n_test) * self.infer_s

    def as_dict(self) -> Dict:
        """The timings with the derived ``epoch_s``, ``validation_s`` and ``fixed_s`` (seconds), for JSON."""
        return {**asdict(self), "epoch_s": self.epoch_s(), "validation_s": self.validation_s(),
                "fixed_s": self.fixed_s()}


def epochs_for_budget(timing: Timing, budget_s: float, max_validations: int = MAX_VALIDATIONS
                      ) -> Tuple[int, int, str]:
    """The largest epoch count that fits ``budget_s`` (module docstring).

    Args:
        timing: the measured :class:`Timing`.
        budget_s: the wall-clock budget of the whole run, seconds.
        max_validations: most validation passes.

    Returns:
        ``(max_epochs, val_interval, reason)``.

    Raises:
        BudgetError: not even one epoch and its validation fit (names the seconds needed).
    """
    avail = budget_s - timing.fixed_s()
    one = timing.epoch_s() + timing.validation_s()
    if avail < one:
        raise BudgetError(f"a budget of {budget_s:.0f} s does not fit one epoch: start-up, caching and final scoring "
                          f"take {timing.fixed_s():.0f} s and one epoch with its validation {one:.0f} s (measured "
                          f"on {timing.device}); raise --budget")
    for vi in range(1, 10_000):
        epochs = int(avail // (timing.epoch_s() + timing.validation_s() / vi))
        epochs = max(vi, epochs // vi * vi) if epochs >= vi else epochs
        if epochs // vi <= max_validations or epochs < vi:
            break
    if epochs < vi:  # fewer epochs than the interval: validate once, at the end
        vi = epochs = max(1, epochs)
    total = timing.fixed_s() + epochs * timing.epoch_s() + (epochs // vi) * timing.validation_s()
    reason = (f"{budget_s / 60:g} min budget on {timing.device}: measured {timing.epoch_s():.1f} s per epoch "
              f"({timing.steps_per_epoch} steps x {timing.step_s:.2f} s + augmentation), {timing.validation_s():.1f} s "
              f"per validation, {timing.fixed_s():.0f} s start-up, caching and final scoring -> {epochs} epochs, "
              f"about {total / 60:.1f} min")
    return epochs, vi, reason


def _split_chain(chain):
    """``(deterministic prefix, random rest)`` of a MONAI ``Compose`` (CacheDataset caches the prefix)."""
    from monai.transforms import Compose, Randomizable

    items = list(chain.transforms)
    first = next((i for i, t in enumerate(items) if isinstance(t, Randomizable)), len(items))
    return Compose(items[:first]), Compose(items[first:])


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def _batch(samples: List[Dict], n: int):
    """A collated batch of ``n`` samples (cycled from ``samples``)."""
    from monai.data import list_data_collate

    flat = [s for item in samples for s in (item if isinstance(item, list) else [item])]
    return list_data_collate([flat[i % len(flat)] for i in range(n)])


def samples_per_case(cfg) -> int:
    """Training patches drawn per case per epoch: the ``num_samples`` of the training chain's crop (1 without)."""
    counts = [int(t.model_extra["num_samples"]) for t in cfg.transforms.train
              if (t.model_extra or {}).get("num_samples")]
    return counts[-1] if counts else 1


def measure(cfg, train: Sequence[Dict], val: Sequence[Dict], test: Sequence[Dict] = (), n_cases: int = 4,
            n_steps: int = 3, net=None) -> Timing:
    """Time real work of the run ``cfg`` on ``n_cases`` of its cases (module docstring).

    Args:
        cfg: the validated :class:`medpipe.config.PipelineConfig` (its device, transforms, net, loss, optimizer).
        train, val, test: the split's cases.
        n_cases: training and validation cases timed.
        n_steps: timed optimizer steps (after one warm-up step).
        net: a network to time instead of the config's (tests: a deliberately slow one).

    Returns:
        The :class:`Timing`.
    """
    import torch

    from medpipe.data.transforms import build_transforms
    from medpipe.engine.optim import build_loss, build_optimizer, with_deep_supervision
    from medpipe.engine.trainer import resolve_device
    from medpipe.nets.factory import build_net

    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    prefix, rest = _split_chain(build_transforms(cfg.transforms.train, "transforms.train"))
    cache_t, aug_t, samples = [], [], []
    for case in list(train)[:n_cases]:
        d, t1 = _timed(prefix, dict(case))
        out, t2 = _timed(rest, d)
        cache_t.append(t1)
        aug_t.append(t2)
        samples.append(out)
    net = (net if net is not None else build_net(cfg.net)).to(device)
    seg = cfg.task == "segmentation"
    # balanced class weights change the loss's values, not its cost: any weights time the same
    weights = [1.0] * cfg.net.num_classes if (not seg and cfg.loss.class_weights == "balanced") else None
    loss_fn = (with_deep_supervision(build_loss(cfg.loss), cfg.net) if seg
               else build_loss(cfg.loss, class_weights=weights))
    opt = build_optimizer(cfg.optimizer, net.parameters())
    batch = _batch(samples, cfg.train.batch_size * samples_per_case(cfg))
    x, y = batch["image"].to(device), batch["label"]
    y = (torch.as_tensor(y) if not seg else y).to(device)
    net.train()
    step_t = []
    for i in range(n_steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            step_t.append(time.perf_counter() - t0)
    infer_s = _infer_seconds(cfg, net, val, n_cases, device)
    n_train = len(train)
    bs = cfg.train.batch_size
    steps = max(1, n_train // bs if (not seg and n_train > bs) else math.ceil(n_train / bs))
    return Timing(statistics.median(cache_t), statistics.median(aug_t), statistics.median(step_t), infer_s, steps,
                  len(train) + len(val) + len(test), n_train, len(val), len(test), str(device))


def _infer_seconds(cfg, net, val: Sequence[Dict], n_cases: int, device) -> float:
    """Seconds to predict one validation case (module docstring)."""
    import torch

    from medpipe.data.transforms import build_transforms

    chain = build_transforms(cfg.transforms.val, "transforms.val")
    items = [chain(dict(c)) for c in list(val)[:n_cases]]
    net.eval()
    with torch.no_grad():
        if cfg.task == "classification":
            x = torch.stack([torch.as_tensor(d["image"]) for d in items])
            n = max(1, cfg.train.val_batch_size or cfg.train.batch_size)
            x = x[torch.arange(n) % len(items)].to(device)
            net(x)  # warm-up
            _, t = _timed(net, x)
            return t / n
        from monai.inferers import sliding_window_inference

        times = []
        for d in items:
            x = torch.as_tensor(d["image"])[None].to(device)
            _, t = _timed(lambda v: sliding_window_inference(v, cfg.infer.roi_size, cfg.infer.sw_batch_size, net,
                                                             overlap=cfg.infer.overlap, mode=cfg.infer.mode), x)
            times.append(t)
        return statistics.median(times[1:] or times)
