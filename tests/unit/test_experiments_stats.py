"""A/B statistics against known answers and simulations (fixed seeds)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sst

from recstack.experiments.config import parse_experiments
from recstack.experiments.stats import (
    Comparison,
    ExperimentResult,
    ExperimentStatsError,
    analyze,
    benjamini_hochberg,
    cuped_adjust,
    holm,
    msprt,
    per_user,
    relative_lift,
    srm_check,
    welch_test,
)

EXP = parse_experiments(
    {
        "experiments": [
            {"id": "exp1", "salt": "s", "variants": [{"name": "control"}, {"name": "treatment"}]},
        ]
    }
).get("exp1")


def simulate(
    rng: np.random.Generator,
    n: int,
    ctr: dict[str, float],
    likes: dict[str, float] | None = None,
    shares: dict[str, float] | None = None,
    pre_corr: float = 0.0,
) -> pd.DataFrame:
    """Per-user records; CTR per user has expectation ctr[variant]; pre_period correlates with likes."""
    names = list(ctr)
    shares = shares or {v: 1 / len(names) for v in names}
    variant = rng.choice(names, size=n, p=[shares[v] for v in names])
    exposures = 1 + rng.poisson(9, size=n)
    p = np.array([ctr[v] for v in variant])
    clicks = rng.binomial(exposures, p)
    like_rate = np.array([(likes or {}).get(v, 0.5) for v in variant])
    taste = rng.gamma(2.0, 0.5, size=n)  # per-user propensity shared by both periods
    lam = like_rate * (pre_corr * taste + (1 - pre_corr))
    return pd.DataFrame(
        {
            "user_id": [f"u{i}" for i in range(n)],
            "variant": variant,
            "exposures": exposures,
            "clicks": clicks,
            "likes": rng.poisson(lam),
            "purchases": rng.poisson(0.2, size=n),
            # a long pre-period average of the same taste (10 periods)
            "pre_likes": rng.poisson(10 * 2.0 * (pre_corr * taste + 1 - pre_corr)) / 10 if pre_corr else 0.0,
        }
    )


def comparison(result: ExperimentResult, metric: str, variant: str = "treatment") -> Comparison:
    return next(c for c in result.comparisons if c.metric == metric and c.variant == variant)


def test_planted_lift_is_detected_and_covered() -> None:
    rng = np.random.default_rng(0)
    df = simulate(rng, 8000, {"control": 0.10, "treatment": 0.12})
    res = analyze(df, EXP)
    c = comparison(res, "ctr")
    assert c.p_value < 1e-6 and c.p_holm < 1e-5 and c.significant
    assert c.abs_ci[0] <= 0.02 <= c.abs_ci[1]
    assert c.rel_ci[0] <= 0.2 <= c.rel_ci[1]
    assert c.seq_p_value < 0.05 and c.seq_ci[0] <= 0.02 <= c.seq_ci[1]
    assert res.means["ctr"]["control"] == pytest.approx(0.10, abs=0.005)
    assert not res.srm.flagged
    assert {x.metric for x in res.comparisons if x.guardrail} == {"exposures"}
    assert all(np.isnan(x.p_holm) for x in res.comparisons if x.guardrail)


def test_welch_matches_scipy_and_known_ci() -> None:
    a = np.array([5.1, 4.9, 5.6, 5.8, 6.0, 5.2])
    b = np.array([4.1, 4.5, 4.0, 4.8, 4.4])
    w = welch_test(a, b)
    ref = sst.ttest_ind(a, b, equal_var=False)
    assert w.p_value == pytest.approx(ref.pvalue)
    assert w.diff == pytest.approx(a.mean() - b.mean())
    half = sst.t.ppf(0.975, w.df) * w.se
    assert (w.ci_low, w.ci_high) == pytest.approx((w.diff - half, w.diff + half))
    rel, lo, hi = relative_lift(a, b)
    assert rel == pytest.approx(a.mean() / b.mean() - 1) and lo < rel < hi


def test_welch_and_bh_equal_the_textbook_formulas() -> None:
    """scipy's Welch interval and BH adjustment give what the formulas give."""
    rng = np.random.default_rng(7)
    for _ in range(50):
        a = rng.normal(1.0, rng.uniform(0.1, 3), size=int(rng.integers(2, 300)))
        b = rng.normal(1.2, rng.uniform(0.1, 3), size=int(rng.integers(2, 300)))
        alpha = float(rng.choice([0.01, 0.05, 0.1]))
        w = welch_test(a, b, alpha)
        va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
        df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
        half = sst.t.ppf(1 - alpha / 2, df) * np.sqrt(va + vb)
        diff = a.mean() - b.mean()
        assert w.df == pytest.approx(df, rel=1e-12)
        assert (w.ci_low, w.ci_high) == pytest.approx((diff - half, diff + half), rel=1e-12, abs=1e-12)
        p = rng.uniform(size=int(rng.integers(1, 30))) ** 2
        p[rng.uniform(size=p.size) < 0.2] = 0.05  # ties
        m = p.size
        order = np.argsort(p, kind="stable")
        stepped = np.minimum.accumulate((p[order] * m / np.arange(1, m + 1))[::-1])[::-1]
        expected = np.empty(m)
        expected[order] = np.minimum(stepped, 1.0)
        assert benjamini_hochberg(p) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_aa_p_values_are_uniform_and_false_positive_rate_is_alpha() -> None:
    rng = np.random.default_rng(1)
    p_ctr = []
    for _ in range(300):
        df = simulate(rng, 600, {"control": 0.1, "treatment": 0.1})
        res = analyze(df, EXP, cuped=False)
        p_ctr.append(comparison(res, "ctr").p_value)
    p = np.array(p_ctr)
    assert sst.kstest(p, "uniform").pvalue > 0.01
    assert 0.015 <= (p < 0.05).mean() <= 0.09  # 300 runs: alpha 0.05 +- 3 sd


