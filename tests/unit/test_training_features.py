"""Genre-profile EMA, per-position training examples and negative sampling."""

from __future__ import annotations

import numpy as np
import pytest

from recstack.evaluation import leave_one_out
from recstack.serving.features_adapter import ItemGenres, event_weights, genre_profile, genre_profile_prefixes
from recstack.training.examples import build_features, like_purchase_labels
from recstack.training.negatives import NegativeSampler
from tests.helpers import planted_dataset

GENRES = ItemGenres.from_lists([[], ["A"], ["B"], ["A", "B"]])


def test_event_weights() -> None:
    w = event_weights(
        ["view", "click", "like", "purchase", "rating", "rating", "share"], [np.nan] * 5 + [4.0, np.nan], 7
    )
    assert np.allclose(w, [0.5, 1.0, 1.5, 2.0, 1.0, 0.8, 1.0])


def test_genre_profile_matches_stream_rule() -> None:
    items, events = np.array([1, 3, 2, 1]), ["click", "like", "view", "purchase"]
    expected = np.zeros(2)
    for i, e in zip(items, events, strict=True):
        expected *= 0.9
        expected += 0.1 * {"click": 1.0, "like": 1.5, "view": 0.5, "purchase": 2.0}[e] * GENRES.matrix[i]
    assert np.allclose(genre_profile(items, GENRES, events), expected, atol=1e-6)
    prefixes = genre_profile_prefixes(items, GENRES, events)
    assert prefixes.shape == (5, 2) and np.allclose(prefixes[0], 0)
    assert np.allclose(prefixes[2], genre_profile(items[:2], GENRES, events[:2]), atol=1e-6)


def test_labels() -> None:
    like, purchase = like_purchase_labels(
        np.array(["click", "like", "purchase", "rating", "rating"], dtype=object),
        np.array([np.nan] * 3 + [4, 5.0]),
    )
    assert like.tolist() == [0, 1, 0, 1, 1] and purchase.tolist() == [0, 0, 1, 0, 1]


def test_examples_hold_the_state_before_each_row() -> None:
    split = leave_one_out(planted_dataset(n_users=4, per_user=6))
    feats = build_features(split, max_len=3)
    ex = feats.examples
    assert len(ex) == sum(len(s) for s in split.train_seqs)
    u = 1
    seq = split.train_seqs[u]
    rows = np.flatnonzero(ex.user == u)
    hist = ex.history(rows)
    assert hist[0].tolist() == [0, 0, 0]
    assert hist[1].tolist() == [0, 0, seq[0]]
    assert hist[3].tolist() == list(seq[0:3])
    assert np.allclose(
        ex.genre[rows[2]], genre_profile(seq[:2], feats.genres, split.train_event_types[u][:2])
    )
    valid_hist, _ = feats.stages["valid"].batch(np.array([u]), 3)
    test_hist, _ = feats.stages["test"].batch(np.array([u]), 3)
    assert valid_hist[0].tolist() == list(seq[-3:])
    assert test_hist[0].tolist() == [*seq[-2:], split.valid_target[u]]


@pytest.mark.parametrize("power", [0.0, 0.75])
def test_negative_sampler_avoids_positives(power: float) -> None:
    user_items = [np.array([], np.int64), np.array([1, 2, 3]), np.array([4])]
    s = NegativeSampler(5, np.array([0, 10, 10, 10, 1, 1]), power, user_items, rounds=20)
    neg = s.sample(np.array([1, 1, 2]), 50, np.random.default_rng(0))
    assert neg.shape == (3, 50) and neg.min() >= 1 and neg.max() <= 5
    assert not np.isin(neg[:2], [1, 2, 3]).any() and not (neg[2] == 4).any()
