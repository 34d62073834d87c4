"""Leave-one-out split, exactly as the evaluation protocol (shared/EVAL_PROTOCOL.md).

- implicit feedback: every interaction row counts (duplicates too), whatever its rating;
- each user's rows are ordered by timestamp with a stable sort over source row order;
- last row = test target, second to last = validation target, the rest = training;
  a user with 2 rows has a test target only, with 1 row training only.

Index choices: users and items are the ids that appear in the interactions, in natural order
(numerically when every id is an integer, otherwise lexicographically), mapped to 1..n; index 0 is
padding / "none". Catalogue items that nobody interacted with are not ranked: they cannot be a
target and no model can learn them from this data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recstack.data.schema import DataError, Dataset, IdMap

STAGES = ("valid", "test")


def natural_order(ids: np.ndarray) -> list[str]:
    """Distinct ids sorted numerically when all are integers, else lexicographically."""
    uniq = pd.unique(ids)
    try:
        keys = np.array([int(x) for x in uniq], dtype=np.int64)
        return [str(uniq[i]) for i in np.argsort(keys, kind="stable")]
    except ValueError:
        return sorted(str(x) for x in uniq)


@dataclass
class Split:
    """A leave-one-out split. Arrays indexed by user index have length n_users + 1 (row 0 unused).

    train_seqs[u]: item indices [T_u] of u's training rows, oldest first (duplicates kept);
    train_event_types[u] / train_ratings[u] / train_timestamps[u]: aligned with train_seqs[u];
    valid_target[u], test_target[u]: item index, 0 when the user has none for that stage;
    item_genres[i]: genres of item index i (item_genres[0] = []).
    """

    user_map: IdMap
    item_map: IdMap
    train_seqs: list[np.ndarray]
    train_event_types: list[np.ndarray]
    train_ratings: list[np.ndarray]
    train_timestamps: list[np.ndarray]
    valid_target: np.ndarray
    test_target: np.ndarray
    item_genres: list[list[str]] = field(default_factory=list)
    dataset_name: str = ""

    @property
    def n_users(self) -> int:
        return len(self.user_map)

    @property
    def n_items(self) -> int:
        return len(self.item_map)

    @property
    def genre_vocab(self) -> list[str]:
        """Sorted genres of the ranked items."""
        return sorted({g for gs in self.item_genres for g in gs})

    def targets(self, stage: str) -> np.ndarray:
        """valid_target or test_target; raises ValueError for another stage name."""
        check_stage(stage)
        return self.valid_target if stage == "valid" else self.test_target

    def fingerprint(self) -> str:
        """sha256 of one line per user (user_map order), ``"{user}\\t{valid}\\t{test}\\n"`` with
        original ids; an empty field when the user has no target for that stage."""
        h = hashlib.sha256()
        for u, uid in enumerate(self.user_map.ids, start=1):
            v = self.item_map.id(int(self.valid_target[u])) if self.valid_target[u] else ""
            t = self.item_map.id(int(self.test_target[u])) if self.test_target[u] else ""
            h.update(f"{uid}\t{v}\t{t}\n".encode())
        return h.hexdigest()

    def train_item_counts(self) -> np.ndarray:
        """Number of training rows per item index, int64 [n_items + 1] (entry 0 = 0)."""
        flat = np.concatenate(self.train_seqs) if self.train_seqs else np.zeros(0, np.int64)
        return np.bincount(flat, minlength=self.n_items + 1).astype(np.int64)


def check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")


def leave_one_out(dataset: Dataset) -> Split:
    """Split ``dataset`` per the evaluation protocol (see the module docstring)."""
    inter = dataset.interactions
    if len(inter) == 0:
        raise DataError(f"{dataset.name}: no interactions to split")
    users_raw = inter["user_id"].to_numpy(dtype=object)
    items_raw = inter["item_id"].to_numpy(dtype=object)
    user_map = IdMap(natural_order(users_raw))
    item_map = IdMap(natural_order(items_raw))
    u = pd.Categorical(users_raw, categories=user_map.ids).codes.astype(np.int64) + 1
    it = pd.Categorical(items_raw, categories=item_map.ids).codes.astype(np.int64) + 1
    ts = inter["timestamp"].to_numpy(dtype=np.int64)
    order = np.argsort(ts, kind="stable")  # by time, ties keep row order
    order = order[np.argsort(u[order], kind="stable")]  # by user, keeping time/row order
    u_s, it_s = u[order], it[order]

    n_users = len(user_map)
    counts = np.bincount(u_s, minlength=n_users + 1)
    ends = np.cumsum(counts)  # ends[k] = one past the last sorted row of user k
    valid_target = np.zeros(n_users + 1, np.int64)
    test_target = np.zeros(n_users + 1, np.int64)
    has_test = counts >= 2
    has_valid = counts >= 3
    has_test[0] = has_valid[0] = False
    test_target[has_test] = it_s[ends[has_test] - 1]
    valid_target[has_valid] = it_s[ends[has_valid] - 2]
    n_train = counts - has_test.astype(np.int64) - has_valid.astype(np.int64)
    is_train = np.ones(len(u_s), bool)
    is_train[ends[has_test] - 1] = False
    is_train[ends[has_valid] - 2] = False
    cuts = np.cumsum(n_train)[:-1]

    def per_user(values: np.ndarray) -> list[np.ndarray]:
        return np.split(values[is_train], cuts)

    event = inter["event_type"].to_numpy(dtype=object)[order]
    rating = inter["rating"].to_numpy(dtype=np.float64)[order]
    genres_by_id = dict(zip(dataset.items["item_id"], dataset.items["genres"], strict=False))
    item_genres = [[]] + [list(genres_by_id.get(i, [])) for i in item_map.ids]
    return Split(
        user_map=user_map,
        item_map=item_map,
        train_seqs=per_user(it_s),
        train_event_types=per_user(event),
        train_ratings=per_user(rating),
        train_timestamps=per_user(ts[order]),
        valid_target=valid_target,
        test_target=test_target,
        item_genres=item_genres,
        dataset_name=dataset.name,
    )
