"""Compiled scoring kernels of the linear policies (numba): gather, mat-vec and quadratic form
fused in one pass over the candidates.

Why. Scoring 200 candidates with d = 32 reads 200 per-arm ``(d + 1) x d`` float32 blocks
(~845 KB). The numpy formulation copies them into a gathered buffer first (one read, one write,
one more read by the batched mat-vec) and pays a few microseconds of dispatch per operation;
here each candidate's block is read once, in place, and reduced in registers.

Numerics. State is float32 (what the decision path has always read); products accumulate in
float32. ``fastmath`` is restricted to reassociation and contraction (vectorised reductions,
FMA): NaN and inf propagate, so a non-finite context gives a non-finite score, which the
callers check instead of scanning every context value up front.

Compilation happens on the first call of each kernel (about a second); the bandit service
calls ``warm_up`` before it reports SERVING. The on-disk cache is used where numba can write
it (``NUMBA_CACHE_DIR`` set, or a writable package directory); on a read-only root filesystem
without ``NUMBA_CACHE_DIR`` every process compiles once.
"""

from __future__ import annotations

import os
from pathlib import Path

import numba
import numpy as np

_CACHE = bool(os.environ.get("NUMBA_CACHE_DIR")) or os.access(Path(__file__).parent, os.W_OK)
_FLAGS = {"reassoc", "contract"}
_jit = numba.njit(cache=_CACHE, fastmath=_FLAGS, nogil=True, boundscheck=False)


@_jit
def _quad_form(a, v):  # pragma: no cover - compiled (inlined by LLVM)
    """v^T a v over a's first len(v) rows and columns (float32 accumulation)."""
    n = v.shape[0]
    q = np.float32(0.0)
    for i in range(n):
        acc = np.float32(0.0)
        for j in range(n):
            acc += a[i, j] * v[j]
        q += acc * v[i]
    return q


@_jit
def _disjoint_one(s, xf):  # pragma: no cover - compiled (inlined by LLVM)
    """(theta.x, x^T A^{-1} x) of one arm block s [d + 1, d] and features xf [d] (float32)."""
    d = xf.shape[0]
    q = _quad_form(s, xf)
    m = np.float32(0.0)
    for j in range(d):
        m += s[d, j] * xf[j]
    return m, q


@_jit
def disjoint_mean_var(m32, rows, x, mean, var):  # pragma: no cover - compiled
    """Disjoint LinUCB. m32 [R, d + 1, d] float32 (rows ``[A^{-1}; theta^T]``), rows [C] int,
    x [C, d]; writes mean[c] = theta.x and var[c] = x^T A^{-1} x (float64 [C])."""
    c_n, d = x.shape
    xf = np.empty(d, dtype=np.float32)
    for c in range(c_n):
        for j in range(d):
            xf[j] = x[c, j]
        mean[c], var[c] = _disjoint_one(m32[rows[c]], xf)


@_jit
def _ucb_one(s, xc, xf, alpha):  # pragma: no cover - compiled (inlined by LLVM)
    """theta.x + alpha * sqrt(max(x^T A^{-1} x, 0)) of arm block s for features xc (copied into
    the float32 buffer xf). NaN is not < 0: a NaN quadratic form propagates."""
    for j in range(xf.shape[0]):
        xf[j] = xc[j]
    m, q = _disjoint_one(s, xf)
    v = np.float64(q)
    if v < 0.0:
        v = 0.0
    return np.float64(m) + alpha * np.sqrt(v)


@_jit
def disjoint_ucb(m32, rows, x, alpha, out):  # pragma: no cover - compiled
    """As ``disjoint_mean_var``, writing out[c] = theta.x + alpha * sqrt(max(x^T A^{-1} x, 0))."""
    c_n, d = x.shape
    xf = np.empty(d, dtype=np.float32)
    for c in range(c_n):
        out[c] = _ucb_one(m32[rows[c]], x[c], xf, alpha)


