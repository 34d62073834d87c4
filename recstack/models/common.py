"""Building blocks shared by the models of this package."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def mlp(
    in_dim: int, dims: Sequence[int], dropout: float = 0.0, last_activation: bool = True
) -> nn.Sequential:
    """Linear -> ReLU (-> Dropout) stack; ``dims`` are the output sizes of the layers."""
    layers: list[nn.Module] = []
    d = in_dim
    for k, out in enumerate(dims):
        layers.append(nn.Linear(d, out))
        if k < len(dims) - 1 or last_activation:
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        d = out
    return nn.Sequential(*layers)


class HistoryPooling(nn.Module):
    """Pools item embeddings of a left-padded history: [B, L, D] (+ mask [B, L]) -> [B, D].

    ``mode="mean"``: mean over non-padding positions (zeros for an empty history).
    ``mode="attention"``: softmax over non-padding positions of a learned score per item embedding
    plus a learned position bias (recent items can weigh more).
    """

    def __init__(self, dim: int, max_len: int, mode: str = "mean"):
        super().__init__()
        if mode not in ("mean", "attention"):
            raise ValueError(f"pooling must be 'mean' or 'attention', got {mode!r}")
        self.mode = mode
        if mode == "attention":
            self.score = nn.Linear(dim, 1)
            self.pos_bias = nn.Parameter(torch.zeros(max_len))

    def forward(self, emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """emb [B, L, D], mask [B, L] bool (True = real item) -> [B, D]."""
        m = mask.to(emb.dtype)
        if self.mode == "mean":
            return (emb * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp(min=1.0)
        logits = self.score(emb).squeeze(-1) + self.pos_bias[-emb.shape[1] :]
        logits = logits.masked_fill(~mask, -1e9)
        w = torch.softmax(logits, dim=1) * m  # an empty history gives all-zero weights
        return (emb * w.unsqueeze(-1)).sum(1)
