"""Training tasks (model + loss + batches + full-ranking scores) for two-tower, multi-task, NeuMF, BPR-MF.

Each task implements :class:`recstack.training.trainer.TrainTask`; ``score_all(users, stage)``
returns [B, n_items + 1] scores (column 0 = padding) for the evaluation protocol.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from recstack.models.mf import BPRMF
from recstack.models.multitask import TASKS, MultiTaskRanker, combine
from recstack.models.ncf import NeuMF
from recstack.models.two_tower import TwoTower
from recstack.training.examples import SplitFeatures
from recstack.training.negatives import NegativeSampler

SCORE_BLOCK = 256  # users per forward when scoring every item


class Candidates:
    """Per stage, each user's candidate item indices: the pair-scoring rankers are validated and
    tested the way they serve, over the retrieval stage's candidates (items outside score -inf)."""

    def __init__(self, lists: dict[str, tuple[np.ndarray, list[np.ndarray]]]):
        self.lists = lists
        self._row = {stage: {int(u): k for k, u in enumerate(users)} for stage, (users, _) in lists.items()}

    def grid(self, users: np.ndarray, stage: str) -> tuple[np.ndarray, np.ndarray]:
        """(items int64 [B, C] padded with item 1, valid bool [B, C]) for user indices [B]."""
        if stage not in self.lists:
            raise KeyError(f"no candidates for stage {stage!r}")
        rows = [self._row[stage][int(u)] for u in users]
        cands = [self.lists[stage][1][k] for k in rows]
        width = max((len(c) for c in cands), default=1) or 1
        items = np.ones((len(cands), width), dtype=np.int64)
        valid = np.zeros((len(cands), width), dtype=bool)
        for b, c in enumerate(cands):
            items[b, : len(c)] = c
            valid[b, : len(c)] = True
        return items, valid

    def scatter(self, scores: np.ndarray, items: np.ndarray, valid: np.ndarray, n_items: int) -> np.ndarray:
        """[B, n_items + 1] with the candidates' ``scores`` [B, C] and -inf elsewhere."""
        out = np.full((len(items), n_items + 1), -np.inf, dtype=np.float32)
        rows = np.repeat(np.arange(len(items)), valid.sum(axis=1))
        out[rows, items[valid]] = scores[valid]
        return out


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    perm = rng.permutation(n)
    for s in range(0, n, batch_size):
        yield perm[s : s + batch_size]


