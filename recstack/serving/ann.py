"""Inner-product indexes of the retrieval sources, chosen by catalogue size (no grpc).

Up to :data:`EXACT_MAX_ITEMS` items a source is searched exactly (``IndexFlatIP``). Above, an
inverted-file index (``IndexIVFFlat``, inner product) with ``nlist = 4 * sqrt(n)`` lists, trained
on a seeded sample of the item vectors; :func:`choose_nprobe` picks the smallest ``nprobe`` whose
recall@k against exact search reaches ``target_recall`` on sample user vectors. Training records
the spec (``{"kind": "ivf", "nlist", "nprobe", "recall"}``) in the bundle's
``serving.retrieval.index[source]`` and writes the trained index beside the models
(``index-<source>.faiss``, read by ``Bundle.index``), so a service loads it instead of training it
again. FAISS ids are the
item indices 1..n in every kind.
"""

from __future__ import annotations

import logging
import math
import time

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
