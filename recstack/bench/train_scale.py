"""`recstack bench train-scale`: the default `recstack train` on a synthetic dataset of a given shape,
with wall time per stage and per model and the peak memory of the whole process tree.

The dataset is the seeded synthetic generator (:mod:`recstack.data.synthetic`: power-law item
popularity, Dirichlet user tastes over genres, sessions whose taste drifts, so the order of a
user's items carries signal) at ``--users`` users, ``--items`` items and about ``--interactions``
rows (``events_per_user`` = interactions / users). Training runs in a child process
(``python -m recstack.cli train --data SPEC``, the auto profile, as a user would run it); this
process samples the resident memory of the child and of its worker processes (their sum, every
0.5 s, with psutil) and also reports ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` (the largest single
process). Per-stage and per-model seconds come from the bundle's ``metrics.json``
(``stage_seconds``; per model ``train_seconds`` with its ``valid_seconds`` and the
``test_seconds`` after it).

``--profile`` trains with ``--jobs 1`` under cProfile and adds the functions with the most
cumulative time. The goal checks of issue 13 are reported when the shape is one of :data:`GOALS`.
The machine is shared: the load average before and after is part of the result.
"""

from __future__ import annotations

import ast
import io
import json
import os
import platform
import pstats
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

DEFAULT_USERS = 30_000
DEFAULT_ITEMS = 25_000
DEFAULT_INTERACTIONS = 300_000
# Zipf exponent of item popularity: 0.6 keeps most of a 25k catalogue in use at 300k rows (1.0, the
# generator's default, leaves a third of it without any interaction at this density).
POPULARITY_EXPONENT = 0.6


@dataclass(frozen=True)
class Goal:
    """A target of issue 13: the data shape and the budgets it is held to."""

    users: int
    items: int
    interactions: int
    max_minutes: float
    max_peak_gib: float | None = None


GOALS = {
    "30k-users/25k-items/300k": Goal(30_000, 25_000, 300_000, 20.0),
    "100k-users/50k-items/1M": Goal(100_000, 50_000, 1_000_000, 60.0, 8.0),
}


def dataset_spec(users: int, items: int, interactions: int, seed: int = 0) -> str:
    """The synthetic spec of that shape (``events_per_user`` = interactions / users)."""
    per_user = interactions / users
    return (
        f"synthetic:n_users={users},n_items={items},events_per_user={per_user:g},"
        f"min_events_per_user=3,popularity_exponent={POPULARITY_EXPONENT},seed={seed}"
    )


