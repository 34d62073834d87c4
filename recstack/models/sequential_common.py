"""Shared parts of the sequential recommenders (SASRec, GRU4Rec, BERT4Rec).

Every sequential model maps a history of item indices (oldest first, left-padded with 0, shape
(B, L)) to one representation vector per user (B, D) through one function, :meth:`represent`,
and scores items by the inner product with the output item embeddings (plus a per-item bias).
``score_all`` and ``score_candidates`` both go through ``represent``, so offline evaluation and
the online reranker share one code path.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Score given to the padding column / padding candidates: finite, so that sorting and softmax stay
# free of NaN, and far below any real logit.
PAD_SCORE = -1e9


def as_history_tensor(history: torch.Tensor | np.ndarray, n_items: int, max_len: int) -> torch.Tensor:
    """Validate a history batch and bring it to length ``max_len``.

    history: (B, L) item indices in 0..n_items, oldest first, left-padded with 0.
    Returns (B, max_len) int64: the last ``max_len`` columns when L > max_len, left-padded with 0
    when L < max_len.
    """
    if isinstance(history, np.ndarray):
        history = torch.from_numpy(np.ascontiguousarray(history))
    if not isinstance(history, torch.Tensor):
        raise TypeError(f"history must be a torch.Tensor or np.ndarray, got {type(history).__name__}")
    if history.dim() != 2:
        raise ValueError(f"history must have shape (B, L), got {tuple(history.shape)}")
    if history.dtype.is_floating_point or history.dtype == torch.bool:
        raise TypeError(f"history must hold integer item indices, got dtype {history.dtype}")
    history = history.long()
    if history.numel() and (int(history.min()) < 0 or int(history.max()) > n_items):
        raise ValueError(
            f"history holds indices outside 0..{n_items} (min {int(history.min())}, "
            f"max {int(history.max())}); map item ids with the bundle's item_map first"
        )
    length = history.shape[1]
    if length > max_len:
        return history[:, -max_len:]
    if length < max_len:
        return F.pad(history, (max_len - length, 0), value=0)
    return history


def trim_padding(tokens: torch.Tensor) -> torch.Tensor:
    """Drop the leading columns that are padding (0) in every row of a left-padded batch (B, L).

    At least one column is kept. The models place positions from the right (the newest item is
    always at position ``max_len - 1``) and never let a real item see padding, so a trimmed batch
    gives the same states at its real positions as the full-width one, at a fraction of the cost
    when histories are short.
    """
    if tokens.shape[1] <= 1:
        return tokens
    real = (tokens != 0).any(dim=0)
    first = int(real.to(torch.int8).argmax()) if bool(real.any()) else tokens.shape[1] - 1
    return tokens[:, first:]


def right_positions(width: int, max_len: int, device: torch.device) -> torch.Tensor:
    """Position indices (width,) of the last ``width`` of ``max_len`` columns: the newest item of a
    left-padded (possibly trimmed) batch always sits at position ``max_len - 1``."""
    if width > max_len:
        raise ValueError(f"a batch of {width} columns exceeds max_len {max_len}")
    return torch.arange(max_len - width, max_len, device=device)


class Dropout(nn.Module):
    """Inverted dropout drawn with ``torch.rand`` (on CPU ~2x faster than nn.Dropout's bernoulli_)."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return x * (torch.rand_like(x) >= self.p).to(x.dtype) * (1.0 / (1.0 - self.p))


class TransformerBlock(nn.Module):
    """Pre-norm transformer encoder block: x + MHA(LN(x)), then x + FFN(LN(x)).

    ``dropout`` applies to the residual branches (as in BERT); ``attn_dropout`` to the
    attention weights (default 0: on CPU it costs a Bernoulli draw per (B, H, L, L) entry).

    Inputs: x (B, L, D), allowed (B, 1, L, L) bool, True where query i may attend to key j.
    """

    def __init__(self, dim: int, n_heads: int, ffn_dim: int, dropout: float, attn_dropout: float = 0.0):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim ({dim}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.attn_dropout = attn_dropout
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, dim))
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, length, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        # (B, L, D) -> (B, H, L, D/H)
        q, k, v = (t.view(b, length, self.n_heads, dim // self.n_heads).transpose(1, 2) for t in (q, k, v))
        att = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.attn_dropout if self.training else 0.0
        )
        att = att.transpose(1, 2).reshape(b, length, dim)
        x = x + self.drop(self.proj(att))
        return x + self.drop(self.ffn(self.norm2(x)))


def attention_mask(tokens: torch.Tensor, causal: bool) -> torch.Tensor:
    """Boolean attention mask (B, 1, L, L) for tokens (B, L) where 0 is padding.

    A query attends to non-padding keys (and, if causal, only to keys at or before it); every
    position may attend to itself, so that no row is fully masked (padding rows stay finite).
    """
    length = tokens.shape[1]
    allowed = (tokens != 0)[:, None, None, :].expand(-1, 1, length, -1)
    if causal:
        allowed = allowed & torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()
    return allowed | torch.eye(length, dtype=torch.bool, device=tokens.device)


class SequentialRecommender(nn.Module):
    """Base class: item embeddings, output bias, scoring through one ``represent`` function.

    Subclasses set ``self.cfg`` (with ``n_items`` and ``max_len``), ``self.item_emb``
    (an nn.Embedding whose first n_items+1 rows are the output item embeddings) and implement
    ``encode`` and, when the representation is not the last position's state, ``represent``.
    """

    cfg: object
    item_emb: nn.Embedding
    out_bias: nn.Parameter

    @property
    def n_items(self) -> int:
        return int(self.cfg.n_items)

    @property
    def max_len(self) -> int:
        return int(self.cfg.max_len)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, W, D) for a left-padded token batch (B, W), W <= ``max_len`` (the last W
        positions; see :func:`trim_padding`)."""
        raise NotImplementedError

    def represent(self, history: torch.Tensor | np.ndarray) -> torch.Tensor:
        """User representation (B, D) from history (B, L): the state after the newest item."""
        tokens = as_history_tensor(history, self.n_items, self.max_len).to(self.item_emb.weight.device)
        return self.encode(trim_padding(tokens))[:, -1]

    def output_embeddings(self) -> torch.Tensor:
        """Output item embeddings (n_items+1, D); row 0 is padding."""
        return self.item_emb.weight[: self.n_items + 1]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores (..., n_items+1) of every item for hidden states (..., D)."""
        return torch.addmm(
            self.out_bias, hidden.reshape(-1, hidden.shape[-1]), self.output_embeddings().T
        ).view(*hidden.shape[:-1], -1)

    def score_all(self, history: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Scores (B, n_items+1) of every item for history (B, L); column 0 holds PAD_SCORE."""
        scores = self.logits(self.represent(history))
        scores[:, 0] = PAD_SCORE
        return scores

    def score_candidates(
        self, history: torch.Tensor | np.ndarray, candidates: torch.Tensor | np.ndarray
    ) -> torch.Tensor:
        """Scores (B, C) of candidates (B, C) (item indices, 0 = padding -> PAD_SCORE) for history (B, L)."""
        if isinstance(candidates, np.ndarray):
            candidates = torch.from_numpy(np.ascontiguousarray(candidates))
        candidates = candidates.long().to(self.item_emb.weight.device)
        if candidates.dim() != 2:
            raise ValueError(f"candidates must have shape (B, C), got {tuple(candidates.shape)}")
        if candidates.numel() and (int(candidates.min()) < 0 or int(candidates.max()) > self.n_items):
            raise ValueError(f"candidates hold indices outside 0..{self.n_items}")
        rep = self.represent(history)  # (B, D)
        if rep.shape[0] != candidates.shape[0]:
            raise ValueError(f"history has {rep.shape[0]} rows but candidates has {candidates.shape[0]}")
        emb = self.output_embeddings()[candidates]  # (B, C, D)
        scores = torch.einsum("bd,bcd->bc", rep, emb) + self.out_bias[candidates]
        return scores.masked_fill(candidates == 0, PAD_SCORE)


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """Truncated-normal init for linear and embedding weights, zeros for biases, ones for LayerNorm."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def embed_scale(dim: int) -> float:
    """Scale of item embeddings at the transformer input (sqrt(D), as in the transformer paper)."""
    return math.sqrt(dim)
