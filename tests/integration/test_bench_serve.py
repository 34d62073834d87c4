"""The serving benchmark's parts on real processes: the floor (front + four echo servers over a real
Redis) under the open-loop load generator, and the sustained-rate rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from recstack.bench.serve import floor_servers, open_loop, sustained

pytestmark = pytest.mark.integration


async def test_floor_answers_an_open_loop_load(redis_url: str, tmp_path: Path) -> None:
    with floor_servers(redis_url, tmp_path) as front:
        result = await open_loop(front, ["u1", "u2"], rate=40, duration=1.0, warmup=0.5)
    assert result["requests"] == 40 and result["errors"] == {}
    assert result["achieved_rps"] == pytest.approx(40, rel=0.05)
    assert result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"] < 1000
    assert result["degraded_share"] == 0.0


async def test_a_dead_target_is_counted_as_errors() -> None:
    from recstack.devstack.embedded import free_port

    result = await open_loop(
        f"127.0.0.1:{free_port()}", ["u1"], rate=20, duration=0.5, warmup=0.0, deadline=0.2
    )
    assert result["achieved_rps"] == 0 and sum(result["errors"].values()) == 10 and result["p99_ms"] is None


def test_sustained_rate_needs_low_p99_no_errors_and_few_degraded_replies() -> None:
    def entry(p99, errors=None, degraded=0.0):
        return {"stack": {"p99_ms": p99, "errors": errors or {}, "degraded_share": degraded}}

    per_rate = {
        "25": entry(20),
        "50": entry(40),
        "100": entry(150, degraded=0.005),
        "200": entry(120, errors={"DEADLINE_EXCEEDED": 1}),
        "300": entry(900),
    }
    assert sustained(per_rate, "stack") == 100
    per_rate["100"] = entry(150, degraded=0.02)
    assert sustained(per_rate, "stack") == 50
    assert sustained({"25": entry(None)}, "stack") == 0
