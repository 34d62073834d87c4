"""A/B report: records from CSV / JSON lines, Markdown + PNG output, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recstack.experiments.config import UnknownExperimentError, parse_experiments
from recstack.experiments.report import build_report, load_records, render_markdown, write_report
from recstack.experiments.stats import ExperimentStatsError

CONFIG = parse_experiments(
    {
        "experiments": [
            {
                "id": "div-v1",
                "salt": "div",
                "layer": "diversity",
                "variants": [
                    {"name": "control", "weight": 1},
                    {"name": "mmr", "weight": 1, "pipeline": {"diversity": {"method": "mmr", "lambda": 0.7}}},
                    {"name": "dpp", "weight": 2, "pipeline": {"diversity": {"method": "dpp", "lambda": 0.6}}},
                ],
            }
        ]
    }
)


def records(seed: int = 0, n: int = 4000) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    variant = rng.choice(["control", "mmr", "dpp"], size=n, p=[0.25, 0.25, 0.5])
    exposures = 1 + rng.poisson(9, size=n)
    ctr = np.select([variant == "dpp", variant == "mmr"], [0.13, 0.10], 0.10)
    return pd.DataFrame(
        {
            "experiment_id": "div-v1",
            "user_id": [f"u{i}" for i in range(n)],
            "variant": variant,
            "exposures": exposures,
            "clicks": rng.binomial(exposures, ctr),
            "likes": rng.poisson(0.4, size=n),
            "purchases": rng.poisson(0.1, size=n),
            "pre_period": rng.poisson(3, size=n),
        }
    )


def test_report_from_csv_and_jsonl(tmp_path: Path) -> None:
    df = records()
    csv, jsonl = tmp_path / "r.csv", tmp_path / "r.jsonl"
    df.to_csv(csv, index=False)
    df.to_json(jsonl, orient="records", lines=True)
    from_csv = build_report(csv, "div-v1", config=CONFIG)
    from_jsonl = build_report(jsonl, CONFIG.get("div-v1"))
    assert from_csv.result.users == from_jsonl.result.users == df["variant"].value_counts().to_dict()
    a = from_csv.result.table()
    b = from_jsonl.result.table()
    assert np.allclose(a["p_value"], b["p_value"])
    dpp_ctr = next(c for c in from_csv.result.comparisons if c.metric == "ctr" and c.variant == "dpp")
    assert dpp_ctr.significant and dpp_ctr.abs_ci[0] <= 0.03 <= dpp_ctr.abs_ci[1]
    # 3 primary metrics x 2 variants in the Holm family
    assert a.loc[~a["guardrail"], "p_holm"].notna().sum() == 6


def test_write_report_files(tmp_path: Path) -> None:
    report = build_report(records(1), CONFIG.get("div-v1"))
    paths = write_report(report, tmp_path / "out")
    md = paths["markdown"].read_text()
    assert md.startswith("# A/B report: div-v1")
    assert "| ctr | dpp |" in md and "exposures (guardrail)" in md and "no SRM" in md
    assert "![relative lifts with confidence intervals](lifts.png)" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(pd.read_csv(paths["csv"])) == 8  # (3 primary + 1 guardrail) x 2 variants
    assert "SRM detected" in render_markdown(
        build_report(
            records(2)
            .iloc[:1500]
            .assign(variant=lambda d: np.where(np.arange(len(d)) < 900, "control", d["variant"])),
            CONFIG.get("div-v1"),
        )
    )


def test_report_errors(tmp_path: Path) -> None:
    with pytest.raises(UnknownExperimentError, match="unknown experiment 'nope'; configured: \\['div-v1'\\]"):
        build_report(records(), "nope", config=CONFIG)
    with pytest.raises(
        ExperimentStatsError,
        match="unknown experiment .div-v1.: without an experiments file only the built-in",
    ):
        build_report(records(), "div-v1")
    with pytest.raises(ExperimentStatsError, match="not found"):
        load_records(tmp_path / "none.csv")
    bad = tmp_path / "r.parquet"
    bad.write_text("x")
    with pytest.raises(ExperimentStatsError, match="use .csv or .jsonl"):
        load_records(bad)


def test_builtin_experiment_needs_no_config() -> None:
    df = records()
    df = df.assign(
        experiment_id="explore-slots-v1", variant=np.where(np.arange(len(df)) % 2, "control", "treatment")
    )
    report = build_report(df, "explore-slots-v1")  # assignment.DEFAULT_EXPERIMENT
    assert report.experiment_id == "explore-slots-v1"
    assert report.result.users == {"control": 2000, "treatment": 2000}
