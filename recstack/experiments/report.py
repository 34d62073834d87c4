"""A/B report: statistics of one experiment as Markdown plus a PNG of the lifts with CIs.

    report = build_report(load_records("records.csv"), config.get("explore-slots-v1"))
    paths = write_report(report, Path("reports/ab/explore-slots-v1"))

Records come from a DataFrame, a CSV file, a JSON-lines file (one record per line) with the
columns described in ``recstack.experiments.stats``, or Redis: ``load_redis_records`` reads the
per-user hashes ``{u:{id}}:experiments`` (fields ``{exp}\nvariant``, first_exposure, impressions,
click, like, purchase) that the feature stream writes from impressions and attributed outcomes.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from recstack.experiments.config import (
    DEFAULT_EXPERIMENT,
    ExperimentConfig,
    ExperimentsConfig,
    load_experiments,
)
from recstack.experiments.stats import ExperimentResult, ExperimentStatsError, analyze

RecordSource = pd.DataFrame | str | Path


@dataclass
class Report:
    experiment: ExperimentConfig
    result: ExperimentResult
    source: str
    created_at: str

    @property
    def experiment_id(self) -> str:
        return self.experiment.id


def load_records(source: RecordSource) -> pd.DataFrame:
    """A DataFrame as is; a path ending in .csv as CSV; .jsonl / .ndjson / .json as JSON lines."""
    if isinstance(source, pd.DataFrame):
        return source
    path = Path(source)
    if not path.is_file():
        raise ExperimentStatsError(f"records file {path} not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path, dtype={"user_id": str, "variant": str, "experiment_id": str})
        if suffix in (".jsonl", ".ndjson", ".json"):
            return pd.read_json(path, lines=True, dtype={"user_id": str, "variant": str})
    except (ValueError, pd.errors.ParserError) as exc:
        raise ExperimentStatsError(f"cannot parse records file {path}: {exc}") from None
    raise ExperimentStatsError(f"records file {path}: use .csv or .jsonl (JSON lines), got {suffix!r}")


REDIS_RECORD_FIELDS = ("variant", "first_exposure", "impressions", "click", "like", "purchase")


def load_redis_records(
    redis_url: str, experiment_id: str, prefix: str = "", batch: int = 1000
) -> pd.DataFrame:
    """One row per exposed user of ``experiment_id`` from Redis (columns: user_id, variant,
    first_exposure, impressions, click, like, purchase; missing counters are 0).

    Raises ExperimentStatsError when Redis is unreachable or holds no record of the experiment.
    """
    import redis

    from recstack.features.keys import Keys, experiment_field
    from recstack.redis_cluster import sync_from_url

    keys = Keys(prefix)
    pattern = keys.user_experiments("*")  # one hash per user: fields "{exp}\n{field}"
    head, tail = pattern.split("*", 1)
    mark = experiment_field(experiment_id, "").encode()
    rows: list[dict[str, object]] = []
    client = None
    try:
        # a cluster client reads the topology here: an unreachable node fails now
        client = sync_from_url(redis_url, socket_timeout=10, socket_connect_timeout=5)
        names = [k.decode() for k in client.scan_iter(match=pattern, count=batch)]
        for start in range(0, len(names), batch):
            chunk = names[start : start + batch]
            pipe = client.pipeline(transaction=False)
            for name in chunk:
                pipe.hgetall(name)
            for name, raw in zip(chunk, pipe.execute(), strict=True):
                row = {k[len(mark) :].decode(): v.decode() for k, v in raw.items() if k.startswith(mark)}
                if "variant" not in row:
                    continue
                user = name[len(head) : len(name) - len(tail)]
                record: dict[str, object] = {"user_id": user, "variant": row["variant"]}
                record["first_exposure"] = float(row.get("first_exposure", "nan"))
                for field in REDIS_RECORD_FIELDS[2:]:
                    record[field] = float(row.get(field, 0))
                rows.append(record)
        variants = sorted(v.decode() for v in client.smembers(keys.experiment_variants(experiment_id)))
    except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
        raise ExperimentStatsError(f"cannot read A/B records from Redis at {redis_url}: {exc}") from None
    finally:
        if client is not None:
            client.close()
    if not rows:
        seen = f" (variants seen: {variants})" if variants else ""
        raise ExperimentStatsError(
            f"no A/B records for experiment {experiment_id!r} in Redis at {redis_url} "
            f"(keys {pattern}){seen}: no impression of this experiment has been processed by the "
            "feature stream yet, or the experiment id / RECSTACK_REDIS_PREFIX is wrong"
        )
    return pd.DataFrame(rows, columns=["user_id", *REDIS_RECORD_FIELDS])


def resolve_experiment(
    experiment: ExperimentConfig | str, config: ExperimentsConfig | str | Path | None = None
) -> ExperimentConfig:
    """An ExperimentConfig as is; an id looked up in ``config`` (UnknownExperimentError if absent).
    Without a config, the id of ``DEFAULT_EXPERIMENT`` (the gateway's built-in
    experiment) resolves to that experiment."""
    if isinstance(experiment, ExperimentConfig):
        return experiment
    if config is None and experiment == DEFAULT_EXPERIMENT.id:
        return DEFAULT_EXPERIMENT
    if config is None:
        raise ExperimentStatsError(
            f"unknown experiment {experiment!r}: without an experiments file only the built-in "
            f"{DEFAULT_EXPERIMENT.id!r} is known; pass the experiments file "
            "(--config or RECSTACK_EXPERIMENTS)"
        )
    cfg = config if isinstance(config, ExperimentsConfig) else load_experiments(config)
    return cfg.get(experiment)


def build_report(
    records: RecordSource,
    experiment: ExperimentConfig | str,
    *,
    config: ExperimentsConfig | str | Path | None = None,
    alpha: float = 0.05,
    cuped: bool = True,
) -> Report:
    """Analyse the experiment's records (see ``recstack.experiments.stats.analyze``)."""
    exp = resolve_experiment(experiment, config)
    df = load_records(records)
    result = analyze(df, exp, alpha=alpha, cuped=cuped)
    source = "DataFrame" if isinstance(records, pd.DataFrame) else str(records)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return Report(exp, result, source, now)


