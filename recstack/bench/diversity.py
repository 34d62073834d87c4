"""Diversity benchmark: latency against seed-style references and the accuracy/diversity trade-off.

``run() -> dict`` measures ``recstack.diversity`` against "seed-style" reference implementations
(Python loops, determinants recomputed with np.linalg.det) for N = 200 candidates and k = 10..50;
``mmr_speedup_vs_seed`` / ``dpp_speedup_vs_seed`` are the smallest per-k speedups (the worst case).
With a dataset it also computes NDCG@10 / intra-list diversity / coverage / novelty as lambda (MMR)
and theta (DPP) vary: ItemKNN's top-200 unseen items per test user are re-ranked with genre-Jaccard
similarity and the leave-one-out test target is looked up in the top 10; the curve is drawn to a PNG.
Used by ``recstack bench diversity``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from recstack.diversity.dpp import dpp_greedy, quality_alpha
from recstack.diversity.metrics import (
    catalogue_coverage,
    cosine_similarity,
    genre_matrix,
    jaccard_similarity,
    mean_intra_list_diversity,
    normalize_scores,
    novelty,
)
from recstack.diversity.mmr import mmr

DEFAULT_DATA = "ml-100k:../shared/datasets/ml-100k"
DEFAULT_PNG = Path("reports/diversity/tradeoff.png")
LAMBDAS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0)
THETAS = (0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.3, 0.0)


# --- seed-style reference implementations -------------------------------------------------------


def seed_mmr(scores: np.ndarray, sim: np.ndarray, k: int, lam: float) -> list[int]:
    """MMR as first written: a Python double loop recomputing max similarity to the selected set."""
    rel = normalize_scores(scores).tolist()
    s = sim.tolist()
    n = len(rel)
    selected: list[int] = []
    while len(selected) < min(k, n):
        best, best_val = -1, -float("inf")
        for i in range(n):
            if i in selected:
                continue
            max_sim = max(s[i][j] for j in selected) if selected else 0.0
            val = lam * rel[i] - (1.0 - lam) * max_sim
            if val > best_val:
                best, best_val = i, val
        selected.append(best)
    return selected


def seed_dpp(scores: np.ndarray, sim: np.ndarray, k: int, theta: float, eps: float = 1e-10) -> list[int]:
    """DPP as first written: kernel built in a Python double loop, then each step evaluates
    det(L_{Y+i}) with np.linalg.det for every candidate i and keeps the largest (relevance fill
    once no candidate increases the volume)."""
    rel = normalize_scores(scores)
    alpha = quality_alpha(theta)
    n = len(rel)
    q = [float(np.exp(alpha * r)) for r in rel]
    kernel = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            kernel[i, j] = q[i] * sim[i, j] * q[j]
    selected: list[int] = []
    prev_det = 1.0
    while len(selected) < min(k, n):
        best, best_det = -1, -np.inf
        for i in range(n):
            if i in selected:
                continue
            idx = [*selected, i]
            det = np.linalg.det(kernel[np.ix_(idx, idx)])
            if det > best_det:
                best, best_det = i, det
        if best_det <= eps * prev_det * q[best] ** 2:
            break
        selected.append(best)
        prev_det = best_det
    rest = [i for i in np.argsort(-rel, kind="stable") if i not in selected]
    return selected + [int(i) for i in rest[: min(k, n) - len(selected)]]


# --- latency ------------------------------------------------------------------------------------


def _time_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn`` in milliseconds."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def latency(
    n: int = 200, ks: Sequence[int] = (10, 20, 30, 40, 50), dim: int = 64, seed: int = 0, repeats: int = 20
) -> dict:
    """Per-k latency (ms) of the fast and the seed-style MMR/DPP on random embeddings [n, dim]."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=n)
    sim = cosine_similarity(rng.normal(size=(n, dim)))
    out: dict = {"n": n, "dim": dim, "k": list(ks), "mmr_ms": [], "mmr_seed_ms": [], "dpp_ms": []}
    out.update({"dpp_seed_ms": [], "mmr_speedup": [], "dpp_speedup": [], "selections_match": True})
    for k in ks:
        fast_m = mmr(scores, sim, k, 0.7)
        fast_d = dpp_greedy(scores, sim, k, 0.7)
        same = fast_m.tolist() == seed_mmr(scores, sim, k, 0.7)
        same &= fast_d.tolist() == seed_dpp(scores, sim, k, 0.7)
        out["selections_match"] &= bool(same)
        out["mmr_ms"].append(_time_ms(lambda k=k: mmr(scores, sim, k, 0.7), repeats))
        out["dpp_ms"].append(_time_ms(lambda k=k: dpp_greedy(scores, sim, k, 0.7), repeats))
        out["mmr_seed_ms"].append(_time_ms(lambda k=k: seed_mmr(scores, sim, k, 0.7), 2))
        out["dpp_seed_ms"].append(_time_ms(lambda k=k: seed_dpp(scores, sim, k, 0.7), 1))
        out["mmr_speedup"].append(out["mmr_seed_ms"][-1] / out["mmr_ms"][-1])
        out["dpp_speedup"].append(out["dpp_seed_ms"][-1] / out["dpp_ms"][-1])
    return out


