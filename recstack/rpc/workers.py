"""Worker processes of one service on one port (``RECSTACK_GATEWAY_WORKERS``): a Python process
serves one core at most (the GIL), so a service that does its own model work (the gateway with
in-process stages) runs one process per core behind the same port. The kernel spreads the
connections over the processes (SO_REUSEPORT); each has its own metrics port (the first one's
``RECSTACK_METRICS_PORT`` + its index). Extra workers die with the first (PR_SET_PDEATHSIG) and
are stopped with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence

from recstack.rpc.server import SHARED_PORT_ENV

log = logging.getLogger(__name__)

WORKER_INDEX_ENV = "RECSTACK_WORKER_INDEX"
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def worker_index() -> int:
    """0 in the first (or only) process, k in the k-th extra worker."""
    return int(os.environ.get(WORKER_INDEX_ENV, "0"))


@contextlib.contextmanager
def extra_workers(n: int, argv: Sequence[str], metrics_port: int, grace_s: float = 15.0) -> Iterator[list]:
    """Run ``n - 1`` more copies of this service (``argv``) sharing its port while the block runs;
    this process is worker 0. Sets the shared-port switch for this process too."""
    if n <= 1 or worker_index() != 0:
        yield []
        return
    os.environ[SHARED_PORT_ENV] = "1"
    procs = []
    for k in range(1, n):
        env = {
            **os.environ,
            WORKER_INDEX_ENV: str(k),
            "RECSTACK_METRICS_PORT": str(metrics_port + k if metrics_port else 0),
        }
        procs.append(subprocess.Popen(list(argv), env=env, preexec_fn=_die_with_parent))  # noqa: PLW1509
    log.info("started %d extra worker process(es) on the shared port", len(procs))
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
