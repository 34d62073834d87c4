"""The one trainer every model uses.

A model is trained through a :class:`TrainTask`: the task owns the model, the mini-batches and the
loss, and knows how to score every item for a batch of users (``score_all``), which is what the
evaluation protocol consumes. :func:`fit` runs Adam, evaluates validation NDCG@10 every
``eval_every`` epochs (on all users or on a fixed sample of them), keeps the best weights
(early stopping after ``patience`` evaluations without improvement, within ``epochs``), restores
them and reports the test metrics of that checkpoint, with wall time and peak resident memory.
``max_minutes`` is a safety net, not a budget: a run it stops depends on the machine's speed, so it
warns loudly and the result says ``stopped_by="wall_clock"``.

Optional task hooks (used when present, never required):

- ``configure_optimizer(cfg: TrainerConfig) -> torch.optim.Optimizer`` replaces the default Adam;
- ``on_epoch_start(epoch: int) -> None`` is called before each epoch's batches.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import psutil
import torch
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from recstack.evaluation import Split
    from recstack.training.distributed import Dist

logger = logging.getLogger(__name__)

SELECTION_METRIC = "NDCG@10"


class TrainingError(RuntimeError):
    """Training could not run or produced an unusable result; the message says what to change."""


@runtime_checkable
class TrainTask(Protocol):
    """What :func:`fit` needs from a model + loss pair."""

    name: str
    model: torch.nn.Module

    def batches(self, epoch: int, rng: np.random.Generator) -> Iterator[Any]:
        """One epoch of mini-batches (any type ``loss`` accepts)."""
        ...

    def loss(self, batch: Any) -> torch.Tensor:
        """Scalar training loss of one mini-batch."""
        ...

    def score_all(self, user_indices: np.ndarray, stage: str) -> np.ndarray:
        """Scores ``[B, n_items+1]`` of every item for users ``[B]`` at ``stage`` ("valid"|"test")."""
        ...


@dataclass
class TrainerConfig:
    """Optimisation and early-stopping settings of :func:`fit`."""

    epochs: int = 50
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 5  # evaluations without improvement of valid NDCG@10 before stopping
    eval_every: int = 1  # epochs between two validation evaluations
    seed: int = 0
    threads: int | None = None  # torch intra-op threads; None keeps torch's default
    progress: bool = True  # tqdm bar per epoch
    checkpoint_dir: Path | None = None  # if set, the best state_dict is also written there
    max_minutes: float | None = None  # wall-clock safety net; stops (and warns) after the epoch exceeding it

    def validate(self) -> None:
        """Raise TrainingError naming the first invalid field."""
        if self.epochs < 1:
            raise TrainingError(f"TrainerConfig.epochs must be >= 1, got {self.epochs}")
        if self.lr <= 0:
            raise TrainingError(f"TrainerConfig.lr must be > 0, got {self.lr}")
        if self.patience < 1:
            raise TrainingError(f"TrainerConfig.patience must be >= 1, got {self.patience}")
        if self.eval_every < 1:
            raise TrainingError(f"TrainerConfig.eval_every must be >= 1, got {self.eval_every}")
        if self.threads is not None and self.threads < 1:
            raise TrainingError(f"TrainerConfig.threads must be >= 1 or None, got {self.threads}")


@dataclass
class FitResult:
    """Outcome of :func:`fit`: metrics of the best-validation checkpoint and the cost of training."""

    name: str
    best_epoch: int
    valid: dict
    test: dict
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    peak_rss_mb: float = 0.0
    stopped_by: str = "epochs"  # "patience" (early stopping), "epochs" (budget) or "wall_clock"
    valid_seconds: float = 0.0  # part of train_seconds spent on validation (early stopping)
    test_seconds: float = 0.0  # the test evaluation of the best checkpoint (after train_seconds)

    def to_dict(self) -> dict:
        return {
            "stopped_by": self.stopped_by,
            "name": self.name,
            "best_epoch": self.best_epoch,
            "valid": self.valid,
            "test": self.test,
            "history": self.history,
            "train_seconds": self.train_seconds,
            "peak_rss_mb": self.peak_rss_mb,
            "valid_seconds": self.valid_seconds,
            "test_seconds": self.test_seconds,
        }


class PeakRSS:
    """Samples the resident set size of this process in a background thread (context manager)."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.peak_bytes = 0

    def sample(self) -> None:
        self.peak_bytes = max(self.peak_bytes, self._proc.memory_info().rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> PeakRSS:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20


def seed_everything(seed: int) -> None:
    """Seed python, numpy's global state and torch (CPU) so that a run is reproducible."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def evaluate_task(task: TrainTask, split: Split, stage: str, users: np.ndarray | None = None) -> dict:
    """Metrics of ``task`` under the evaluation protocol at ``stage`` ("valid" or "test"), over
    ``users`` (user indices; None = every user with a target)."""
    from recstack.evaluation import evaluate_candidates, evaluate_scores

    order = getattr(task, "evaluation_order", None)  # users in the order the task scores cheapest
    if order is not None:
        users = order(users, stage)
    task.model.eval()
    with torch.no_grad():
        if getattr(task, "candidates", None) is not None and hasattr(task, "score_candidates"):
            # a pair-scoring ranker: users x candidates pairs, never users x items
            return evaluate_candidates(lambda u: task.score_candidates(u, stage), split, stage, users=users)
        return evaluate_scores(lambda u: task.score_all(u, stage), split, stage, users=users)


def _clone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def fit(
    task: TrainTask,
    split: Split,
    cfg: TrainerConfig,
    valid_users: np.ndarray | None = None,
    on_eval: Callable[[int, float], None] | None = None,
    dist: Dist | None = None,
) -> FitResult:
    """Train ``task.model`` with early stopping on validation NDCG@10; return the best checkpoint's metrics.

    ``valid_users``: the user indices validation is measured on (a fixed sample keeps its cost
    independent of the number of users); None = all. Test metrics are over every user.
    ``on_eval(epoch, valid_ndcg10)`` is called after each validation (hyper-parameter search
    prunes a trial by raising from it).

    Deterministic for a given ``cfg.seed`` (and thread count) when the model was built after
    ``seed_everything(cfg.seed)`` (initial weights come from torch's global generator).
    The model holds the best weights on return.

    ``dist`` (a torchrun worker, :mod:`recstack.training.distributed`): the task already trains on
    this worker's shard; the model starts from rank 0's weights, gradients are averaged over the
    workers after each backward, rank 0 evaluates and every worker follows its decisions.
    """
    cfg.validate()
    seed_everything(cfg.seed)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    model = task.model
    if dist is not None:
        dist.broadcast_module(model)
        rng = np.random.default_rng(dist.seed(cfg.seed))
        torch.manual_seed(dist.seed(cfg.seed))  # dropout, sampled negatives: per worker
    if hasattr(task, "configure_optimizer"):
        optimizer = task.configure_optimizer(cfg)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise TrainingError(f"task {task.name!r}: the model has no trainable parameters")
        optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sync = None
    if dist is not None:
        from recstack.training.distributed import GradSync

        sync = GradSync([p for p in model.parameters() if p.requires_grad], dist)
    evaluates = dist is None or dist.main
    ckpt_path = None
    if cfg.checkpoint_dir is not None:
        cfg.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        ckpt_path = Path(cfg.checkpoint_dir) / f"{task.name}.best.pt"

    history: list[dict] = []
    best_score = -math.inf
    best_epoch = -1
    best_state = _clone_state(model)
    best_valid: dict = {}
    bad_evals = 0
    last_ndcg = float("nan")
    stopped_by = "epochs"
    valid_seconds = 0.0
    start = time.perf_counter()
    with PeakRSS() as rss:
        for epoch in range(cfg.epochs):
            if hasattr(task, "on_epoch_start"):
                task.on_epoch_start(epoch)
            model.train()
            total, n_batches = 0.0, 0
            batches = task.batches(epoch, rng)
            if sync is not None:  # a worker out of batches takes part with none until all are
                batches = itertools.chain(batches, itertools.repeat(None))
            bar = tqdm(
                batches,
                desc=f"{task.name} epoch {epoch + 1}/{cfg.epochs}",
                disable=not cfg.progress or not evaluates,
                leave=False,
                mininterval=0.5,
            )
            for batch in bar:
                optimizer.zero_grad(set_to_none=True)
                if batch is not None:
                    loss = task.loss(batch)
                    if not torch.isfinite(loss):
                        raise TrainingError(
                            f"task {task.name!r}: loss became {loss.item()} at epoch {epoch + 1}; "
                            f"lower the learning rate (now {cfg.lr})"
                        )
                    loss.backward()
                if sync is not None:
                    from recstack.training.distributed import batch_weight

                    mine = batch_weight(task, batch) if batch is not None else 0.0
                    weight, step_loss = sync.reduce(mine, float(loss.detach()) if batch is not None else 0.0)
                    if weight == 0:
                        break
                    optimizer.step()
                    total += step_loss
                else:
                    optimizer.step()
                    total += float(loss.detach())
                n_batches += 1
                if n_batches % 20 == 0:
                    bar.set_postfix(loss=f"{total / n_batches:.4f}", ndcg10=f"{last_ndcg:.4f}")
            bar.close()
            record: dict = {
                "epoch": epoch + 1,
                "loss": total / max(n_batches, 1),
                "seconds": time.perf_counter() - start,
            }
            is_last = epoch + 1 == cfg.epochs
            out_of_time = cfg.max_minutes is not None and record["seconds"] > 60 * cfg.max_minutes
            if dist is not None:
                out_of_time = dist.broadcast(out_of_time)  # rank 0's clock decides for everyone
            if (epoch + 1) % cfg.eval_every == 0 or is_last or out_of_time:
                t_valid = time.perf_counter()
                valid = evaluate_task(task, split, "valid", valid_users) if evaluates else None
                valid_seconds += time.perf_counter() - t_valid
                if dist is not None:
                    valid = dist.broadcast(valid)
                last_ndcg = valid[SELECTION_METRIC]
                record["valid"] = valid
                if last_ndcg > best_score:
                    best_score, best_epoch, best_valid = last_ndcg, epoch + 1, valid
                    best_state = _clone_state(model)
                    bad_evals = 0
                    if ckpt_path is not None and evaluates:
                        torch.save(best_state, ckpt_path)
                else:
                    bad_evals += 1
                if on_eval is not None:
                    on_eval(epoch + 1, last_ndcg)
            history.append(record)
            logger.info(
                "%s epoch %d loss %.4f valid NDCG@10 %.4f",
                task.name,
                epoch + 1,
                record["loss"],
                last_ndcg,
            )
            if cfg.progress and evaluates:
                tqdm.write(
                    f"{task.name} epoch {epoch + 1}: loss {record['loss']:.4f} valid NDCG@10 {last_ndcg:.4f}"
                )
            if bad_evals >= cfg.patience:
                logger.info("%s: early stop after epoch %d (best %d)", task.name, epoch + 1, best_epoch)
                stopped_by = "patience"
                break
            if out_of_time:
                logger.warning(
                    "%s: STOPPED BY THE WALL-CLOCK SAFETY NET (%.1f min) after epoch %d of %d, before early "
                    "stopping: this model's quality now depends on how fast the machine was; raise "
                    "--max-minutes or lower the epoch budget",
                    task.name,
                    cfg.max_minutes,
                    epoch + 1,
                    cfg.epochs,
                )
                stopped_by = "wall_clock"
                break
        model.load_state_dict(best_state)
        train_seconds = time.perf_counter() - start
        test = evaluate_task(task, split, "test") if evaluates else None
        test_seconds = time.perf_counter() - start - train_seconds
        if dist is not None:
            test = dist.broadcast(test)
    return FitResult(
        name=task.name,
        best_epoch=best_epoch,
        valid=best_valid,
        test=test,
        history=history,
        train_seconds=train_seconds,
        peak_rss_mb=rss.peak_mb,
        stopped_by=stopped_by,
        valid_seconds=valid_seconds,
        test_seconds=test_seconds,
    )
