"""BPR-MF: dot-product matrix factorisation trained with the BPR pairwise loss (Rendle et al. 2009).

The loss and sampling are in :mod:`recstack.training.tasks`; the model only scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class BPRMFConfig:
    n_users: int
    n_items: int
    dim: int = 64
    init_std: float = 0.01


class BPRMF(nn.Module):
    """score(u, i) = <P_u, Q_i>. Index 0 rows are the unknown user / padding item."""

    def __init__(self, cfg: BPRMFConfig):
        super().__init__()
        self.cfg = cfg
        self.user_emb = nn.Embedding(cfg.n_users + 1, cfg.dim)
        self.item_emb = nn.Embedding(cfg.n_items + 1, cfg.dim)
        nn.init.normal_(self.user_emb.weight, std=cfg.init_std)
        nn.init.normal_(self.item_emb.weight, std=cfg.init_std)

    def forward(self, user_idx: torch.Tensor, item_idx: torch.Tensor) -> torch.Tensor:
        """user_idx [B], item_idx [B] -> scores [B]."""
        return (self.user_emb(user_idx) * self.item_emb(item_idx)).sum(-1)

    def score_all(self, user_idx: torch.Tensor) -> torch.Tensor:
        """user_idx [B] -> scores of every item [B, n_items + 1]."""
        return self.user_emb(user_idx) @ self.item_emb.weight.T