def _num(x: float, digits: int = 4) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.{digits}g}"


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:+.2f}%"


def _p(x: float) -> str:
    return "-" if math.isnan(x) else ("<1e-4" if x < 1e-4 else f"{x:.4f}")


def render_markdown(report: Report, png_name: str | None = "lifts.png") -> str:
    r = report.result
    exp = report.experiment
    lines = [
        f"# A/B report: {exp.id}",
        "",
        f"Layer `{exp.layer}`, traffic {exp.traffic:g}, control `{r.control}`, alpha {r.alpha:g}. "
        f"Records: {report.source}. Generated {report.created_at}.",
        "",
        "## Users and sample ratio",
        "",
        "| variant | weight | users | expected |",
        "|---|---:|---:|---:|",
    ]
    for v, w in exp.weights.items():
        lines.append(f"| {v} | {w:.3f} | {r.users.get(v, 0)} | {r.srm.expected.get(v, 0.0):.1f} |")
    verdict = "**SRM detected**" if r.srm.flagged else "no SRM"
    lines += ["", f"Chi-square {r.srm.chi2:.3f}, p = {_p(r.srm.p_value)}: {verdict} (flag at p < 0.001)."]
    if r.notes:
        lines += [""] + [f"- {n}" for n in r.notes]
    lines += [
        "",
        "## Lifts",
        "",
        "Welch t-test per user; relative CI by the delta method; p(Holm) and p(BH) adjust over the "
        "primary metrics x variants (guardrails are outside the family); always-valid p and CS are "
        "the mSPRT's (safe under peeking); CUPED uses the pre-period covariate when present.",
        "",
        "| metric | variant | mean (ctl) | mean (var) | abs lift [CI] | rel lift [CI] | p | p Holm | p BH "
        "| always-valid p | CUPED var. red. | significant |",
        "|---|---|---:|---:|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for c in r.comparisons:
        name = f"{c.metric} (guardrail)" if c.guardrail else c.metric
        lines.append(
            f"| {name} | {c.variant} | {_num(c.mean_control)} | {_num(c.mean_treatment)} "
            f"| {_num(c.abs_lift)} [{_num(c.abs_ci[0])}, {_num(c.abs_ci[1])}] "
            f"| {_pct(c.rel_lift)} [{_pct(c.rel_ci[0])}, {_pct(c.rel_ci[1])}] "
            f"| {_p(c.p_value)} | {_p(c.p_holm)} | {_p(c.p_bh)} | {_p(c.seq_p_value)} "
            f"| {100 * c.variance_reduction:.1f}% | {'yes' if c.significant else 'no'} |"
        )
    if png_name:
        lines += ["", f"![relative lifts with confidence intervals]({png_name})"]
    return "\n".join(lines) + "\n"


def plot_lifts(report: Report, png: Path) -> Path:
    """Relative lift per metric and variant with its CI (horizontal error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comps = [c for c in report.result.comparisons if not math.isnan(c.rel_lift)]
    fig, ax = plt.subplots(figsize=(7, 0.55 * max(len(comps), 1) + 1.4))
    for y, c in enumerate(comps):
        color = (
            "tab:green" if c.significant and c.rel_lift > 0 else "tab:red" if c.significant else "tab:gray"
        )
        ax.errorbar(
            100 * c.rel_lift,
            y,
            xerr=[[100 * (c.rel_lift - c.rel_ci[0])], [100 * (c.rel_ci[1] - c.rel_lift)]],
            fmt="o",
            color=color,
            capsize=4,
        )
    ax.set_yticks(range(len(comps)))
    ax.set_yticklabels([f"{c.metric}{' (g)' if c.guardrail else ''}: {c.variant}" for c in comps])
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_xlabel(f"relative lift vs {report.result.control} (%), {100 * (1 - report.result.alpha):g}% CI")
    ax.set_title(f"{report.experiment_id}")
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png


def write_report(report: Report, out_dir: str | Path) -> dict[str, Path]:
    """Write report.md, lifts.png and comparisons.csv into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = plot_lifts(report, out / "lifts.png")
    md = out / "report.md"
    md.write_text(render_markdown(report, png.name), encoding="utf-8")
    csv = out / "comparisons.csv"
    report.result.table().to_csv(csv, index=False)
    return {"markdown": md, "png": png, "csv": csv}
