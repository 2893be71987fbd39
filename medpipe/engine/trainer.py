"""Training and validation engines on ``monai.engines.SupervisedTrainer`` / ``SupervisedEvaluator``.

``build_engines`` wires the MONAI handlers the pipeline needs: validation every ``val_interval`` epochs,
best-checkpoint saving on the key metric plus a resumable "latest" checkpoint every epoch (both atomic;
:mod:`medpipe.engine.resume`), LR scheduling, optional early stopping, gradient-norm clipping, per-epoch training
loss and sample count, progress bars, the GPU options (AMP, channels-last, ``torch.compile``) and, under
``torchrun``, ``DistributedDataParallel`` (:mod:`medpipe.engine.distributed`). A NaN or infinite training loss
stops the run with :class:`NonFiniteLossError` before the epoch's checkpoint is written.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from ignite.engine import Events
from ignite.handlers import Checkpoint, DiskSaver, ProgressBar
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.handlers import (
    EarlyStopHandler,
    LrScheduleHandler,
    StatsHandler,
    ValidationHandler,
    from_engine,
    stopping_fn_from_metric,
)
from monai.transforms import Activationsd, AsDiscreted, Compose, CopyItemsd

from medpipe.engine.metric_handlers import (
    ISBI2012_METRICS,
    PROB_KEY,
    build_cls_metric_handlers,
    build_seg_metric_handlers,
)
from medpipe.engine.optim import build_loss, build_optimizer, build_scheduler, with_deep_supervision
from medpipe.engine.resume import EpochReseed, History, RNGState, StateAttributes
from medpipe.engine.transfer import attach_freeze_schedule
from medpipe.inference.sliding import build_inferer
from medpipe.runs import BEST_PREFIX, LATEST_PREFIX, best_checkpoint, checkpoint_epochs, latest_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["resolve_device", "seed_everything", "Engines", "build_engines", "build_evaluator", "NonFiniteLossError"]


class NonFiniteLossError(RuntimeError):
    """The training loss of a batch was NaN or infinite: the run stops (its MLflow run is marked FAILED).

    ``one_line``: its message says everything (epoch, batch, value, last good checkpoint): no traceback is logged.

    Raised on ``ITERATION_COMPLETED``, after the optimizer step of that batch and before the epoch's
    ``latest_checkpoint_<epoch>.pt`` would be written, so the checkpoints on disk hold the last finite weights.

    Attributes:
        epoch: the 1-based epoch.
        iteration: the 1-based batch within that epoch.
        loss: the loss value (``nan``, ``inf`` or ``-inf``).
        checkpoint: the newest ``latest_checkpoint_<epoch>.pt`` on disk (``None`` before the first epoch ended).
    """

    one_line = True

    def __init__(self, epoch: int, iteration: int, loss: float, checkpoint: Optional[Path] = None):
        self.epoch, self.iteration, self.loss, self.checkpoint = epoch, iteration, loss, checkpoint
        kept = (f"the last good checkpoint is {checkpoint}" if checkpoint is not None
                else "no epoch had completed, no checkpoint was written")
        super().__init__(f"training loss is {loss} at epoch {epoch}, batch {iteration}: training stopped ({kept}); "
                         "lower optimizer.lr, set train.grad_clip_norm, or check the inputs for NaN or infinite "
                         "values")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``.

    Raises:
        RuntimeError: ``cuda`` requested but no CUDA device is available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"train.device is {name!r} but CUDA is not available; use 'auto' or 'cpu'")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch (``monai.utils.set_determinism``); with ``deterministic`` cuDNN is
    deterministic without autotuning, else ``cudnn.benchmark`` autotunes (faster on GPUs, not bitwise
    reproducible). MONAI's ``DataLoader`` then seeds the random transforms from torch's generator."""
    from monai.utils import set_determinism

    set_determinism(seed=seed, use_deterministic_algorithms=None)  # also sets cuDNN deterministic, no autotuning
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.deterministic = bool(deterministic)
        torch.backends.cudnn.benchmark = not deterministic  # autotuned convolutions when reproducibility may go


