"""Data-parallel training under ``torchrun``: one process per GPU (or CPU process with gloo).

:func:`lowbit.sw.train.train` asks :func:`context` for the run's layout. Outside ``torchrun``
(no ``WORLD_SIZE`` in the environment, or 1) everything is the single-process path. Under
``torchrun --nproc_per_node N`` every rank builds the same batches of an epoch (same seed), takes
every N-th one (:meth:`DistContext.shard`), and steps together; DistributedDataParallel averages
the gradients. The loss of a step is scaled so the averaged gradient equals the gradient of the
summed loss over *all* ranks' tokens divided by their total count, i.e. one step of N ranks is one
step on the union of their batches (:meth:`DistContext.global_tokens`). Only rank 0 writes (the
tokenizer, logs, snapshots, the resumable state, the checkpoint) and evaluates; the others wait
at barriers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

__all__ = ["DistContext", "context"]


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def device(self, requested: str | None) -> torch.device:
        """The rank's device: ``cuda:LOCAL_RANK`` on GPUs, else what was asked for."""
        if self.active and self.backend == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))

    def shard(self, batches: list) -> list:
        """This rank's batches: every ``world``-th, the same number on every rank."""
        if not self.active:
            return batches
        usable = len(batches) - len(batches) % self.world
        return batches[self.rank:usable:self.world]

    def sum(self, value: float, device) -> float:
        """``value`` summed over the ranks."""
        if not self.active:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return float(t.item())

    def global_tokens(self, ntok: int, device) -> int:
        """Target tokens of this step over all ranks."""
        return int(round(self.sum(ntok, device))) if self.active else ntok

    def agree(self, flag: bool, device) -> bool:
        """Rank 0's ``flag`` on every rank (e.g. the time limit's stop decision)."""
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        torch.distributed.broadcast(t, src=0)
        return bool(t.item())

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def wrap(self, model):
        """The model that runs the forward pass: DDP around ``model`` when distributed."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if self.backend == "nccl" else None
        return DistributedDataParallel(model, device_ids=ids)

    def close(self) -> None:
        if self.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def context(device: str | None = None) -> DistContext:
    """The layout from ``torchrun``'s environment; joins the process group when there is one.

    NCCL on CUDA (unless ``device`` is ``cpu``), gloo otherwise.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend)
    return DistContext(rank=rank, world=world, local_rank=local, backend=backend)
