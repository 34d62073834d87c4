"""The synthetic generator: determinism, schema, funnel, popularity skew, drift."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recstack.data import DataError, SyntheticConfig, generate, load_dataset
from recstack.data.synthetic import GENRE_NAMES


@pytest.fixture(scope="module")
def ds():
    return generate(SyntheticConfig())


def test_default_is_sized(ds):
    inter = ds.interactions
    assert inter["user_id"].nunique() == 300
    assert 30 < inter.groupby("user_id").size().mean() < 50
    assert len(ds.items) == 400


def test_deterministic_given_seed(ds):
    again = generate(SyntheticConfig())
    pd.testing.assert_frame_equal(ds.interactions, again.interactions)
    pd.testing.assert_frame_equal(ds.items, again.items)
    other = generate(SyntheticConfig(seed=1))
    assert not ds.interactions["item_id"].equals(other.interactions["item_id"])


def test_schema_and_ids(ds):
    inter = ds.interactions
    assert list(inter.columns) == ["user_id", "item_id", "timestamp", "event_type", "rating"]
    assert inter["timestamp"].dtype == np.int64
    assert inter["user_id"].str.fullmatch(r"u\d+").all()
    assert inter["item_id"].str.fullmatch(r"i\d+").all()
    assert set(inter["item_id"]) <= set(ds.items["item_id"])
    assert set(inter["event_type"]) == {"view", "click", "like", "purchase", "rating"}
    rated = inter["event_type"] == "rating"
    assert inter.loc[rated, "rating"].between(1, 5).all()
    assert inter.loc[~rated, "rating"].isna().all()
    n_genres = ds.items["genres"].map(len)
    assert n_genres.between(1, 3).all()
    vocab = {g for gs in ds.items["genres"] for g in gs}
    assert 1 < len(vocab) <= 12
    assert vocab <= set(GENRE_NAMES)


def test_items_are_created_before_their_first_interaction(ds):
    items = ds.items.set_index("item_id")
    assert items["created_at"].dtype == "Int64" and items["created_at"].notna().all()
    created = items["created_at"].astype(np.int64)
    first = ds.interactions.groupby("item_id")["timestamp"].min()
    assert (created.loc[first.index] < first).all()
    start, end = SyntheticConfig().start_time, int(ds.interactions["timestamp"].max())
    assert created.between(start, end).all()
    # spread over the log: some items are created in its second half ("new" items)
    late = created > start + (end - start) / 2
    assert 0 < late.sum() < len(created) / 2
    assert created.nunique() > 0.9 * len(created)


def test_timestamps_strictly_increase_per_user(ds):
    for _, g in ds.interactions.groupby("user_id", sort=False):
        assert (np.diff(g["timestamp"].to_numpy()) > 0).all()


def test_funnel_order(ds):
    """A click follows a view of the same item; like/purchase follow a click."""
    for _, g in ds.interactions.groupby("user_id", sort=False):
        viewed, clicked = set(), set()
        for item, ev in zip(g["item_id"], g["event_type"], strict=True):
            if ev == "view":
                viewed.add(item)
            elif ev == "click":
                assert item in viewed
                clicked.add(item)
            else:
                assert item in clicked


def test_popularity_is_skewed(ds):
    views = ds.interactions.loc[ds.interactions["event_type"] == "view", "item_id"].value_counts()
    top = views.iloc[: len(ds.items) // 10].sum()
    assert top / views.sum() > 0.3  # top 10% of items get well over 10% of views


def _genre_overlap(ds, a_items, b_items) -> float:
    genres = dict(zip(ds.items["item_id"], ds.items["genres"], strict=True))
    hits = [bool(set(genres[a]) & set(genres[b])) for a, b in zip(a_items, b_items, strict=True)]
    return float(np.mean(hits))


def test_taste_drifts_so_order_carries_signal(ds):
    """Views close in time share genres more often than views far apart in the same log."""
    near_a, near_b, far_a, far_b = [], [], [], []
    views = ds.interactions[ds.interactions["event_type"] == "view"]
    for _, g in views.groupby("user_id", sort=False):
        items = g["item_id"].tolist()
        if len(items) < 40:
            continue
        near_a += items[:-1]
        near_b += items[1:]
        far_a += items[: len(items) // 4]
        far_b += items[-(len(items) // 4) :]
    assert _genre_overlap(ds, near_a, near_b) > _genre_overlap(ds, far_a, far_b) + 0.05


def test_click_rate_depends_on_taste_match(ds):
    """Clicked items share genres with the user's other clicks more than unclicked views do."""
    inter = ds.interactions
    genres = dict(zip(ds.items["item_id"], ds.items["genres"], strict=True))
    clicked_match, unclicked_match = [], []
    for _, g in inter.groupby("user_id", sort=False):
        clicks = set(g.loc[g["event_type"] == "click", "item_id"])
        if len(clicks) < 5:
            continue
        profile = {}
        for it in clicks:
            for gen in genres[it]:
                profile[gen] = profile.get(gen, 0) + 1
        for it in set(g.loc[g["event_type"] == "view", "item_id"]):
            score = sum(profile.get(gen, 0) for gen in genres[it]) / len(genres[it])
            (clicked_match if it in clicks else unclicked_match).append(score)
    assert np.mean(clicked_match) > np.mean(unclicked_match)


def test_spec_overrides_are_typed():
    ds = load_dataset("synthetic:n_users=20,n_items=50,with_ratings=false,drift=0.5,seed=3")
    assert ds.interactions["user_id"].nunique() == 20
    assert len(ds.items) == 50
    assert "rating" not in set(ds.interactions["event_type"])


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("synthetic:n_usrs=5", "unknown key 'n_usrs'"),
        ("synthetic:n_users=abc", "n_users='abc' is not a valid int"),
        ("synthetic:with_ratings=maybe", "not a boolean"),
        ("synthetic:n_users", "is not key=value"),
        ("synthetic:n_users=0", "n_users must be > 0"),
        ("synthetic:max_genres_per_item=20", "max_genres_per_item"),
        ("synthetic:drift=2", "drift must be in [0, 1]"),
    ],
)
def test_bad_synthetic_spec(spec, fragment):
    with pytest.raises(DataError) as e:
        load_dataset(spec)
    assert fragment in str(e.value)


def test_many_genres_get_names():
    ds = generate(SyntheticConfig(n_users=5, n_items=30, n_genres=25))
    vocab = {g for gs in ds.items["genres"] for g in gs}
    assert all(isinstance(g, str) and g for g in vocab)
