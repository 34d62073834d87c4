"""`recstack up` as a user runs it: real services, embedded Kafka/Redis, Recommend, SIGTERM, no leftovers."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import grpc
import psutil
import pytest

from recstack.v1 import gateway_pb2, gateway_pb2_grpc
from tests.e2e.cli import alive, cli_argv, cli_env, stop_and_wait, wait_for_endpoints

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]


def test_recstack_up_serves_recommend_and_stops_on_sigterm(bundle_copy: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    log = tmp_path / "up.out"
    argv = cli_argv(
        "up", "--artifacts", str(bundle_copy), "--no-train", "--free-ports", "--run-dir", str(run_dir)
    )
    with log.open("w") as out:
        proc = psutil.Popen(argv, stdout=out, stderr=out, env=cli_env(), cwd=tmp_path)
    try:
        info = wait_for_endpoints(run_dir, proc, log)
        tree = [p.pid for p in proc.children(recursive=True)]
        expected = [p["pid"] for p in info["processes"].values()] + info["embedded_pids"]
        assert set(expected) <= set(tree)

        version = (bundle_copy / "CURRENT").read_text().strip()
        user = json.loads((bundle_copy / version / "users.json").read_text())["user_ids"][0]
        with grpc.insecure_channel(info["gateway"]) as channel:
            reply = gateway_pb2_grpc.GatewayStub(channel).Recommend(
                gateway_pb2.RecommendRequest(user_id=user, k=5), timeout=30
            )
        assert len(reply.items) == 5
        assert len({i.item_id for i in reply.items}) == 5
        assert reply.request_id
        assert "retrieval" in reply.stages or "retrieval" in reply.skipped

        assert stop_and_wait(proc, signal.SIGTERM, log, run_dir) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    left = [pid for pid in tree if alive(pid)]
    assert left == [], f"processes left behind: {left}"
    assert "stopped (SIGTERM)" in log.read_text()


def test_recstack_up_trains_a_bundle_when_none_exists_and_says_so(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    run_dir = tmp_path / "run"
    log = tmp_path / "up.out"
    argv = cli_argv("up", "--artifacts", str(artifacts), "--free-ports", "--run-dir", str(run_dir))
    with log.open("w") as out:
        proc = psutil.Popen(argv, stdout=out, stderr=out, env=cli_env(), cwd=tmp_path)
    try:
        info = wait_for_endpoints(run_dir, proc, log)
        tree = [p.pid for p in proc.children(recursive=True)]
        assert stop_and_wait(proc, signal.SIGINT, log, run_dir) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log.read_text()
    assert f"No model bundle at {artifacts}: training a small one" in output
    assert "trained bundle in" in output
    assert (artifacts / "CURRENT").is_file()
    assert info["artifacts"] == str(artifacts)
    assert [pid for pid in tree if alive(pid)] == []
