"""GRU4Rec: session-based recommendation with recurrent networks (Hidasi et al., ICLR 2016).

A GRU runs over the item embeddings; its state after item t, projected to the embedding space,
scores the next item by the inner product with the (tied) item embeddings. The training task uses
cross-entropy over all items at every position (Hidasi & Czapp, 2023, show CE/softmax losses with
many negatives are what makes GRU4Rec competitive).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from recstack.models.sequential_common import Dropout, SequentialRecommender, init_weights


@dataclass
class GRU4RecConfig:
    """Hyper-parameters of :class:`GRU4Rec`. n_items excludes padding (indices 1..n_items)."""

    n_items: int
    max_len: int = 50
    dim: int = 64  # item embedding size
    hidden: int = 128  # GRU state size
    n_layers: int = 1
    dropout: float = 0.2

    def validate(self) -> None:
        if min(self.n_items, self.max_len, self.dim, self.hidden, self.n_layers) < 1:
            raise ValueError(f"GRU4RecConfig needs positive sizes: {self}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GRU4RecConfig.dropout must lie in [0, 1), got {self.dropout}")


class GRU4Rec(SequentialRecommender):
    """GRU over item indices (B, L) -> hidden states projected to (B, L, D).

    Left padding (index 0, a zero embedding) only precedes the real items, so the state after the
    newest item depends on the real items and on the number of padding steps in front of them;
    training sees the same left-padded windows as serving.
    """

    def __init__(self, config: GRU4RecConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.item_emb = nn.Embedding(config.n_items + 1, config.dim, padding_idx=0)
        self.out_bias = nn.Parameter(torch.zeros(config.n_items + 1))
        self.in_drop = Dropout(config.dropout)
        self.gru = nn.GRU(
            config.dim,
            config.hidden,
            num_layers=config.n_layers,
            batch_first=True,
            dropout=config.dropout if config.n_layers > 1 else 0.0,
        )
        self.out_drop = Dropout(config.dropout)
        self.proj = nn.Linear(config.hidden, config.dim)
        init_weights(self, std=0.1)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, L, D) for tokens (B, L); position t depends on tokens <= t only."""
        states, _ = self.gru(self.in_drop(self.item_emb(tokens)))  # (B, L, H)
        return self.proj(self.out_drop(states))