def test_srm_planted_and_balanced() -> None:
    flagged = srm_check({"control": 5000, "treatment": 5400}, {"control": 0.5, "treatment": 0.5})
    assert flagged.flagged and flagged.p_value < 0.001
    assert flagged.expected == {"control": 5200.0, "treatment": 5200.0}
    ok = srm_check({"control": 5000, "treatment": 5030}, {"control": 1, "treatment": 1})
    assert not ok.flagged and ok.p_value > 0.5
    weighted = srm_check({"a": 2000, "b": 6000}, {"a": 0.25, "b": 0.75})
    assert not weighted.flagged
    rng = np.random.default_rng(2)
    df = simulate(rng, 6000, {"control": 0.1, "treatment": 0.1}, shares={"control": 0.45, "treatment": 0.55})
    res = analyze(df, EXP)
    assert res.srm.flagged and any("sample ratio mismatch" in n for n in res.notes)


def test_holm_and_bh_known_examples() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert benjamini_hochberg(p) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    # textbook (Benjamini & Hochberg 1995 style) with clipping at 1 and a NaN left out
    p2 = [0.2, 0.5, np.nan, 0.9]
    assert holm(p2)[[0, 1, 3]] == pytest.approx([0.6, 1.0, 1.0])
    assert benjamini_hochberg(p2)[[0, 1, 3]] == pytest.approx([0.6, 0.75, 0.9])
    assert np.isnan(holm(p2)[2]) and np.isnan(benjamini_hochberg(p2)[2])