@dataclass
class Engines:
    """The wired training objects. ``trainer.run()`` trains, validating through ``evaluator``.

    ``net`` is the plain network (checkpointed, evaluated); ``trainer.network`` may wrap it
    (``DistributedDataParallel``, ``torch.compile``). ``state`` holds every object written to the latest
    checkpoint (:mod:`medpipe.engine.resume`); ``history`` the per-epoch records.
    """

    trainer: SupervisedTrainer
    evaluator: SupervisedEvaluator
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Optional[object]
    checkpoint_dir: Path
    device: torch.device
    history: Optional[object] = None
    state: Optional[dict] = None
    best_saver: Optional[object] = None
    latest_saver: Optional[object] = None
    pending: Optional[dict] = None  # checkpointed state of objects created when training starts (AMP scaler)

    @property
    def best_checkpoint(self) -> Optional[Path]:
        """Path of the best-key-metric checkpoint, once one was saved."""
        if self.best_saver is not None and self.best_saver.last_checkpoint is not None:
            path = Path(self.best_saver.last_checkpoint)
            return path if path.is_file() else None
        return best_checkpoint(self.checkpoint_dir)

    def resume(self, checkpoint: Path) -> int:
        """Load a ``latest_checkpoint_<epoch>.pt`` into every object of :attr:`state`; ``trainer.run()`` then
        continues with the next epoch. Best-checkpoint files that the restored state does not know (written
        after the checkpoint, by the run that was interrupted) are deleted, so the best model stays the best of
        the epochs the resumed run has.

        Returns:
            The epoch the checkpoint was written after.

        Raises:
            KeyError: the checkpoint lacks an object this run needs (e.g. written with another scheduler).
        """
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
        missing = sorted(set(self.state) - set(ckpt))
        if missing:
            raise KeyError(f"{checkpoint}: has no {missing} (it holds {sorted(ckpt)}); was it written by a run "
                           "with another configuration?")
        Checkpoint.load_objects(self.state, ckpt)
        if "scaler" in ckpt and "scaler" not in self.state and self.pending is not None:
            self.pending["scaler"] = ckpt["scaler"]  # the scaler exists once trainer.run() starts
        saved = getattr(self.best_saver, "_saved", [])
        lost = [item for item in saved if not (self.checkpoint_dir / item.filename).is_file()]
        for item in lost:  # killed while replacing it: the next validation saves a best again
            logger.warning("resume: best checkpoint %s is missing; the next validation saves a new one",
                           item.filename)
            saved.remove(item)
        if self.latest_saver is not None:  # rotate the checkpoints already on disk out as new ones are written
            self.latest_saver._saved = [Checkpoint.Item(e, p.name) for e, p in checkpoint_epochs(self.checkpoint_dir)]
        keep = {Path(item.filename).name for item in saved}
        for stale in self.checkpoint_dir.glob(f"{BEST_PREFIX}_*.pt"):
            if stale.name not in keep:
                logger.info("resume: removing %s, written after the checkpoint being resumed", stale.name)
                stale.unlink()
        return int(self.trainer.state.epoch)


def _attach_epoch_loss(trainer: SupervisedTrainer, accuracy: bool = False, dist=None) -> None:
    """Per-epoch training statistics into ``trainer.state.metrics``: ``train_loss``, the mean training loss
    (sample-weighted), ``train_samples``, the number of training samples seen (random crops count one each),
    ``epoch_seconds`` (wall time of the epoch's training steps, data loading included, validation excluded; rank
    0's clock), ``train_samples_per_second``, ``lr``, and with ``accuracy`` (classification) ``train_accuracy``, the fraction of training samples whose
    argmax logit is their label (measured on the augmented batches, while the weights change). Under
    distributed training (``dist``) sums are taken over all ranks, so the numbers describe the whole epoch."""
    acc = {"sum": 0.0, "n": 0, "correct": 0, "seen": 0, "t0": 0.0}

    @trainer.on(Events.EPOCH_STARTED)
    def _reset(_):
        acc.update(sum=0.0, n=0, correct=0, seen=0, t0=time.perf_counter())

    @trainer.on(Events.ITERATION_COMPLETED)
    def _add(engine):
        out = engine.state.output
        loss = out[0]["loss"] if isinstance(out, list) else out["loss"]
        n = len(out) if isinstance(out, list) else 1
        acc["sum"] = acc["sum"] + torch.as_tensor(loss).detach() * n  # on the device: no GPU sync per step
        acc["n"] += n
        if accuracy:
            items = out if isinstance(out, list) else [out]
            for item in items:
                pred = torch.as_tensor(item["pred"]).detach()
                label = torch.as_tensor(item["label"]).detach().reshape(-1).long().cpu()
                hit = pred.reshape(-1, pred.shape[-1]).argmax(-1).cpu() == label
                acc["correct"] += int(hit.sum())
                acc["seen"] += int(hit.numel())

    @trainer.on(Events.EPOCH_COMPLETED)
    def _store(engine):
        total, n, correct, seen = [acc[k] for k in ("sum", "n", "correct", "seen")]
        total = float(total)
        if dist is not None:
            total, n, correct, seen = dist.all_reduce_sum([total, n, correct, seen])
        engine.state.metrics["train_loss"] = total / max(n, 1)
        engine.state.metrics["train_samples"] = float(n)
        seconds = time.perf_counter() - acc["t0"]
        engine.state.metrics["epoch_seconds"] = seconds
        engine.state.metrics["train_samples_per_second"] = n / max(seconds, 1e-9)
        engine.state.metrics["lr"] = engine.optimizer.param_groups[0]["lr"]
        if accuracy:
            engine.state.metrics["train_accuracy"] = correct / max(seen, 1)


