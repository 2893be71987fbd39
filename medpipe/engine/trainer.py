"""Training and validation engines on ``monai.engines.SupervisedTrainer`` / ``SupervisedEvaluator``.

``build_engines`` wires the MONAI handlers the pipeline needs: validation every ``val_interval`` epochs,
best-checkpoint saving on the key metric plus a "latest" checkpoint every epoch, LR scheduling, optional
early stopping, gradient-norm clipping, per-epoch mean training loss, and progress bars.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from ignite.engine import Events
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.handlers import (
    CheckpointSaver,
    EarlyStopHandler,
    LrScheduleHandler,
    StatsHandler,
    ValidationHandler,
    from_engine,
    stopping_fn_from_metric,
)
from monai.transforms import Activationsd, AsDiscreted, Compose

from medpipe.engine.metric_handlers import build_cls_metric_handlers, build_seg_metric_handlers
from medpipe.engine.optim import build_loss, build_optimizer, build_scheduler
from medpipe.inference.sliding import build_inferer

logger = logging.getLogger(__name__)

__all__ = ["resolve_device", "seed_everything", "Engines", "build_engines", "build_evaluator"]


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
    """Seed Python, NumPy and torch (``monai.utils.set_determinism``); with ``deterministic`` also make
    cuDNN deterministic. MONAI's ``DataLoader`` then seeds the random transforms from torch's generator."""
    from monai.utils import set_determinism

    set_determinism(seed=seed, use_deterministic_algorithms=None)
    if deterministic and torch.backends.cudnn.is_available():
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


@dataclass
class Engines:
    """The wired training objects. ``trainer.run()`` trains, validating through ``evaluator``."""

    trainer: SupervisedTrainer
    evaluator: SupervisedEvaluator
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Optional[object]
    checkpoint_dir: Path
    device: torch.device

    @property
    def best_checkpoint(self) -> Optional[Path]:
        """Path of the best-key-metric checkpoint, once one was saved."""
        hits = sorted(self.checkpoint_dir.glob("best_*.pt"))
        return hits[-1] if hits else None


def _attach_epoch_loss(trainer: SupervisedTrainer, accuracy: bool = False) -> None:
    """Mean training loss over each epoch into ``trainer.state.metrics["train_loss"]`` (sample-weighted), and
    with ``accuracy`` (classification) the fraction of training samples whose argmax logit is their label into
    ``trainer.state.metrics["train_accuracy"]`` (measured on the augmented batches, while the weights change)."""
    acc = {"sum": 0.0, "n": 0, "correct": 0, "seen": 0}

    @trainer.on(Events.EPOCH_STARTED)
    def _reset(_):
        acc.update(sum=0.0, n=0, correct=0, seen=0)

    @trainer.on(Events.ITERATION_COMPLETED)
    def _add(engine):
        out = engine.state.output
        loss = out[0]["loss"] if isinstance(out, list) else out["loss"]
        n = len(out) if isinstance(out, list) else 1
        acc["sum"] += float(loss) * n
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
        engine.state.metrics["train_loss"] = acc["sum"] / max(acc["n"], 1)
        engine.state.metrics["lr"] = engine.optimizer.param_groups[0]["lr"]
        if accuracy:
            engine.state.metrics["train_accuracy"] = acc["correct"] / max(acc["seen"], 1)


def _attach_grad_clip(trainer: SupervisedTrainer, max_norm: float) -> None:
    """Clip the gradient L2 norm after backward (unscaling first under AMP, as ``GradScaler`` requires)."""

    @trainer.on(IterationEvents.BACKWARD_COMPLETED)
    def _clip(engine):
        if engine.amp and engine.scaler is not None:
            engine.scaler.unscale_(engine.optimizer)
        torch.nn.utils.clip_grad_norm_(engine.network.parameters(), max_norm)


def build_evaluator(cfg, net: torch.nn.Module, loader, device: torch.device, handlers=()) -> SupervisedEvaluator:
    """A ``SupervisedEvaluator`` computing the metrics of ``cfg.metrics`` into ``evaluator.state.metrics``.

    Segmentation: sliding-window inference (``cfg.infer``), softmax, argmax, one-hot. Classification:
    ``monai.inferers.SimpleInferer`` and softmax; the metrics (plus ``loss``, the validation cross-entropy) are
    computed over the whole split by :class:`medpipe.engine.metric_handlers.ClassificationMetric`.

    Args:
        cfg: the validated pipeline config.
        net: the network (already on ``device``).
        loader: segmentation: batches ``{"image": (B, C, H, W), "label": (B, 1, H, W)}`` of full-size cases;
            classification: ``{"image": (B, C, H, W), "label": (B,)}`` int64 class indices.
        device: torch device.
        handlers: extra MONAI/ignite handlers to attach.
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
        post = Compose([
            Activationsd(keys="pred", softmax=True),
            AsDiscreted(keys="pred", argmax=True, to_onehot=num_classes),
            AsDiscreted(keys="label", to_onehot=num_classes),
        ])
        key_metric, extra_metrics = build_seg_metric_handlers(cfg.metrics.names, cfg.metrics.key_metric)
        inferer = build_inferer(cfg.infer)
    return SupervisedEvaluator(
        device=device, val_data_loader=loader, network=net, inferer=inferer,
        postprocessing=post, key_val_metric=key_metric, additional_metrics=extra_metrics, amp=amp,
        val_handlers=list(handlers),
    )