def test_cuped_reduces_variance_and_stays_unbiased() -> None:
    rng = np.random.default_rng(3)
    raw_est, cuped_est = [], []
    for _ in range(300):
        n = 400
        x = rng.normal(10, 2, size=n)
        treated = rng.random(n) < 0.5
        y = 0.8 * x + rng.normal(0, 1.2, size=n) + 0.3 * treated
        adj, theta = cuped_adjust(y, x)
        assert theta == pytest.approx(0.8, abs=0.15)
        raw_est.append(y[treated].mean() - y[~treated].mean())
        cuped_est.append(adj[treated].mean() - adj[~treated].mean())
    raw_est, cuped_est = np.array(raw_est), np.array(cuped_est)
    assert cuped_est.mean() == pytest.approx(0.3, abs=3 * cuped_est.std() / np.sqrt(300))
    assert cuped_est.var() < 0.5 * raw_est.var()  # rho^2 = 0.64 of the variance is explained

    df = simulate(
        rng, 6000, {"control": 0.1, "treatment": 0.1}, likes={"control": 2.0, "treatment": 2.2}, pre_corr=0.9
    )
    with_cuped = comparison(analyze(df, EXP), "likes")
    without = comparison(analyze(df, EXP, cuped=False), "likes")
    assert with_cuped.variance_reduction > 0.3
    assert with_cuped.abs_ci[0] <= 0.2 <= with_cuped.abs_ci[1]  # E[taste] = 1: true lift 2.2 - 2.0
    width = lambda c: c.abs_ci[1] - c.abs_ci[0]  # noqa: E731
    assert width(with_cuped) < width(without)


def test_msprt_false_positive_rate_under_continuous_peeking() -> None:
    rng = np.random.default_rng(4)
    runs, n, alpha = 300, 2000, 0.05
    seq_fp = naive_fp = covered = 0
    for _ in range(runs):
        y = rng.poisson(2.0, n).astype(float)
        t = rng.random(n) < 0.5
        res = msprt(y, t, alpha=alpha)
        seq_fp += res.first_rejection is not None  # rejected at any of ~2000 looks
        covered += bool(np.all((res.ci_low <= 0) & (res.ci_high >= 0)))
        looks = range(100, n + 1, 100)
        naive_fp += any(welch_test(y[:m][t[:m]], y[:m][~t[:m]]).p_value < alpha for m in looks)
    assert seq_fp / runs <= alpha
    assert covered / runs >= 1 - alpha
    assert naive_fp / runs > 2 * alpha  # peeking at a fixed-horizon test is not safe; mSPRT is
    assert np.all(np.diff(res.p_values) <= 0)


def test_msprt_detects_a_real_effect() -> None:
    rng = np.random.default_rng(5)
    detected = 0
    for _ in range(50):
        t = rng.random(3000) < 0.5
        y = rng.poisson(np.where(t, 2.3, 2.0)).astype(float)
        res = msprt(y, t)
        detected += res.first_rejection is not None
        assert res.ci[0] <= 0.3 + 1e-9 or res.first_rejection is not None
    assert detected >= 45


def test_per_user_aggregation_of_event_rows() -> None:
    events = pd.DataFrame(
        {
            "experiment_id": ["exp1"] * 5 + ["other"],
            "user_id": ["a", "a", "b", "c", "c", "z"],
            "variant": ["control", "control", "treatment", "treatment", "control", "control"],
            "exposures": [2, 3, 4, 1, 1, 9],
            "clicks": [1, 0, 2, 0, 1, 9],
            "likes": [0, 1, 0, 0, 0, 0],
            "purchases": [0, 0, 1, 0, 0, 0],
            "first_exposure": [20, 10, 5, 1, 2, 0],
        }
    )
    users, dropped = per_user(events, "exp1")
    redis_named = events.rename(
        columns={"exposures": "impressions", "clicks": "click", "likes": "like", "purchases": "purchase"}
    )
    assert per_user(redis_named, "exp1")[0].equals(users)
    assert dropped == 1  # user c is in both variants
    assert users["user_id"].tolist() == ["b", "a"]  # arrival order by first exposure
    a = users.set_index("user_id").loc["a"]
    assert (a["exposures"], a["clicks"], a["likes"]) == (5, 1, 1)


