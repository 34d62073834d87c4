"""One managed child process: started with a log file, stopped without leaving anything behind.

Children run in their own session (so a Ctrl-C in the terminal reaches only the parent, which then
stops them in order) and, on Linux, get SIGTERM from the kernel if the parent dies abruptly
(PR_SET_PDEATHSIG), so a SIGKILLed `recstack up` does not leak a broker or a service.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class ProcessStartError(RuntimeError):
    """A child process exited or never became ready; the message names it and quotes its log."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    os.setsid()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def tail(path: Path, lines: int = 30) -> str:
    """The last `lines` lines of a log file ("" when it does not exist)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 16384))
            text = fh.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class ManagedProcess:
    """A named child process whose stdout and stderr go to `log_path`."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def start(self) -> None:
        if self.popen is not None:
            raise RuntimeError(f"{self.name} is already started (pid {self.popen.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            try:
                self.popen = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    cwd=self.cwd,
                    preexec_fn=_die_with_parent,  # spawned from the main thread only
                )
            except OSError as exc:
                raise ProcessStartError(f"{self.name}: cannot execute {self.argv[0]!r}: {exc}") from exc
        log.info("started %s (pid %d), log %s", self.name, self.popen.pid, self.log_path)

    def poll(self) -> int | None:
        """The exit code, or None while running (or never started)."""
        return self.popen.poll() if self.popen else None

    def is_running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def failure(self, reason: str) -> ProcessStartError:
        """A ProcessStartError naming this process, the reason and the tail of its log."""
        return ProcessStartError(
            f"{self.name} {reason}. Log {self.log_path}, last lines:\n{tail(self.log_path) or '(empty)'}"
        )

    def _tree(self) -> list[psutil.Process]:
        if self.popen is None:
            return []
        try:
            root = psutil.Process(self.popen.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def send_term(self) -> list[psutil.Process]:
        """SIGTERM to the process (its own children get theirs from it); returns the tree seen."""
        tree = self._tree()
        if self.is_running():
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        return tree

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, wait up to `grace` seconds, then SIGKILL the whole tree. Returns the exit code."""
        if self.popen is None:
            return None
        stop_tree([(self, self.send_term())], grace)
        return self.popen.returncode


def stop_tree(started: Sequence[tuple[ManagedProcess, list[psutil.Process]]], grace: float) -> None:
    """Wait for processes already sent SIGTERM; SIGKILL what is left (children included) after `grace`."""
    deadline = time.monotonic() + grace
    for proc, _tree in started:
        if proc.popen is None:
            continue
        try:
            proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not exit within %.1fs of SIGTERM; killing it", proc.name, grace)
            with contextlib.suppress(ProcessLookupError):
                proc.popen.kill()
            proc.popen.wait()
    leftovers = [p for _, tree in started for p in tree if _alive(p)]
    for p in leftovers:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(leftovers, timeout=5)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
