"""Helpers of the integration tests that run recstack's gRPC services as real processes
(`python -m services.NAME` on free ports, health-checked until SERVING)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recstack.devstack.embedded import free_port
from recstack.rpc import tls

REPO = Path(__file__).resolve().parents[2]
DOWNSTREAM = {
    "retrieval": "recstack.v1.Retrieval",
    "ranking": "recstack.v1.Ranking",
    "rerank": "recstack.v1.Rerank",
    "bandit": "recstack.v1.Bandit",
}
SERVICES = {**DOWNSTREAM, "gateway": "recstack.v1.Gateway"}
STAGES = ("FEATURES", "RETRIEVAL", "POPULARITY", "RANKING", "RERANK", "DIVERSITY", "BANDIT")


@dataclass
class Service:
    name: str
    port: int
    metrics_port: int
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.name}"],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def service_env(name: str, port: int, metrics_port: int, artifacts: Path, redis_url: str) -> dict[str, str]:
    """The environment of one service: this process's without RECSTACK_* (but RECSTACK_REDIS_CLUSTER,
    set by the cluster backend of tests/conftest.py) and Kafka, plus the service's ports, bundle and
    Redis."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("RECSTACK_") or k == "RECSTACK_REDIS_CLUSTER"
    }
    env.update(
        RECSTACK_HOST="127.0.0.1",
        RECSTACK_PORT=str(port),
        RECSTACK_METRICS_PORT=str(metrics_port),
        RECSTACK_ARTIFACTS=str(artifacts),
        RECSTACK_GRACE_S="3",
        REDIS_URL=redis_url,
        PYTHONPATH=str(REPO),
    )
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    return env


def wait_serving(service: Service, timeout_s: float = 120.0) -> None:
    """Poll the service's health until SERVING; fail with its log when it exits or time is up."""
    deadline = time.monotonic() + timeout_s
    # over TLS (mTLS) when the service's environment asks for it, with the service's own certificates
    with tls.sync_channel(f"127.0.0.1:{service.port}", settings=tls.settings_from(service.env)) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            assert service.proc is not None
            if service.proc.poll() is not None:
                pytest.fail(f"{service.name} exited with {service.proc.returncode}:\n{service.log_tail()}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=SERVICES[service.name]), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    pytest.fail(f"{service.name} not SERVING after {timeout_s} s:\n{service.log_tail()}")


def metrics(service: Service) -> str:
    """The service's Prometheus /metrics text."""
    with urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def service_stack(
    artifacts: Path, redis_url: str, log_dir: Path, stage_timeout_s: float, **env: str
) -> dict[str, Service]:
    """The five services (not started) on free ports with ``env`` added to each; the gateway is
    wired to the other four and every chain stage gets the deadline ``stage_timeout_s``
    (generous: the test machine is small and shared, failures are tested by killing a service)."""
    services: dict[str, Service] = {}
    for name in SERVICES:
        port, mport = free_port(), free_port()
        senv = service_env(name, port, mport, artifacts, redis_url)
        senv.update(env)
        services[name] = Service(name, port, mport, senv, log_dir / f"{name}.log")
    gw = services["gateway"].env
    for name in DOWNSTREAM:
        gw[f"{name.upper()}_ADDR"] = f"127.0.0.1:{services[name].port}"
    for stage in STAGES:
        gw[f"RECSTACK_{stage}_TIMEOUT_S"] = str(stage_timeout_s)
    return services


def start_all(services: Iterable[Service]) -> None:
    """Start every service, then wait until each is SERVING."""
    services = list(services)
    for service in services:
        service.start()
    for service in services:
        wait_serving(service)


def stop_all(services: Iterable[Service]) -> None:
    for service in services:
        service.stop()
