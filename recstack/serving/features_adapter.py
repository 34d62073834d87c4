"""The one conversion between user features and model input tensors, used by training and serving.

Genre profile: the same EMA as the feature stream (alpha 0.1). Every interaction decays all of the
user's genre scores by ``1 - alpha`` and adds ``alpha * weight`` to each genre of the item, with the
event weights of :data:`EVENT_WEIGHTS` (a rating event weighs ``rating / 5``; an unknown event type
or a missing rating weighs 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from scipy.signal import lfilter

from recstack.artifacts.layout import ItemGenres
from recstack.features.keys import GENRE_EMA_ALPHA
from recstack.features.types import UserFeatures


class BundleIds(Protocol):
    """What the adapter reads from a bundle (``recstack.artifacts.Bundle`` has it): the id maps
    and the genre vocabulary."""

    user_map: Any
    item_map: Any
    genre_vocab: list[str]


EVENT_WEIGHTS: dict[str, float] = {"view": 0.5, "click": 1.0, "like": 1.5, "purchase": 2.0}


def event_weights(event_types: Sequence[str] | None, ratings: Sequence[float] | None, n: int) -> np.ndarray:
    """Weight of each of ``n`` interactions (float64 [n]); see the module docstring."""
    w = np.ones(n, dtype=np.float64)
    if event_types is None:
        return w
    r = np.full(n, np.nan) if ratings is None else np.asarray(ratings, dtype=np.float64)
    for k, e in enumerate(event_types):
        if e == "rating":
            w[k] = r[k] / 5.0 if np.isfinite(r[k]) else 1.0
        else:
            w[k] = EVENT_WEIGHTS.get(e, 1.0)
    return w


def genre_profile_prefixes(
    items: np.ndarray,
    genres: ItemGenres,
    event_types: Sequence[str] | None = None,
    ratings: Sequence[float] | None = None,
    alpha: float = GENRE_EMA_ALPHA,
) -> np.ndarray:
    """Profiles before and after each interaction: float32 [T + 1, G]; row t = state after t items.

    ``items``: item indices [T], oldest first (0 = unknown item: decays without adding).
    """
    items = np.asarray(items, dtype=np.int64)
    w = event_weights(event_types, ratings, len(items))
    x = genres.matrix[items].astype(np.float64) * (alpha * w)[:, None]  # [T, G]
    out = np.zeros((len(items) + 1, genres.n_genres), dtype=np.float32)
    if len(items):
        out[1:] = lfilter([1.0], [1.0, -(1.0 - alpha)], x, axis=0)
    return out


def genre_profile(
    item_indices_in_time_order: np.ndarray,
    catalog: ItemGenres,
    event_types: Sequence[str] | None = None,
    ratings: Sequence[float] | None = None,
) -> np.ndarray:
    """The genre EMA after all interactions, float32 [G] over ``catalog.genre_vocab``."""
    return genre_profile_prefixes(item_indices_in_time_order, catalog, event_types, ratings)[-1]


def history_row(items_oldest_first: np.ndarray, max_len: int) -> np.ndarray:
    """The last ``max_len`` items, oldest first, left-padded with 0: int64 [max_len]."""
    out = np.zeros(max_len, dtype=np.int64)
    h = np.asarray(items_oldest_first, dtype=np.int64)[-max_len:]
    if len(h):
        out[max_len - len(h) :] = h
    return out


def user_features_to_arrays(
    users: Sequence[UserFeatures], bundle: BundleIds, max_len: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user_idx int64 [B], history int64 [B, L], genre_profile float32 [B, G]) for a batch of users.

    Unknown user ids map to index 0, unknown recent items are dropped; ``recent_items`` is newest
    first (Redis order) and becomes an oldest-first, left-padded history.
    """
    vocab = {g: j for j, g in enumerate(bundle.genre_vocab)}
    user_idx = bundle.user_map.index(u.user_id for u in users)
    hist = np.zeros((len(users), max_len), dtype=np.int64)
    prof = np.zeros((len(users), len(vocab)), dtype=np.float32)
    for b, u in enumerate(users):
        idx = bundle.item_map.index(reversed(u.recent_items))
        hist[b] = history_row(idx[idx > 0], max_len)
        for g, s in u.genre_scores.items():
            j = vocab.get(g)
            if j is not None:
                prof[b, j] = float(s)
    return user_idx, hist, prof


def user_features_to_tensors(user: UserFeatures, bundle: BundleIds, max_len: int):
    """(user_idx [1], history [1, L], genre_profile [1, G]) torch tensors for one user."""
    import torch

    u, h, p = user_features_to_arrays([user], bundle, max_len)
    return torch.from_numpy(u), torch.from_numpy(h), torch.from_numpy(p)
