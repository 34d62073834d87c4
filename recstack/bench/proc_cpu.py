"""CPU time of this process's descendants by program (Linux /proc; {} elsewhere).

``recstack bench serve`` takes a snapshot before and after each load and reports the CPU
milliseconds each program of the stack spent per request: where a CPU-bound chain's time goes."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

PROC = Path("/proc")


def _label(argv: list[str]) -> str:
    """A short name: the module of ``python -m X`` (services.gateway), else the program's name."""
    if "-m" in argv[:-1]:
        return argv[argv.index("-m") + 1]
    # redis-server rewrites its command line to one string "redis-server host:port"
    return Path(argv[0].split(" ")[0]).name if argv else "?"


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children[ppid].append(int(entry.name))
    return children


def descendants_cpu_s(root: int | None = None) -> dict[str, float]:
    """Program label -> CPU seconds (user + system) of every live descendant of ``root`` (default:
    this process), summed over processes with the same label (e.g. gateway workers)."""
    if not PROC.is_dir():
        return {}
    tick = os.sysconf("SC_CLK_TCK")
    children = _children()
    stack, seen = list(children.get(root or os.getpid(), [])), set()
    out: dict[str, float] = defaultdict(float)
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        stack.extend(children.get(pid, []))
        try:
            fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
            argv = (PROC / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        out[_label([a for a in argv if a])] += (int(fields[11]) + int(fields[12])) / tick
    return dict(out)


def per_request_ms(before: dict[str, float], after: dict[str, float], requests: float) -> dict[str, float]:
    """CPU milliseconds per request of each program between two snapshots (programs that used
    under 0.05 ms per request are left out), plus ``total``."""
    if requests <= 0:
        return {}
    out = {}
    for label, seconds in after.items():
        ms = 1000.0 * (seconds - before.get(label, 0.0)) / requests
        if ms >= 0.05:
            out[label] = round(ms, 2)
    out["total"] = round(sum(out.values()), 2)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
