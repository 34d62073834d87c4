"""Two-tower retrieval model (user tower / item tower, inner-product similarity).

User tower: user-id embedding (index 0 = unknown user, a learned "cold" vector), pooled embeddings
of the recent history (mean or attention) and a projection of the genre profile, concatenated and
passed through an MLP. Item tower: item-id embedding plus a projection of the item's genre
multi-hot. With ``normalize=True`` both towers return unit vectors and the similarity is the inner
product of those (cosine); the FAISS index must use the same inner product. Training (sampled
softmax with logQ correction) lives in :mod:`recstack.training.tasks`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recstack.models.common import HistoryPooling, mlp


@dataclass
class TwoTowerConfig:
    n_users: int
    n_items: int
    n_genres: int
    dim: int = 64
    hidden: int = 128
    max_len: int = 50
    pooling: str = "mean"  # "mean" | "attention"
    normalize: bool = True  # unit-norm towers (inner product = cosine)
    temperature: float = 0.05  # softmax temperature used in training
    dropout: float = 0.1


class TwoTower(nn.Module):
    """Two-tower model. ``item_genres`` float [n_items + 1, G] is stored as a buffer."""

    def __init__(self, cfg: TwoTowerConfig, item_genres: np.ndarray | torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.user_emb = nn.Embedding(cfg.n_users + 1, d)
        self.item_emb = nn.Embedding(cfg.n_items + 1, d, padding_idx=0)
        self.pool = HistoryPooling(d, cfg.max_len, cfg.pooling)
        self.user_genre = nn.Linear(cfg.n_genres, d)
        self.user_mlp = mlp(3 * d, [cfg.hidden, d], dropout=cfg.dropout, last_activation=False)
        self.item_genre = nn.Linear(cfg.n_genres, d, bias=False)
        g = torch.zeros(cfg.n_items + 1, cfg.n_genres)
        if item_genres is not None:
            g = torch.as_tensor(np.asarray(item_genres), dtype=torch.float32)
            if tuple(g.shape) != (cfg.n_items + 1, cfg.n_genres):
                raise ValueError(
                    f"item_genres must have shape {(cfg.n_items + 1, cfg.n_genres)}, got {tuple(g.shape)}"
                )
        self.register_buffer("item_genres", g)
        nn.init.normal_(self.user_emb.weight, std=0.05)
        nn.init.normal_(self.item_emb.weight, std=0.05)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.cfg.normalize else x

    def user_embedding(
        self, user_idx: torch.Tensor, history: torch.Tensor, genre_profile: torch.Tensor
    ) -> torch.Tensor:
        """user_idx [B], history [B, L] (oldest first, 0-padded), genre_profile [B, G] -> [B, D]."""
        mask = history > 0
        pooled = self.pool(self.item_emb(history), mask)
        x = torch.cat([self.user_emb(user_idx), pooled, self.user_genre(genre_profile)], dim=-1)
        return self._out(self.user_mlp(x))

    def item_vectors(self, item_idx: torch.Tensor) -> torch.Tensor:
        """item_idx [N] -> [N, D]."""
        return self._out(self.item_emb(item_idx) + self.item_genre(self.item_genres[item_idx]))

    def item_embeddings(self) -> torch.Tensor:
        """Every item's vector [n_items + 1, D] (row 0 = padding, never retrieved)."""
        return self.item_vectors(torch.arange(self.cfg.n_items + 1, device=self.item_emb.weight.device))

    def forward(
        self,
        user_idx: torch.Tensor,
        history: torch.Tensor,
        genre_profile: torch.Tensor,
        item_idx: torch.Tensor,
    ) -> torch.Tensor:
        """Similarity of each user with its item: [B] (inner product, no temperature)."""
        return (self.user_embedding(user_idx, history, genre_profile) * self.item_vectors(item_idx)).sum(-1)