def _shard_rows(user: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Indices of the rows whose user is in ``keep`` (a mask over user indices)."""
    return np.flatnonzero(keep[user])


def _positive_pairs(feats: SplitFeatures) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (user, item) training pairs as two int64 arrays."""
    ex = feats.examples
    keys = np.unique(ex.user * (feats.n_items + 1) + ex.item)
    return keys // (feats.n_items + 1), keys % (feats.n_items + 1)


def _user_items(feats: SplitFeatures) -> list[np.ndarray]:
    ex = feats.examples
    order = np.argsort(ex.user, kind="stable")
    cuts = np.searchsorted(ex.user[order], np.arange(feats.n_users + 2))
    return [ex.item[order[cuts[u] : cuts[u + 1]]] for u in range(feats.n_users + 1)]


@dataclass
class TwoTowerTaskConfig:
    batch_size: int = 512
    logq: bool = True  # subtract log of the in-batch sampling probability (popularity) from logits
    n_random_negatives: int = 0  # extra uniformly drawn negatives shared by the batch
    user_dropout: float = 0.1  # share of examples whose user id is replaced by 0 (teaches cold start)


class TwoTowerTask:
    """In-batch sampled softmax with logQ correction over (user state before row t, item at t)."""

    def __init__(self, model: TwoTower, feats: SplitFeatures, cfg: TwoTowerTaskConfig | None = None):
        self.name = "two_tower"
        self.model = model
        self.feats = feats
        self.cfg = cfg or TwoTowerTaskConfig()
        counts = feats.item_counts.astype(np.float64) + 1.0
        self.log_q = torch.from_numpy(np.log(counts / counts.sum())).float()
        self.max_len = model.cfg.max_len
        self.rows: np.ndarray | None = None  # training rows of this worker (None: all)

    def shard(self, keep: np.ndarray, world: int) -> None:
        """Train on the rows of the users in ``keep`` with batches ``1/world`` the size."""
        self.rows = _shard_rows(self.feats.examples.user, keep)
        self.cfg = dataclasses.replace(self.cfg, batch_size=math.ceil(self.cfg.batch_size / world))

    def batches(self, epoch: int, rng: np.random.Generator) -> Iterator[dict]:
        ex = self.feats.examples
        n = len(ex) if self.rows is None else len(self.rows)
        for rows in _batches(n, self.cfg.batch_size, rng):
            if self.rows is not None:
                rows = self.rows[rows]
            users = ex.user[rows].copy()
            if self.cfg.user_dropout > 0:
                users[rng.random(len(rows)) < self.cfg.user_dropout] = 0
            b = {
                "user": _t(users),
                "history": _t(ex.history(rows, self.max_len)),
                "genre": _t(ex.genre[rows]),
                "item": _t(ex.item[rows]),
            }
            if self.cfg.n_random_negatives:
                b["neg"] = _t(rng.integers(1, self.feats.n_items + 1, self.cfg.n_random_negatives))
            yield b

    def loss(self, batch: dict) -> torch.Tensor:
        m = self.model
        u = m.user_embedding(batch["user"], batch["history"], batch["genre"])  # [B, D]
        items = batch["item"]
        v = m.item_vectors(items)  # [B, D]
        logits = u @ v.T / m.cfg.temperature  # [B, B]
        if self.cfg.logq:
            logits = logits - self.log_q[items][None, :]
        same = items[:, None] == items[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, -1e9)
        if "neg" in batch:
            neg = batch["neg"]
            ln = u @ m.item_vectors(neg).T / m.cfg.temperature
            if self.cfg.logq:
                ln = ln - math.log(len(neg) / self.feats.n_items)
            ln = ln.masked_fill(items[:, None] == neg[None, :], -1e9)
            logits = torch.cat([logits, ln], dim=1)
        return F.cross_entropy(logits, torch.arange(len(items)))

    def score_all(self, user_indices: np.ndarray, stage: str) -> np.ndarray:
        hist, gen = self.feats.stages[stage].batch(np.asarray(user_indices), self.max_len)
        with torch.no_grad():
            u = self.model.user_embedding(_t(np.asarray(user_indices)), _t(hist), _t(gen))
            return (u @ self.model.item_embeddings().T).numpy()


@dataclass
class RankerTaskConfig:
    batch_size: int = 1024
    n_negatives: int = 4  # sampled negatives per positive row (all labels 0)
    neg_power: float = 0.0  # 0 = uniform negatives, 0.75 = popularity^0.75
    task_loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # click, like, purchase
    softmax_weight: float = 0.0  # weight of an extra sampled-softmax loss on the click logits of each list


class RankerTask:
    """Binary cross-entropy per task over positive rows and sampled negatives (MultiTask / MMoE)."""

    def __init__(
        self,
        model: MultiTaskRanker,
        feats: SplitFeatures,
        cfg: RankerTaskConfig | None = None,
        name="multitask",
        candidates: Candidates | None = None,
    ):
        self.name = name
        self.model = model
        self.feats = feats
        self.cfg = cfg or RankerTaskConfig()
        self.candidates = candidates
        self.max_len = model.cfg.max_len
        self.sampler = NegativeSampler(
            feats.n_items, feats.item_counts, self.cfg.neg_power, _user_items(feats)
        )
        self.rows: np.ndarray | None = None  # training rows of this worker (None: all)

    def shard(self, keep: np.ndarray, world: int) -> None:
        """Train on the rows of the users in ``keep`` with batches ``1/world`` the size."""
        self.rows = _shard_rows(self.feats.examples.user, keep)
        self.cfg = dataclasses.replace(self.cfg, batch_size=math.ceil(self.cfg.batch_size / world))

    def batches(self, epoch: int, rng: np.random.Generator) -> Iterator[dict]:
        ex = self.feats.examples
        k = self.cfg.n_negatives
        n = len(ex) if self.rows is None else len(self.rows)
        for rows in _batches(n, self.cfg.batch_size, rng):
            if self.rows is not None:
                rows = self.rows[rows]
            users = ex.user[rows]
            neg = self.sampler.sample(users, k, rng)  # [B, k]
            items = np.concatenate([ex.item[rows][:, None], neg], axis=1)  # [B, 1 + k], positive first
            pos = np.zeros((len(rows), 1 + k), np.float32)
            pos[:, 0] = 1.0
            labels = {
                "click": pos,
                "like": pos * ex.like[rows][:, None],
                "purchase": pos * ex.purchase[rows][:, None],
            }
            yield {
                "user": _t(users),
                "item": _t(items),
                "history": _t(ex.history(rows, self.max_len)),
                "genre": _t(ex.genre[rows]),
                "labels": {t: _t(v) for t, v in labels.items()},
            }

    def loss(self, batch: dict) -> torch.Tensor:
        out = self.model.score_grid(batch["user"], batch["history"], batch["genre"], batch["item"])
        loss = sum(
            w * F.binary_cross_entropy_with_logits(out[t], batch["labels"][t])
            for t, w in zip(TASKS, self.cfg.task_loss_weights, strict=True)
        )
        if self.cfg.softmax_weight:
            target = torch.zeros(len(out["click"]), dtype=torch.long)  # the positive is column 0
            loss = loss + self.cfg.softmax_weight * F.cross_entropy(out["click"], target)
        return loss

    def score_candidates(
        self, user_indices: np.ndarray, stage: str
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(items [B, C], valid [B, C], combined scores [B, C]) over the users' candidates: what the
        trainer evaluates when the task has candidates (users x candidates pairs, never all items)."""
        users = np.asarray(user_indices)
        items, valid = self.candidates.grid(users, stage)
        hist, gen = self.feats.stages[stage].batch(users, self.max_len)
        with torch.no_grad():
            logits = self.model.score_grid(_t(users), _t(hist), _t(gen), _t(items))
            probs = {t: torch.sigmoid(v) for t, v in logits.items()}
            scores = combine(probs, self.model.cfg.task_weights).numpy()
        return items, valid, scores

    def score_all(self, user_indices: np.ndarray, stage: str) -> np.ndarray:
        """Combined scores [B, n_items + 1]: over the candidates when the task has them, else all items."""
        users = np.asarray(user_indices)
        if self.candidates is not None:
            items, valid, scores = self.score_candidates(users, stage)
            return self.candidates.scatter(scores, items, valid, self.feats.n_items)
        items = torch.arange(self.feats.n_items + 1)
        out = np.empty((len(users), self.feats.n_items + 1), np.float32)
        with torch.no_grad():
            for s in range(0, len(users), 64):
                ub = users[s : s + 64]
                hist, gen = self.feats.stages[stage].batch(ub, self.max_len)
                logits = self.model.score_matrix(_t(ub), _t(hist), _t(gen), items)
                probs = {t: torch.sigmoid(v) for t, v in logits.items()}
                out[s : s + len(ub)] = combine(probs, self.model.cfg.task_weights).numpy()
        return out


@dataclass
class PairTaskConfig:
    batch_size: int = 2048
    n_negatives: int = 1  # BPR: 1 negative per positive; NeuMF: 4
    neg_power: float = 0.0
    loss: str = "bce"  # NeuMF only: "bce" (pointwise, He et al.) or "bpr" (pairwise vs each negative)


class BPRTask:
    """BPR loss -log sigmoid(s(u, i) - s(u, j)) over distinct training pairs with sampled negatives j."""

    def __init__(self, model: BPRMF, feats: SplitFeatures, cfg: PairTaskConfig | None = None):
        self.name = "bpr_mf"
        self.model = model
        self.feats = feats
        self.cfg = cfg or PairTaskConfig()
        self.users, self.items = _positive_pairs(feats)
        self.sampler = NegativeSampler(
            feats.n_items, feats.item_counts, self.cfg.neg_power, _user_items(feats)
        )

    def shard(self, keep: np.ndarray, world: int) -> None:
        """Train on the pairs of the users in ``keep`` with batches ``1/world`` the size."""
        rows = _shard_rows(self.users, keep)
        self.users, self.items = self.users[rows], self.items[rows]
        self.cfg = dataclasses.replace(self.cfg, batch_size=math.ceil(self.cfg.batch_size / world))

    def batches(self, epoch: int, rng: np.random.Generator) -> Iterator[dict]:
        for rows in _batches(len(self.users), self.cfg.batch_size, rng):
            u = self.users[rows]
            yield {
                "user": _t(u),
                "pos": _t(self.items[rows]),
                "neg": _t(self.sampler.sample(u, 1, rng)[:, 0]),
            }

    def loss(self, batch: dict) -> torch.Tensor:
        m = self.model
        return -F.logsigmoid(m(batch["user"], batch["pos"]) - m(batch["user"], batch["neg"])).mean()

    def score_all(self, user_indices: np.ndarray, stage: str) -> np.ndarray:
        with torch.no_grad():
            return self.model.score_all(_t(np.asarray(user_indices))).numpy()


class NeuMFTask:
    """BCE over distinct training pairs (label 1) and ``n_negatives`` sampled items per pair (label 0)."""

    def __init__(
        self,
        model: NeuMF,
        feats: SplitFeatures,
        cfg: PairTaskConfig | None = None,
        candidates: Candidates | None = None,
    ):
        self.name = "ncf"
        self.model = model
        self.feats = feats
        self.cfg = cfg or PairTaskConfig(batch_size=1024, n_negatives=4)
        self.candidates = candidates
        self.users, self.items = _positive_pairs(feats)
        self.sampler = NegativeSampler(
            feats.n_items, feats.item_counts, self.cfg.neg_power, _user_items(feats)
        )

    def shard(self, keep: np.ndarray, world: int) -> None:
        """Train on the pairs of the users in ``keep`` with batches ``1/world`` the size."""
        rows = _shard_rows(self.users, keep)
        self.users, self.items = self.users[rows], self.items[rows]
        self.cfg = dataclasses.replace(self.cfg, batch_size=math.ceil(self.cfg.batch_size / world))

    def batches(self, epoch: int, rng: np.random.Generator) -> Iterator[dict]:
        k = self.cfg.n_negatives
        for rows in _batches(len(self.users), self.cfg.batch_size, rng):
            u = self.users[rows]
            items = np.concatenate([self.items[rows][:, None], self.sampler.sample(u, k, rng)], axis=1)
            labels = np.zeros_like(items, dtype=np.float32)
            labels[:, 0] = 1.0
            yield {
                "user": _t(np.repeat(u, 1 + k)),
                "item": _t(items.reshape(-1)),
                "label": _t(labels.reshape(-1)),
            }

    def loss(self, batch: dict) -> torch.Tensor:
        logits = self.model(batch["user"], batch["item"])
        if self.cfg.loss == "bpr":
            grid = logits.view(-1, 1 + self.cfg.n_negatives)
            return -F.logsigmoid(grid[:, :1] - grid[:, 1:]).mean()
        return F.binary_cross_entropy_with_logits(logits, batch["label"])

    def score_candidates(
        self, user_indices: np.ndarray, stage: str
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(items [B, C], valid [B, C], logits [B, C]) over the users' candidates (see RankerTask)."""
        users = np.asarray(user_indices)
        items, valid = self.candidates.grid(users, stage)
        with torch.no_grad():
            logits = self.model(_t(np.repeat(users, items.shape[1])), _t(items.reshape(-1)))
        return items, valid, logits.view(items.shape).numpy()

    def score_all(self, user_indices: np.ndarray, stage: str) -> np.ndarray:
        """Logits [B, n_items + 1]: over the candidates when the task has them, else all items."""
        users = np.asarray(user_indices)
        if self.candidates is not None:
            items, valid, scores = self.score_candidates(users, stage)
            return self.candidates.scatter(scores, items, valid, self.feats.n_items)
        items = torch.arange(self.feats.n_items + 1)
        out = np.empty((len(users), self.feats.n_items + 1), np.float32)
        with torch.no_grad():
            for s in range(0, len(users), 128):
                ub = _t(users[s : s + 128])
                out[s : s + len(ub)] = self.model.score_matrix(ub, items).numpy()
        return out
