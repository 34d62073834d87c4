"""The generic dataset schema every adapter produces."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat

import numpy as np
import pandas as pd

INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp", "event_type", "rating")
ITEM_COLUMNS = ("item_id", "genres", "title")
# Optional item columns: a Dataset built by hand may leave them out (= missing for every item).
ITEM_OPTIONAL_COLUMNS = ("created_at",)
CREATED_AT_DTYPE = "Int64"  # pandas nullable int64: unix seconds, pd.NA when unknown


class DataError(ValueError):
    """A dataset could not be read; the message names the file, row or column and how to fix it."""


@dataclass
class Dataset:
    """Interactions and item catalogue.

    interactions: user_id (str), item_id (str), timestamp (int64, unix s), event_type (str),
        rating (float, NaN when absent); row order is the source file's order.
    items: item_id (str), genres (list[str], possibly empty), title (str), and optionally
        created_at: when the item entered the catalogue, unix seconds (UTC) in a pandas nullable
        ``Int64`` column, ``pd.NA`` when unknown. Every loader and the synthetic generator emit the
        column (all ``pd.NA`` when the source has no dates); a hand-built Dataset may omit it, which
        means "unknown for every item". Read it with :func:`item_created_at`.
    """

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame

    @property
    def n_interactions(self) -> int:
        return len(self.interactions)


def item_created_at(items: pd.DataFrame) -> dict[str, int]:
    """``{item_id: created_at}`` (unix s) for the items that have one; {} without the column.

    Accepts the ``Int64`` column of the schema and also a float column with NaN; the first row of a
    duplicated item id wins (like the loaders' de-duplication).
    """
    if "created_at" not in items.columns:
        return {}
    out: dict[str, int] = {}
    for item, ts in zip(items["item_id"], items["created_at"], strict=True):
        if not pd.isna(ts):
            out.setdefault(str(item), int(ts))
    return out


class IdMap:
    """Dense indices for string ids. Index 0 is reserved for padding / unknown; ids map to 1..n."""

    def __init__(self, ids: Sequence[str]):
        self.ids: list[str] = list(ids)
        self._index = {x: i + 1 for i, x in enumerate(self.ids)}
        if len(self._index) != len(self.ids):
            raise ValueError("IdMap ids must be unique")

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, x: object) -> bool:
        return x in self._index

    def get(self, x: str) -> int:
        """Index of x, 0 when unknown."""
        return self._index.get(x, 0)

    def index(self, ids: Iterable[str]) -> np.ndarray:
        """Indices of ids as int64, 0 for unknown ids."""
        return np.fromiter(map(self._index.get, ids, repeat(0)), dtype=np.int64)

    def id(self, idx: int) -> str:
        if not 1 <= idx <= len(self.ids):
            raise IndexError(f"index {idx} outside 1..{len(self.ids)}")
        return self.ids[idx - 1]

    def to_ids(self, indices: Iterable[int]) -> list[str]:
        return [self.ids[i - 1] for i in indices]