BOUND_RTOL = 1e-4
"""Relative margin added to the score bounds of ``disjoint_top`` (covers float32 rounding of the
exact scores, so that pruning never drops an item the full computation would pick)."""


TOP_NONFINITE = -1
TOP_STALE = -2
TOP_DUPLICATE = -3


_SEEN_EMPTY = -1


@_jit
def _first_duplicate_row(rows, seen):  # pragma: no cover - compiled (inlined by LLVM)
    """True when a row > 0 appears twice in ``rows``; ``seen`` is scratch space, an open-addressing
    set whose size is a power of two larger than ``2 * len(rows)``."""
    mask = seen.shape[0] - 1
    for i in range(seen.shape[0]):
        seen[i] = _SEEN_EMPTY
    for c in range(rows.shape[0]):
        r = rows[c]
        if r <= 0:
            continue
        h = (r * 0x9E3779B1) & mask
        while seen[h] != _SEEN_EMPTY:
            if seen[h] == r:
                return True
            h = (h + 1) & mask
        seen[h] = r
    return False


@_jit
def disjoint_top(m32, theta, lmax, rows, x, alpha, fixed, slots, score, top, unknown):  # pragma: no cover
    """Disjoint LinUCB for a slate: exact UCB of the ``fixed`` first candidates and the ``slots``
    best UCBs of the pool ``[fixed, C)``, without scoring every pool item exactly.

    Bound: x^T A^{-1} x <= lambda_max(A^{-1}) |x|^2, so UCB_c <= theta.x + alpha sqrt(lmax |x|^2)
    (``lmax`` [R] float64 per arm row, an upper bound of A^{-1}'s largest eigenvalue), plus a
    ``BOUND_RTOL`` margin; ``theta`` [R, d] float32 is a compact copy of m32's last rows (2 MB for
    16k arms: the bound pass stays in the CPU cache). Pool items are taken in decreasing bound
    order and scored exactly (the same float32 arithmetic as ``disjoint_ucb``) until the next
    bound is below the ``slots``-th
    best exact score: no item left can enter the top, so the result equals ranking the whole pool
    by exact score (ties to the lower index). The d x d blocks are read for the fixed positions and
    the scored pool items only.

    Returns ``(status, n_unknown)``. First, over every candidate: a known arm row (> 0) given twice
    returns status ``TOP_DUPLICATE``; a pool row whose lmax is NaN (not computed since the arm
    changed) returns ``TOP_STALE``. Candidates on row 0 (arms without statistics: the caller checks
    their ids for duplicates) are written to ``unknown[:n_unknown]`` (candidate indices, [C]).
    Then: NaN/inf in a bound or a fixed score returns ``TOP_NONFINITE``. Otherwise writes score[c]
    (NaN for pool items not scored exactly) and top[:slots] (candidate indices, best first); status
    is the number of pool items scored exactly. Needs 1 <= slots < C - fixed.
    """
    c_n, d = x.shape
    n_unknown = 0
    stale = False
    for c in range(c_n):
        r = rows[c]
        if r == 0:
            unknown[n_unknown] = c
            n_unknown += 1
        if c >= fixed and np.isnan(lmax[r]):
            stale = True
    size = 1
    while size < 2 * c_n + 2:
        size *= 2
    if _first_duplicate_row(rows, np.empty(size, dtype=np.intp)):
        return TOP_DUPLICATE, n_unknown
    if stale:
        return TOP_STALE, n_unknown
    xf = np.empty(d, dtype=np.float32)
    bound = np.empty(c_n)
    for c in range(c_n):
        score[c] = np.nan
    for c in range(c_n):
        if c < fixed:
            score[c] = _ucb_one(m32[rows[c]], x[c], xf, alpha)
            if not np.isfinite(score[c]):
                return TOP_NONFINITE, n_unknown
            continue
        mean = 0.0
        mag = 0.0
        nx = 0.0
        th = theta[rows[c]]
        for j in range(d):
            t = np.float64(th[j]) * x[c, j]
            mean += t
            mag += abs(t)
            nx += x[c, j] * x[c, j]
        w = alpha * np.sqrt(lmax[rows[c]] * nx)
        b = mean + w + BOUND_RTOL * (mag + w) + 1e-12
        if not np.isfinite(b):
            return TOP_NONFINITE, n_unknown
        bound[c] = b
    best_s = np.full(slots, -np.inf)
    best_i = np.full(slots, -1, dtype=np.intp)
    n_best = 0
    scored = 0
    while True:
        j_max = -1
        b_max = -np.inf
        for c in range(fixed, c_n):
            if bound[c] > b_max:
                b_max = bound[c]
                j_max = c
        if j_max < 0 or (n_best == slots and b_max < best_s[slots - 1]):
            break
        bound[j_max] = -np.inf
        sc = _ucb_one(m32[rows[j_max]], x[j_max], xf, alpha)
        score[j_max] = sc
        scored += 1
        # insert into the best list (descending score, ties: lower index first)
        pos = n_best
        while pos > 0 and (sc > best_s[pos - 1] or (sc == best_s[pos - 1] and j_max < best_i[pos - 1])):
            pos -= 1
        if pos < slots:
            last = min(n_best, slots - 1)
            for r in range(last, pos, -1):
                best_s[r] = best_s[r - 1]
                best_i[r] = best_i[r - 1]
            best_s[pos] = sc
            best_i[pos] = j_max
            if n_best < slots:
                n_best += 1
    for r in range(slots):
        top[r] = best_i[r]
    return scored, n_unknown


