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

    Left padding (index 0) only precedes the real items and is skipped (packed sequences): the
    state after the newest item depends on the real items alone, whatever the batch's width.
    """

    def __init__(self, cfg: GRU4RecConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.n_items + 1, cfg.dim, padding_idx=0)
        self.out_bias = nn.Parameter(torch.zeros(cfg.n_items + 1))
        self.in_drop = Dropout(cfg.dropout)
        self.gru = nn.GRU(
            cfg.dim,
            cfg.hidden,
            num_layers=cfg.n_layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.n_layers > 1 else 0.0,
        )
        self.out_drop = Dropout(cfg.dropout)
        self.proj = nn.Linear(cfg.hidden, cfg.dim)
        init_weights(self, std=0.1)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, W, D) for left-padded tokens (B, W); position t depends on the real tokens
        <= t only (padding positions get the projection of a zero state)."""
        b, width = tokens.shape
        lengths = (tokens != 0).sum(dim=1)
        shift = width - lengths  # leading padding per row
        cols = torch.arange(width, device=tokens.device)
        # left-align the real items, run the GRU over exactly `lengths` steps, align back to the right
        left = tokens.gather(1, (cols[None, :] + shift[:, None]).clamp(max=width - 1))
        left = left.masked_fill(cols[None, :] >= lengths[:, None], 0)
        packed = nn.utils.rnn.pack_padded_sequence(
            self.in_drop(self.item_emb(left)),
            lengths.clamp(min=1).cpu(),
            batch_first=True,
            enforce_sorted=False,
        )
        states, _ = self.gru(packed)
        states, _ = nn.utils.rnn.pad_packed_sequence(
            states, batch_first=True, total_length=width
        )  # (B, W, H)
        back = (cols[None, :] - shift[:, None]).clamp(min=0)
        states = states.gather(1, back[:, :, None].expand(-1, -1, states.shape[-1]))
        states = states.masked_fill((cols[None, :] < shift[:, None])[:, :, None], 0.0)
        return self.proj(self.out_drop(states))
