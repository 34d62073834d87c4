"""Context features of the contextual policies: one row [d] per (user, candidate) pair.

``build_context`` defines the layout for one pair; ``ContextBuilder`` builds the matrix [C, d] of
one request in one vectorised pass, row for row equal to ``build_context`` (user genre scores, the
item's genres from the bundle catalogue, the upstream ranking score).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import repeat
from pathlib import Path

import numpy as np

from recstack.artifacts import layout
from recstack.exploration.base import FeatureSizeError, NonFiniteInputError, PolicyInputError

CONTEXT_FIXED = 3


def build_context(
    user_genre_scores: Mapping[str, float],
    item_genres: Sequence[str],
    genre_vocab: Sequence[str],
    upstream_score: float,
    d: int,
) -> np.ndarray:
    """Feature vector [d] of one (user, candidate) pair for the contextual policies.

    Layout (g = (d - 3) // 2 genre buckets; genre j of ``genre_vocab`` goes to bucket j % g, so
    a vocabulary larger than g folds genres together):
      x[0]            1.0 (bias)
      x[1]            upstream_score (the ranker's score, as given)
      x[2]            affinity: mean of the user's genre scores over the item's genres (0 if none)
      x[3 : 3+g]      item genre indicator per bucket (1.0 if the item has a genre in the bucket)
      x[3+g : 3+2g]   user genre score per bucket (sum of the bucket's genres)
      x[3+2g :]       0.0 (one padding column when d - 3 is odd)
    Genres outside ``genre_vocab`` (item or user side) are ignored. Raises ``FeatureSizeError``
    for d < 5 and ``NonFiniteInputError`` for a NaN/inf score.
    """
    if d < CONTEXT_FIXED + 2:
        raise FeatureSizeError(
            f"d must be >= {CONTEXT_FIXED + 2} (bias, score, affinity, 1+1 genre buckets), got {d}"
        )
    score = float(upstream_score)
    if not np.isfinite(score):
        raise NonFiniteInputError(f"upstream_score must be finite, got {upstream_score}")
    g = (d - CONTEXT_FIXED) // 2
    position = {genre: j for j, genre in enumerate(genre_vocab)}
    x = np.zeros(d, dtype=np.float64)
    x[0], x[1] = 1.0, score
    known = [position[genre] for genre in item_genres if genre in position]
    for j in known:
        x[CONTEXT_FIXED + j % g] = 1.0
    for genre, value in user_genre_scores.items():
        j = position.get(genre)
        if j is not None:
            v = float(value)
            if not np.isfinite(v):
                raise NonFiniteInputError(f"user genre score of {genre!r} is not finite: {value}")
            x[CONTEXT_FIXED + g + j % g] += v
    if known:
        x[2] = float(np.mean([float(user_genre_scores.get(genre_vocab[j], 0.0)) for j in known]))
    return x


class ContextBuilder:
    """Contexts of (user, candidate) pairs; the layout is ``build_context``'s.

    genre_vocab: the bundle's genre vocabulary; item_genres: item id -> genres; d: dimension (>= 5).
    """

    def __init__(self, genre_vocab: Sequence[str], item_genres: Mapping[str, Sequence[str]], d: int = 32):
        build_context({}, [], [], 0.0, d)  # validates d
        self.d = d
        self.genre_vocab = list(genre_vocab)
        self.g = (d - CONTEXT_FIXED) // 2
        self._pos = {genre: j for j, genre in enumerate(self.genre_vocab)}
        v = len(self.genre_vocab)
        self._index = {item: r + 1 for r, item in enumerate(item_genres)}
        counts = np.zeros((len(self._index) + 1, v))  # row 0: unknown item, no genres
        for item, genres in item_genres.items():
            for genre in genres:
                j = self._pos.get(genre)
                if j is not None:
                    counts[self._index[item], j] += 1.0
        fold = np.zeros((v, self.g))
        fold[np.arange(v), np.arange(v) % self.g] = 1.0
        self._counts = counts
        self._n_known = counts.sum(axis=1)
        self._indicator = (counts @ fold > 0).astype(np.float64)
        self._fold = fold

    @classmethod
    def from_artifacts(cls, artifacts: str | Path, d: int = 32) -> ContextBuilder:
        """From the current bundle's catalog.json (``genre_vocab`` and ``genres``); raises
        ``recstack.artifacts.layout.CatalogError`` when there is no bundle."""
        catalog = layout.read_catalog(artifacts)
        return cls(layout.genre_vocab(catalog), layout.catalog_genres(catalog), d)

    def build(
        self, user_genre_scores: Mapping[str, float], items: Sequence[str], scores: np.ndarray
    ) -> np.ndarray:
        """Contexts [C, d] of the candidates ``items`` [C] with upstream ``scores`` [C]."""
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (len(items),):
            raise PolicyInputError(f"scores must have shape ({len(items)},), got {scores.shape}")
        if not np.isfinite(scores).all():
            bad = int(np.flatnonzero(~np.isfinite(scores))[0])
            raise NonFiniteInputError(f"candidate {items[bad]!r} has a non-finite score ({scores[bad]})")
        user = np.zeros(len(self.genre_vocab))
        for genre, value in user_genre_scores.items():
            j = self._pos.get(genre)
            if j is not None:
                if not np.isfinite(value):
                    raise NonFiniteInputError(f"user genre score of {genre!r} is not finite: {value}")
                user[j] += float(value)
        rows = np.fromiter(map(self._index.get, items, repeat(0)), dtype=np.intp, count=len(items))
        x = np.zeros((len(items), self.d))
        g = self.g
        x[:, 0] = 1.0
        x[:, 1] = scores
        known = self._n_known[rows]
        x[:, 2] = np.divide(self._counts[rows] @ user, known, out=np.zeros(len(items)), where=known > 0)
        x[:, CONTEXT_FIXED : CONTEXT_FIXED + g] = self._indicator[rows]
        x[:, CONTEXT_FIXED + g : CONTEXT_FIXED + 2 * g] = user @ self._fold
        return x