class TreeRSS:
    """Peak of the summed resident memory of a process and its descendants (background sampler)."""

    def __init__(self, pid: int, interval: float = 0.5):
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-rss", daemon=True)

    def sample(self) -> None:
        total = 0
        try:
            procs = [self.proc, *self.proc.children(recursive=True)]
        except psutil.Error:
            return
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                continue
        self.peak_bytes = max(self.peak_bytes, total)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> TreeRSS:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _profile_top(path: Path, n: int = 25) -> list[dict]:
    stats = pstats.Stats(str(path), stream=io.StringIO())
    rows = []
    for (file, line, func), (_, calls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append(
            {
                "function": f"{Path(file).name}:{line}({func})",
                "calls": calls,
                "self_s": round(tottime, 2),
                "cumulative_s": round(cumtime, 2),
            }
        )
    rows.sort(key=lambda r: -r["cumulative_s"])
    return rows[:n]


_DONE = re.compile(r"\b(\w+) test (\{.*\}) \(([\d.]+) s, stopped by (\w+)\)")
_EPOCH = re.compile(r"^(\S+ \S+) INFO .*trainer: (\w+) epoch (\d+) loss .* valid NDCG@10 ([\d.na]+)")
_EARLY = re.compile(r"trainer: (\w+): early stop after epoch (\d+) \(best (\d+)\)")


def progress_from_log(text: str) -> dict:
    """What a training log says about each model (for a run stopped before its bundle was written):
    ``{"finished": {name: {...}}, "models": {name: {"validations", "last_valid_NDCG@10",
    "first_epoch_at", "last_epoch_at", "early_stopped_at"?, "best"?}}}``; "finished" holds the models
    whose group completed (test metrics logged)."""
    finished: dict = {}
    models: dict[str, dict] = {}
    for line in text.splitlines():
        if m := _DONE.search(line):
            test = ast.literal_eval(m.group(2))
            finished[m.group(1)] = {
                "train_seconds": float(m.group(3)),
                "stopped_by": m.group(4),
                "test_NDCG@10": test.get("NDCG@10"),
            }
        elif m := _EPOCH.search(line):
            rec = models.setdefault(m.group(2), {"first_epoch_at": m.group(1)})
            rec.update(
                validations=int(m.group(3)), last_valid_ndcg10=float(m.group(4)), last_epoch_at=m.group(1)
            )
        elif m := _EARLY.search(line):
            models.setdefault(m.group(1), {}).update(early_stopped_at=int(m.group(2)), best=int(m.group(3)))
    return {"finished": finished, "models": models}


def _goal_checks(users: int, items: int, interactions: int, wall_s: float, peak_gib: float) -> dict:
    checks = {}
    for name, g in GOALS.items():
        if (g.users, g.items, g.interactions) != (users, items, interactions):
            continue
        check: dict = {
            "max_minutes": g.max_minutes,
            "minutes": round(wall_s / 60, 1),
            "time_met": wall_s <= 60 * g.max_minutes,
        }
        if g.max_peak_gib is not None:
            check.update(max_peak_gib=g.max_peak_gib, memory_met=peak_gib <= g.max_peak_gib)
        check["met"] = bool(check["time_met"] and check.get("memory_met", True))
        checks[name] = check
    return checks


def run(
    users: int = DEFAULT_USERS,
    items: int = DEFAULT_ITEMS,
    interactions: int = DEFAULT_INTERACTIONS,
    seed: int = 0,
    out: Path | None = None,
    profile: bool = False,
    extra_args: tuple[str, ...] = (),
    timeout_minutes: float | None = None,
) -> dict:
    """Train on the synthetic dataset of that shape in a child process; the measurements as a dict."""
    spec = dataset_spec(users, items, interactions, seed)
    work = Path(tempfile.mkdtemp(prefix="train-scale-")) if out is None else Path(out)
    work.mkdir(parents=True, exist_ok=True)
    bundles = work / "artifacts"
    cmd = [sys.executable]
    prof_path = work / "train.prof"
    if profile:
        cmd += ["-m", "cProfile", "-o", str(prof_path)]
    cmd += ["-m", "recstack.cli", "train", "--data", spec, "--out", str(bundles), "--no-progress"]
    cmd += ["--seed", str(seed), *(["--jobs", "1"] if profile else []), *extra_args]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    log_path = work / "train.log"
    load_start = _load()
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        child = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True
        )
        with TreeRSS(child.pid) as rss:
            try:
                stdout, _ = child.communicate(
                    timeout=None if timeout_minutes is None else 60 * timeout_minutes
                )
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)  # the training process and its workers
                child.communicate()
                stdout = None
    wall = time.perf_counter() - t0
    load_end = _load()
    result: dict = {
        "command": " ".join(cmd[cmd.index("recstack.cli") + 1 :]),
        "data_spec": spec,
        "requested": {"users": users, "items": items, "interactions": interactions},
        "seed": seed,
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "load_average_start": load_start,
        "load_average_end": load_end,
        "wall_seconds": round(wall, 1),
        "peak_rss_mb": round(rss.peak_bytes / 2**20, 1),
        "peak_rss_gib": round(rss.peak_bytes / 2**30, 2),
        "max_process_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "log": str(log_path),
    }
    if stdout is None or child.returncode != 0:
        result["error"] = (
            f"training stopped after {wall / 60:.1f} min (timeout)"
            if stdout is None
            else f"training failed with exit code {child.returncode}"
        )
        text = log_path.read_text()
        result["log_tail"] = text[-3000:]
        result["progress"] = progress_from_log(text)
        result["goals"] = {
            name: {"met": False, "why": result["error"], "max_minutes": g.max_minutes}
            for name, g in GOALS.items()
            if (g.users, g.items, g.interactions) == (users, items, interactions)
        }
        return result
    version = Path(stdout.strip().splitlines()[-1])
    metrics = json.loads((version / "metrics.json").read_text())
    result["dataset"] = {
        "users": metrics["n_users"],
        "items": metrics["n_items"],
        "training_rows": metrics["data_stats"]["n_train"],
        "median_history": metrics["data_stats"]["median_len"],
    }
    result["total_seconds"] = metrics.get("total_seconds")
    result["stage_seconds"] = metrics.get("stage_seconds", {})
    result["models"] = {
        name: {
            "train_seconds": rec["train_seconds"],
            "valid_seconds": rec.get("valid_seconds"),
            "test_seconds": rec.get("test_seconds"),
            "epochs_run": rec["epochs_run"],
            "best_epoch": rec["best_epoch"],
            "stopped_by": rec["stopped_by"],
            "peak_rss_mb": rec["peak_rss_mb"],
            "test_NDCG@10": rec["test"]["NDCG@10"],
            "test_HR@10": rec["test"]["HR@10"],
            "valid_users": rec["valid"].get("users"),
            **({"over": rec["over"]} if "over" in rec else {}),
        }
        for name, rec in metrics["models"].items()
    }
    pipe = metrics.get("pipeline")
    if pipe:
        result["pipeline"] = {
            "test_NDCG@10": pipe["test"]["NDCG@10"],
            "test_HR@10": pipe["test"]["HR@10"],
            "eval_seconds": pipe.get("eval_seconds"),
        }
    result["goals"] = _goal_checks(users, items, interactions, wall, rss.peak_bytes / 2**30)
    if profile and prof_path.exists():
        result["profile_top"] = _profile_top(prof_path)
    return result


def summary(result: dict) -> str:
    """One line per goal (or the wall time and peak memory when the shape is no goal's)."""
    if "error" in result:
        return f"error: {result['error']} (log: {result['log']})"
    head = (
        f"{result['dataset']['users']} users, {result['dataset']['items']} items, "
        f"{result['dataset']['training_rows']} training rows: {result['wall_seconds'] / 60:.1f} min, "
        f"peak RSS {result['peak_rss_gib']} GiB (load {result['load_average_start']} -> "
        f"{result['load_average_end']})"
    )
    goals = [f"goal {n}: {'met' if c['met'] else 'NOT met'}" for n, c in result["goals"].items()]
    return "\n".join([head, *goals])