def test_clear_errors() -> None:
    rng = np.random.default_rng(6)
    df = simulate(rng, 200, {"control": 0.1, "treatment": 0.1})
    with pytest.raises(ExperimentStatsError, match="records are empty"):
        analyze(df.iloc[:0], EXP)
    with pytest.raises(
        ExperimentStatsError, match=r"no records for experiment 'exp1'; the records hold \['x'\]"
    ):
        analyze(df.assign(experiment_id="x"), EXP)
    with pytest.raises(ExperimentStatsError, match=r"variant\(s\) \['treatment'\] .* have no users"):
        analyze(df[df["variant"] == "control"], EXP)
    with pytest.raises(
        ExperimentStatsError, match=r"variants \['b'\] that experiment 'exp1' does not configure"
    ):
        analyze(df.assign(variant=np.where(df["variant"] == "control", "control", "b")), EXP)
    with pytest.raises(ExperimentStatsError, match=r"lack the columns \['likes'\]"):
        analyze(df.drop(columns="likes"), EXP)
    broken = df.astype({"clicks": object})
    broken.loc[3, "clicks"] = "many"
    with pytest.raises(
        ExperimentStatsError, match="column 'clicks' must hold non-negative numbers; row 3 has 'many'"
    ):
        analyze(broken, EXP)
    with pytest.raises(ExperimentStatsError, match="at least 2 users"):
        welch_test(np.array([1.0]), np.array([1.0, 2.0]))
    with pytest.raises(ExperimentStatsError, match="unknown metric"):
        analyze(df, EXP, metrics=("revenue",))


def test_constant_metric_gives_no_signal_instead_of_nan_errors() -> None:
    rng = np.random.default_rng(7)
    df = simulate(rng, 400, {"control": 0.1, "treatment": 0.1}).assign(purchases=0)
    c = comparison(analyze(df, EXP), "purchases")
    assert (c.abs_lift, c.p_value, c.seq_p_value) == (0.0, 1.0, 1.0)
    assert np.isnan(c.rel_lift) and not c.significant


@pytest.mark.parametrize("metric", ["rare", "common"])
def test_msprt_false_positive_rate_stays_below_alpha_whatever_the_arrival(metric: str) -> None:
    """A/A: 500 experiments per arrival pattern. A staged ramp (the first users all in control) and
    variant-grouped records used to reach 23-72 % false positives on a rare metric."""
    from recstack.experiments.stats import msprt

    rng = np.random.default_rng(7)
    n, runs, alpha = 2000, 500, 0.05
    for arrival in ("random", "ramped", "grouped"):
        false_positives = 0
        for _ in range(runs):
            treated = rng.random(n) < 0.5
            if arrival == "ramped":
                treated[: n // 3] = False
            elif arrival == "grouped":
                treated = np.sort(treated)
            y = (
                (rng.random(n) < 0.02).astype(float)
                if metric == "rare"
                else rng.poisson(0.9, n).astype(float)
            )
            result = msprt(y, treated, alpha=alpha)
            false_positives += bool(len(result.p_values)) and result.p_values[-1] <= alpha
        assert false_positives / runs <= alpha, (arrival, false_positives / runs)


def test_records_without_arrival_times_are_not_taken_in_file_order() -> None:
    """A CSV exported per variant (all control rows, then all treatment rows) on a null effect."""
    import pandas as pd

    from recstack.experiments.stats import analyze

    rng = np.random.default_rng(3)
    n = 4000
    variant = np.array(["control"] * (n // 2) + ["treatment"] * (n // 2))
    records = pd.DataFrame(
        {
            "user_id": [f"u{k}" for k in range(n)],
            "variant": variant,
            "impressions": rng.integers(1, 20, n),
            "click": rng.poisson(0.5, n),
            "like": rng.poisson(0.1, n),
            "purchase": (rng.random(n) < 0.01).astype(int),
        }
    )
    result = analyze(records, {"control": 0.5, "treatment": 0.5}, experiment_id="e")
    assert any("random order" in note for note in result.notes)
    assert all(c.seq_p_value > 1e-3 for c in result.comparisons)
