"""Start named child processes, wait until they are healthy, stop them all on exit.

    with Supervisor(run_dir) as sup, shutdown_signals():
        sup.start(ServiceSpec("retrieval", [sys.executable, "-m", "services.retrieval"], env,
                              GrpcHealth("127.0.0.1:50052")))
        sup.wait_healthy(timeout=180)
        sup.wait_forever()           # until Ctrl-C / SIGTERM, or a child dies (ServiceStartError)

Each child writes stdout+stderr to RUN_DIR/<name>.log. Leaving the `with` block (normally, on an
exception, on Ctrl-C or on SIGTERM via `shutdown_signals`) sends SIGTERM to every child in reverse
start order, waits `grace` seconds, then SIGKILLs what is left, children of children included.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recstack.devstack.process import ManagedProcess, ProcessStartError, stop_tree, tail

log = logging.getLogger(__name__)


class ServiceStartError(ProcessStartError):
    """A supervised service exited or did not become healthy; names it and quotes its log."""


@dataclass(frozen=True)
class GrpcHealth:
    """Healthy when grpc.health.v1 Check(service) at `address` answers SERVING."""

    address: str
    service: str = ""

    def __call__(self) -> bool:
        return grpc_serving(self.address, self.service)

    def describe(self) -> str:
        return f"grpc.health.v1 SERVING at {self.address}"


@dataclass(frozen=True)
class PortOpen:
    """Healthy when a TCP connection to `host:port` succeeds (servers without a health service)."""

    host: str
    port: int

    def __call__(self) -> bool:
        import socket

        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def describe(self) -> str:
        return f"a listener on {self.host}:{self.port}"


@dataclass(frozen=True)
class HttpHealth:
    """Healthy when GET `url` answers 200 (e.g. a Prometheus /metrics endpoint)."""

    url: str

    def __call__(self) -> bool:
        try:
            with urllib.request.urlopen(self.url, timeout=1.0) as resp:
                return int(resp.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def describe(self) -> str:
        return f"HTTP 200 from {self.url}"


@dataclass
class ServiceSpec:
    name: str
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    health: GrpcHealth | HttpHealth | PortOpen | None = None


def grpc_serving(address: str, service: str = "", timeout: float = 1.0) -> bool:
    """One grpc.health.v1 Check; True only for SERVING (over TLS with RECSTACK_TLS_CA ...)."""
    from recstack.rpc import tls

    with tls.sync_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


class Supervisor:
    """Owns a set of named child processes; see the module docstring."""

    def __init__(self, run_dir: Path, grace: float = 10.0, cwd: Path | None = None) -> None:
        self.run_dir = run_dir
        self.grace = grace
        self.cwd = cwd
        self._procs: dict[str, ManagedProcess] = {}
        self._specs: dict[str, ServiceSpec] = {}

    @property
    def processes(self) -> dict[str, ManagedProcess]:
        return dict(self._procs)

    def start(self, spec: ServiceSpec) -> ManagedProcess:
        if spec.name in self._procs:
            raise ValueError(f"a process named {spec.name!r} is already supervised")
        proc = ManagedProcess(
            spec.name, spec.argv, self.run_dir / f"{spec.name}.log", env=dict(spec.env), cwd=self.cwd
        )
        self._procs[spec.name] = proc
        self._specs[spec.name] = spec
        try:
            proc.start()
        except ProcessStartError as exc:
            raise ServiceStartError(str(exc)) from exc
        return proc

    def check_alive(self) -> None:
        """Raise ServiceStartError for the first child that has exited."""
        for proc in self._procs.values():
            code = proc.poll()
            if code is not None:
                raise ServiceStartError(str(proc.failure(f"exited unexpectedly with code {code}")))

    def wait_healthy(self, timeout: float = 180.0, interval: float = 0.25) -> float:
        """Block until every child with a health check passes it; returns the seconds waited."""
        start = time.monotonic()
        pending = {n for n, s in self._specs.items() if s.health is not None}
        while pending:
            self.check_alive()
            for name in sorted(pending):
                health = self._specs[name].health
                if health is not None and health():
                    log.info("%s healthy after %.1fs", name, time.monotonic() - start)
                    pending.discard(name)
            if not pending:
                break
            if time.monotonic() - start > timeout:
                first = sorted(pending)[0]
                spec = self._specs[first]
                waiting = ", ".join(sorted(pending))
                raise ServiceStartError(
                    str(
                        self._procs[first].failure(
                            f"did not become healthy ({spec.health.describe()}) within {timeout:.0f}s "  # type: ignore[union-attr]
                            f"(still waiting for: {waiting})"
                        )
                    )
                )
            time.sleep(interval)
        return time.monotonic() - start

    def wait_forever(self, interval: float = 0.5) -> None:
        """Block until interrupted (KeyboardInterrupt) or a child exits (ServiceStartError)."""
        while True:
            self.check_alive()
            time.sleep(interval)

    def supervise(
        self,
        interval: float = 0.5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        stable_s: float = 60.0,
        stop: threading.Event | None = None,
    ) -> None:
        """Block until interrupted (KeyboardInterrupt), restarting a child that exits while the
        others keep serving, as a production supervisor does: the first restart after
        ``backoff_s``, each quick crash again doubling the wait up to ``max_backoff_s``; a child
        that stayed up ``stable_s`` starts from ``backoff_s`` again. Each restart is logged with
        the exit code and the tail of the child's log. ``stop`` (tests) ends the loop."""
        waits: dict[str, float] = {}
        due: dict[str, float] = {}
        started: dict[str, float] = dict.fromkeys(self._procs, time.monotonic())
        while stop is None or not stop.is_set():
            now = time.monotonic()
            for name, proc in list(self._procs.items()):
                code = proc.poll()
                if code is None or name in due:
                    continue
                quick = now - started.get(name, now) < stable_s
                waits[name] = min(max_backoff_s, waits.get(name, backoff_s / 2) * 2) if quick else backoff_s
                due[name] = now + waits[name]
                log.error(
                    "%s exited with code %s; restarting in %.1fs\n%s",
                    name,
                    code,
                    waits[name],
                    tail(proc.log_path, 10),
                )
            for name, when in list(due.items()):
                if now >= when:
                    del due[name]
                    self.restart(name)
                    started[name] = time.monotonic()
            time.sleep(interval)

    def restart(self, name: str) -> ManagedProcess:
        """Start ``name`` again from its spec (its log file is appended to)."""
        spec = self._specs[name]
        proc = ManagedProcess(
            spec.name, spec.argv, self.run_dir / f"{spec.name}.log", env=dict(spec.env), cwd=self.cwd
        )
        self._procs[name] = proc
        try:
            proc.start()
        except ProcessStartError as exc:
            log.error("restarting %s failed: %s", name, exc)
        else:
            log.info("restarted %s (pid %s)", name, proc.pid)
        return proc

    def stop_all(self) -> None:
        """SIGTERM in reverse start order, wait `grace`, SIGKILL the rest (process trees included)."""
        if not self._procs:
            return
        with defer_signals():
            started = [(p, p.send_term()) for p in reversed(list(self._procs.values()))]
            stop_tree(started, self.grace)
        for name, proc in self._procs.items():
            log.info("stopped %s (exit code %s)", name, proc.poll())
        self._procs.clear()
        self._specs.clear()

    def __enter__(self) -> Self:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def defer_signals() -> Iterator[None]:
    """While stopping children, a second Ctrl-C / SIGTERM must not abort the cleanup half-way."""
    if not _in_main_thread():
        yield
        return

    def note(signum: int, frame: FrameType | None) -> None:
        log.warning("already stopping; waiting for children to exit")

    previous = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def shutdown_signals() -> Iterator[None]:
    """Turn SIGINT, SIGTERM and SIGHUP into KeyboardInterrupt, so they all take Ctrl-C's clean path.

    SIGINT is set explicitly too: a program started in the background by a non-interactive shell
    inherits SIGINT ignored, and Python then installs no handler of its own, so Ctrl-C (or a
    supervisor's SIGINT) would do nothing."""
    if not _in_main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