def build_engines(cfg, net: torch.nn.Module, train_loader, val_loader, checkpoint_dir: Path,
                  class_weights=None) -> Engines:
    """Build trainer and evaluator for a segmentation or classification pipeline.

    Args:
        cfg: the validated :class:`medpipe.config.PipelineConfig`.
        net: the network (moved to the device here).
        train_loader: segmentation: batches ``{"image": (B, C, *roi), "label": (B, 1, *roi)}``;
            classification: ``{"image": (B, C, H, W), "label": (B,)}``.
        val_loader: validation cases (batch size ``train.val_batch_size``); segmentation cases are full size
            and inferred with the sliding window of ``cfg.infer``.
        checkpoint_dir: where ``best_*.pt`` (key metric) and ``latest_*.pt`` (every epoch) are written;
            each holds ``net``, ``optimizer``, ``trainer`` (and ``scheduler``) state dicts.
        class_weights: computed per-class loss weights (``loss.class_weights: balanced``), else ``None``.

    With ``train.freeze_backbone_epochs`` N > 0 the backbone is frozen for the first N epochs
    (:func:`medpipe.engine.transfer.attach_freeze_schedule`); the optimizer covers all parameters throughout.

    Returns:
        :class:`Engines`.
    """
    tc = cfg.train
    device = resolve_device(tc.device)
    amp = bool(tc.amp and device.type == "cuda")
    if tc.amp and not amp:
        logger.info("train.amp is on but the device is %s: AMP is used on CUDA only; training in float32", device)
    net = net.to(device)
    optimizer = build_optimizer(cfg.optimizer, net.parameters())
    scheduler = build_scheduler(cfg.scheduler, optimizer, tc.max_epochs)
    loss = build_loss(cfg.loss, class_weights).to(device)
    key = cfg.metrics.key_metric

    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    evaluator = build_evaluator(cfg, net, val_loader, device,
                                handlers=[StatsHandler(iteration_log=False, name="medpipe.val")])
    trainer = SupervisedTrainer(
        device=device, max_epochs=tc.max_epochs, train_data_loader=train_loader, network=net,
        optimizer=optimizer, loss_function=loss, amp=amp,
    )
    # first, so that every later handler sees this epoch's loss and lr
    _attach_epoch_loss(trainer, accuracy=cfg.task == "classification")
    if getattr(tc, "freeze_backbone_epochs", 0):
        from medpipe.engine.transfer import attach_freeze_schedule

        attach_freeze_schedule(trainer, net, tc.freeze_backbone_epochs)
    StatsHandler(tag_name="train_loss", output_transform=from_engine(["loss"], first=True), iteration_log=False,
                 name="medpipe.train").attach(trainer)
    ValidationHandler(validator=evaluator, interval=tc.val_interval, epoch_level=True).attach(trainer)
    if tc.grad_clip_norm:
        _attach_grad_clip(trainer, tc.grad_clip_norm)

    save = {"net": net, "optimizer": optimizer, "trainer": trainer}
    if scheduler is not None:
        save["scheduler"] = scheduler
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            LrScheduleHandler(scheduler, print_lr=False,
                              step_transform=lambda e: e.state.metrics[key]).attach(evaluator)
        else:
            LrScheduleHandler(scheduler, print_lr=False).attach(trainer)
    CheckpointSaver(str(checkpoint_dir), {"net": net}, file_prefix="best", save_key_metric=True,
                    key_metric_name=key, key_metric_n_saved=1).attach(evaluator)
    CheckpointSaver(str(checkpoint_dir), save, file_prefix="latest", save_interval=1, n_saved=1,
                    epoch_level=True).attach(trainer)
    if tc.early_stop_patience:
        EarlyStopHandler(patience=tc.early_stop_patience, score_function=stopping_fn_from_metric(key),
                         trainer=trainer, epoch_level=True).attach(evaluator)
    if tc.progress:
        from ignite.handlers import ProgressBar

        ProgressBar(persist=False).attach(trainer, output_transform=from_engine(["loss"], first=True))
    return Engines(trainer, evaluator, net, optimizer, scheduler, checkpoint_dir, device)