def _attach_finite_loss_check(trainer: SupervisedTrainer, checkpoint_dir: Path) -> None:
    """Raise :class:`NonFiniteLossError` on the first batch whose loss is NaN or infinite.

    One scalar ``torch.isfinite`` per batch; on CUDA reading it waits for the step to finish (one synchronisation
    per batch, as a progress bar's loss display does), the price of naming the batch. The exception is not logged
    with a traceback by the engine (a handler placed before ``StatsHandler``'s re-raises it first); other
    exceptions whose class says ``one_line = True`` (this one, ``medpipe.tracking.TrackingError``) are re-raised the
    same way; others go on to ``StatsHandler``, which logs their traceback and re-raises them. Under ``torchrun`` the rank
    that raises ends, and torchrun stops the others.
    """

    @trainer.on(Events.ITERATION_COMPLETED)
    def _check(engine):
        out = engine.state.output
        loss = torch.as_tensor(out[0]["loss"] if isinstance(out, list) else out["loss"]).detach()
        if not bool(torch.isfinite(loss).all()):
            batch = (engine.state.iteration - 1) % engine.state.epoch_length + 1
            raise NonFiniteLossError(engine.state.epoch, batch, float(loss.float().reshape(-1)[0]),
                                     latest_checkpoint(checkpoint_dir))

    @trainer.on(Events.EXCEPTION_RAISED)
    def _reraise(_, exc):
        if getattr(exc, "one_line", False):  # NonFiniteLossError, medpipe.tracking.TrackingError
            raise exc  # not through StatsHandler's handler: no traceback in the log, the message says it all


def _attach_grad_clip(trainer: SupervisedTrainer, max_norm: float) -> None:
    """Clip the gradient L2 norm after backward (unscaling first under AMP, as ``GradScaler`` requires)."""

    @trainer.on(IterationEvents.BACKWARD_COMPLETED)
    def _clip(engine):
        if engine.amp and engine.scaler is not None:
            engine.scaler.unscale_(engine.optimizer)
        torch.nn.utils.clip_grad_norm_(engine.network.parameters(), max_norm)


def build_evaluator(cfg, net: torch.nn.Module, loader, device: torch.device, handlers=(), amp_kwargs=None,
                    prepare_batch=None) -> SupervisedEvaluator:
    """A ``SupervisedEvaluator`` computing the metrics of ``cfg.metrics`` into ``evaluator.state.metrics``.

    Segmentation: sliding-window inference (``cfg.infer``), softmax, argmax, one-hot; with the official ISBI-2012
    ``v_rand`` / ``v_info`` among the metrics, the softmax is also kept under ``"prob"``
    (:data:`medpipe.engine.metric_handlers.PROB_KEY`) for them. Classification:
    ``monai.inferers.SimpleInferer`` and softmax; the metrics (plus ``loss``, the validation cross-entropy) are
    computed over the whole split by :class:`medpipe.engine.metric_handlers.ClassificationMetric`.

    Args:
        cfg: the validated pipeline config.
        net: the network (already on ``device``).
        loader: segmentation: batches ``{"image": (B, C, H, W), "label": (B, 1, H, W)}`` of full-size cases;
            classification: ``{"image": (B, C, H, W), "label": (B,)}`` int64 class indices.
        device: torch device.
        handlers: extra MONAI/ignite handlers to attach.
        amp_kwargs: ``torch.autocast`` arguments under AMP (e.g. ``{"dtype": torch.bfloat16}``).
        prepare_batch: MONAI ``prepare_batch`` (e.g. a channels-last one); default MONAI's.
    """
    amp = bool(cfg.train.amp and device.type == "cuda")
    if cfg.task == "classification":
        from monai.inferers import SimpleInferer

        post = Compose([Activationsd(keys="pred", softmax=True)])
        key_metric, extra_metrics = build_cls_metric_handlers(cfg.metrics.names, cfg.metrics.key_metric,
                                                              cfg.net.num_classes)
        inferer = SimpleInferer()
    else:
        num_classes = cfg.net.out_channels
        # the official ISBI-2012 v_rand / v_info read the softmax cell probability, kept under PROB_KEY before
        # the argmax; every other metric reads the one-hot "pred"
        official = set(ISBI2012_METRICS) & set(cfg.metrics.names)
        keep_prob = [CopyItemsd(keys="pred", names=PROB_KEY)] if official else []
        post = Compose([
            Activationsd(keys="pred", softmax=True),
            *keep_prob,
            AsDiscreted(keys="pred", argmax=True, to_onehot=num_classes),
            AsDiscreted(keys="label", to_onehot=num_classes),
        ])
        key_metric, extra_metrics = build_seg_metric_handlers(cfg.metrics.names, cfg.metrics.key_metric, num_classes,
                                                              cfg.metrics.class_names)
        inferer = build_inferer(cfg.infer)
    return SupervisedEvaluator(
        device=device, val_data_loader=loader, network=net, inferer=inferer,
        postprocessing=post, key_val_metric=key_metric, additional_metrics=extra_metrics, amp=amp,
        val_handlers=list(handlers), amp_kwargs=amp_kwargs,
        **({"prepare_batch": prepare_batch} if prepare_batch is not None else {}),
    )


