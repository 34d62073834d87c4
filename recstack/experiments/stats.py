"""A/B statistics on per-user records.

Records: a DataFrame with ``user_id``, ``variant``, ``exposures``, ``clicks``, ``likes``,
``purchases`` (or the Redis field names ``impressions``, ``click``, ``like``, ``purchase``) and
optionally ``experiment_id``, ``first_exposure`` (arrival order for the sequential test) and
pre-period covariates for CUPED (``pre_<metric>``, else ``pre_period``).
Several rows per user (per day, per event) are summed per (user, variant) first: the unit of
analysis is the user, never the event. Users seen in more than one variant are dropped (counted).

Metrics (per user): ``ctr`` = clicks / exposures (users with exposures > 0), ``likes`` and
``purchases`` per user; guardrail ``exposures`` per user. For each metric and each variant
against the control: Welch's t-test and the Welch CI of the absolute lift (scipy
``ttest_ind(equal_var=False)``), relative lift with a delta-method CI, CUPED (theta = cov(y, x) /
var(x) on all users of the experiment; missing covariates imputed with the mean), and an
always-valid mSPRT p-value and confidence sequence. Holm and Benjamini-Hochberg (scipy
``false_discovery_control``) adjust the p-values across primary metrics x variants; guardrail
metrics are outside that family. The sample-ratio-mismatch check compares user counts with the
configured weights (chi-square, flagged at p < 0.001).

mSPRT (Johari, Pekelis & Walsh 2017; Robbins 1970) for the difference in means theta with a normal
mixture N(0, tau^2) over theta and the plug-in variance V_n = s_t^2/n_t + s_c^2/n_c:

    Lambda_n = sqrt(V_n / (V_n + tau^2)) * exp(tau^2 * d_n^2 / (2 V_n (V_n + tau^2)))

with d_n the difference of means after n users. Always-valid p-value: p_n = min(1, min_m 1/Lambda_m);
confidence sequence: the running intersection of d_m +- sqrt(V_m (V_m + tau^2) / tau^2 *
(2 log(1/alpha) + log((V_m + tau^2) / V_m))). Rejecting whenever p_n <= alpha keeps the type I
error <= alpha however often one peeks. tau = ``tau_sd`` x the pooled standard deviation.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as sst

from recstack.experiments.config import ExperimentConfig

log = logging.getLogger(__name__)

PRIMARY_METRICS: tuple[str, ...] = ("ctr", "likes", "purchases")
GUARDRAIL_METRICS: tuple[str, ...] = ("exposures",)
COUNT_COLUMNS: tuple[str, ...] = ("exposures", "clicks", "likes", "purchases")
SRM_THRESHOLD = 0.001
COLUMN_ALIASES: dict[str, str] = {
    "impressions": "exposures",
    "click": "clicks",
    "like": "likes",
    "purchase": "purchases",
}
"""Names of the Redis ``exp:{exp}:user:{id}`` hash fields, accepted for the canonical columns."""


class ExperimentStatsError(ValueError):
    """Records that cannot be analysed (empty, missing columns, a variant with no users, ...)."""


# --- building blocks on arrays ------------------------------------------------------------------


@dataclass(frozen=True)
class WelchResult:
    diff: float  # mean(treatment) - mean(control)
    se: float
    df: float
    ci_low: float
    ci_high: float
    t: float
    p_value: float


def welch_test(treatment: np.ndarray, control: np.ndarray, alpha: float = 0.05) -> WelchResult:
    """Welch's unequal-variance t-test and the (1 - alpha) CI of the difference in means."""
    a = np.asarray(treatment, dtype=np.float64)
    b = np.asarray(control, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ExperimentStatsError(
            f"Welch's t-test needs at least 2 users per variant, got {len(a)} and {len(b)}"
        )
    diff = float(a.mean() - b.mean())
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    if se == 0.0:  # both arms constant
        return WelchResult(
            diff,
            0.0,
            math.inf,
            diff,
            diff,
            math.copysign(math.inf, diff) if diff else 0.0,
            1.0 if diff == 0 else 0.0,
        )
    res = sst.ttest_ind(a, b, equal_var=False)  # Welch-Satterthwaite df in res.df
    ci = res.confidence_interval(confidence_level=1 - alpha)
    return WelchResult(
        diff, se, float(res.df), float(ci.low), float(ci.high), float(res.statistic), float(res.pvalue)
    )


def relative_lift(
    treatment: np.ndarray, control: np.ndarray, alpha: float = 0.05
) -> tuple[float, float, float]:
    """(mean_t / mean_c - 1, CI low, CI high) with the delta-method variance
    Var(m_t/m_c) ~ Var(m_t)/m_c^2 + m_t^2 Var(m_c)/m_c^4 (independent arms); NaN if mean_c = 0."""
    a = np.asarray(treatment, dtype=np.float64)
    b = np.asarray(control, dtype=np.float64)
    mt, mc = a.mean(), b.mean()
    if mc == 0:
        return math.nan, math.nan, math.nan
    var = a.var(ddof=1) / len(a) / mc**2 + mt**2 * b.var(ddof=1) / len(b) / mc**4
    z = float(sst.norm.ppf(1 - alpha / 2))
    rel = float(mt / mc - 1.0)
    half = z * math.sqrt(var)
    return rel, rel - half, rel + half


def cuped_adjust(y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, float]:
    """(y - theta (x - mean x), theta) with theta = cov(y, x) / var(x); NaN in x -> mean of x.

    x must be a pre-period covariate (unaffected by the treatment), so the adjustment keeps the
    difference in means unbiased while removing the variance that x explains.
    """
    y = np.asarray(y, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64).copy()
    if len(x) != len(y):
        raise ValueError(f"y and x must have the same length, got {len(y)} and {len(x)}")
    if np.isnan(x).all():
        return y.copy(), 0.0
    x[np.isnan(x)] = np.nanmean(x)
    vx = x.var(ddof=1) if len(x) > 1 else 0.0
    if vx == 0:
        return y.copy(), 0.0
    theta = float(np.cov(y, x, ddof=1)[0, 1] / vx)
    return y - theta * (x - x.mean()), theta


@dataclass(frozen=True)
class SrmResult:
    observed: dict[str, int]
    expected: dict[str, float]
    chi2: float
    p_value: float
    flagged: bool


def srm_check(
    counts: Mapping[str, int], weights: Mapping[str, float], threshold: float = SRM_THRESHOLD
) -> SrmResult:
    """Chi-square goodness of fit of the users per variant against the configured weights."""
    names = list(weights)
    unknown = sorted(set(counts) - set(names))
    if unknown:
        raise ExperimentStatsError(f"variants {unknown} are not configured; configured: {names}")
    total_w = float(sum(weights.values()))
    if total_w <= 0:
        raise ExperimentStatsError("variant weights must have a positive sum")
    obs = np.array([counts.get(n, 0) for n in names], dtype=np.float64)
    exp = obs.sum() * np.array([weights[n] / total_w for n in names])
    if obs.sum() == 0:
        raise ExperimentStatsError("no users in the records: nothing to check")
    if ((exp == 0) & (obs > 0)).any():
        chi2, p = math.inf, 0.0
    else:
        keep = exp > 0
        chi2, p = sst.chisquare(obs[keep], exp[keep]) if keep.sum() > 1 else (0.0, 1.0)
    return SrmResult(
        {n: int(o) for n, o in zip(names, obs, strict=True)},
        {n: float(e) for n, e in zip(names, exp, strict=True)},
        float(chi2),
        float(p),
        bool(p < threshold),
    )


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down; same order as the input; NaN left out)."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adj, 1.0)
    return out


