"""Train independent models side by side in worker processes (``TrainConfig.jobs``).

Each model is trained exactly as in process (same seed, same code, one torch thread), so the
bundle does not depend on how many jobs ran; a worker returns the weights, the model's spec and
its :class:`~recstack.training.trainer.FitResult`. Workers are spawned (no fork of a process that
holds torch thread pools) and receive the split and features once, when they start.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

_shared: dict[str, Any] = {}


@dataclass
class Job:
    """One model to train: its plan, trainer settings, and what its task needs from earlier stages."""

    name: str
    plan: Any
    trainer: Any
    candidates: Any = None
    trained: dict[str, torch.nn.Module] = field(default_factory=dict)  # e.g. bpr_mf for ncf's start


def _init(split, feats, valid_users, seed: int, threads: int | None, level: int) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if threads is not None:
        torch.set_num_threads(threads)
    _shared.update(split=split, feats=feats, valid_users=valid_users, seed=seed)


def _run(job: Job):
    """Train one model; (name, spec, numpy weights, FitResult) for the parent."""
    from recstack.artifacts.registry import model_spec

    module, result = train_one(
        job, _shared["split"], _shared["feats"], _shared["valid_users"], _shared["seed"]
    )
    state = {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}
    return job.name, model_spec(module), state, result


def train_one(job: Job, split, feats, valid_users, seed: int, dist=None):
    """(trained module, FitResult) of one job, in this process (``dist``: as one torchrun worker
    of several, on its shard of the users; :mod:`recstack.training.distributed`)."""
    from recstack.training.plans import build_task
    from recstack.training.trainer import fit, seed_everything

    seed_everything(seed)  # initial weights are drawn from the seeded global generator
    task = build_task(job.name, job.plan, split, feats, job.trained, job.candidates)
    if dist is not None:
        from recstack.training.distributed import shard_task

        shard_task(task, dist, split.n_users)
    result = fit(task, split, job.trainer, valid_users, dist=dist)
    return task.model, result


def train_models(
    jobs: Sequence[Job],
    split,
    feats,
    valid_users: np.ndarray | None,
    seed: int,
    workers: int,
    threads: int | None,
    dist=None,
) -> dict[str, tuple[torch.nn.Module, Any]]:
    """Train ``jobs`` (independent of each other) with ``workers`` processes (1: in this process);
    returns {name: (module, FitResult)} in the order of ``jobs``. Under torchrun (``dist``) the
    jobs run one after the other, each over all the workers."""
    from recstack.artifacts.registry import build_model

    out: dict[str, tuple[torch.nn.Module, Any]] = {}
    if workers <= 1 or len(jobs) <= 1 or dist is not None:
        for job in jobs:
            out[job.name] = train_one(job, split, feats, valid_users, seed, dist)
        return out
    ctx = multiprocessing.get_context("spawn")
    n = min(workers, len(jobs))
    logger.info("training %s in %d worker processes", [j.name for j in jobs], n)
    args = (split, feats, valid_users, seed, threads, logging.getLogger().getEffectiveLevel())
    with ctx.Pool(n, initializer=_init, initargs=args) as pool:
        results = pool.map(_run, list(jobs), chunksize=1)
    for name, spec, state, result in results:
        module = build_model(spec)
        module.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
        out[name] = (module.eval(), result)
    return {job.name: out[job.name] for job in jobs}
