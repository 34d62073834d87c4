"""Contextual bandit features: ContextBuilder against build_context, from a bundle's catalogue
(serving from Redis state: tests/integration/test_bandit_contextual_redis.py)."""

from __future__ import annotations

import numpy as np
import pytest

from recstack.exploration.base import NonFiniteInputError
from recstack.exploration.context import ContextBuilder, build_context
from tests.helpers import BANDIT_D as D
from tests.helpers import BANDIT_GENRES as GENRES
from tests.helpers import BANDIT_ITEMS as ITEMS
from tests.helpers import BANDIT_USER as USER
from tests.helpers import BANDIT_VOCAB as VOCAB


def test_context_builder_equals_build_context_row_by_row() -> None:
    builder = ContextBuilder(VOCAB, GENRES, D)
    scores = np.linspace(2.0, -1.0, len(ITEMS))
    x = builder.build(USER, ITEMS, scores)
    for i, item in enumerate(ITEMS):
        want = build_context(USER, GENRES.get(item, []), VOCAB, scores[i], D)
        np.testing.assert_allclose(x[i], want, atol=1e-12, err_msg=item)
    with pytest.raises(NonFiniteInputError, match="'i1' has a non-finite score"):
        builder.build(USER, ITEMS[:3], np.array([1.0, np.nan, 0.0]))
    with pytest.raises(NonFiniteInputError, match="genre score of 'Drama'"):
        builder.build({"Drama": float("inf")}, ITEMS[:2], np.ones(2))


def test_context_builder_from_artifacts_reads_the_catalogue_and_rejects_a_broken_one(tmp_path) -> None:
    import json

    from recstack.features.catalog import CatalogError

    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "catalog.json").write_text(json.dumps({"genres": GENRES, "genre_vocab": VOCAB}))
    (tmp_path / "CURRENT").write_text("v1\n")
    builder = ContextBuilder.from_artifacts(tmp_path, D)
    np.testing.assert_allclose(
        builder.build(USER, ["i3"], [0.5])[0], build_context(USER, GENRES["i3"], VOCAB, 0.5, D)
    )
    (tmp_path / "v1" / "catalog.json").write_text(json.dumps({"genres": ["not", "a", "map"]}))
    with pytest.raises(CatalogError, match="has no 'genres' object"):
        ContextBuilder.from_artifacts(tmp_path, D)
    with pytest.raises(CatalogError, match="CURRENT not found"):
        ContextBuilder.from_artifacts(tmp_path / "nothing", D)
