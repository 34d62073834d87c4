"""`recstack replay` end to end on a tiny synthetic dataset: it trains without the held-out users,
starts the real stack (Tansu, redis-server, five gRPC processes, the stream), replays the users'
histories through Kafka, and its JSON must show the live deterministic pipeline recommending
exactly what the offline pipeline computes for the same users."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psutil
import pytest

from tests.e2e.cli import cli_argv, cli_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(400)]

DATA = "synthetic:n_users=80,n_items=120,events_per_user=25,seed=5"
HELD = 12


def test_replay_online_equals_offline_and_reports_latency(tmp_path: Path) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    argv = cli_argv(
        "replay", "--data", DATA, "--holdout-users", str(HELD), "--profile", "small",
        "--out", str(tmp_path / "artifacts"), "--run-dir", str(tmp_path / "run"),
        "--latency-users", "4", "--json", "--no-progress",
    )  # fmt: skip
    # Generous stage deadlines: on a loaded machine a stage skipped at its deadline would change a
    # list; this test checks that the live chain computes the offline pipeline, not its latency.
    env = cli_env() | {f"RECSTACK_{s}_TIMEOUT_S": "5" for s in ("FEATURES", "RETRIEVAL", "RANKING", "RERANK")}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=350)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)

    assert report["holdout"]["users"] == HELD and report["k"] == 10
    manifest = next((tmp_path / "artifacts").glob("*/manifest.json"))
    held = json.loads(manifest.read_text())["training"]["holdout"]["user_ids"]
    users = json.loads(manifest.with_name("users.json").read_text())["user_ids"]
    assert len(held) == HELD and not set(held) & set(users)  # never seen in training

    replay = report["replay"]
    assert replay["events_sent"] > HELD and replay["redis_recent_items_match_offline"] == HELD
    det = report["online"]["deterministic"]
    assert det["force_variant"] == "replay/deterministic"
    assert set(report["online"]) == {"deterministic", "default"}
    # The bandit and diversity are off in the deterministic variant: every list is the offline one.
    assert det["paired_with_offline"]["identical_lists"] == HELD, det
    offline = report["offline"]
    for key in ("HR@10", "NDCG@10", "hits", "users"):
        assert det["after"][key] == offline["after"][key], key
        assert det["cold_start"][key] == offline["cold_start"][key], key  # the bundle's popularity
    assert det["after"]["users"] == HELD
    assert report["degraded_replies"]["after_deterministic"] == {"replies": 0, "skipped_stages": {}}
    comparison = report["comparison"]
    lo, hi = comparison["offline_HR@10_ci95"]
    assert lo <= comparison["online_HR@10"] <= hi and comparison["online_within_offline_ci95"] is True

    latency = report["click_to_changed_list_ms"]
    assert latency["users"] == 4 and latency["timeouts"] == 0
    assert 0 < latency["p50"] <= latency["p95"] <= latency["max"]
    assert comparison["click_p95_ms"] == latency["p95"]

    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert left == []