@_jit
def hybrid_mean_var(ainv, m, h, rows, z, x, a0inv, beta, mean, var):  # pragma: no cover
    """Hybrid LinUCB (Li et al. 2010, Algorithm 2). Per arm row: ainv [R, n, n] = A_a^{-1},
    m [R, n, k] = A_a^{-1} B_a, h [R, n] = A_a^{-1} b_a (float32); shared a0inv [k, k] = A0^{-1},
    beta [k] (float32); z [C, k], x [C, n].

    Li et al. write, with theta_a = A_a^{-1}(b_a - B_a beta),
        mean = z.beta + x.theta_a
        var  = z^T A0^{-1} z - 2 z^T A0^{-1} B_a^T A_a^{-1} x + x^T A_a^{-1} x
               + x^T A_a^{-1} B_a A0^{-1} B_a^T A_a^{-1} x.
    With w = z - m_a^T x both collapse to
        mean = x.h_a + w.beta,   var = w^T A0^{-1} w + x^T A_a^{-1} x,
    three mat-vecs per candidate (n^2 + nk + k^2) instead of six, over the same bytes.
    """
    c_n, n = x.shape
    k = z.shape[1]
    xf = np.empty(n, dtype=np.float32)
    w = np.empty(k, dtype=np.float32)
    for c in range(c_n):
        a = ainv[rows[c]]
        ma = m[rows[c]]
        ha = h[rows[c]]
        for j in range(n):
            xf[j] = x[c, j]
        for j in range(k):
            w[j] = z[c, j]
        xh = np.float32(0.0)
        for i in range(n):
            xi = xf[i]
            xh += ha[i] * xi
            for j in range(k):
                w[j] -= ma[i, j] * xi
        wb = np.float32(0.0)
        for i in range(k):
            wb += w[i] * beta[i]
        mean[c] = xh + wb
        var[c] = _quad_form(a0inv, w) + _quad_form(a, xf)


