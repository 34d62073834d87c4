"""Retrieval indexes by catalogue size: exact below the threshold, IVF with a tuned nprobe above."""

from __future__ import annotations

import faiss
import numpy as np

from recstack.bench.retrieval import synthetic_vectors
from recstack.serving.ann import build_for_catalogue, exact_index, recall_at


def test_small_catalogues_are_searched_exactly() -> None:
    vectors = synthetic_vectors(500, 16, np.random.default_rng(0))
    index, spec = build_for_catalogue(vectors, vectors[:10], k=20)
    assert spec == {"kind": "exact"}
    _, ids = index.search(vectors[:1], 1)
    assert ids[0, 0] == 1  # FAISS ids are the item indices 1..n


def test_large_catalogues_get_an_ivf_index_reaching_the_target_recall() -> None:
    rng = np.random.default_rng(0)
    vectors = synthetic_vectors(20_000, 16, rng)
    queries = synthetic_vectors(200, 16, rng)
    index, spec = build_for_catalogue(vectors, queries, k=50, exact_max=1000)
    assert spec["kind"] == "ivf" and spec["recall"] >= 0.95 and 1 <= spec["nprobe"] < spec["nlist"]
    assert isinstance(faiss.downcast_index(index), faiss.IndexIVFFlat)
    held_out = synthetic_vectors(200, 16, rng)
    assert recall_at(exact_index(vectors), index, held_out, 50) >= 0.93  # generalises to new users
    _, ids = index.search(vectors[:5], 1)
    assert ids[:, 0].tolist() == [1, 2, 3, 4, 5]
