"""`recstack replay`'s parts that need no stack: the held-out users, the features the offline side
scores from, the metrics and intervals, the experiments file with the deterministic variant."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from recstack.artifacts.layout import ItemGenres
from recstack.data import DataError, SyntheticConfig, generate
from recstack.data.schema import Dataset, IdMap
from recstack.devstack.replay import (
    DETERMINISTIC_VARIANT,
    MISS,
    experiments_file,
    list_metrics,
    paired,
    percentiles_ms,
    stream_features,
    target_ranks,
    wilson,
)
from recstack.evaluation import leave_one_out
from recstack.evaluation.holdout import MIN_INTERACTIONS, choose_holdout, user_events, without_users
from recstack.evaluation.split import natural_order
from recstack.experiments.config import load_experiments
from recstack.serving.features_adapter import genre_profile


@pytest.fixture(scope="module")
def ds() -> Dataset:
    return generate(SyntheticConfig(n_users=60, n_items=80, seed=2))


def _tiny() -> Dataset:
    inter = pd.DataFrame(
        {
            "user_id": ["a", "a", "b", "b", "b", "c", "c", "c", "c", "a"],
            "item_id": ["i1", "i2", "i1", "i3", "i2", "i2", "i3", "i2", "i1", "i3"],
            "timestamp": np.array([5, 1, 3, 3, 2, 9, 7, 8, 8, 3], dtype=np.int64),
            "event_type": [
                "click",
                "view",
                "rating",
                "like",
                "click",
                "click",
                "view",
                "like",
                "rating",
                "view",
            ],
            "rating": [np.nan, np.nan, 4.0, np.nan, np.nan, np.nan, np.nan, np.nan, 2.0, np.nan],
        }
    )
    items = pd.DataFrame({"item_id": ["i1", "i2", "i3"], "genres": [["A"], ["B"], ["A", "B"]], "title": ""})
    return Dataset("tiny", inter, items)


def test_holdout_is_seeded_eligible_and_removed_entirely(ds: Dataset) -> None:
    held = choose_holdout(ds, 10, seed=3)
    assert held == choose_holdout(ds, 10, seed=3) and held != choose_holdout(ds, 10, seed=4)
    counts = ds.interactions["user_id"].value_counts()
    assert all(counts[u] >= MIN_INTERACTIONS for u in held) and len(set(held)) == 10
    assert held == natural_order(np.array(held, dtype=object))
    rest = without_users(ds, held)
    assert not set(held) & set(rest.interactions["user_id"])
    assert len(rest.interactions) == len(ds.interactions) - int(counts[held].sum())
    assert not set(held) & set(leave_one_out(rest).user_map.ids)
    with pytest.raises(DataError, match="cannot hold out 60 users"):
        choose_holdout(ds, 60)
    with pytest.raises(DataError, match=">= 1"):
        choose_holdout(ds, 0)


def test_user_events_are_in_time_order_ties_in_source_order() -> None:
    (a, c) = user_events(_tiny(), ["a", "c"])
    assert a.items == ["i2", "i3", "i1"] and a.target == "i1" and a.items[a.history] == ["i2", "i3"]
    assert c.items == ["i3", "i2", "i1", "i2"] and c.event_types == ["view", "like", "rating", "click"]
    assert c.ratings[2] == 2.0 and math.isnan(c.ratings[0]) and c.timestamps == [7, 8, 8, 9]
    assert choose_holdout(_tiny(), 2, seed=0) != [] and len(choose_holdout(_tiny(), 2)) == 2
    with pytest.raises(DataError, match="fewer than 2"):
        user_events(_tiny(), ["nobody"])


class _Bundle:
    """What stream_features reads of a bundle."""

    def __init__(self) -> None:
        self.item_map = IdMap(["i1", "i2", "i3"])
        self.genre_vocab = ["A", "B"]
        self.item_genres = ItemGenres.from_lists([[], ["A"], ["B"], ["A", "B"]], self.genre_vocab)


def test_stream_features_hold_recent_items_once_newest_first_and_the_genre_ema() -> None:
    (c,) = user_events(_tiny(), ["c"])
    feats, seen = stream_features("c", c, _Bundle())
    # history i3, i2, i1 (the target i2 is left out): newest first
    assert feats.recent_items == ["i1", "i2", "i3"] and seen == {"i1", "i2", "i3"}
    ema = genre_profile(
        np.array([3, 2, 1]), _Bundle().item_genres, ["view", "like", "rating"], [np.nan, np.nan, 2.0]
    )
    assert feats.genre_scores == pytest.approx({"A": float(ema[0]), "B": float(ema[1])})
    (a,) = user_events(_tiny(), ["a"])
    # a repeated item moves to the front instead of appearing twice (the stream's LREM + LPUSH)
    a.items, a.event_types, a.ratings = ["i1", "i2", "i1", "i3"], ["view"] * 4, [np.nan] * 4
    assert stream_features("a", a, _Bundle())[0].recent_items == ["i1", "i2"]


def test_list_metrics_rank_the_target_within_the_list() -> None:
    lists = [["x", "t1", "y"], ["t2"], ["a", "b"], ["z"] * 12 + ["t4"]]
    targets = ["t1", "t2", "t3", "t4"]
    assert target_ranks(lists, targets).tolist() == [2, 1, MISS, 13]
    m = list_metrics(lists, targets, k=10)
    assert m["HR@10"] == 0.5 and m["hits"] == 2 and m["users"] == 4
    assert m["NDCG@10"] == pytest.approx((1 / math.log2(3) + 1.0) / 4)
    lo, hi = m["HR@10_ci95"]
    assert lo < 0.5 < hi and m["NDCG@10_ci95"][0] <= m["NDCG@10"] <= m["NDCG@10_ci95"][1]


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (14, 150), (150, 150)])
def test_wilson_matches_scipy(k: int, n: int) -> None:
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)
    assert wilson(0, 0) == (0.0, 1.0)


def test_paired_counts_identical_lists_and_discordant_hits() -> None:
    online = [["t1", "a"], ["b", "c"], ["t3"], ["d"]]
    offline = [["t1", "a"], ["t2", "c"], ["t3"], ["t4"]]
    out = paired(online, offline, ["t1", "t2", "t3", "t4"], k=10)
    assert out["identical_lists"] == 2 and out["hit_online_only"] == 0 and out["hit_offline_only"] == 2
    assert 0 < out["mcnemar_p"] <= 1


def test_percentiles_count_a_timeout_against_p95() -> None:
    assert percentiles_ms([]) == {"p50": None, "p95": None, "max": None}
    fast = [0.1] * 19 + [0.2]
    assert percentiles_ms(fast) == {"p50": 100.0, "p95": 105.0, "max": 200.0}
    out = percentiles_ms([0.1] * 18 + [math.inf] * 2)
    assert out["p50"] == 100.0 and out["p95"] is None and out["max"] == 100.0


def test_experiments_file_adds_a_deterministic_variant_only_forced(tmp_path: Path) -> None:
    config = load_experiments(experiments_file(tmp_path / "exp.json"))
    forced = config.resolve("u1", DETERMINISTIC_VARIANT)
    assert forced.pipeline.explore_slots == 0 and forced.pipeline.diversity == "none"
    for user in (f"u{i}" for i in range(200)):
        own = config.resolve(user)
        assert [a.experiment_id for a in own.assignments] == [
            "explore-slots-v1"
        ]  # traffic 0: never hashed in
        assert own.pipeline.explore_slots in (1, 2)
