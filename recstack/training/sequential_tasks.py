"""Training tasks of the sequential recommenders (SASRec, GRU4Rec, BERT4Rec) for the one trainer.

Training examples come from ``split.train_seqs``: each user's training sequence is cut, from its
newest end backwards, into consecutive windows of ``max_len + 1`` items (next-item models) or
``max_len`` items (BERT4Rec), so that every training interaction is used and the most recent
window is complete. Windows are left-padded with 0.

- SASRec / GRU4Rec: input = window[:-1], target = window[1:]; full softmax cross-entropy over all
  items at every non-padding position (Klenitskiy & Vasilev, RecSys 2023).
- BERT4Rec: every item is replaced by [MASK] with probability ``mask_prob`` (at least one per
  window), and with probability ``last_mask_prob`` only the newest item is masked (the serving
  situation); cross-entropy over all items at the masked positions.

Catalogues larger than ``loss_items`` (default 8192) train with a sampled softmax (uniform
negatives shared by the batch) instead of the full one, and ``steps_per_epoch`` caps an epoch, so
that the same profiles run on MovieLens-25M-size data within their time budget.

Scoring for the protocol: stage "valid" scores from the training items, stage "test" from the
training items plus the validation target (``recstack.evaluation.history_matrix``).

``build_task(name, split, catalog, cfg)`` builds a task from the registry ("sasrec", "gru4rec",
"bert4rec"). Each task config has a ``small()`` profile (synthetic data, seconds; the data-sized
plans are in :mod:`recstack.training.profiles`) and ``trainer_overrides()``, the
:class:`~recstack.training.trainer.TrainerConfig` fields it is trained with.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from recstack.evaluation import Split, history_matrix
from recstack.models.bert4rec import BERT4Rec, BERT4RecConfig
from recstack.models.gru4rec import GRU4Rec, GRU4RecConfig
from recstack.models.sasrec import SASRec, SASRecConfig
from recstack.models.sequential_common import SequentialRecommender

logger = logging.getLogger(__name__)

SCORE_BATCH = 512


@dataclass
class _TrainingProfile:
    """Trainer settings a task profile was tuned with (fields of TrainerConfig)."""

    epochs: int = 200
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 10
    eval_every: int = 1
    max_minutes: float | None = None  # wall-clock safety net (TrainConfig.max_minutes when None)
    # Task settings shared by the three models (not TrainerConfig fields):
    # steps_per_epoch: an "epoch" (one validation) is that many batches taken from a running stream
    # of passes over the windows (None = one pass), so that small and large datasets alike are
    # validated every few hundred steps; loss_items caps the softmax: full CE over all items when
    # n_items <= loss_items, else sampled softmax against loss_items uniformly drawn negatives
    # shared by the batch.
    steps_per_epoch: int | None = None
    loss_items: int = 8192
    # crop: each pass cuts windows ending at random points of the histories (cropped_windows)
    # instead of the fixed windows cut from the newest end (training_windows).
    crop: bool = False

    def trainer_overrides(self) -> dict[str, Any]:
        """Keyword arguments for ``TrainerConfig(**overrides)``."""
        return {
            "epochs": self.epochs,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "patience": self.patience,
            "eval_every": self.eval_every,
            "max_minutes": self.max_minutes,
        }


@dataclass
class SASRecTaskConfig(_TrainingProfile):
    """SASRec model size + batching (the model config is built with the split's n_items)."""

    max_len: int = 50
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 2
    ffn_mult: int = 1
    dropout: float = 0.2
    attn_dropout: float = 0.0
    batch_size: int = 128

    def model_config(self, n_items: int) -> SASRecConfig:
        return SASRecConfig(
            n_items=n_items,
            max_len=self.max_len,
            dim=self.dim,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            ffn_mult=self.ffn_mult,
            dropout=self.dropout,
            attn_dropout=self.attn_dropout,
        )

    @classmethod
    def small(cls) -> SASRecTaskConfig:
        return cls(max_len=20, dim=32, n_layers=1, n_heads=1, dropout=0.1, batch_size=64, epochs=30, lr=3e-3,
                   patience=5)  # fmt: skip


@dataclass
class GRU4RecTaskConfig(_TrainingProfile):
    """GRU4Rec model size + batching."""

    max_len: int = 50
    dim: int = 64
    hidden: int = 128
    n_layers: int = 1
    dropout: float = 0.2
    batch_size: int = 128

    def model_config(self, n_items: int) -> GRU4RecConfig:
        return GRU4RecConfig(
            n_items=n_items,
            max_len=self.max_len,
            dim=self.dim,
            hidden=self.hidden,
            n_layers=self.n_layers,
            dropout=self.dropout,
        )

    @classmethod
    def small(cls) -> GRU4RecTaskConfig:
        return cls(max_len=20, dim=32, hidden=64, dropout=0.1, batch_size=64, epochs=30, lr=3e-3, patience=5)


@dataclass
class BERT4RecTaskConfig(_TrainingProfile):
    """BERT4Rec model size, masking and batching."""

    max_len: int = 50
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 2
    ffn_mult: int = 4
    dropout: float = 0.1
    batch_size: int = 128
    mask_prob: float = 0.2
    last_mask_prob: float = 0.1

    def model_config(self, n_items: int) -> BERT4RecConfig:
        return BERT4RecConfig(
            n_items=n_items,
            max_len=self.max_len,
            dim=self.dim,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            ffn_mult=self.ffn_mult,
            dropout=self.dropout,
        )

    @classmethod
    def small(cls) -> BERT4RecTaskConfig:
        return cls(max_len=20, dim=32, n_layers=1, n_heads=1, ffn_mult=2, dropout=0.2, mask_prob=0.3,
                   batch_size=64, epochs=150, lr=3e-3, patience=20)  # fmt: skip


def training_windows(seqs: list[np.ndarray], length: int) -> np.ndarray:
    """Windows (N, length) int64 cut from each sequence's newest end backwards, left-padded with 0.

    seqs: item-index arrays, oldest first (sequences shorter than 2 items are skipped; index 0 of
    a per-user list is simply another sequence, usually empty). A sequence of T items yields
    ceil((T - 1) / (length - 1)) windows that overlap by one item, so that every consecutive pair
    (item, next item) appears in exactly one window.
    """
    if length < 2:
        raise ValueError(f"window length must be >= 2, got {length}")
    rows: list[np.ndarray] = []
    step = length - 1
    for seq in seqs:
        seq = np.asarray(seq, dtype=np.int64)
        end = len(seq)
        while end >= 2:
            start = max(0, end - length)
            row = np.zeros(length, dtype=np.int64)
            row[length - (end - start) :] = seq[start:end]
            rows.append(row)
            end -= step
    if not rows:
        raise ValueError("no training sequence has 2 or more items; the split is too small to train on")
    return np.stack(rows)


def cropped_windows(seqs: list[np.ndarray], length: int, rng: np.random.Generator) -> np.ndarray:
    """As many windows per sequence as :func:`training_windows` cuts, each ending at a random
    point of the sequence (its last ``length`` items up to there, left-padded with 0).

    Every prefix of a history then ends a window now and then, at the newest position, where
    serving reads the representation (RecBole trains on every prefix; this samples them).
    """
    if length < 2:
        raise ValueError(f"window length must be >= 2, got {length}")
    rows: list[np.ndarray] = []
    for seq in seqs:
        seq = np.asarray(seq, dtype=np.int64)
        t = len(seq)
        if t < 2:
            continue
        for end in rng.integers(2, t + 1, size=-(-(t - 1) // (length - 1))).tolist():
            row = np.zeros(length, dtype=np.int64)
            part = seq[max(0, end - length) : end]
            row[length - len(part) :] = part
            rows.append(row)
    if not rows:
        raise ValueError("no training sequence has 2 or more items; the split is too small to train on")
    return np.stack(rows)


class _SequentialTask:
    """Shared batching and protocol scoring; subclasses define the loss."""

    name: str
    model: SequentialRecommender

    def __init__(
        self,
        split: Split,
        model: SequentialRecommender,
        batch_size: int,
        steps_per_epoch: int | None = None,
        loss_items: int | None = None,
        crop: bool = False,
    ):
        if split.n_items < 1:
            raise ValueError("the split has no items")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1 or None, got {steps_per_epoch}")
        if loss_items is not None and loss_items < 1:
            raise ValueError(f"loss_items must be >= 1 or None, got {loss_items}")
        self.split = split
        self.model = model
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.loss_items = loss_items
        self.crop = crop
        self.train_seqs = split.train_seqs  # what the windows are cut from (a worker's shard: its users')
        self.window_length = 0  # set by the subclass with its windows
        self.windows = np.zeros((0, 2), dtype=np.int64)
        self._queue = np.zeros((0, 2), dtype=np.int64)
        self._histories: dict[str, np.ndarray] = {}

    def _set_windows(self, length: int) -> None:
        self.window_length = length
        self.windows = training_windows(self.train_seqs, length)
        self._queue = np.zeros((0, length), dtype=np.int64)
        kind = "random crops" if self.crop else "windows"
        logger.info("%s: %d training %s of %d items per pass", self.name, len(self.windows), kind, length)

    def _pass_windows(self, rng: np.random.Generator) -> np.ndarray:
        """The windows of one pass over the data, shuffled: the fixed ``windows`` or, with
        ``crop``, windows ending at random points of each sequence (:func:`cropped_windows`)."""
        windows = cropped_windows(self.train_seqs, self.window_length, rng) if self.crop else self.windows
        return windows[rng.permutation(len(windows))]

    def _window_batches(self, rng: np.random.Generator) -> Iterator[np.ndarray]:
        """Shuffled batches (B, W) of windows: one pass, or ``steps_per_epoch`` batches taken from a
        running stream of passes (consecutive epochs continue where the previous one stopped).

        Columns that are padding in every row of a batch are dropped (the models give the same
        states without them), so that short histories do not cost ``max_len`` positions.
        """
        if self.steps_per_epoch is None:
            rows = self._pass_windows(rng)
        else:
            need = self.steps_per_epoch * self.batch_size
            while len(self._queue) < need:
                self._queue = np.concatenate([self._queue, self._pass_windows(rng)])
            rows, self._queue = self._queue[:need], self._queue[need:]
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start : start + self.batch_size]
            first = int(np.argmax((batch != 0).any(axis=0)))
            yield batch[:, first:]

    def shard(self, keep: np.ndarray, world: int) -> None:
        """Train on the sequences of the users in ``keep`` (a mask over user indices) with batches
        ``1/world`` the size (distributed training: the workers' batches add up to one step's)."""
        empty = np.zeros(0, dtype=np.int64)
        self.train_seqs = [s if keep[u] else empty for u, s in enumerate(self.split.train_seqs)]
        self.batch_size = math.ceil(self.batch_size / world)
        self._set_windows(self.window_length)

    def batch_weight(self, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
        """Target positions of a batch: what its loss averages over."""
        return int((batch[1] != 0).sum())

    def softmax_loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """CE of hidden states (B, L, D) against targets (B, L) (0 = ignore), full or sampled."""
        if self.loss_items is None or self.model.n_items <= self.loss_items:
            return full_softmax_loss(self.model, hidden, targets)
        return sampled_softmax_loss(self.model, hidden, targets, self.loss_items)

    def _stage_histories(self, stage: str) -> np.ndarray:
        """[n_users + 1, max_len] left-padded histories at ``stage`` (computed once per stage)."""
        if stage not in self._histories:
            self._histories[stage] = history_matrix(self.split, stage, self.model.max_len)
        return self._histories[stage]

    def evaluation_order(self, users: np.ndarray | None, stage: str) -> np.ndarray:
        """``users`` (None: every user) ordered by history length at ``stage``, so that each scoring
        batch holds histories of about one length and ``represent`` trims most of the padding
        (validation of short-history data cost ``max_len`` positions a user otherwise). The metrics
        are means over users: the order does not change them."""
        hist = self._stage_histories(stage)
        users = np.arange(1, len(hist)) if users is None else np.asarray(users, dtype=np.int64)
        return users[np.argsort((hist[users] != 0).sum(axis=1), kind="stable")]

    def score_all(self, user_indices: np.ndarray, stage: str) -> np.ndarray:
        """Scores (B, n_items+1) float32 for users (B,) at stage "valid" or "test"; column 0 = PAD_SCORE."""
        hist = self._stage_histories(stage)[np.asarray(user_indices, dtype=np.int64)]
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                out = [
                    self.model.score_all(hist[s : s + SCORE_BATCH]).numpy()
                    for s in range(0, len(hist), SCORE_BATCH)
                ]
        finally:
            self.model.train(was_training)
        if not out:
            return np.zeros((0, self.split.n_items + 1), dtype=np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)

    def model_config(self) -> dict[str, Any]:
        """The model's config as a plain dict (what the bundle stores next to the weights)."""
        return asdict(self.model.cfg)


def full_softmax_loss(
    model: SequentialRecommender, hidden: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Mean CE over all real items (1..n_items) of hidden states (B, L, D) vs targets (B, L), 0 = ignore."""
    keep = targets != 0
    if not bool(keep.any()):
        raise ValueError("batch has no target item (all padding)")
    emb = model.output_embeddings()[1:]  # (n_items, D): padding is never a class
    logits = torch.addmm(model.out_bias[1:], hidden[keep], emb.T)  # (N, n_items)
    return F.cross_entropy(logits, targets[keep] - 1)


def sampled_softmax_loss(
    model: SequentialRecommender, hidden: torch.Tensor, targets: torch.Tensor, n_negatives: int
) -> torch.Tensor:
    """Mean CE of each target against ``n_negatives`` uniformly drawn items shared by the batch.

    hidden (B, L, D), targets (B, L) with 0 = ignore. A negative equal to the row's target is
    masked out (accidental hit). Uniform sampling needs no logQ correction (a constant shift).
    """
    keep = targets != 0
    if not bool(keep.any()):
        raise ValueError("batch has no target item (all padding)")
    h, t = hidden[keep], targets[keep]  # (N, D), (N,)
    emb = model.output_embeddings()
    neg = torch.randint(1, model.n_items + 1, (n_negatives,), device=t.device)  # (K,)
    pos = (h * emb[t]).sum(-1) + model.out_bias[t]  # (N,)
    neg_logits = torch.addmm(model.out_bias[neg], h, emb[neg].T)  # (N, K)
    neg_logits = neg_logits.masked_fill(neg[None, :] == t[:, None], float("-inf"))
    logits = torch.cat([pos[:, None], neg_logits], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(t), dtype=torch.long, device=t.device))


class NextItemTask(_SequentialTask):
    """SASRec / GRU4Rec: predict window[t+1] from window[..t] at every position, full-softmax CE."""

    def __init__(
        self,
        name: str,
        split: Split,
        model: SequentialRecommender,
        batch_size: int,
        steps_per_epoch: int | None = None,
        loss_items: int | None = None,
        crop: bool = False,
    ):
        self.name = name
        super().__init__(split, model, batch_size, steps_per_epoch, loss_items, crop)
        self._set_windows(model.max_len + 1)

    def batches(self, epoch: int, rng: np.random.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Mini-batches (inputs (B, L), targets (B, L)) with L = max_len."""
        for w in self._window_batches(rng):
            t = torch.from_numpy(w)
            yield t[:, :-1], t[:, 1:]

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        inputs, targets = batch
        return self.softmax_loss(self.model.encode(inputs), targets)


def mask_windows(
    windows: np.ndarray, mask_token: int, mask_prob: float, last_mask_prob: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Cloze masking of windows (B, L): returns (tokens (B, L), targets (B, L), 0 = not masked).

    Each non-padding item is masked with probability ``mask_prob`` (at least one per row); a row
    is instead masked at its newest item only with probability ``last_mask_prob``.
    """
    real = windows != 0
    masked = (rng.random(windows.shape) < mask_prob) & real
    # rows with nothing masked: mask one random real item
    empty = np.flatnonzero(~masked.any(axis=1) & real.any(axis=1))
    if len(empty):
        n_real = real[empty].sum(axis=1)
        offset = (rng.random(len(empty)) * n_real).astype(np.int64)
        masked[empty, windows.shape[1] - n_real + offset] = True
    last_only = rng.random(len(windows)) < last_mask_prob
    masked[last_only] = False
    masked[last_only, -1] = real[last_only, -1]
    tokens = np.where(masked, mask_token, windows)
    targets = np.where(masked, windows, 0)
    return tokens, targets


class MaskedItemTask(_SequentialTask):
    """BERT4Rec: cloze task over windows of max_len items, CE over all items at masked positions."""

    name = "bert4rec"

    def __init__(
        self,
        split: Split,
        model: BERT4Rec,
        batch_size: int,
        mask_prob: float,
        last_mask_prob: float,
        steps_per_epoch: int | None = None,
        loss_items: int | None = None,
        crop: bool = False,
    ):
        super().__init__(split, model, batch_size, steps_per_epoch, loss_items, crop)
        if not 0.0 < mask_prob < 1.0:
            raise ValueError(f"mask_prob must lie in (0, 1), got {mask_prob}")
        if not 0.0 <= last_mask_prob <= 1.0:
            raise ValueError(f"last_mask_prob must lie in [0, 1], got {last_mask_prob}")
        self.mask_prob = mask_prob
        self.last_mask_prob = last_mask_prob
        self._set_windows(model.max_len)

    def batches(self, epoch: int, rng: np.random.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Mini-batches (tokens (B, L), targets (B, L)), freshly masked every epoch."""
        for w in self._window_batches(rng):
            tokens, targets = mask_windows(w, self.model.mask_token, self.mask_prob, self.last_mask_prob, rng)
            yield torch.from_numpy(tokens), torch.from_numpy(targets)

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        tokens, targets = batch
        return self.softmax_loss(self.model.encode(tokens), targets)


TaskConfig = SASRecTaskConfig | GRU4RecTaskConfig | BERT4RecTaskConfig

CONFIGS: dict[str, type] = {
    "sasrec": SASRecTaskConfig,
    "gru4rec": GRU4RecTaskConfig,
    "bert4rec": BERT4RecTaskConfig,
}
MODELS: dict[str, type[SequentialRecommender]] = {"sasrec": SASRec, "gru4rec": GRU4Rec, "bert4rec": BERT4Rec}


def build_task(name: str, split: Split, catalog: object | None = None, cfg: TaskConfig | None = None) -> Any:
    """A TrainTask for model ``name`` ("sasrec", "gru4rec", "bert4rec") on ``split``.

    catalog is accepted for a uniform registry signature and unused (the sequence models use item
    indices only). cfg defaults to the model's task config defaults.
    """
    if name not in CONFIGS:
        raise ValueError(f"unknown sequential model {name!r}; choose one of {sorted(CONFIGS)}")
    cfg = CONFIGS[name]() if cfg is None else cfg
    if not isinstance(cfg, CONFIGS[name]):
        raise TypeError(f"{name} needs a {CONFIGS[name].__name__}, got {type(cfg).__name__}")
    model = MODELS[name](cfg.model_config(split.n_items))
    if name == "bert4rec":
        return MaskedItemTask(
            split,
            model,
            cfg.batch_size,
            cfg.mask_prob,
            cfg.last_mask_prob,
            steps_per_epoch=cfg.steps_per_epoch,
            loss_items=cfg.loss_items,
            crop=cfg.crop,
        )
    return NextItemTask(
        name,
        split,
        model,
        cfg.batch_size,
        steps_per_epoch=cfg.steps_per_epoch,
        loss_items=cfg.loss_items,
        crop=cfg.crop,
    )
