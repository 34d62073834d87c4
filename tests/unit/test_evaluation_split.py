"""Leave-one-out split per EVAL_PROTOCOL.md."""

from __future__ import annotations

import pytest

from recstack.data import DataError, load_dataset
from recstack.evaluation import leave_one_out
from tests.datasets import ML100K
from tests.helpers import make_dataset

ML100K_FINGERPRINT = "c39a254605c780114ee02675c0b7e8754142a3e1773419fd4ece121566df9600"


@pytest.fixture
def tiny():
    rows = [
        ("10", "c", 5),
        ("2", "a", 1),
        ("10", "a", 3),
        ("2", "b", 2),
        ("10", "b", 5),  # same timestamp as ("10","c",5): file order -> c before b
        ("2", "c", 2),  # tie with ("2","b",2): b then c
        ("2", "a", 4),  # duplicate item: kept
        ("10", "d", 9),
        ("3", "d", 1),
        ("3", "a", 2),
        ("4", "b", 7),
    ]
    return leave_one_out(make_dataset(rows, {"a": ["X"], "b": ["X", "Y"]}))


def test_maps_are_natural_order(tiny):
    assert tiny.user_map.ids == ["2", "3", "4", "10"]
    assert tiny.item_map.ids == ["a", "b", "c", "d"]
    assert tiny.n_users == 4 and tiny.n_items == 4


def test_targets_and_train_sequences(tiny):
    im = tiny.item_map
    u2, u3, u4, u10 = (tiny.user_map.get(x) for x in ("2", "3", "4", "10"))
    # user 2: a(1) b(2) c(2) a(4) -> train [a, b], valid c, test a
    assert im.to_ids(tiny.train_seqs[u2]) == ["a", "b"]
    assert im.id(tiny.valid_target[u2]) == "c" and im.id(tiny.test_target[u2]) == "a"
    # user 10: a(3) c(5) b(5) d(9) -> train [a, c], valid b, test d
    assert im.to_ids(tiny.train_seqs[u10]) == ["a", "c"]
    assert im.id(tiny.valid_target[u10]) == "b" and im.id(tiny.test_target[u10]) == "d"
    # user 3: two rows -> test only
    assert im.to_ids(tiny.train_seqs[u3]) == ["d"]
    assert tiny.valid_target[u3] == 0 and im.id(tiny.test_target[u3]) == "a"
    # user 4: one row -> train only
    assert im.to_ids(tiny.train_seqs[u4]) == ["b"]
    assert tiny.valid_target[u4] == 0 and tiny.test_target[u4] == 0
    assert len(tiny.train_seqs[0]) == 0 and tiny.valid_target[0] == 0 and tiny.test_target[0] == 0
    assert len(tiny.train_seqs) == len(tiny.valid_target) == len(tiny.test_target) == 5


def test_aligned_side_arrays(tiny):
    u10 = tiny.user_map.get("10")
    assert tiny.train_timestamps[u10].tolist() == [3, 5]
    assert tiny.train_ratings[u10].tolist() == [2.0, 0.0]  # source rows 2 and 0
    assert tiny.train_event_types[u10].tolist() == ["click", "click"]
    assert tiny.item_genres[0] == [] and tiny.item_genres[tiny.item_map.get("b")] == ["X", "Y"]
    assert tiny.genre_vocab == ["X", "Y"]


def test_counts_add_up(tiny):
    counts = tiny.train_item_counts()
    assert counts.tolist() == [0, 2, 2, 1, 1]  # a twice (users 2, 10), b twice (2, 4), c (10), d (3)


def test_fingerprint_changes_with_targets(tiny):
    fp = tiny.fingerprint()
    assert len(fp) == 64
    tiny.test_target[1] = tiny.item_map.get("d")
    assert tiny.fingerprint() != fp


def test_every_row_lands_once_on_synthetic():
    ds = load_dataset("synthetic:n_users=60,n_items=80,seed=4")
    s = leave_one_out(ds)
    total = (
        sum(len(x) for x in s.train_seqs) + int((s.valid_target > 0).sum()) + int((s.test_target > 0).sum())
    )
    assert total == len(ds.interactions)
    inter = ds.interactions
    last = inter.sort_values(["user_id", "timestamp"], kind="stable").groupby("user_id").tail(1)
    for uid, iid in zip(last["user_id"], last["item_id"], strict=True):
        assert s.item_map.id(int(s.test_target[s.user_map.get(uid)])) == iid


def test_empty_dataset():
    ds = make_dataset([("1", "a", 1)])
    ds.interactions = ds.interactions.iloc[:0]
    with pytest.raises(DataError, match="no interactions"):
        leave_one_out(ds)


@pytest.mark.skipif(not (ML100K / "u.data").is_file(), reason="MovieLens 100K not present")
def test_ml100k_fingerprint():
    s = leave_one_out(load_dataset(f"ml-100k:{ML100K}"))
    assert s.fingerprint() == ML100K_FINGERPRINT
    assert s.n_users == 943 and s.n_items == 1682
    assert sum(len(x) for x in s.train_seqs) == 100_000 - 2 * 943