def _prepare_batch(memory_format: Optional[torch.memory_format] = None, plain: bool = False):
    """A ``prepare_batch`` for MONAI engines: MONAI's, then ``image`` in ``memory_format`` (e.g.
    ``torch.channels_last`` for ``(B, C, H, W)``; ``label`` keeps its layout, a class-index vector has none) and,
    with ``plain``, both as plain ``torch.Tensor`` instead of ``MetaTensor`` (what ``torch.compile`` traces
    without graph breaks)."""
    from monai.engines.utils import default_prepare_batch

    def prepare(batchdata, device=None, non_blocking=False, **kwargs):
        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        if plain:
            image = image.as_tensor() if hasattr(image, "as_tensor") else image
            label = label.as_tensor() if hasattr(label, "as_tensor") else label
        if memory_format is not None:
            image = image.contiguous(memory_format=memory_format)
        return image, label

    return prepare


def _attach_latest_checkpoint(trainer: SupervisedTrainer, saver) -> None:
    """Register ``saver`` on ``EPOCH_COMPLETED`` when the run starts, i.e. after every handler attached while
    wiring (validation, scheduling, history, MLflow logging), so the checkpoint holds the state they leave."""
    def _register(engine):
        if not engine.has_event_handler(saver, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, saver)

    trainer.add_event_handler(Events.STARTED, _register)


