"""BERT4Rec: bidirectional transformer trained by masked item prediction (Sun et al., CIKM 2019).

Token indices: 0 padding, 1..n_items items, n_items+1 the [MASK] token. Training replaces a share
of the items by [MASK] and predicts them from both sides (CE over all items). To recommend, the
history is shifted left by one and [MASK] is appended: the prediction at that last position scores
the next item. Petrov & Macdonald (RecSys 2022) show it needs far longer training than the paper
reports; the task profiles budget for that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from recstack.models.sequential_common import (
    Dropout,
    SequentialRecommender,
    TransformerBlock,
    as_history_tensor,
    attention_mask,
    embed_scale,
    init_weights,
    right_positions,
    trim_padding,
)


@dataclass
class BERT4RecConfig:
    """Hyper-parameters of :class:`BERT4Rec`. n_items excludes padding and [MASK]."""

    n_items: int
    max_len: int = 50  # including the appended [MASK]
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 2
    ffn_mult: int = 4
    dropout: float = 0.1

    def validate(self) -> None:
        if self.n_items < 1 or self.max_len < 2 or self.dim < 1 or self.n_layers < 1:
            raise ValueError(f"BERT4RecConfig needs positive n_items, dim, n_layers and max_len >= 2: {self}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"BERT4RecConfig.dropout must lie in [0, 1), got {self.dropout}")


class BERT4Rec(SequentialRecommender):
    """Bidirectional transformer over tokens (B, L) -> hidden states (B, L, D)."""

    def __init__(self, cfg: BERT4RecConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.mask_token = cfg.n_items + 1
        self.item_emb = nn.Embedding(cfg.n_items + 2, cfg.dim, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)
        self.out_bias = nn.Parameter(torch.zeros(cfg.n_items + 1))
        self.in_norm = nn.LayerNorm(cfg.dim)
        self.drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg.dim, cfg.n_heads, cfg.ffn_mult * cfg.dim, cfg.dropout)
            for _ in range(cfg.n_layers)
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Sequential(nn.Linear(cfg.dim, cfg.dim), nn.GELU(), nn.LayerNorm(cfg.dim))
        self._scale = embed_scale(cfg.dim)
        init_weights(self)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Output states (B, L, D) for tokens (B, L) (items and [MASK]); attention is bidirectional."""
        positions = right_positions(tokens.shape[1], self.cfg.max_len, tokens.device)
        x = self.item_emb(tokens) * self._scale + self.pos_emb(positions)
        x = self.drop(self.in_norm(x))
        allowed = attention_mask(tokens, causal=False)
        for block in self.blocks:
            x = block(x, allowed)
        return self.head(self.norm(x))

    def represent(self, history: torch.Tensor | np.ndarray) -> torch.Tensor:
        """User representation (B, D): the state at [MASK] appended after the newest max_len-1 items."""
        tokens = as_history_tensor(history, self.n_items, self.max_len - 1).to(self.item_emb.weight.device)
        tokens = trim_padding(tokens)
        mask = torch.full((tokens.shape[0], 1), self.mask_token, dtype=torch.long, device=tokens.device)
        return self.encode(torch.cat([tokens, mask], dim=1))[:, -1]
