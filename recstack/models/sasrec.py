"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).

Causal self-attention over the item sequence with learned positions, pre-norm transformer blocks,
dropout and a final layer norm. The hidden state at position t predicts the item at t+1 by the
inner product with the (tied) item embeddings. The training task (recstack.training.
sequential_tasks) uses full softmax cross-entropy over all items at every position, which
Klenitskiy & Vasilev (RecSys 2023) show beats the original BCE with one negative.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from recstack.models.sequential_common import (
    Dropout,
    SequentialRecommender,
    TransformerBlock,
    attention_mask,
    embed_scale,
    init_weights,
    right_positions,
)


@dataclass
class SASRecConfig:
    """Hyper-parameters of :class:`SASRec`. n_items excludes padding (indices 1..n_items)."""

    n_items: int
    max_len: int = 50
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 2
    ffn_mult: int = 1  # feed-forward width = ffn_mult * dim (SASRec uses dim)
    dropout: float = 0.2
    attn_dropout: float = 0.0  # dropout on the attention weights

    def validate(self) -> None:
        if self.n_items < 1 or self.max_len < 1 or self.dim < 1 or self.n_layers < 1:
            raise ValueError(f"SASRecConfig needs positive n_items, max_len, dim, n_layers: {self}")
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"SASRecConfig.{name} must lie in [0, 1), got {getattr(self, name)}")


class SASRec(SequentialRecommender):
    """Causal transformer over item indices (B, L) -> hidden states (B, L, D)."""

    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.n_items + 1, cfg.dim, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)
        self.out_bias = nn.Parameter(torch.zeros(cfg.n_items + 1))
        self.drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg.dim, cfg.n_heads, cfg.ffn_mult * cfg.dim, cfg.dropout, cfg.attn_dropout)
            for _ in range(cfg.n_layers)
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self._scale = embed_scale(cfg.dim)
        init_weights(self)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, W, D) for left-padded tokens (B, W), W <= max_len; position t sees tokens
        <= t only."""
        positions = right_positions(tokens.shape[1], self.cfg.max_len, tokens.device)
        x = self.item_emb(tokens) * self._scale + self.pos_emb(positions)
        x = self.drop(x) * (tokens != 0).unsqueeze(-1)
        allowed = attention_mask(tokens, causal=True)
        for block in self.blocks:
            x = block(x, allowed)
        return self.norm(x)