# --- offline trade-off on a dataset -------------------------------------------------------------


def tradeoff(
    data_spec: str = DEFAULT_DATA,
    n_candidates: int = 200,
    k: int = 10,
    lambdas: Sequence[float] = LAMBDAS,
    thetas: Sequence[float] = THETAS,
) -> dict:
    """NDCG@k, intra-list diversity@k, coverage@k and novelty@k of ItemKNN's top-``n_candidates``
    re-ranked by MMR (per lambda) and DPP (per theta), over all users with a test target."""
    from recstack.data import load_dataset
    from recstack.evaluation import leave_one_out, top_k
    from recstack.models.baselines import ItemKNN

    split = leave_one_out(load_dataset(data_spec))
    knn = ItemKNN().fit(split)
    target = split.targets("test")
    users = np.flatnonzero(target > 0)
    users = users[users > 0]
    users, cands = top_k(knn.scorer("test"), split, "test", k=n_candidates, users=users)
    genres = genre_matrix(split.item_genres, split.genre_vocab)
    item_users = np.zeros(split.n_items + 1)
    for seq in split.train_seqs:
        item_users[np.unique(seq)] += 1

    settings = [("mmr", lam) for lam in lambdas] + [("dpp", th) for th in thetas]
    lists = {s: np.zeros((len(users), k), dtype=np.int64) for s in settings}
    for start in range(0, len(users), 256):
        batch = users[start : start + 256]
        scores = knn.score_all(batch, "test")
        for r in range(len(batch)):
            row = start + r
            cand = cands[row]
            sc = scores[r, cand]
            sim = jaccard_similarity(genres[cand])
            for method, p in settings:
                pick = mmr(sc, sim, k, p) if method == "mmr" else dpp_greedy(sc, sim, k, p)
                lists[(method, p)][row] = cand[pick]

    def summary(top: np.ndarray) -> dict:
        hit = top == target[users][:, None]
        pos = np.argmax(hit, axis=1)
        gain = np.where(hit.any(axis=1), 1.0 / np.log2(pos + 2.0), 0.0)
        return {
            f"NDCG@{k}": float(gain.mean()),
            f"ILD@{k}": mean_intra_list_diversity(top, genres),
            f"coverage@{k}": catalogue_coverage(top, split.n_items),
            f"novelty@{k}": novelty(top, item_users, split.n_users),
        }

    base = summary(cands[:, :k])
    return {
        "data": data_spec,
        "users": int(len(users)),
        "n_candidates": n_candidates,
        "similarity": "genre jaccard",
        "itemknn": base,
        "mmr": [{"lambda": lam, **summary(lists[("mmr", lam)])} for lam in lambdas],
        "dpp": [{"theta": th, **summary(lists[("dpp", th)])} for th in thetas],
    }


def plot_tradeoff(result: dict, png: Path, k: int = 10) -> Path:
    """Two panels: NDCG@k against intra-list diversity and against coverage, one curve per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, x in zip(axes, (f"ILD@{k}", f"coverage@{k}"), strict=True):
        for method, param, marker in (("mmr", "lambda", "o"), ("dpp", "theta", "s")):
            pts = result[method]
            ax.plot([p[x] for p in pts], [p[f"NDCG@{k}"] for p in pts], marker=marker, label=method.upper())
            for p in pts:
                ax.annotate(f"{p[param]:g}", (p[x], p[f"NDCG@{k}"]), fontsize=7, alpha=0.7)
        base = result["itemknn"]
        ax.scatter([base[x]], [base[f"NDCG@{k}"]], color="black", zorder=3, label="ItemKNN (no re-rank)")
        ax.set_xlabel(x)
        ax.set_ylabel(f"NDCG@{k}")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(
        f"{result['data'].split(':')[0]}: re-ranking ItemKNN top-{result['n_candidates']} "
        f"({result['users']} users, {result['similarity']})"
    )
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png


def run(data_spec: str | None = DEFAULT_DATA, png: Path = DEFAULT_PNG, repeats: int = 20) -> dict:
    """Latency comparison, and the trade-off curve (PNG) when ``data_spec`` is given."""
    lat = latency(repeats=repeats)
    out: dict = {
        "mmr_speedup_vs_seed": float(min(lat["mmr_speedup"])),
        "dpp_speedup_vs_seed": float(min(lat["dpp_speedup"])),
        "latency": lat,
    }
    if data_spec:
        t0 = time.perf_counter()
        out["tradeoff"] = tradeoff(data_spec)
        out["tradeoff"]["seconds"] = time.perf_counter() - t0
        out["tradeoff"]["png"] = str(plot_tradeoff(out["tradeoff"], png))
    return out
