"""``recstack bench retrieval``: the approximate index a bundle of a given catalogue size would
choose (``recstack.serving.ann``) against exact search, on synthetic item vectors shaped like
learned embeddings, and the single-request latency of the retrieval core over it."""

from __future__ import annotations

import time

import faiss
import numpy as np

from recstack.serving.ann import build_for_catalogue, exact_index, recall_at


def synthetic_vectors(n: int, dim: int, rng: np.random.Generator, latent: int = 16, clusters: int = 1000,
                      spread: float = 0.5, noise: float = 0.1, seed: int = 0) -> np.ndarray:  # fmt: skip
    """Unit vectors [n, dim] shaped like learned item embeddings: a mixture of ``clusters`` topics
    in a ``latent``-dimensional space (the effective rank of trained embeddings is low), mapped to
    ``dim`` dimensions, plus isotropic noise. The topics and the map come from ``seed`` (the same
    catalogue for every call); the points from ``rng``."""
    space = np.random.default_rng(seed)
    centers = space.normal(size=(clusters, latent)).astype(np.float32)
    lift = space.normal(size=(latent, dim)).astype(np.float32) / np.sqrt(latent)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):  # in blocks: no [n, dim] float64 temporaries
        m = min(100_000, n - start)
        z = centers[rng.integers(0, clusters, m)] + spread * rng.normal(size=(m, latent)).astype(np.float32)
        block = z @ lift + noise * rng.normal(size=(m, dim)).astype(np.float32)
        out[start : start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def run_bench(items: int = 1_000_000, dim: int = 64, queries: int = 500, k: int = 100, seed: int = 0) -> dict:
    """``recstack bench retrieval``: the index the bundle would choose for ``items`` synthetic item
    vectors against exact search (recall@k, queries/s one at a time on one thread, build seconds,
    memory), and the single-request latency of the retrieval core (``Retriever``) over it."""
    import os
    import tempfile

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(seed)
    vectors = synthetic_vectors(items, dim, rng)
    tune_q = synthetic_vectors(1000, dim, rng)
    test_q = synthetic_vectors(queries, dim, rng)
    t0 = time.perf_counter()
    exact = exact_index(vectors)
    exact_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    index, spec = build_for_catalogue(vectors, tune_q, k=k, seed=seed)
    build = time.perf_counter() - t0

    def qps(ix: faiss.Index) -> tuple[float, float]:
        times = []
        for q in test_q:
            t = time.perf_counter()
            ix.search(q[None, :], k)
            times.append(time.perf_counter() - t)
        return len(test_q) / sum(times), float(np.percentile(np.asarray(times) * 1000, 99))

    exact_qps, exact_p99 = qps(exact)
    approx_qps, approx_p99 = qps(index)

    def size_mb(ix: faiss.Index) -> float:
        with tempfile.NamedTemporaryFile(suffix=".faiss") as f:
            faiss.write_index(ix, f.name)
            return round(os.path.getsize(f.name) / 2**20, 1)

    return {
        "items": items,
        "dim": dim,
        "k": k,
        "queries": queries,
        "index": spec,
        f"recall@{k}": round(recall_at(exact, index, test_q, k), 4),
        "exact": {
            "qps": round(exact_qps, 1),
            "p99_ms": round(exact_p99, 2),
            "build_s": round(exact_build, 2),
            "size_mb": size_mb(exact),
        },  # fmt: skip
        "approx": {
            "qps": round(approx_qps, 1),
            "p99_ms": round(approx_p99, 2),
            "build_s": round(build, 2),
            "size_mb": size_mb(index),
        },  # fmt: skip
        "speedup": round(approx_qps / exact_qps, 1),
        "core_single_request": core_latency(vectors, index, spec, rng),
    }


def core_latency(vectors: np.ndarray, index: faiss.Index, spec: dict, rng: np.random.Generator,
                 requests: int = 300) -> dict:  # fmt: skip
    """p50/p99 of ``Retriever.retrieve`` (n = 200, 20 recent items) over a two-tower bundle whose
    item vectors are ``vectors`` and whose index is ``index``: what one Retrieve call costs."""
    import torch

    from recstack.artifacts.bundle import Bundle, catalog_dict
    from recstack.features.types import UserFeatures
    from recstack.models.two_tower import TwoTower, TwoTowerConfig
    from recstack.serving.retriever import Retriever

    torch.set_num_threads(1)
    n, dim = vectors.shape
    model = TwoTower(TwoTowerConfig(n_users=100, n_items=n, n_genres=1, dim=dim, hidden=128, max_len=50))
    with torch.no_grad():
        model.item_emb.weight[1:] = torch.from_numpy(vectors)
        model.item_genre.weight.zero_()
    ids = [f"i{k}" for k in range(1, n + 1)]
    catalog = catalog_dict(ids, {}, {}, ["g"], ids[:1000])
    serving = {"retrieval": {"sources": {"two_tower": 1.0}, "index": {"two_tower": spec}}}
    bundle = Bundle.in_memory({"two_tower": model}, catalog, [f"u{k}" for k in range(1, 101)], serving,
                              indexes={"two_tower": index})  # fmt: skip
    retriever = Retriever(bundle)
    times = []
    for r in range(requests):
        user = UserFeatures(f"u{r % 100 + 1}", recent_items=[ids[i] for i in rng.integers(0, n, 20)])
        t = time.perf_counter()
        retriever.retrieve(user, 200, user.recent_items)
        times.append(time.perf_counter() - t)
    ms = np.asarray(times[20:]) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
    }
