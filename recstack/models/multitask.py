"""Multi-task ranking: p(click), p(like), p(purchase) for (user, candidate item) pairs.

Input features per pair: user-id embedding (0 = unknown user), item-id embedding, pooled embedding
of the recent history, the user's genre profile [G], the item's genre multi-hot [G], and two cross
features (history . item embedding, genre profile . item genres). ``MultiTaskRanker`` runs them
through a shared-bottom MLP with one small tower per task; ``MMoERanker`` (Ma et al. 2018) replaces
the shared bottom by experts mixed by one softmax gate per task.

Labels (built in recstack.training.tasks from the event log):
- click    = 1 for any observed interaction, 0 for sampled negatives;
- like     = 1 if the event is "like" or a rating >= 4;
- purchase = 1 if the event is "purchase" or a rating == 5.
The combined ranking score is a weighted sum of the task probabilities
(default click 0.5, like 0.3, purchase 0.2; see :data:`DEFAULT_TASK_WEIGHTS`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from recstack.models.common import HistoryPooling, mlp

TASKS = ("click", "like", "purchase")
DEFAULT_TASK_WEIGHTS: dict[str, float] = {"click": 0.5, "like": 0.3, "purchase": 0.2}


class TaskWeightError(ValueError):
    """Task weights name an unknown task or are all zero."""


def combine(probs: dict[str, torch.Tensor | np.ndarray], weights: dict[str, float] | None = None):
    """Weighted sum of per-task probabilities (same shape as each entry)."""
    w = DEFAULT_TASK_WEIGHTS if weights is None else weights
    unknown = set(w) - set(TASKS)
    if unknown:
        raise TaskWeightError(f"unknown task(s) {sorted(unknown)} in weights; valid tasks are {list(TASKS)}")
    if not any(v != 0 for v in w.values()):
        raise TaskWeightError("task weights are all zero; give at least one task a non-zero weight")
    total = None
    for t, v in w.items():
        term = probs[t] * v
        total = term if total is None else total + term
    return total


@dataclass
class MultiTaskConfig:
    n_users: int
    n_items: int
    n_genres: int
    dim: int = 32
    max_len: int = 50
    pooling: str = "mean"
    bottom: tuple[int, ...] = (128, 64)  # shared bottom (or each expert) layer sizes
    tower: int = 32  # per-task tower hidden size
    dropout: float = 0.1
    mmoe: bool = False
    n_experts: int = 4
    task_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TASK_WEIGHTS))


class MultiTaskRanker(nn.Module):
    """Shared-bottom multi-task ranker.

    forward(user_idx [B], item_idx [B], history [B, L], genre_profile [B, G]) -> {task: logits [B]}.
    """

    def __init__(self, cfg: MultiTaskConfig, item_genres: np.ndarray | torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg
        d, g = cfg.dim, cfg.n_genres
        self.user_emb = nn.Embedding(cfg.n_users + 1, d)
        self.item_emb = nn.Embedding(cfg.n_items + 1, d, padding_idx=0)
        self.pool = HistoryPooling(d, cfg.max_len, cfg.pooling)
        genres = torch.zeros(cfg.n_items + 1, g)
        if item_genres is not None:
            genres = torch.as_tensor(np.asarray(item_genres), dtype=torch.float32)
            if tuple(genres.shape) != (cfg.n_items + 1, g):
                raise ValueError(
                    f"item_genres must have shape {(cfg.n_items + 1, g)}, got {tuple(genres.shape)}"
                )
        self.register_buffer("item_genres", genres)
        self.in_dim = 3 * d + 2 * g + 2
        self._build_body()
        self.towers = nn.ModuleDict(
            {
                t: nn.Sequential(*mlp(self.body_dim, [cfg.tower], cfg.dropout), nn.Linear(cfg.tower, 1))
                for t in TASKS
            }
        )
        nn.init.normal_(self.user_emb.weight, std=0.05)
        nn.init.normal_(self.item_emb.weight, std=0.05)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def _build_body(self) -> None:
        self.bottom = mlp(self.in_dim, list(self.cfg.bottom), self.cfg.dropout)
        self.body_dim = self.cfg.bottom[-1]

    def _body(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.bottom(x)
        return dict.fromkeys(TASKS, h)

    def user_repr(self, user_idx: torch.Tensor, history: torch.Tensor, genre_profile: torch.Tensor):
        """User-side features: (user emb [B, D], pooled history [B, D], genre profile [B, G])."""
        pooled = self.pool(self.item_emb(history), history > 0)
        return self.user_emb(user_idx), pooled, genre_profile

    def _pair_logits(self, user, item_idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """user: user_repr tuple expanded to [N, ...]; item_idx [N] -> {task: logits [N]}."""
        ue, hp, gp = user
        ie = self.item_emb(item_idx)
        ig = self.item_genres[item_idx]
        cross = torch.stack([(hp * ie).sum(-1), (gp * ig).sum(-1)], dim=-1)
        x = torch.cat([ue, ie, hp, gp, ig, cross], dim=-1)
        hs = self._body(x)
        return {t: self.towers[t](hs[t]).squeeze(-1) for t in TASKS}

    def forward(
        self,
        user_idx: torch.Tensor,
        item_idx: torch.Tensor,
        history: torch.Tensor,
        genre_profile: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """user_idx [B], item_idx [B], history [B, L], genre_profile [B, G] -> {task: logits [B]}."""
        return self._pair_logits(self.user_repr(user_idx, history, genre_profile), item_idx)

    def score_grid(
        self,
        user_idx: torch.Tensor,
        history: torch.Tensor,
        genre_profile: torch.Tensor,
        item_idx: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Per-user candidate lists: users [B] (+ [B, L], [B, G]), item_idx [B, C] -> {task: [B, C]}.

        The user side is computed once per user (cheaper than ``forward`` on repeated rows).
        """
        b, c = item_idx.shape
        user = tuple(t.repeat_interleave(c, dim=0) for t in self.user_repr(user_idx, history, genre_profile))
        out = self._pair_logits(user, item_idx.reshape(-1))
        return {t: v.view(b, c) for t, v in out.items()}

    def score_matrix(
        self,
        user_idx: torch.Tensor,
        history: torch.Tensor,
        genre_profile: torch.Tensor,
        item_idx: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """All (user, candidate) pairs: users [B] (+ [B, L], [B, G]), item_idx [C] -> {task: [B, C]}."""
        b, c = len(user_idx), len(item_idx)
        user = tuple(t.repeat_interleave(c, dim=0) for t in self.user_repr(user_idx, history, genre_profile))
        out = self._pair_logits(user, item_idx.repeat(b))
        return {t: v.view(b, c) for t, v in out.items()}


class MMoERanker(MultiTaskRanker):
    """Multi-gate mixture of experts: ``n_experts`` MLP experts, one softmax gate per task."""

    def _build_body(self) -> None:
        cfg = self.cfg
        self.experts = nn.ModuleList(
            [mlp(self.in_dim, list(cfg.bottom), cfg.dropout) for _ in range(cfg.n_experts)]
        )
        self.gates = nn.ModuleDict({t: nn.Linear(self.in_dim, cfg.n_experts) for t in TASKS})
        self.body_dim = cfg.bottom[-1]

    def _body(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        e = torch.stack([ex(x) for ex in self.experts], dim=1)  # [N, E, H]
        return {t: (torch.softmax(self.gates[t](x), dim=-1).unsqueeze(-1) * e).sum(1) for t in TASKS}


def build_ranker(
    cfg: MultiTaskConfig, item_genres: np.ndarray | torch.Tensor | None = None
) -> MultiTaskRanker:
    """MMoERanker when ``cfg.mmoe`` else MultiTaskRanker."""
    return (MMoERanker if cfg.mmoe else MultiTaskRanker)(cfg, item_genres)
