"""Helpers of the chaos suite: a steady Recommend load in a background thread and the report.

Every chaos test writes one JSON line (fault, failed calls by status, degraded share, events lost
and doubled, recovery times) to reports/chaos/chaos.jsonl (RECSTACK_CHAOS_REPORT overrides) and
prints it, so a CI log shows what each fault cost."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from recstack.v1 import gateway_pb2, gateway_pb2_grpc

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Reply:
    sent_at: float
    code: str
    degraded: bool = False
    stages: tuple[str, ...] = ()


@dataclass
class Load:
    """Recommend calls at ``rps`` from one thread (calls in flight up to ``parallel``), users in turn."""

    address: str
    users: list[str]
    rps: float = 20.0
    timeout_s: float = 2.0
    parallel: int = 8
    replies: list[Reply] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        channel = grpc.insecure_channel(self.address)
        stub = gateway_pb2_grpc.GatewayStub(channel)
        slots = threading.Semaphore(self.parallel)
        n = 0
        start = time.monotonic()
        while not self._stop.is_set():
            due = start + n / self.rps
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            user = self.users[n % len(self.users)]
            n += 1
            if not slots.acquire(timeout=self.timeout_s):
                self._record(Reply(time.monotonic(), "CLIENT_BACKLOG"))
                continue
            sent = time.monotonic()
            future = stub.Recommend.future(
                gateway_pb2.RecommendRequest(user_id=user, k=10), timeout=self.timeout_s
            )
            future.add_done_callback(lambda f, sent=sent: (self._done(f, sent), slots.release()))
        time.sleep(self.timeout_s)
        channel.close()

    def _done(self, future: grpc.Future, sent: float) -> None:
        try:
            reply = future.result()
        except grpc.RpcError as exc:
            self._record(Reply(sent, exc.code().name))
            return
        self._record(Reply(sent, "OK", reply.degraded, tuple(reply.stages)))

    def _record(self, reply: Reply) -> None:
        with self._lock:
            self.replies.append(reply)

    def mark(self) -> float:
        return time.monotonic()

    def between(self, start: float, end: float | None = None) -> list[Reply]:
        with self._lock:
            return [r for r in self.replies if r.sent_at >= start and (end is None or r.sent_at < end)]

    def summary(self, start: float | None = None, end: float | None = None) -> dict[str, object]:
        replies = self.between(start or 0.0, end)
        codes = Counter(r.code for r in replies)
        ok = [r for r in replies if r.code == "OK"]
        return {
            "calls": len(replies),
            "failed": {code: n for code, n in codes.items() if code != "OK"},
            "degraded_share": round(sum(r.degraded for r in ok) / max(1, len(ok)), 4),
        }

    def first_healthy_after(self, start: float, stage: str, timeout_s: float = 60.0) -> float | None:
        """Seconds from ``start`` to the first reply sent after it that is not degraded and ran
        ``stage`` (None: none within timeout_s)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for r in self.between(start):
                if r.code == "OK" and not r.degraded and stage in r.stages:
                    return round(r.sent_at - start, 3)
            time.sleep(0.05)
        return None


def report(fault: str, **figures: object) -> dict[str, object]:
    """Append one line to the chaos report and print it (pytest -s, or the log of a failure)."""
    line = {"fault": fault, "at": time.strftime("%Y-%m-%dT%H:%M:%S"), **figures}
    path = Path(os.environ.get("RECSTACK_CHAOS_REPORT", REPO / "reports" / "chaos" / "chaos.jsonl"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(line) + "\n")
    print("chaos:", json.dumps(line))
    return line
