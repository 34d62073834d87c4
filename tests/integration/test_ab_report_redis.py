"""`recstack ab report EXPERIMENT --redis URL`: per-user A/B records written by the real
FeatureWriter (Lua) into a real Redis, read back by the CLI; clear messages for bad input."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from recstack.cli import app
from recstack.events import new_event
from recstack.experiments.report import load_redis_records
from recstack.experiments.stats import ExperimentStatsError
from recstack.features.writer import FeatureWriter
from recstack.redis_cluster import async_from_url

pytestmark = pytest.mark.integration

CONFIG = {
    "experiments": [
        {
            "id": "exp-a",
            "salt": "exp-a",
            "variants": [{"name": "control"}, {"name": "treatment"}],
        }
    ]
}


def write_records(redis_url: str, users: dict[str, str], clicks: dict[str, int]) -> None:
    """One impression per user (its variant) and ``clicks[user]`` attributed clicks."""

    async def run() -> None:
        client = async_from_url(redis_url)
        try:
            writer = FeatureWriter(client, reward_window_s=600)
            events = []
            for user, variant in users.items():
                req = f"req-{user}"
                events.append(
                    new_event(
                        user,
                        "impression",
                        items=["i1", "i2"],
                        request_id=req,
                        experiment_id="exp-a",
                        variant=variant,
                    )
                )
                for j in range(clicks.get(user, 0)):
                    events.append(new_event(user, "click", f"i{j + 1}", request_id=req))
            await writer.apply(events)
        finally:
            await client.aclose()

    asyncio.run(run())


def test_report_from_redis_records(redis_url: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    users = {f"u{i}": ("control" if i % 2 else "treatment") for i in range(200)}
    clicks = {u: int(rng.random() < (0.6 if v == "treatment" else 0.2)) for u, v in users.items()}
    write_records(redis_url, users, clicks)

    df = load_redis_records(redis_url, "exp-a")
    assert len(df) == 200 and set(df["variant"]) == {"control", "treatment"}
    row = df.set_index("user_id").loc["u3"]
    assert row["impressions"] == 1 and row["click"] == clicks["u3"]

    cfg = tmp_path / "experiments.json"
    cfg.write_text(json.dumps(CONFIG))
    out = tmp_path / "reports"
    result = CliRunner().invoke(
        app, ["ab", "report", "exp-a", "--redis", redis_url, "--config", str(cfg), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "# A/B report: exp-a" in result.output and "no SRM" in result.output
    md = (out / "exp-a" / "report.md").read_text()
    assert "| ctr | treatment |" in md
    ctr = md.split("| ctr | treatment |")[1].splitlines()[0]
    assert ctr.rstrip().endswith("| yes |")  # planted 0.2 -> 0.6 click rate is detected
    assert (out / "exp-a" / "lifts.png").stat().st_size > 1000


def test_clear_messages_for_bad_input(redis_url: str, tmp_path: Path) -> None:
    cfg = tmp_path / "experiments.json"
    cfg.write_text(json.dumps(CONFIG))
    runner = CliRunner()
    base = ["ab", "report", "--config", str(cfg), "--out", str(tmp_path), "--redis", redis_url]

    result = runner.invoke(app, [*base, "nope"])
    assert result.exit_code == 2
    assert "unknown experiment 'nope'; configured: ['exp-a']" in result.output

    result = runner.invoke(app, [*base, "exp-a"])  # nothing streamed yet
    assert result.exit_code == 2
    assert "no A/B records for experiment 'exp-a' in Redis" in result.output

    write_records(redis_url, {f"u{i}": "control" for i in range(20)}, {})
    result = runner.invoke(app, [*base, "exp-a"])
    assert result.exit_code == 2
    assert "variant(s) ['treatment'] of experiment 'exp-a' have no users" in result.output

    result = runner.invoke(app, ["ab", "report", "--config", str(cfg), "exp-a"], env={"REDIS_URL": ""})
    assert result.exit_code == 2 and "pass --records FILE or --redis URL" in result.output

    with pytest.raises(ExperimentStatsError, match="cannot read A/B records from Redis"):
        load_redis_records("redis://127.0.0.1:1/0", "exp-a")
