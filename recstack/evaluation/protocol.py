"""Full-ranking evaluation per EVAL_PROTOCOL.md, and the user histories models score from.

Masking: for stage "valid" the user's training items are excluded (score -inf); for "test" the
training items and the validation target. The target itself is never excluded, even when it also
occurs in the history (repeat consumption).

Tie rule (pessimistic): rank = 1 + #{items scoring strictly higher than the target}
+ #{other unmasked items scoring exactly the same}. A model that gives many items the same score
(popularity counts, a constant model) gets no credit for the tie; a constant model ranks every
target last.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from recstack.evaluation.metrics import hit_ratio, ndcg
from recstack.evaluation.split import Split, check_stage

ScoreFn = Callable[[np.ndarray], np.ndarray]


class EvaluationError(ValueError):
    """A score function returned something the protocol cannot rank."""


def user_histories(split: Split, stage: str) -> list[np.ndarray]:
    """Per user index (list of n_users + 1): item indices oldest first. For "valid": the training
    items; for "test": the training items followed by the validation target (when there is one)."""
    check_stage(stage)
    if stage == "valid":
        return split.train_seqs
    out = []
    for u, seq in enumerate(split.train_seqs):
        v = split.valid_target[u]
        out.append(np.append(seq, v).astype(np.int64) if v else seq)
    return out


def history_matrix(split: Split, stage: str, max_len: int, users: np.ndarray | None = None) -> np.ndarray:
    """Histories as an int64 array [n_users + 1, max_len] (or [len(users), max_len]): the last
    ``max_len`` items, oldest first, left-padded with 0."""
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    hist = user_histories(split, stage)
    rows = np.arange(len(hist)) if users is None else np.asarray(users, dtype=np.int64)
    out = np.zeros((len(rows), max_len), dtype=np.int64)
    for r, u in enumerate(rows):
        h = hist[u][-max_len:]
        if len(h):
            out[r, max_len - len(h) :] = h
    return out


def _mask_flat(hist: list[np.ndarray], users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, item) pairs to mask for a batch of users."""
    seqs = [hist[u] for u in users]
    lens = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    rows = np.repeat(np.arange(len(users)), lens)
    cols = np.concatenate(seqs).astype(np.int64) if len(seqs) else np.zeros(0, np.int64)
    return rows, cols


