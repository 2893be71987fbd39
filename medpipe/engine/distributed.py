"""Distributed data-parallel training with PyTorch's own launcher and process group.

``torchrun --nproc_per_node N -m medpipe.run pipelines/x.yaml`` starts N processes with ``RANK``, ``LOCAL_RANK``
and ``WORLD_SIZE`` set; :func:`init_distributed` joins them into one process group (``nccl`` on CUDA, one GPU per
process, ``gloo`` on CPU). The same YAML runs unchanged; what changes under DDP:

* the network is wrapped in ``torch.nn.parallel.DistributedDataParallel`` (gradients all-reduced every step);
* the training cases are partitioned across ranks with ``monai.data.partition_dataset`` (shuffled with
  ``data.split.seed``, evenly divisible, so every rank runs the same number of steps) and each rank caches only its
  own partition: the cache is split, not duplicated; the validation cases are partitioned too (not padded) and
  MONAI's cumulative metrics all-gather every rank's per-case values before reducing, so validation metrics are
  those of the whole split;
* the per-epoch training loss and sample count are summed over ranks;
* only rank 0 writes the artifact folder, checkpoints and MLflow run; the other ranks log warnings only.

Every rank sees ``len(train) / N`` cases per epoch, so an epoch covers the training split once, as with one
process, and the effective batch size is ``N * train.batch_size`` (scale the learning rate yourself if you want
the linear-scaling rule of Goyal et al. 2017; medpipe does not change it behind your back).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, List, Sequence

import torch

from medpipe.engine.trainer import resolve_device

logger = logging.getLogger(__name__)

__all__ = ["DistContext", "init_distributed", "partition_cases"]


@dataclass
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` processes, its ``device`` and ``backend``.

    With one process (no ``torchrun``) ``world_size`` is 1, ``rank`` 0 and every collective is a no-op.
    Built by :func:`init_distributed`.

    Attributes:
        rank: global rank of this process, ``0 .. world_size - 1`` (``RANK``).
        world_size: number of processes (``WORLD_SIZE``); 1 without ``torchrun`` and after :meth:`close`.
        local_rank: rank on this node (``LOCAL_RANK``); the CUDA device index under ``nccl``.
        device: where this process trains (``cuda:<local_rank>`` under ``nccl``, else the resolved device).
        backend: ``"nccl"``, ``"gloo"``, or ``""`` with one process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str = ""

    @property
    def distributed(self) -> bool:
        """Whether more than one process trains (``world_size > 1``)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that writes artifacts, checkpoints and the MLflow run."""
        return self.rank == 0

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (``torch.distributed.broadcast_object_list``).

        A collective: every rank must call it. The object is pickled, so keep it small (e.g. a run folder path).

        Args:
            obj: any picklable object; only rank 0's value is used.

        Returns:
            rank 0's ``obj`` (``obj`` itself with one process).
        """
        if not self.distributed:
            return obj
        box = [obj if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        """Wait until every rank reaches this point (no-op with one process)."""
        if self.distributed:
            torch.distributed.barrier()

    def all_reduce_sum(self, values: Sequence[float]) -> List[float]:
        """Element-wise sum of ``values`` over ranks, computed in float64.

        A collective: every rank must call it with the same number of values (e.g. an epoch's loss sum and
        sample count). Under ``nccl`` the tensor goes through this rank's GPU, under ``gloo`` through the CPU.

        Args:
            values: numbers of this rank.

        Returns:
            the sums as Python floats, same length as ``values`` (``values`` as floats with one process).
        """
        if not self.distributed:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64,
                         device=self.device if self.backend == "nccl" else "cpu")
        torch.distributed.all_reduce(t)
        return t.tolist()

    def close(self) -> None:
        """Leave the process group (all ranks must call it); afterwards this process works alone.

        Also resets ignite's cached distributed state (``ignite.distributed.finalize``), so MONAI metrics computed
        later in this process do not try to all-gather. Sets ``world_size`` to 1 and ``backend`` to ``""``.
        """
        if self.distributed and torch.distributed.is_initialized():
            import ignite.distributed as idist

            idist.sync()  # ignite (used by MONAI's metrics) caches the group: reset it to one process too
            idist.finalize()
            if torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
        self.world_size, self.backend = 1, ""


def init_distributed(device_name: str = "auto", timeout_minutes: float = 30.0) -> DistContext:
    """Join the process group that ``torchrun`` set up, or return a single-process context.

    Reads ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (set by ``torchrun``). With ``WORLD_SIZE`` > 1: backend
    ``nccl`` and device ``cuda:<LOCAL_RANK>`` when CUDA is available and ``device_name`` is not ``cpu``, else
    ``gloo`` on CPU; ``torch.distributed.init_process_group`` with the ``env://`` rendezvous. On CPU each process
    uses ``cpu_count // local world size`` threads so the processes do not oversubscribe the cores.

    Args:
        device_name: ``train.device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``; under ``torchrun`` a CUDA device is
            always ``cuda:<LOCAL_RANK>``).
        timeout_minutes: collective timeout, minutes.

    Returns:
        this process's :class:`DistContext` (``world_size`` 1 without ``torchrun``).

    Raises:
        RuntimeError: ``train.device`` asks for CUDA but none is available, or there are fewer GPUs than processes
            on this node.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=resolve_device(device_name))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = resolve_device(device_name).type == "cuda"
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"torchrun started local rank {local_rank} but this node has "
                               f"{torch.cuda.device_count()} CUDA device(s); use --nproc_per_node "
                               f"{torch.cuda.device_count()} or fewer")
        device, backend = torch.device(f"cuda:{local_rank}"), "nccl"
        torch.cuda.set_device(device)
    else:
        device, backend = torch.device("cpu"), "gloo"
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes))
    logger.info("distributed: rank %d of %d (local rank %d), backend %s, device %s, %d threads", rank, world,
                local_rank, backend, device, torch.get_num_threads())
    return DistContext(rank, world, local_rank, device, backend)


def partition_cases(cases: Sequence[dict], ctx: DistContext, seed: int, even: bool) -> List[dict]:
    """This rank's share of ``cases`` (``monai.data.partition_dataset``; the whole list with one process).

    Args:
        cases: all cases of a split.
        ctx: the distributed context.
        seed: shuffle seed (the same on every rank, so the partitions are disjoint).
        even: pad by repeating cases so every rank gets the same count (training: equal step counts keep the
            ranks' gradient all-reduces in lockstep); without it the shares differ by at most one (validation).

    Returns:
        this rank's cases (a new list; the same dicts, not copies).
    """
    if not ctx.distributed:
        return list(cases)
    from monai.data import partition_dataset

    parts = partition_dataset(list(cases), num_partitions=ctx.world_size, shuffle=True, seed=seed,
                              drop_last=False, even_divisible=even)
    return list(parts[ctx.rank])
