"""Training examples and per-stage user features built from a leave-one-out split.

Every training row of a user is one example: the target item at position t and the user's state
*before* it (the last L items, oldest first, left-padded; the genre EMA after t items). The state at
stage "valid" is the state after all training rows; at "test" it also contains the validation
target (unknown event type: weight 1). Training and the serving cores both build the genre profile
with :mod:`recstack.serving.features_adapter`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recstack.artifacts.layout import ItemGenres
from recstack.evaluation import Split
from recstack.evaluation.protocol import user_histories
from recstack.serving.features_adapter import genre_profile_prefixes, history_row


def like_purchase_labels(event_types: np.ndarray, ratings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """like = event "like" or rating >= 4; purchase = event "purchase" or rating == 5 (float32 [T])."""
    ev = np.asarray(event_types, dtype=object)
    r = np.nan_to_num(np.asarray(ratings, dtype=np.float64), nan=0.0)
    like = (ev == "like") | (r >= 4)
    purchase = (ev == "purchase") | (r == 5)
    return like.astype(np.float32), purchase.astype(np.float32)


@dataclass
class StageFeatures:
    """Per-user features at one stage: history int64 [n_users + 1, L], genre float32 [n_users + 1, G]."""

    history: np.ndarray
    genre: np.ndarray

    def batch(self, users: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """(history [B, max_len], genre [B, G]) for user indices [B]."""
        return self.history[users, -max_len:], self.genre[users]


@dataclass
class Examples:
    """One example per training row.

    user, item: int64 [N]; like, purchase: float32 [N] (labels aggregated over all of the user's
    training rows on that item, so a view followed by a like counts as liked); genre: float32 [N, G];
    hist_start: int64 [N] offsets into ``padded`` such that padded[start : start + max_len] is the
    history before the row.
    """

    user: np.ndarray
    item: np.ndarray
    like: np.ndarray
    purchase: np.ndarray
    genre: np.ndarray
    hist_start: np.ndarray
    padded: np.ndarray
    max_len: int

    def __len__(self) -> int:
        return len(self.user)

    def history(self, rows: np.ndarray, max_len: int | None = None) -> np.ndarray:
        """int64 [len(rows), max_len] histories of example rows (max_len <= self.max_len)."""
        length = self.max_len if max_len is None else max_len
        off = self.hist_start[rows] + (self.max_len - length)
        return self.padded[off[:, None] + np.arange(length)]


@dataclass
class SplitFeatures:
    """Everything the tasks need from a split: examples, stage features, item genres, item counts."""

    examples: Examples
    stages: dict[str, StageFeatures]
    genres: ItemGenres
    item_counts: np.ndarray  # int64 [n_items + 1] training rows per item
    n_users: int
    n_items: int


def build_features(split: Split, max_len: int = 50, genre_vocab: list[str] | None = None) -> SplitFeatures:
    """Examples and stage features of ``split`` with histories of up to ``max_len`` items."""
    genres = ItemGenres.from_lists(split.item_genres, genre_vocab or split.genre_vocab)
    n_u, g = split.n_users, genres.n_genres
    users, items, likes, purchases, profs, starts, segs = [], [], [], [], [], [], []
    valid_genre = np.zeros((n_u + 1, g), np.float32)
    test_genre = np.zeros((n_u + 1, g), np.float32)
    offset = 0
    for u in range(1, n_u + 1):
        seq = np.asarray(split.train_seqs[u], dtype=np.int64)
        ev = np.asarray(split.train_event_types[u], dtype=object)
        rt = np.asarray(split.train_ratings[u], dtype=np.float64)
        v = int(split.valid_target[u])
        full_seq = np.append(seq, v) if v else seq
        full_ev = np.append(ev, "") if v else ev
        full_rt = np.append(rt, np.nan) if v else rt
        pref = genre_profile_prefixes(full_seq, genres, full_ev, full_rt)
        valid_genre[u] = pref[len(seq)]
        test_genre[u] = pref[-1]
        t = len(seq)
        if t == 0:
            continue
        lk, pu = like_purchase_labels(ev, rt)
        # aggregate labels per item over the user's rows
        uniq, inv = np.unique(seq, return_inverse=True)
        lk_agg = np.zeros(len(uniq), np.float32)
        pu_agg = np.zeros(len(uniq), np.float32)
        np.maximum.at(lk_agg, inv, lk)
        np.maximum.at(pu_agg, inv, pu)
        users.append(np.full(t, u, np.int64))
        items.append(seq)
        likes.append(lk_agg[inv])
        purchases.append(pu_agg[inv])
        profs.append(pref[:t])
        starts.append(offset + np.arange(t, dtype=np.int64))
        segs.append(np.concatenate([np.zeros(max_len, np.int64), seq]))
        offset += max_len + t
    cat = (lambda xs, dt: np.concatenate(xs).astype(dt)) if users else (lambda xs, dt: np.zeros(0, dt))
    examples = Examples(
        user=cat(users, np.int64),
        item=cat(items, np.int64),
        like=cat(likes, np.float32),
        purchase=cat(purchases, np.float32),
        genre=np.concatenate(profs).astype(np.float32) if profs else np.zeros((0, g), np.float32),
        hist_start=cat(starts, np.int64),
        padded=np.concatenate(segs + [np.zeros(max_len, np.int64)]) if segs else np.zeros(max_len, np.int64),
        max_len=max_len,
    )
    stages = {}
    for stage, gen in (("valid", valid_genre), ("test", test_genre)):
        hist = user_histories(split, stage)
        h = np.zeros((n_u + 1, max_len), np.int64)
        for u in range(1, n_u + 1):
            h[u] = history_row(hist[u], max_len)
        stages[stage] = StageFeatures(history=h, genre=gen)
    return SplitFeatures(
        examples=examples,
        stages=stages,
        genres=genres,
        item_counts=split.train_item_counts(),
        n_users=n_u,
        n_items=split.n_items,
    )
