"""`recstack bench bandit`, `recstack bench regret` and `recstack ope` through the real CLI app."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from recstack.cli import app

runner = CliRunner()


def test_bench_bandit_json_has_the_checked_fields() -> None:
    result = runner.invoke(
        app,
        ["bench", "bandit", "--json", "--decisions", "30", "--seed-decisions", "3", "--warm-updates", "300"],
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["p99_ms"] == max(p["p99_ms"] for p in out["policies"].values())
    assert set(out["policies"]) == {"thompson", "linucb", "linucb_hybrid", "lints"}
    assert out["speedup_vs_seed"] > 1 and out["agreement_max_abs_diff"] < 1e-3
    assert out["thompson_cold"]["decisions"] > 0
    assert len(out["config"]["load_avg"]) == 3


def test_bench_regret_writes_png_and_summary(tmp_path: Path) -> None:
    png = tmp_path / "regret.png"
    result = runner.invoke(
        app, ["bench", "regret", "--rounds", "300", "--seeds", "0", "--out", str(png), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(summary["policies"]) == {"uniform", "epsilon_greedy", "linucb", "lints"}
    assert (
        summary["policies"]["linucb"]["final_regret_mean"]
        < summary["policies"]["uniform"]["final_regret_mean"]
    )


def test_bench_regret_with_vw(tmp_path: Path) -> None:
    pytest.importorskip("vowpalwabbit", reason="optional bench extra: pip install 'recstack[bench]'")
    result = runner.invoke(
        app, ["bench", "regret", "--rounds", "200", "--seeds", "0", "--vw", "--out", str(tmp_path / "r.png")]
    )
    assert result.exit_code == 0, result.output
    assert "vw_squarecb" in result.stdout


def test_bench_regret_bad_seeds_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["bench", "regret", "--rounds", "10", "--seeds", "a,b"])
    assert result.exit_code == 2
    assert "--seeds must be integers" in result.stderr


def _log(path: Path, n: int = 200) -> Path:
    rng = np.random.default_rng(0)
    with path.open("w") as fh:
        for r in range(n):
            items = [f"i{j}" for j in rng.choice(5, 2, replace=False)]
            rec = {
                "request_id": f"r{r}",
                "items": items,
                "positions": [0, 1],
                "propensities": [0.4, 0.4],
                "rewards": [float(rng.random() < 0.3), 0.0],
            }
            fh.write(json.dumps(rec) + "\n")
    return path


def test_ope_json_and_errors(tmp_path: Path) -> None:
    log = _log(tmp_path / "log.jsonl")
    result = runner.invoke(app, ["ope", "--log", str(log), "--policy", "uniform", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["records"] == 400 and {"ips", "snips"} <= set(out["estimates"])

    missing = runner.invoke(app, ["ope", "--log", str(tmp_path / "nope.jsonl"), "--policy", "uniform"])
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    bad = runner.invoke(app, ["ope", "--log", str(log), "--policy", "greedy!"])
    assert bad.exit_code == 2 and "unknown policy spec" in bad.stderr
    fmt = runner.invoke(app, ["ope", "--log", str(log), "--policy", "uniform", "--format", "csv"])
    assert fmt.exit_code == 2 and "--format must be" in fmt.stderr
