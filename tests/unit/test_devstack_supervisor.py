"""Supervisor and ManagedProcess with small Python child processes (no Kafka/Redis/services)."""

from __future__ import annotations

import os
import signal
import socket
import sys
import textwrap
import time
from concurrent import futures
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from recstack.devstack.embedded import free_port, port_is_free
from recstack.devstack.process import ManagedProcess, tail
from recstack.devstack.supervisor import (
    GrpcHealth,
    HttpHealth,
    ServiceSpec,
    ServiceStartError,
    Supervisor,
    grpc_serving,
    shutdown_signals,
)

PY = sys.executable


def _script(tmp_path: Path, name: str, body: str) -> list[str]:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return [PY, str(path)]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


HTTP_SERVER = """
    import http.server, os, sys, time
    time.sleep(float(os.environ.get("DELAY", "0")))
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
        def log_message(self, *a):
            pass
    print("serving", flush=True)
    http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""


def test_free_port_is_bindable_and_port_is_free_detects_listener() -> None:
    port = free_port()
    assert port_is_free(port)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        assert not port_is_free(port)


def test_tail_returns_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("\n".join(f"line {i}" for i in range(100)))
    assert tail(log, 3) == "line 97\nline 98\nline 99"
    assert tail(tmp_path / "missing.log") == ""


def test_managed_process_kills_after_grace_when_sigterm_ignored(tmp_path: Path) -> None:
    argv = _script(
        tmp_path,
        "stubborn",
        """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("up", flush=True)
        time.sleep(60)
        """,
    )
    proc = ManagedProcess("stubborn", argv, tmp_path / "stubborn.log")
    proc.start()
    deadline = time.monotonic() + 10
    while "up" not in tail(proc.log_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    code = proc.stop(grace=0.5)
    assert code == -signal.SIGKILL
    assert time.monotonic() - started < 5
    assert _gone(proc.pid or -1)


def test_managed_process_stop_kills_grandchildren(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    argv = _script(
        tmp_path,
        "parent",
        f"""
        import subprocess, sys, time, signal
        child = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        time.sleep(60)
        """,
    )
    proc = ManagedProcess("parent", argv, tmp_path / "parent.log")
    proc.start()
    deadline = time.monotonic() + 10
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, tail(proc.log_path)
        time.sleep(0.05)
    grandchild = int(pid_file.read_text())
    proc.stop(grace=1.0)
    deadline = time.monotonic() + 5
    while not _gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(grandchild)


def test_supervisor_waits_for_http_health_and_stops_everything(tmp_path: Path) -> None:
    port = free_port()
    argv = _script(tmp_path, "webserver", HTTP_SERVER)
    with Supervisor(tmp_path / "run", grace=2.0) as sup:
        proc = sup.start(
            ServiceSpec(
                "web",
                argv,
                {**os.environ, "PORT": str(port), "DELAY": "0.5"},
                HttpHealth(f"http://127.0.0.1:{port}/metrics"),
            )
        )
        assert not HttpHealth(f"http://127.0.0.1:{port}/metrics")()
        waited = sup.wait_healthy(timeout=20)
        assert waited >= 0.4
        assert HttpHealth(f"http://127.0.0.1:{port}/metrics")()
        pid = proc.pid
    assert pid is not None and _gone(pid)
    assert (tmp_path / "run" / "web.log").read_text().startswith("serving")


def test_supervisor_names_failing_service_and_quotes_its_log(tmp_path: Path) -> None:
    ok_port = free_port()
    ok = _script(tmp_path, "webserver", HTTP_SERVER)
    bad = _script(
        tmp_path, "bad", "import sys\nprint('cannot load bundle: no CURRENT', flush=True)\nsys.exit(3)\n"
    )
    sup = Supervisor(tmp_path / "run", grace=2.0)
    with pytest.raises(ServiceStartError) as info, sup:
        sup.start(
            ServiceSpec(
                "web", ok, {**os.environ, "PORT": str(ok_port)}, HttpHealth(f"http://127.0.0.1:{ok_port}/")
            )
        )
        sup.start(ServiceSpec("ranking", bad, dict(os.environ), GrpcHealth(f"127.0.0.1:{free_port()}")))
        sup.wait_healthy(timeout=20)
    message = str(info.value)
    assert "ranking" in message and "code 3" in message
    assert "cannot load bundle: no CURRENT" in message
    assert sup.processes == {}


def test_supervisor_health_timeout_lists_pending(tmp_path: Path) -> None:
    argv = _script(tmp_path, "sleeper", "import time\ntime.sleep(60)\n")
    with Supervisor(tmp_path / "run", grace=1.0) as sup:
        proc = sup.start(
            ServiceSpec("retrieval", argv, dict(os.environ), GrpcHealth(f"127.0.0.1:{free_port()}"))
        )
        with pytest.raises(ServiceStartError, match=r"retrieval did not become healthy .* within 1s"):
            sup.wait_healthy(timeout=1.0)
    assert _gone(proc.pid or -1)


def test_supervisor_rejects_duplicate_names(tmp_path: Path) -> None:
    argv = _script(tmp_path, "sleeper", "import time\ntime.sleep(60)\n")
    with Supervisor(tmp_path / "run", grace=1.0) as sup:
        sup.start(ServiceSpec("a", argv, dict(os.environ)))
        with pytest.raises(ValueError, match="already supervised"):
            sup.start(ServiceSpec("a", argv, dict(os.environ)))


def test_supervisor_start_of_missing_binary_is_clear(tmp_path: Path) -> None:
    with (
        Supervisor(tmp_path / "run") as sup,
        pytest.raises(ServiceStartError, match="gateway: cannot execute"),
    ):
        sup.start(ServiceSpec("gateway", [str(tmp_path / "nope")], dict(os.environ)))


def test_grpc_health_reports_serving_only_when_set() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert not grpc_serving(f"127.0.0.1:{port}")
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert GrpcHealth(f"127.0.0.1:{port}")()
    finally:
        server.stop(0)
    assert not grpc_serving(f"127.0.0.1:{port}", timeout=0.3)


def test_shutdown_signals_turns_sigterm_into_keyboard_interrupt() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"), shutdown_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) == before


def test_shutdown_signals_handles_sigint_even_when_inherited_ignored() -> None:
    """A background job of a non-interactive shell starts with SIGINT ignored; Ctrl-C's path must
    still be taken (and the ignored disposition restored afterwards)."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pytest.raises(KeyboardInterrupt, match="SIGINT"), shutdown_signals():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_children_die_when_the_supervising_process_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    parent = _script(
        tmp_path,
        "parent",
        f"""
        import os, sys, time
        from pathlib import Path
        from recstack.devstack.supervisor import ServiceSpec, Supervisor
        sup = Supervisor(Path({str(tmp_path / "run")!r}))
        argv = [sys.executable, "-c", "import time; time.sleep(60)"]
        proc = sup.start(ServiceSpec("sleeper", argv, dict(os.environ)))
        Path({str(pid_file)!r}).write_text(str(proc.pid))
        time.sleep(60)
        """,
    )
    supervising = psutil.Popen(parent)
    deadline = time.monotonic() + 20
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and supervising.poll() is None
        time.sleep(0.05)
    child = int(pid_file.read_text())
    assert not _gone(child)
    supervising.kill()  # no cleanup code runs: the kernel's parent-death signal must stop the child
    supervising.wait()
    deadline = time.monotonic() + 10
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(child)


def test_supervise_restarts_a_crashed_child_and_keeps_the_others(tmp_path: Path) -> None:
    import sys
    import threading

    crash = [sys.executable, "-c", "import time; time.sleep(0.3); raise SystemExit(3)"]
    steady = [sys.executable, "-c", "import time; time.sleep(60)"]
    with Supervisor(tmp_path, grace=2.0) as sup:
        sup.start(ServiceSpec("flaky", crash))
        sup.start(ServiceSpec("steady", steady))
        steady_pid = sup.processes["steady"].pid
        first_flaky = sup.processes["flaky"].pid
        stop = threading.Event()
        thread = threading.Thread(
            target=sup.supervise,
            kwargs={"interval": 0.05, "backoff_s": 0.1, "max_backoff_s": 0.4, "stop": stop},
        )
        thread.start()
        seen = {first_flaky}
        deadline = time.monotonic() + 10
        while len(seen) < 3 and time.monotonic() < deadline:
            seen.add(sup.processes["flaky"].pid)
            time.sleep(0.05)
        stop.set()
        thread.join(5)
        assert len(seen) >= 3  # restarted again and again, with backoff
        assert sup.processes["steady"].pid == steady_pid and sup.processes["steady"].poll() is None
