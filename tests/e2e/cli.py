"""Run the real `recstack` CLI as a subprocess and watch what it started."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import psutil
import pytest


def cli_argv(*args: str) -> list[str]:
    """`recstack ARGS` with the interpreter running the tests (no reliance on PATH)."""
    return [sys.executable, "-m", "recstack.cli", *args]


def cli_env() -> dict[str, str]:
    """The test environment with a wide, plain console so that tables are not wrapped."""
    env = dict(os.environ)
    env.update({"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb", "PYTHONUNBUFFERED": "1"})
    return env


def wait_for_endpoints(run_dir: Path, proc: psutil.Popen, log: Path, timeout: float = 300.0) -> dict:
    """Block until RUN_DIR/endpoints.json exists (the stack is healthy); fail with the CLI's output."""
    path = run_dir / "endpoints.json"
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"recstack exited with {proc.returncode} before the stack was up:\n{log.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"stack not healthy within {timeout:.0f}s:\n{log.read_text()}")
        time.sleep(0.5)
    return json.loads(path.read_text())


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stop_and_wait(proc: psutil.Popen, sig: int, log: Path, run_dir: Path, timeout: float = 60.0) -> int:
    """Send ``sig`` and wait for the CLI to exit; on a timeout fail with what is still running and
    the tail of every process log (the stack's own account of where its shutdown stalled)."""
    children = proc.children(recursive=True)
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except psutil.TimeoutExpired:
        running = []
        for child in children:
            try:
                running.append(f"{child.pid} {child.status()} {' '.join(child.cmdline())[:160]}")
            except psutil.NoSuchProcess:
                continue
        tails = [f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
                 for p in sorted(run_dir.glob("*.log"))]  # fmt: skip
        pytest.fail(
            f"recstack did not exit within {timeout:.0f}s of signal {sig}; still running:\n"
            + "\n".join(running)
            + f"\nCLI output:\n{log.read_text()[-3000:]}\n"
            + "\n".join(tails)
        )