def _evaluated_users(
    split: Split, stage: str, users: Sequence[int] | None
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(targets by user, the users of ``users`` (default all) that have a target at ``stage``,
    the histories masked at ``stage``); ValueError for user indices outside 1..n_users."""
    targets = split.targets(stage)
    cand = np.arange(1, split.n_users + 1) if users is None else np.asarray(users, dtype=np.int64)
    if len(cand) and (cand.min() < 1 or cand.max() > split.n_users):
        raise ValueError(f"user indices must lie in 1..{split.n_users}")
    return targets, cand[targets[cand] > 0], user_histories(split, stage)


def target_ranks(
    score_fn: ScoreFn,
    split: Split,
    stage: str = "valid",
    users: Sequence[int] | None = None,
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """(users [N], ranks [N]) of the target among all items for users with a target at ``stage``.

    ``score_fn(user_indices [B]) -> scores [B, n_items + 1]`` (column 0 ignored).
    """
    targets, cand, hist = _evaluated_users(split, stage, users)
    n_cols = split.n_items + 1
    ranks = np.empty(len(cand), dtype=np.int64)
    for start in range(0, len(cand), batch_size):
        batch = cand[start : start + batch_size]
        raw = np.asarray(score_fn(batch))
        # float32 scores are compared as they are: widening them to float64 is exact and keeps every
        # order and tie, and costs a copy twice the size
        kind = raw.dtype if raw.dtype in (np.float32, np.float64) else np.float64
        scores = np.array(raw, dtype=kind, copy=True)
        if scores.shape != (len(batch), n_cols):
            raise EvaluationError(
                f"score_fn returned shape {scores.shape}, expected ({len(batch)}, {n_cols}) = "
                "(batch, n_items + 1) with column 0 for padding"
            )
        if np.isnan(scores[:, 1:]).any():
            raise EvaluationError(
                "score_fn returned NaN scores; replace them (e.g. with -inf) before ranking"
            )
        rows = np.arange(len(batch))
        tgt = targets[batch]
        tgt_score = scores[rows, tgt].copy()
        r, c = _mask_flat(hist, batch)
        scores[r, c] = -np.inf
        scores[:, 0] = -np.inf
        scores[rows, tgt] = -np.inf  # exclude the target itself from the counts below
        higher = (scores > tgt_score[:, None]).sum(axis=1)
        ties = (scores == tgt_score[:, None]).sum(axis=1)
        ranks[start : start + len(batch)] = 1 + higher + ties
    return cand, ranks


def evaluate_scores(
    score_fn: ScoreFn,
    split: Split,
    stage: str = "valid",
    ks: Sequence[int] = (10, 50),
    users: Sequence[int] | None = None,
    batch_size: int = 256,
) -> dict:
    """Full-ranking HR@K and NDCG@K averaged over users with a target at ``stage``.

    Returns {"HR@10", "NDCG@10", "HR@50", "NDCG@50", "users": n_evaluated} (keys follow ``ks``).
    """
    _, ranks = target_ranks(score_fn, split, stage, users, batch_size)
    return metrics_of_ranks(ranks, ks)


CandidateScoreFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


def candidate_ranks(
    score_fn: CandidateScoreFn,
    split: Split,
    stage: str = "valid",
    users: Sequence[int] | None = None,
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """(users [N], ranks [N]) as :func:`target_ranks` gives them when every item outside a user's
    candidate list scores -inf, computed over the candidates only (cost users x candidates, never
    users x items).

    ``score_fn(user_indices [B]) -> (items int64 [B, C], valid bool [B, C], scores [B, C])``: each
    user's candidates (``valid`` marks the real ones of a padded row) and their scores. The same
    masking and pessimistic tie rule apply; a target that is not among its user's candidates (or
    scores -inf) ranks behind every item, n_items + 2, as it does in the full matrix.
    """
    targets, cand, hist = _evaluated_users(split, stage, users)
    ranks = np.empty(len(cand), dtype=np.int64)
    for start in range(0, len(cand), batch_size):
        batch = cand[start : start + batch_size]
        items, valid, scores = score_fn(batch)
        items = np.asarray(items, dtype=np.int64)
        scores = np.array(scores, dtype=np.float64, copy=True)
        valid = np.asarray(valid, dtype=bool)
        if not (items.shape == valid.shape == scores.shape) or items.shape[0] != len(batch):
            raise EvaluationError(
                f"candidate score_fn returned shapes {items.shape}, {valid.shape}, {scores.shape}; "
                f"expected three ({len(batch)}, C) arrays"
            )
        if np.isnan(scores[valid]).any():
            raise EvaluationError(
                "score_fn returned NaN scores; replace them (e.g. with -inf) before ranking"
            )
        tgt = targets[batch]
        scores[~valid] = -np.inf
        r, c = _mask_flat(hist, batch)
        if len(r):  # masked candidates: those in the user's history (the target never is)
            keys = np.unique(r * (split.n_items + 1) + c)
            flat = np.arange(len(batch))[:, None] * (split.n_items + 1) + items
            scores[np.isin(flat, keys) & (items != tgt[:, None])] = -np.inf
        is_tgt = (items == tgt[:, None]) & valid
        has = is_tgt.any(axis=1)
        first = np.argmax(is_tgt, axis=1)
        tgt_score = np.where(has, scores[np.arange(len(batch)), first], -np.inf)
        others = np.where(is_tgt, -np.inf, scores)
        higher = (others > tgt_score[:, None]).sum(axis=1)
        ties = ((others == tgt_score[:, None]) & np.isfinite(others)).sum(axis=1)
        ranks[start : start + len(batch)] = np.where(
            np.isfinite(tgt_score), 1 + higher + ties, split.n_items + 2
        )
    return cand, ranks


def metrics_of_ranks(ranks: np.ndarray, ks: Sequence[int] = (10, 50)) -> dict:
    """{"HR@K", "NDCG@K" for each K, "users"} averaged over ``ranks``."""
    out: dict = {}
    for k in ks:
        out[f"HR@{k}"] = float(hit_ratio(ranks, k).mean()) if len(ranks) else 0.0
        out[f"NDCG@{k}"] = float(ndcg(ranks, k).mean()) if len(ranks) else 0.0
    out["users"] = int(len(ranks))
    return out


def evaluate_candidates(
    score_fn: CandidateScoreFn,
    split: Split,
    stage: str = "valid",
    ks: Sequence[int] = (10, 50),
    users: Sequence[int] | None = None,
    batch_size: int = 256,
) -> dict:
    """:func:`evaluate_scores` of a model that scores only each user's candidates (every other item
    -inf), at the cost of the candidates (:func:`candidate_ranks`)."""
    _, ranks = candidate_ranks(score_fn, split, stage, users, batch_size)
    return metrics_of_ranks(ranks, ks)


def evaluate_sampled(
    score_fn: ScoreFn,
    split: Split,
    stage: str = "valid",
    ks: Sequence[int] = (10,),
    n_negatives: int = 100,
    seed: int = 0,
    batch_size: int = 256,
) -> dict:
    """Sampled ranking (NOT the protocol's headline): the target against ``n_negatives`` items drawn
    uniformly among the unmasked non-target items. Keys are labelled "sampled_HR@K" etc."""
    rng = np.random.default_rng(seed)
    targets = split.targets(stage)
    hist = user_histories(split, stage)

    def sampled_fn(batch: np.ndarray) -> np.ndarray:
        scores = np.asarray(score_fn(batch), dtype=np.float64)
        keep = np.full(scores.shape, -np.inf)
        for r, u in enumerate(batch):
            allowed = np.ones(split.n_items + 1, bool)
            allowed[0] = False
            allowed[hist[u]] = False
            allowed[targets[u]] = False
            pool = np.flatnonzero(allowed)
            neg = rng.choice(pool, size=min(n_negatives, len(pool)), replace=False)
            keep[r, neg] = scores[r, neg]
            keep[r, targets[u]] = scores[r, targets[u]]
        return keep

    # Unsampled items get -inf so they never outrank the target; a target the model itself scores
    # -inf ties with them and ranks last, as the pessimistic tie rule intends.
    res = evaluate_scores(sampled_fn, split, stage, ks, batch_size=batch_size)
    return {(k if k == "users" else f"sampled_{k}"): v for k, v in res.items()}
