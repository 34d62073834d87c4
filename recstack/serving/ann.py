"""Inner-product indexes of the retrieval sources, chosen by catalogue size (no grpc).

Up to :data:`EXACT_MAX_ITEMS` items a source is searched exactly (``IndexFlatIP``). Above, an
inverted-file index (``IndexIVFFlat``, inner product) with ``nlist = 4 * sqrt(n)`` lists, trained
on a seeded sample of the item vectors; :func:`choose_nprobe` picks the smallest ``nprobe`` whose
recall@k against exact search reaches ``target_recall`` on sample user vectors. Training records
the spec (``{"kind": "ivf", "nlist", "nprobe", "recall"}``) in the bundle's
``serving.retrieval.index[source]`` and writes the trained index beside the models
(``index-<source>.faiss``), so a service loads it instead of training it again. FAISS ids are the
item indices 1..n in every kind.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import faiss
import numpy as np

log = logging.getLogger(__name__)

EXACT_MAX_ITEMS = 100_000
TARGET_RECALL = 0.95
NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def exact_index(vectors: np.ndarray) -> faiss.Index:
    """``IndexIDMap(IndexFlatIP)`` over ``vectors`` [n, D] with ids 1..n."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.IndexIDMap(faiss.IndexFlatIP(vectors.shape[1]))
    index.add_with_ids(vectors, np.arange(1, len(vectors) + 1, dtype=np.int64))
    return index


def ivf_index(vectors: np.ndarray, nlist: int | None = None, seed: int = 0) -> faiss.IndexIVFFlat:
    """A trained inner-product IVF index over ``vectors`` [n, D] with ids 1..n."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    nlist = nlist or max(1, int(4 * math.sqrt(n)))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    sample = vectors[np.sort(rng.choice(n, min(n, 64 * nlist), replace=False))]
    clustering = faiss.Clustering(d, nlist)
    clustering.seed = seed
    clustering.niter = 20
    clustering.spherical = False
    clustering.train(sample, quantizer)
    index.is_trained = True
    index.add_with_ids(vectors, np.arange(1, n + 1, dtype=np.int64))
    return index


def recall_at(exact: faiss.Index, approx: faiss.Index, queries: np.ndarray, k: int) -> float:
    """Mean share of the exact top k that ``approx`` returns."""
    _, want = exact.search(queries, k)
    _, got = approx.search(queries, k)
    return float(
        np.mean([len(set(a) & set(b)) / max(1, len(set(a) - {-1})) for a, b in zip(want, got, strict=True)])
    )


def choose_nprobe(
    index: faiss.IndexIVFFlat,
    exact: faiss.Index,
    queries: np.ndarray,
    k: int = 100,
    target: float = TARGET_RECALL,
) -> tuple[int, float]:
    """The smallest nprobe reaching ``target`` recall@k on ``queries`` (else the largest tried)."""
    best = (index.nlist, 1.0)
    for nprobe in [p for p in NPROBES if p <= index.nlist]:
        index.nprobe = nprobe
        r = recall_at(exact, index, queries, k)
        if r >= target:
            return nprobe, r
        best = (nprobe, r)
    return best


def build_for_catalogue(
    vectors: np.ndarray, queries: np.ndarray, k: int = 100, seed: int = 0, exact_max: int = EXACT_MAX_ITEMS
) -> tuple[faiss.Index, dict]:
    """(index, spec) for a source: exact up to ``exact_max`` items, else IVF tuned on ``queries``."""
    n = len(vectors)
    if n <= exact_max:
        return exact_index(vectors), {"kind": "exact"}
    t0 = time.perf_counter()
    ivf = ivf_index(vectors, seed=seed)
    exact = exact_index(vectors)
    nprobe, recall = choose_nprobe(ivf, exact, np.ascontiguousarray(queries, np.float32), min(k, n))
    ivf.nprobe = nprobe
    spec = {"kind": "ivf", "nlist": int(ivf.nlist), "nprobe": nprobe, "recall": round(recall, 4), "k": k}
    log.info("IVF index over %d items: %s (%.1f s)", n, spec, time.perf_counter() - t0)
    return ivf, spec


def load_index(path: Path, spec: dict) -> faiss.Index:
    """A saved index (``faiss.read_index``) with the spec's nprobe."""
    index = faiss.read_index(str(path))
    if spec.get("kind") == "ivf":
        faiss.extract_index_ivf(index).nprobe = int(spec["nprobe"])
    return index


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