def build_engines(cfg, net: torch.nn.Module, train_loader, val_loader, checkpoint_dir: Path,
                  class_weights=None, dist=None) -> Engines:
    """Build trainer and evaluator for a segmentation or classification pipeline.

    Args:
        cfg: the validated :class:`medpipe.config.PipelineConfig`.
        net: the network (moved to the device here).
        train_loader: segmentation: batches ``{"image": (B, C, *roi), "label": (B, 1, *roi)}``;
            classification: ``{"image": (B, C, H, W), "label": (B,)}``. Re-seeded every epoch
            (:class:`medpipe.engine.resume.EpochReseed`).
        val_loader: validation cases (batch size ``train.val_batch_size``); segmentation cases are full size
            and inferred with the sliding window of ``cfg.infer``.
        checkpoint_dir: where ``best_net_<key>=<value>.pt`` (the network's state dict at the best key metric) and
            ``latest_checkpoint_<epoch>.pt`` (every epoch: everything :mod:`medpipe.engine.resume` lists) are
            written, atomically, by rank 0.
        class_weights: computed per-class loss weights (``loss.class_weights: balanced``), else ``None``.
        dist: a :class:`medpipe.engine.distributed.DistContext` under ``torchrun`` (device, rank); the network
            is then trained through ``DistributedDataParallel`` and validated unwrapped on each rank's share of
            the validation cases.

    GPU options (``train``): ``amp`` with ``amp_dtype`` (``torch.autocast`` on CUDA; float32 elsewhere),
    ``channels_last`` (network and input batches in NHWC / NDHWC memory format), ``compile`` (``torch.compile``
    of the training network, static shapes, fed plain tensors; validation runs the network uncompiled).

    ``net.deep_supervision``: the loss takes the stacked heads (``optim.with_deep_supervision``); eval: main output.
    With ``train.freeze_backbone_epochs`` N > 0 the backbone is frozen for the first N epochs
    (:func:`medpipe.engine.transfer.attach_freeze_schedule`); the optimizer covers all parameters throughout.

    Returns:
        :class:`Engines`; :meth:`Engines.resume` loads a latest checkpoint into them.
    """
    tc = cfg.train
    device = dist.device if dist is not None else resolve_device(tc.device)
    rank = dist.rank if dist is not None else 0
    net, train_net, eval_kwargs, train_kwargs = _place_networks(cfg, net, device, dist)
    optimizer = build_optimizer(cfg.optimizer, net.parameters())
    scheduler = build_scheduler(cfg.scheduler, optimizer, tc.max_epochs)
    loss = with_deep_supervision(build_loss(cfg.loss, class_weights), cfg.net).to(device)

    checkpoint_dir = Path(checkpoint_dir)
    if rank == 0:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    evaluator = build_evaluator(cfg, net, val_loader, device,
                                handlers=[StatsHandler(iteration_log=False, name="medpipe.val")], **eval_kwargs)
    trainer = SupervisedTrainer(
        device=device, max_epochs=tc.max_epochs, train_data_loader=train_loader, network=train_net,
        optimizer=optimizer, loss_function=loss, amp=eval_kwargs["amp_kwargs"] is not None, **train_kwargs,
    )
    history = _attach_training_handlers(cfg, trainer, evaluator, net, train_loader, rank, dist, checkpoint_dir)
    state = {"net": net, "optimizer": optimizer, "trainer": trainer, "rng": RNGState(), "history": history,
             "evaluator": StateAttributes(evaluator.state, ["best_metric", "best_metric_epoch"])}
    pending = _adopt_scaler(trainer, state)
    if scheduler is not None:
        state["scheduler"] = scheduler
        _attach_scheduler(scheduler, trainer, evaluator, cfg.metrics.key_metric)
    best, latest = _attach_checkpoints(cfg, trainer, evaluator, net, state, checkpoint_dir)
    if tc.progress and rank == 0:
        ProgressBar(persist=False).attach(trainer, output_transform=from_engine(["loss"], first=True))
    return Engines(trainer, evaluator, net, optimizer, scheduler, checkpoint_dir, device, history, state, best,
                   latest, pending)


def _place_networks(cfg, net: torch.nn.Module, device: torch.device, dist):
    """The network on ``device`` (channels-last when asked), the network trained (``DistributedDataParallel``,
    ``torch.compile``) and the engines' keyword arguments.

    Returns:
        ``(net, train_net, eval_kwargs, train_kwargs)``: ``eval_kwargs`` holds ``amp_kwargs`` (``None`` without
        AMP) and ``prepare_batch`` for :func:`build_evaluator`; ``train_kwargs`` those of the trainer.
    """
    tc = cfg.train
    amp = bool(tc.amp and device.type == "cuda")
    if tc.amp and not amp:
        logger.info("train.amp is on but the device is %s: AMP is used on CUDA only; training in float32", device)
    net = net.to(device)
    engine_kwargs: dict = {}
    if amp:
        engine_kwargs["amp_kwargs"] = {"dtype": getattr(torch, tc.amp_dtype)}
    fmt = None
    if tc.channels_last:
        fmt = torch.channels_last if cfg.net.spatial_dims == 2 else torch.channels_last_3d
        net = net.to(memory_format=fmt)
        engine_kwargs["prepare_batch"] = _prepare_batch(fmt)
    train_net: torch.nn.Module = net
    if dist is not None and dist.distributed:
        train_net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
    train_kwargs = dict(engine_kwargs)
    if tc.compile:
        import torch._inductor.config as inductor_config  # only when compiling: it loads the compiler

        # inductor's layout optimisation turns conv activations channels-last, and the backward of replication
        # padding (BasicUNet's UpCat) then returns strides its meta kernel does not predict (torch 2.13: an
        # assertion in the compiled graph); keep the layouts inductor is given
        inductor_config.layout_optimization = False
        # compiled here rather than with SupervisedTrainer(compile=True): MONAI 1.6.1 rebuilds MetaTensors from the
        # collated batch metadata after the step and fails on `original_channel_dim: no_channel`; plain tensors in
        # (static shapes: automatic dynamic shapes mark the channel axis of blocks reused at several widths)
        train_net = torch.compile(train_net, dynamic=False)
        train_kwargs["prepare_batch"] = _prepare_batch(fmt, plain=True)
    eval_kwargs = {"amp_kwargs": engine_kwargs.get("amp_kwargs"), "prepare_batch": engine_kwargs.get("prepare_batch")}
    return net, train_net, eval_kwargs, train_kwargs


