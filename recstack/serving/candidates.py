"""Candidates the loaded bundle does not know (an item newer than the bundle, during a bundle swap
or from the stream's popularity list): ranked after every known candidate, in their upstream
order, and counted, instead of failing the whole list."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from prometheus_client import Counter

UNKNOWN_CANDIDATES = Counter(
    "recstack_unknown_candidates",
    "Candidates unknown to the loaded bundle, ranked last instead of failing the list, by core.",
    ["core"],
)


def known_positions(item_map, candidates: Sequence[str], core: str) -> tuple[np.ndarray, np.ndarray]:
    """(positions of the candidates the bundle knows, positions of the others), each int64 sorted."""
    idx = item_map.index(candidates)
    unknown = np.flatnonzero(idx == 0)
    if len(unknown):
        UNKNOWN_CANDIDATES.labels(core).inc(len(unknown))
    return np.flatnonzero(idx > 0), unknown


def floor_score(scores: np.ndarray) -> float:
    """A score below every score of ``scores`` (0.0 for none): where unknown candidates go."""
    finite = np.asarray(scores, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    return float(finite.min()) - 1.0 if len(finite) else 0.0
