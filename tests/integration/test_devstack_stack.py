"""`stack()` orchestration with real embedded Kafka/Redis and fake service processes.

The fakes answer health checks like the real services but load no models, so this runs without a
trained bundle; tests/e2e runs the real services.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import psutil
import pytest
import redis
from rich.console import Console

from recstack.devstack.process import ProcessStartError
from recstack.devstack.supervisor import grpc_serving
from recstack.devstack.up import DEFAULT_PORTS, PortInUseError, StackConfig, stack
from recstack.events.topics import ensure_topics

pytestmark = pytest.mark.integration

FAKE_SERVICE = """\
\"\"\"A stand-in for `python -m services.NAME` used by test_devstack_up.py.

NAME=argv[1]. A gRPC service answers grpc.health.v1 SERVING on RECSTACK_PORT after FAKE_DELAY seconds;
the feature stream answers HTTP 200 on RECSTACK_METRICS_PORT. FAKE_FAIL=NAME makes NAME exit 4.
Writes its environment to ./NAME.env.json (the supervisor's cwd is the run dir).
\"\"\"

from __future__ import annotations

import http.server
import json
import os
import signal
import sys
import threading
import time
from concurrent import futures


def main() -> None:
    name = sys.argv[1]
    with open(f"{name}.env.json", "w") as fh:
        json.dump(dict(os.environ), fh)
    if os.environ.get("FAKE_FAIL") == name:
        print(f"{name}: simulated failure to load the bundle", flush=True)
        sys.exit(4)
    time.sleep(float(os.environ.get("FAKE_DELAY", "0")))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    host = os.environ["RECSTACK_HOST"]
    if name == "feature_stream":
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.HTTPServer((host, int(os.environ["RECSTACK_METRICS_PORT"])), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    else:
        import grpc
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc

        grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        servicer = health.HealthServicer()
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, grpc_server)
        grpc_server.add_insecure_port(f"{host}:{os.environ['RECSTACK_PORT']}")
        grpc_server.start()
    print(f"{name}: serving", flush=True)
    stop.wait()
    print(f"{name}: stopping on SIGTERM", flush=True)


if __name__ == "__main__":
    main()
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def fake_bundle(tmp_path: Path) -> Path:
    art = tmp_path / "artifacts"
    (art / "v1").mkdir(parents=True)
    (art / "CURRENT").write_text("v1\n")
    (art / "v1" / "manifest.json").write_text("{}")
    return art


@pytest.fixture
def fake_config(tmp_path: Path, fake_bundle: Path) -> StackConfig:
    script = tmp_path / "fake_service.py"
    script.write_text(FAKE_SERVICE)
    return StackConfig(
        artifacts=fake_bundle,
        kafka_bootstrap=None,
        redis_url=None,
        run_dir=tmp_path / "run",
        free_ports=True,
        train=False,
        health_timeout=30,
        grace=5,
        command=lambda name: [sys.executable, str(script), name],
    )


def test_stack_starts_embedded_kafka_redis_and_all_processes(fake_config: StackConfig) -> None:
    console = Console(quiet=True)
    with stack(fake_config, console) as running:
        info = json.loads((running.run_dir / "endpoints.json").read_text())
        assert set(info["processes"]) == set(DEFAULT_PORTS)
        assert info["embedded"] == ["redis", "kafka"]
        assert redis.Redis.from_url(running.redis_url).ping()
        assert ensure_topics(running.kafka_bootstrap, {"user-events": 4, "user-events.dlq": 1}) == []
        assert grpc_serving(running.gateway)
        gateway_env = json.loads((running.run_dir / "gateway.env.json").read_text())
        for stage in ("retrieval", "ranking", "rerank", "bandit"):
            assert gateway_env[f"{stage.upper()}_ADDR"] == running.endpoints[stage].grpc
        stream_env = json.loads((running.run_dir / "feature_stream.env.json").read_text())
        assert stream_env["KAFKA_BOOTSTRAP_SERVERS"] == running.kafka_bootstrap
        assert stream_env["REDIS_URL"] == running.redis_url
        assert stream_env["RECSTACK_ARTIFACTS"] == str(fake_config.artifacts.resolve())
        assert "RECSTACK_PORT" not in stream_env or stream_env["RECSTACK_PORT"] == os.environ.get(
            "RECSTACK_PORT"
        )
        pids = [p["pid"] for p in info["processes"].values()] + info["embedded_pids"]
        assert len(pids) == 8 and all(not _gone(p) for p in pids)
    assert all(_gone(p) for p in pids)
    assert "stopping on SIGTERM" in (running.run_dir / "gateway.log").read_text()


def test_stack_failing_service_is_named_and_everything_stops(
    fake_config: StackConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FAIL", "ranking")
    monkeypatch.setenv("FAKE_DELAY", "1")
    console = Console(quiet=True)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with (
        pytest.raises(ProcessStartError, match="ranking exited unexpectedly with code 4") as info,
        stack(fake_config, console),
    ):
        pytest.fail("stack() must not yield when a service fails")
    assert "simulated failure to load the bundle" in str(info.value)
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before and not _gone(p.pid)]
    assert left == []


def test_busy_default_port_is_reported_with_the_fix(fake_bundle: Path) -> None:
    offset = 7000 + os.getpid() % 1000
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 50052 + offset))
        sock.listen()
        config = StackConfig(artifacts=fake_bundle, port_offset=offset, train=False)
        with (
            pytest.raises(PortInUseError, match=r"retrieval gRPC 127.0.0.1:\d+.*--port-offset.*--free-ports"),
            stack(config, Console(quiet=True)),
        ):  # noqa: SIM115
            pass