def _attach_training_handlers(cfg, trainer: SupervisedTrainer, evaluator: SupervisedEvaluator, net, train_loader,
                              rank: int, dist, checkpoint_dir: Path) -> History:
    """Per-epoch data re-seeding, the finite-loss check, epoch statistics, history, backbone freezing, logging,
    validation and gradient clipping, in the order the later handlers rely on. Returns the attached
    :class:`History`."""
    tc = cfg.train
    EpochReseed(train_loader, tc.seed, rank).attach(trainer)
    _attach_finite_loss_check(trainer, checkpoint_dir)  # before StatsHandler: its exception handler comes first
    # first, so that every later handler sees this epoch's loss and lr
    _attach_epoch_loss(trainer, accuracy=cfg.task == "classification", dist=dist)
    history = History()
    history.attach(trainer, evaluator)
    if getattr(tc, "freeze_backbone_epochs", 0):
        attach_freeze_schedule(trainer, net, tc.freeze_backbone_epochs)
    StatsHandler(tag_name="train_loss", output_transform=from_engine(["loss"], first=True), iteration_log=False,
                 name="medpipe.train").attach(trainer)
    ValidationHandler(validator=evaluator, interval=tc.val_interval, epoch_level=True).attach(trainer)
    if tc.grad_clip_norm:
        _attach_grad_clip(trainer, tc.grad_clip_norm)
    return history


def _adopt_scaler(trainer: SupervisedTrainer, state: dict) -> dict:
    """MONAI creates the AMP ``GradScaler`` in ``Trainer.run()``: checkpoint it from then on, restoring a resumed
    one. Returns the dict where :meth:`Engines.resume` leaves a checkpointed scaler state until then."""
    pending: dict = {}

    @trainer.on(Events.STARTED)
    def _adopt(engine):
        if engine.scaler is not None:
            state["scaler"] = engine.scaler
            if "scaler" in pending:
                engine.scaler.load_state_dict(pending.pop("scaler"))

    return pending


def _attach_scheduler(scheduler, trainer: SupervisedTrainer, evaluator: SupervisedEvaluator, key: str) -> None:
    """Step the LR scheduler every epoch (``ReduceLROnPlateau``: after each validation, on the key metric)."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        LrScheduleHandler(scheduler, print_lr=False, step_transform=lambda e: e.state.metrics[key]).attach(evaluator)
    else:
        LrScheduleHandler(scheduler, print_lr=False).attach(trainer)


def _attach_checkpoints(cfg, trainer: SupervisedTrainer, evaluator: SupervisedEvaluator, net, state: dict,
                        checkpoint_dir: Path):
    """The best-key-metric network checkpoint (after each validation), early stopping, and the resumable latest
    checkpoint every epoch (both atomic). Returns ``(best, latest)`` ignite ``Checkpoint`` handlers."""
    key = cfg.metrics.key_metric
    best = Checkpoint({"net": net}, DiskSaver(str(checkpoint_dir), require_empty=False, atomic=True),
                      filename_prefix=BEST_PREFIX, score_function=stopping_fn_from_metric(key), score_name=key,
                      n_saved=1)
    evaluator.add_event_handler(Events.EPOCH_COMPLETED, best)
    state["best"] = best
    if cfg.train.early_stop_patience:
        early = EarlyStopHandler(patience=cfg.train.early_stop_patience, score_function=stopping_fn_from_metric(key),
                                 trainer=trainer, epoch_level=True)
        early.attach(evaluator)
        state["early_stop"] = early._handler  # ignite EarlyStopping: counter and best score
    # n_saved=2: ignite deletes the oldest file before writing the new one, so with 2 the previous epoch's
    # checkpoint is still complete on disk while the next one is written
    latest = Checkpoint(state, DiskSaver(str(checkpoint_dir), require_empty=False, atomic=True),
                        filename_prefix=LATEST_PREFIX, n_saved=2,
                        global_step_transform=lambda engine, _: engine.state.epoch)
    _attach_latest_checkpoint(trainer, latest)
    return best, latest