def benjamini_hochberg(p_values: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (step-up FDR; same order as the input; NaN left out)."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if len(ok) == 0:
        return out
    out[ok] = sst.false_discovery_control(p[ok], method="bh")
    return out


@dataclass(frozen=True)
class SequentialResult:
    """Always-valid inference after each user (looks start once both arms have ``min_n`` users)."""

    n: np.ndarray  # users seen at each look
    diff: np.ndarray  # difference in means at each look
    p_values: np.ndarray  # always-valid p-values (non-increasing)
    ci_low: np.ndarray  # confidence sequence (running intersection)
    ci_high: np.ndarray
    alpha: float
    tau: float

    @property
    def p_value(self) -> float:
        return float(self.p_values[-1]) if len(self.p_values) else 1.0

    @property
    def ci(self) -> tuple[float, float]:
        return (float(self.ci_low[-1]), float(self.ci_high[-1])) if len(self.n) else (-math.inf, math.inf)

    @property
    def first_rejection(self) -> int | None:
        """Users seen when p first dropped to <= alpha (None: never)."""
        hit = np.flatnonzero(self.p_values <= self.alpha)
        return int(self.n[hit[0]]) if len(hit) else None


def msprt(
    values: np.ndarray,
    treated: np.ndarray,
    alpha: float = 0.05,
    tau: float | None = None,
    tau_sd: float = 0.1,
    min_n: int = 20,
    min_events: float = 10.0,
) -> SequentialResult:
    """Mixture SPRT for mean(treated) - mean(control), evaluated after every user in the given
    (arrival) order. ``tau``: prior sd of the effect; default ``tau_sd`` x pooled sd of ``values``.

    Valid whatever the order in which the arms arrive (a staged ramp, records grouped by variant):
    the variance is the pooled one under the null hypothesis (every user of both arms), not a
    running per-arm estimate that collapses to 0 on the first users of a rare metric; and an arm
    counts only once it holds ``min_n`` users and, for a metric whose values are mostly one value
    (a rare event), enough users to expect ``min_events`` of the other (the normal approximation
    behind the test needs them).
    """
    y = np.asarray(values, dtype=np.float64)
    t = np.asarray(treated, dtype=bool)
    if len(y) != len(t):
        raise ValueError(f"values and treated must have the same length, got {len(y)} and {len(t)}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if min_n < 2:
        raise ValueError(f"min_n must be >= 2, got {min_n}")
    sigma2 = float(y.var(ddof=1)) if len(y) > 1 else 0.0
    if tau is None:
        tau = tau_sd * math.sqrt(sigma2)
    empty = np.zeros(0)
    if tau <= 0 or sigma2 <= 0:  # constant data: nothing to test
        return SequentialResult(empty.astype(np.int64), empty, empty, empty, empty, alpha, float(tau))
    _, counts = np.unique(y, return_counts=True)
    other = 1.0 - counts.max() / len(y)  # share of users whose value is not the most common one
    min_arm = max(min_n, math.ceil(min_events / other)) if other > 0 else min_n

    def running(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = np.cumsum(mask)
        s = np.cumsum(np.where(mask, y, 0.0))
        with np.errstate(invalid="ignore", divide="ignore"):
            return n, s / n

    n1, m1 = running(t)
    n0, m0 = running(~t)
    look = (n1 >= min_arm) & (n0 >= min_arm)
    if not look.any():
        return SequentialResult(empty.astype(np.int64), empty, empty, empty, empty, alpha, float(tau))
    n1, m1, n0, m0 = (a[look] for a in (n1, m1, n0, m0))
    diff = m1 - m0
    v = sigma2 * (1.0 / n1 + 1.0 / n0)
    tau2 = tau * tau
    log_lr = 0.5 * np.log(v / (v + tau2)) + tau2 * diff**2 / (2.0 * v * (v + tau2))
    p = np.minimum.accumulate(np.minimum(1.0, np.exp(-log_lr)))
    radius = np.sqrt(v * (v + tau2) / tau2 * (2.0 * math.log(1.0 / alpha) + np.log((v + tau2) / v)))
    low = np.maximum.accumulate(diff - radius)
    high = np.minimum.accumulate(diff + radius)
    return SequentialResult(np.flatnonzero(look) + 1, diff, p, low, high, alpha, float(tau))


# --- per-user records ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """One metric, one variant against the control."""

    metric: str
    variant: str
    control: str
    guardrail: bool
    n_treatment: int
    n_control: int
    mean_treatment: float  # raw per-user means
    mean_control: float
    abs_lift: float  # CUPED-adjusted when a covariate was used
    abs_ci: tuple[float, float]
    rel_lift: float
    rel_ci: tuple[float, float]
    p_value: float  # Welch
    p_holm: float  # NaN for guardrails (outside the family)
    p_bh: float
    cuped_theta: float
    variance_reduction: float  # 1 - Var(adjusted) / Var(raw); 0 without CUPED
    seq_p_value: float
    seq_ci: tuple[float, float]
    significant: bool  # Holm-adjusted (guardrails: raw) p < alpha


@dataclass
class ExperimentResult:
    experiment_id: str
    control: str
    alpha: float
    users: dict[str, int]
    srm: SrmResult
    means: dict[str, dict[str, float]]  # metric -> variant -> raw mean per user
    comparisons: list[Comparison]
    dropped_users: int = 0  # seen in more than one variant
    notes: list[str] = field(default_factory=list)

    def table(self) -> pd.DataFrame:
        rows = []
        for c in self.comparisons:
            row = {k: getattr(c, k) for k in c.__dataclass_fields__}
            row["abs_ci_low"], row["abs_ci_high"] = row.pop("abs_ci")
            row["rel_ci_low"], row["rel_ci_high"] = row.pop("rel_ci")
            row["seq_ci_low"], row["seq_ci_high"] = row.pop("seq_ci")
            rows.append(row)
        return pd.DataFrame(rows)


def per_user(records: pd.DataFrame, experiment_id: str | None = None) -> tuple[pd.DataFrame, int]:
    """(one row per user with summed counts, number of users dropped for being in several variants)."""
    if not isinstance(records, pd.DataFrame):
        raise ExperimentStatsError(f"records must be a pandas DataFrame, got {type(records).__name__}")
    if records.empty:
        raise ExperimentStatsError("the records are empty: no users were exposed to the experiment")
    df = records
    if experiment_id is not None and "experiment_id" in df.columns:
        df = df[df["experiment_id"].astype(str) == experiment_id]
        if df.empty:
            raise ExperimentStatsError(
                f"no records for experiment {experiment_id!r}; the records hold "
                f"{sorted(records['experiment_id'].astype(str).unique())[:20]}"
            )
    renames = {a: c for a, c in COLUMN_ALIASES.items() if a in df.columns and c not in df.columns}
    df = df.rename(columns=renames)
    missing = [c for c in ("user_id", "variant", *COUNT_COLUMNS) if c not in df.columns]
    if missing:
        raise ExperimentStatsError(
            f"records lack the columns {missing}; expected user_id, variant, {', '.join(COUNT_COLUMNS)}"
        )
    df = df.assign(user_id=df["user_id"].astype(str), variant=df["variant"].astype(str))
    for col in COUNT_COLUMNS:
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() | (values < 0)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ExperimentStatsError(
                f"column {col!r} must hold non-negative numbers; row {row} has {df[col].iloc[row]!r}"
            )
        df[col] = values
    covs = [c for c in df.columns if c.startswith("pre_")]
    agg: dict[str, str] = {c: "sum" for c in COUNT_COLUMNS}
    agg.update({c: "first" for c in covs})
    if "first_exposure" in df.columns:
        agg["first_exposure"] = "min"
    df = df.reset_index(drop=True)
    df["_order"] = np.arange(len(df))
    agg["_order"] = "min"
    users = df.groupby(["user_id", "variant"], sort=False).agg(agg).reset_index()
    multi = users["user_id"].duplicated(keep=False)
    dropped = int(users.loc[multi, "user_id"].nunique())
    if dropped:
        log.warning("%d users appear in more than one variant and are left out", dropped)
        users = users[~multi]
    sort_by = ["first_exposure", "_order"] if "first_exposure" in users.columns else ["_order"]
    users = users.sort_values(sort_by, kind="stable").drop(columns="_order").reset_index(drop=True)
    return users, dropped


ARRIVAL_SEED = 0


def arrival_order(users: pd.DataFrame) -> np.ndarray:
    """Row positions of ``users`` in arrival order for the sequential test: by first_exposure when
    every record has one, else a seeded random permutation (documented in the report's notes)."""
    if "first_exposure" in users.columns and not users["first_exposure"].isna().any():
        return np.argsort(users["first_exposure"].to_numpy(dtype=np.float64), kind="stable")
    return np.random.default_rng(ARRIVAL_SEED).permutation(len(users))


def metric_values(users: pd.DataFrame, metric: str) -> tuple[pd.Series, pd.Series | None]:
    """(per-user values, pre-period covariate or None) of a metric, on the users it is defined for."""
    if metric == "ctr":
        rows = users["exposures"] > 0
        y = users.loc[rows, "clicks"] / users.loc[rows, "exposures"]
    elif metric in COUNT_COLUMNS:
        rows = pd.Series(True, index=users.index)
        y = users[metric].astype(np.float64)
    else:
        raise ExperimentStatsError(f"unknown metric {metric!r}; use ctr or one of {list(COUNT_COLUMNS)}")
    for col in (f"pre_{metric}", "pre_period"):
        if col in users.columns:
            return y, users.loc[rows, col].astype(np.float64)
    return y, None


def analyze(
    records: pd.DataFrame,
    experiment: ExperimentConfig | Mapping[str, float],
    *,
    experiment_id: str | None = None,
    control: str | None = None,
    metrics: Sequence[str] = PRIMARY_METRICS,
    guardrails: Sequence[str] = GUARDRAIL_METRICS,
    alpha: float = 0.05,
    cuped: bool = True,
    tau_sd: float = 0.1,
) -> ExperimentResult:
    """Compare every variant with the control on each metric (see the module docstring).

    ``experiment``: the configured experiment, or a mapping variant -> weight (then
    ``experiment_id`` names it and ``control`` defaults to "control" or the first variant).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if isinstance(experiment, ExperimentConfig):
        weights = experiment.weights
        experiment_id = experiment_id or experiment.id
        control = control or experiment.control
    else:
        weights = dict(experiment)
        if not weights:
            raise ExperimentStatsError("no variants configured: pass the variant weights")
        control = control or ("control" if "control" in weights else next(iter(weights)))
    if control not in weights:
        raise ExperimentStatsError(f"control variant {control!r} is not one of {list(weights)}")
    users, dropped = per_user(records, experiment_id)
    counts = users["variant"].value_counts().to_dict()
    unknown = sorted(set(counts) - set(weights))
    if unknown:
        raise ExperimentStatsError(
            f"records hold variants {unknown} that experiment {experiment_id!r} does not configure "
            f"({list(weights)})"
        )
    empty = [v for v in weights if weights[v] > 0 and counts.get(v, 0) == 0]
    if empty:
        raise ExperimentStatsError(
            f"variant(s) {empty} of experiment {experiment_id!r} have no users in the records "
            f"(users per variant: {counts}); check the assignment and the record source"
        )
    srm = srm_check(counts, weights)
    notes = []
    if srm.flagged:
        notes.append(
            f"sample ratio mismatch (chi-square p = {srm.p_value:.2g} < {SRM_THRESHOLD}): the split "
            "does not follow the configured weights; do not trust the lifts until it is explained"
        )
    if dropped:
        notes.append(f"{dropped} users appeared in more than one variant and were left out")
    arrival = arrival_order(users)
    if "first_exposure" not in users.columns or users["first_exposure"].isna().any():
        notes.append(
            "records without first_exposure: the sequential test takes the users in a random order "
            f"(seed {ARRIVAL_SEED}), never the file's order (a file grouped by variant would fake an effect)"
        )

    treatments = [v for v in weights if v != control and counts.get(v, 0) > 0]
    means: dict[str, dict[str, float]] = {}
    raw: list[dict] = []
    for metric in [*metrics, *guardrails]:
        y, x = metric_values(users, metric)
        arm = users.loc[y.index, "variant"].to_numpy()
        arrival_rank = np.empty(len(users), dtype=np.int64)
        arrival_rank[arrival] = np.arange(len(users))
        by_arrival = np.argsort(arrival_rank[users.index.get_indexer(y.index)], kind="stable")
        means[metric] = {v: float(y[arm == v].mean()) for v in weights if (arm == v).any()}
        yv = y.to_numpy(dtype=np.float64)
        theta, reduction = 0.0, 0.0
        if cuped and x is not None:
            adj, theta = cuped_adjust(yv, x.to_numpy())
            var_raw = yv.var(ddof=1)
            reduction = float(1.0 - adj.var(ddof=1) / var_raw) if var_raw > 0 else 0.0
            yv = adj
        c_vals = yv[arm == control]
        for v in treatments:
            keep = (arm == v) | (arm == control)
            t_vals = yv[arm == v]
            w = welch_test(t_vals, c_vals, alpha)
            rel = relative_lift(t_vals, c_vals, alpha)
            order = by_arrival[keep[by_arrival]]  # the two arms' users in arrival order
            seq = msprt(yv[order], arm[order] == v, alpha=alpha, tau_sd=tau_sd)
            raw.append(
                {
                    "metric": metric,
                    "variant": v,
                    "control": control,
                    "guardrail": metric in guardrails,
                    "n_treatment": len(t_vals),
                    "n_control": len(c_vals),
                    "mean_treatment": means[metric][v],
                    "mean_control": means[metric][control],
                    "abs_lift": w.diff,
                    "abs_ci": (w.ci_low, w.ci_high),
                    "rel_lift": rel[0],
                    "rel_ci": (rel[1], rel[2]),
                    "p_value": w.p_value,
                    "cuped_theta": theta,
                    "variance_reduction": reduction,
                    "seq_p_value": seq.p_value,
                    "seq_ci": seq.ci,
                }
            )
    family = [i for i, r in enumerate(raw) if not r["guardrail"]]
    p_holm = holm([raw[i]["p_value"] for i in family])
    p_bh = benjamini_hochberg([raw[i]["p_value"] for i in family])
    for r in raw:
        r["p_holm"], r["p_bh"] = math.nan, math.nan
    for j, i in enumerate(family):
        raw[i]["p_holm"], raw[i]["p_bh"] = float(p_holm[j]), float(p_bh[j])
    comparisons = []
    for r in raw:
        p_decide = r["p_value"] if r["guardrail"] else r["p_holm"]
        comparisons.append(Comparison(**r, significant=bool(p_decide < alpha)))
    return ExperimentResult(
        experiment_id=experiment_id or "",
        control=control,
        alpha=alpha,
        users={v: int(counts.get(v, 0)) for v in weights},
        srm=srm,
        means=means,
        comparisons=comparisons,
        dropped_users=dropped,
        notes=notes,
    )
