"""Users held out of training entirely, for evaluating the live stack on people it never saw.

Choice (``choose_holdout``): among the users with at least :data:`MIN_INTERACTIONS` interaction
rows, in natural id order (``recstack.evaluation.split.natural_order``), ``n`` are drawn without
replacement by ``numpy.random.default_rng(seed)``; the result is returned in natural order. The
same dataset, ``n`` and seed always give the same users.

``without_users`` removes every interaction row of those users (the item catalogue is kept), so
the bundle trained on the rest has never seen them: they are unknown users to every model.
``user_events`` gives each held-out user's rows in time order (stable over source order, as the
leave-one-out split orders them): the last row is the target, the rows before it the history.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recstack.data.schema import DataError, Dataset
from recstack.evaluation.split import natural_order

MIN_INTERACTIONS = 3  # a target and at least two history rows


def choose_holdout(dataset: Dataset, n: int, seed: int = 0) -> list[str]:
    """``n`` user ids drawn with ``seed`` among users with >= MIN_INTERACTIONS rows (natural order).

    Raises DataError when ``n`` < 1 or when fewer than ``n + 1`` users qualify (training needs users)."""
    if n < 1:
        raise DataError(f"the number of held-out users must be >= 1, got {n}")
    counts = dataset.interactions["user_id"].astype(str).value_counts()
    eligible = natural_order(counts.index[counts >= MIN_INTERACTIONS].to_numpy(dtype=object))
    if len(eligible) <= n:
        raise DataError(
            f"{dataset.name}: cannot hold out {n} users: only {len(eligible)} users have at least "
            f"{MIN_INTERACTIONS} interactions, and training needs the rest"
        )
    picked = np.random.default_rng(seed).choice(len(eligible), size=n, replace=False)
    return [eligible[i] for i in sorted(picked.tolist())]


def without_users(dataset: Dataset, users: Collection[str]) -> Dataset:
    """The dataset without any interaction row of ``users`` (same items)."""
    drop = set(map(str, users))
    keep = ~dataset.interactions["user_id"].astype(str).isin(drop)
    inter = dataset.interactions[keep].reset_index(drop=True)
    return Dataset(name=dataset.name, interactions=inter, items=dataset.items)


@dataclass
class UserEvents:
    """One held-out user's interactions, oldest first (aligned lists)."""

    user_id: str
    items: list[str]
    event_types: list[str]
    ratings: list[float]
    timestamps: list[int]

    @property
    def history(self) -> slice:
        """Every row but the last."""
        return slice(0, len(self.items) - 1)

    @property
    def target(self) -> str:
        """The last interaction's item."""
        return self.items[-1]


def user_events(dataset: Dataset, users: Sequence[str]) -> list[UserEvents]:
    """Per user of ``users`` (same order), their rows sorted by timestamp, ties in source order."""
    inter = dataset.interactions
    frame = inter[inter["user_id"].astype(str).isin(set(users))]
    frame = frame.sort_values("timestamp", kind="stable")
    groups = {str(u): g for u, g in frame.groupby(frame["user_id"].astype(str), sort=False)}
    out = []
    for u in users:
        g = groups.get(str(u))
        if g is None or len(g) < 2:
            raise DataError(f"{dataset.name}: held-out user {u!r} has fewer than 2 interactions here")
        out.append(
            UserEvents(
                user_id=str(u),
                items=g["item_id"].astype(str).tolist(),
                event_types=g["event_type"].astype(str).tolist(),
                ratings=pd.to_numeric(g["rating"], errors="coerce").astype(float).tolist(),
                timestamps=g["timestamp"].astype(np.int64).tolist(),
            )
        )
    return out