@_jit
def top_inclusion(noise, mean, width, slots, counts):  # pragma: no cover - compiled
    """Monte Carlo inclusion counts of a Thompson draw: for every row r of ``noise`` [n_draws, m]
    (N(0, 1), float32), the ``slots`` largest of mean + width * noise[r] (float32, mean/width [m])
    each add 1 to counts[j] (int64 [m], accumulated). Ties go to the lower index, as repeated
    argmax does. One pass per draw, no [n_draws, m] temporary. Needs 1 <= slots <= m."""
    n_draws, m = noise.shape
    best_s = np.empty(slots, dtype=np.float32)
    best_i = np.empty(slots, dtype=np.intp)
    for r in range(n_draws):
        n_best = 0
        for j in range(m):
            sc = mean[j] + width[j] * noise[r, j]
            if n_best == slots and not sc > best_s[slots - 1]:
                continue
            pos = n_best if n_best < slots else slots - 1
            while pos > 0 and sc > best_s[pos - 1]:
                best_s[pos] = best_s[pos - 1]
                best_i[pos] = best_i[pos - 1]
                pos -= 1
            best_s[pos] = sc
            best_i[pos] = j
            if n_best < slots:
                n_best += 1
        for q in range(n_best):
            counts[best_i[q]] += 1


@_jit
def rows_top_inclusion(samples, rows, slots, counts):  # pragma: no cover - compiled
    """Monte Carlo inclusion counts over cached draws: pool item j's draws are the row
    samples[rows[j]] ([R, n_draws] float32); in every draw (column) the ``slots`` largest items
    each add 1 to counts[j] (int64 [P], accumulated). Ties go to the lower pool index, as
    repeated argmax does. Items outer, draws inner: every cached row is read once, in order.
    Needs 1 <= slots <= len(rows)."""
    n_draws = samples.shape[1]
    best_s = np.empty((n_draws, slots), dtype=np.float32)
    best_i = np.empty((n_draws, slots), dtype=np.intp)
    filled = min(slots, rows.shape[0])
    for j in range(rows.shape[0]):
        s = samples[rows[j]]
        n_best = min(j, slots)  # the same in every draw: the first `slots` items fill every list
        for d in range(n_draws):
            sc = s[d]
            if n_best == slots and not sc > best_s[d, slots - 1]:
                continue
            pos = n_best if n_best < slots else slots - 1
            while pos > 0 and sc > best_s[d, pos - 1]:
                best_s[d, pos] = best_s[d, pos - 1]
                best_i[d, pos] = best_i[d, pos - 1]
                pos -= 1
            best_s[d, pos] = sc
            best_i[d, pos] = j
    for d in range(n_draws):
        for q in range(filled):
            counts[best_i[d, q]] += 1


def warm_up() -> None:
    """Compile the kernels (first call of each) so that no request pays for it."""
    rows = np.zeros(1, dtype=np.intp)
    out_m, out_v = np.empty(1), np.empty(1)
    disjoint_mean_var(np.zeros((1, 3, 2), np.float32), rows, np.zeros((1, 2)), out_m, out_v)
    disjoint_ucb(np.zeros((1, 3, 2), np.float32), rows, np.zeros((1, 2)), 1.0, out_m)
    two = np.zeros(2, dtype=np.intp)
    top = np.empty(1, dtype=np.intp)
    block, theta = np.zeros((1, 3, 2), np.float32), np.zeros((1, 2), np.float32)
    unknown = np.empty(2, dtype=np.intp)
    disjoint_top(block, theta, np.ones(1), two, np.zeros((2, 2)), 1.0, 0, 1, np.empty(2), top, unknown)
    hybrid_mean_var(
        np.zeros((1, 2, 2), np.float32),
        np.zeros((1, 2, 2), np.float32),
        np.zeros((1, 2), np.float32),
        rows,
        np.zeros((1, 2)),
        np.zeros((1, 2)),
        np.zeros((2, 2), np.float32),
        np.zeros(2, np.float32),
        out_m,
        out_v,
    )
    counts = np.zeros(2, dtype=np.int64)
    bank_window = np.zeros((1, 4), np.float32)[:, 1:3]  # LinTS passes a window of its noise bank
    top_inclusion(bank_window, np.zeros(2, np.float32), np.ones(2, np.float32), 1, counts)
    rows_top_inclusion(np.zeros((2, 3), np.float32), two, 1, counts)
