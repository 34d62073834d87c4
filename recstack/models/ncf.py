"""NeuMF (He et al. 2017): a GMF branch (element-wise product of embeddings) and an MLP branch
(concatenated embeddings through ReLU layers), fused by a final linear layer into one logit.
Trained with binary cross-entropy on observed pairs vs sampled negatives (recstack.training.tasks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from recstack.models.common import mlp


@dataclass
class NeuMFConfig:
    n_users: int
    n_items: int
    mf_dim: int = 64
    mlp_dims: tuple[int, ...] = (128, 64, 32)
    dropout: float = 0.1


class NeuMF(nn.Module):
    """forward(user_idx [B], item_idx [B]) -> logits [B]."""

    def __init__(self, cfg: NeuMFConfig):
        super().__init__()
        self.cfg = cfg
        mlp_emb = cfg.mlp_dims[0] // 2
        self.gmf_user = nn.Embedding(cfg.n_users + 1, cfg.mf_dim)
        self.gmf_item = nn.Embedding(cfg.n_items + 1, cfg.mf_dim)
        self.mlp_user = nn.Embedding(cfg.n_users + 1, mlp_emb)
        self.mlp_item = nn.Embedding(cfg.n_items + 1, mlp_emb)
        self.mlp = mlp(2 * mlp_emb, list(cfg.mlp_dims[1:]), dropout=cfg.dropout)
        self.out = nn.Linear(cfg.mf_dim + cfg.mlp_dims[-1], 1)
        for e in (self.gmf_user, self.gmf_item, self.mlp_user, self.mlp_item):
            nn.init.normal_(e.weight, std=0.01)

    def init_gmf_from(self, user_emb: torch.Tensor, item_emb: torch.Tensor, mlp_scale: float = 0.1) -> None:
        """Pre-training (He et al. 2017, sec. 3.4.1): copy MF factors into the GMF branch.

        user_emb [n_users + 1, mf_dim], item_emb [n_items + 1, mf_dim] (e.g. a trained BPRMF). The
        GMF output weights are set to 1 so that the initial logit is the MF score plus a damped
        (``mlp_scale``) MLP branch.
        """
        if user_emb.shape != self.gmf_user.weight.shape or item_emb.shape != self.gmf_item.weight.shape:
            raise ValueError(
                f"MF factors {tuple(user_emb.shape)}/{tuple(item_emb.shape)} do not match GMF "
                f"{tuple(self.gmf_user.weight.shape)}/{tuple(self.gmf_item.weight.shape)}; "
                "set mf_dim to the MF dim"
            )
        with torch.no_grad():
            self.gmf_user.weight.copy_(user_emb)
            self.gmf_item.weight.copy_(item_emb)
            self.out.weight[:, : self.cfg.mf_dim] = 1.0
            self.out.weight[:, self.cfg.mf_dim :] *= mlp_scale
            self.out.bias.zero_()

    def forward(self, user_idx: torch.Tensor, item_idx: torch.Tensor) -> torch.Tensor:
        """user_idx [B], item_idx [B] -> logits [B]."""
        gmf = self.gmf_user(user_idx) * self.gmf_item(item_idx)
        h = self.mlp(torch.cat([self.mlp_user(user_idx), self.mlp_item(item_idx)], dim=-1))
        return self.out(torch.cat([gmf, h], dim=-1)).squeeze(-1)

    def score_matrix(self, user_idx: torch.Tensor, item_idx: torch.Tensor) -> torch.Tensor:
        """Logits of every (user, item) pair: user_idx [B], item_idx [C] -> [B, C]."""
        b, c = len(user_idx), len(item_idx)
        u = user_idx.repeat_interleave(c)
        i = item_idx.repeat(b)
        return self.forward(u, i).view(b, c)
