"""`recstack bench stream --json` end to end, tiny: raw and Faust consumers as child processes
against an embedded Tansu and redis-server; the JSON has the contract's keys and sane values."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_bench_stream_json_reports_raw_and_faust(kafka_broker: str, redis_server: str) -> None:
    env_keys = {"KAFKA_BOOTSTRAP_SERVERS": kafka_broker, "REDIS_URL": redis_server}
    argv = [sys.executable, "-m", "recstack.cli", "bench", "stream", "--json"]
    argv += ["--events", "2000", "--duration", "1", "--rate", "500", "--repeats", "1"]
    proc = subprocess.run(
        argv, cwd=REPO, env={**os.environ, **env_keys}, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    for key in ("raw_events_per_s", "faust_events_per_s", "ratio", "p50_event_to_feature_ms"):
        assert result[key] > 0, key
    assert result["p99_event_to_feature_ms"] >= result["p50_event_to_feature_ms"]
    assert result["ratio"] == pytest.approx(result["faust_events_per_s"] / result["raw_events_per_s"], 1e-2)
    for mode in ("raw", "faust"):
        assert result[mode]["latency"]["events"] == 500
        assert result[mode]["throughput"]["events"] == 2000
    assert len(result["load_avg_before"]) == 3
