"""Data-parallel training over N processes with torch.distributed (``torchrun``).

``recstack train`` started by ``torchrun`` (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT in the
environment) joins a process group: gloo when the machine has no CUDA device, nccl when it has
one (the collectives then run through ``cuda:LOCAL_RANK``; ``RECSTACK_DIST_BACKEND`` overrides).
What each worker does (:func:`recstack.training.trainer.fit` and ``train_bundle``):

- every worker loads the same data and builds the same split and features (deterministic);
- the gradient-trained models start from rank 0's weights and each worker trains on its shard
  of the training users (user index modulo the world size, :func:`user_shard`) with batches
  ``1/world`` the size of the plan's, so that one optimiser step still sees the plan's batch;
- after each backward the gradients are all-reduced, weighted by the rows each worker
  contributed (:class:`GradSync`): every worker takes the same step, the one a single process
  would take on the union of the workers' batches (for losses that are means over rows); an
  epoch ends when every worker has run out of batches;
- rank 0 alone evaluates (validation for early stopping, test, retrieval and pipeline settings,
  fusion) and broadcasts what the others need, so every worker stops at the same epoch and keeps
  the same weights; rank 0 alone writes the bundle, the others wait for it.

Without these variables (or with ``WORLD_SIZE=1``) nothing here runs and training is the single
process one, unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as td

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MIN = 180.0  # rank 0 evaluates while the others wait in a collective


class DistributedError(RuntimeError):
    """The torch.distributed environment is incomplete or the process group could not start."""


@dataclass(frozen=True)
class Dist:
    """This worker's place in the process group."""

    rank: int
    world: int
    local_rank: int
    backend: str

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """Where collective buffers live (nccl needs CUDA tensors; the models train on CPU)."""
        if self.backend == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def describe(self) -> dict:
        return {"world_size": self.world, "backend": self.backend, "shard": "user index modulo world size"}

    # --- collectives -------------------------------------------------------------------------

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (any picklable value)."""
        box = [obj if self.main else None]
        td.broadcast_object_list(box, src=0, device=self.device if self.backend == "nccl" else None)
        return box[0]

    def barrier(self) -> None:
        if self.backend == "nccl":
            td.barrier(device_ids=[self.local_rank])
        else:
            td.barrier()

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers into ``module`` on every rank."""
        with torch.no_grad():
            for tensor in module.state_dict().values():
                buf = tensor.detach().to(self.device).contiguous()
                td.broadcast(buf, src=0)
                tensor.copy_(buf.to(tensor.device))

    # --- data --------------------------------------------------------------------------------

    def user_shard(self, n_users: int) -> np.ndarray:
        """Boolean mask over user indices 0..n_users: the users this worker trains on."""
        return user_shard(n_users, self.rank, self.world)

    def batch_size(self, global_batch: int) -> int:
        """Per-worker batch so that the world's batches add up to ``global_batch``."""
        return max(1, math.ceil(global_batch / self.world))

    def seed(self, seed: int) -> int:
        """A per-rank seed (negative sampling, dropout) derived from the run's seed."""
        return int(np.random.SeedSequence([seed, self.rank]).generate_state(1)[0])


def user_shard(n_users: int, rank: int, world: int) -> np.ndarray:
    """Mask over user indices 0..n_users (index 0 is padding): user u belongs to rank u % world."""
    return np.arange(n_users + 1) % world == rank


def env_world() -> tuple[int, int, int] | None:
    """(rank, world, local_rank) from torchrun's environment; None when not distributed."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    try:
        rank = int(os.environ["RANK"])
    except (KeyError, ValueError) as exc:
        raise DistributedError("WORLD_SIZE > 1 but RANK is not set; start training with torchrun") from exc
    return rank, world, int(os.environ.get("LOCAL_RANK", "0") or 0)


def choose_backend() -> str:
    backend = os.environ.get("RECSTACK_DIST_BACKEND")
    if backend:
        return backend
    return "nccl" if torch.cuda.is_available() else "gloo"


@contextlib.contextmanager
def session() -> Iterator[Dist | None]:
    """The process group of this torchrun worker for the duration of the block (None and nothing
    started when the environment is not distributed)."""
    found = env_world()
    if found is None:
        yield None
        return
    rank, world, local_rank = found
    backend = choose_backend()
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    minutes = float(os.environ.get("RECSTACK_DIST_TIMEOUT_MIN", DEFAULT_TIMEOUT_MIN))
    owned = not td.is_initialized()
    if owned:
        td.init_process_group(backend=backend, timeout=timedelta(minutes=minutes))
    dist = Dist(rank=td.get_rank(), world=td.get_world_size(), local_rank=local_rank, backend=backend)
    if (dist.rank, dist.world) != (rank, world):
        raise DistributedError(
            f"process group says rank {dist.rank}/{dist.world}, environment {rank}/{world}"
        )
    logger.info("distributed training: rank %d of %d (%s)", dist.rank, dist.world, backend)
    try:
        yield dist
    finally:
        if owned and td.is_initialized():
            td.destroy_process_group()


class GradSync:
    """Averages gradients over the workers after each backward, weighted by their batch rows.

    One all-reduce per step carries every parameter's gradient times the worker's weight, a flag
    per parameter (did any worker produce a gradient for it: parameters that none touched keep
    ``grad=None``, as in one process), the weights and the weighted loss.
    """

    def __init__(self, params: list[torch.nn.Parameter], dist: Dist):
        self.params = params
        self.dist = dist
        self.sizes = [p.numel() for p in params]
        self.n = sum(self.sizes)
        self.buf = torch.zeros(self.n + len(params) + 2, dtype=torch.float32, device=dist.device)

    def reduce(self, weight: float, loss: float) -> tuple[float, float]:
        """All-reduce this worker's gradients (``weight``: its batch rows, 0 when it had no batch);
        set every parameter's ``grad`` to the weighted mean; (total weight, mean loss)."""
        buf = self.buf
        buf.zero_()
        off = 0
        flags = self.n
        for i, (p, size) in enumerate(zip(self.params, self.sizes, strict=True)):
            if weight > 0 and p.grad is not None:
                buf[off : off + size].copy_(p.grad.detach().reshape(-1).to(buf.device), non_blocking=False)
                buf[off : off + size].mul_(weight)
                buf[flags + i] = 1.0
            off += size
        buf[-2] = weight
        buf[-1] = loss * weight
        td.all_reduce(buf, op=td.ReduceOp.SUM)
        total = float(buf[-2])
        if total <= 0:
            return 0.0, 0.0
        grads = (buf[: self.n] / total).cpu()
        has = buf[flags : flags + len(self.params)].cpu()
        off = 0
        for i, (p, size) in enumerate(zip(self.params, self.sizes, strict=True)):
            if has[i] > 0:
                p.grad = grads[off : off + size].view_as(p).to(p.dtype).clone()
            else:
                p.grad = None
            off += size
        return total, float(buf[-1]) / total


def batch_weight(task: Any, batch: Any) -> float:
    """What a batch's loss averages over (its rows, unless the task says otherwise)."""
    if hasattr(task, "batch_weight"):
        return float(task.batch_weight(batch))
    first = next(iter(batch.values())) if isinstance(batch, dict) else batch[0]
    return float(len(first))


def shard_task(task: Any, dist: Dist, n_users: int) -> None:
    """Make ``task`` train on this worker's users with ``1/world`` batches (``task.shard``)."""
    if not hasattr(task, "shard"):
        raise DistributedError(f"task {task.name!r} cannot be sharded over workers (it has no shard())")
    task.shard(dist.user_shard(n_users), dist.world)
