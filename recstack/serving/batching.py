"""Dynamic micro-batching of model calls (no grpc): concurrent requests scored in one forward pass.

``MicroBatcher(fn)`` turns ``fn(list[request]) -> list[result]`` (a batch method of a serving core)
into ``await batcher(request) -> result``. The first request of an idle batcher starts a batch
at once (no added latency at low load); requests that arrive while a batch runs queue up and go,
up to ``max_batch`` at a time, into the next one, as Triton's dynamic batcher does.

Where a batch runs (``offload``): in a worker thread (torch and FAISS release the GIL), so the
event loop keeps reading requests and answering health checks while a model computes, or inline on
the event loop, which yields between batches. ``RECSTACK_INFERENCE`` (``thread`` / ``inline``)
overrides the caller's default. Measured on 2 cores with ``recstack bench serve``: the split stage
services serve more with ``thread`` (their loop keeps accepting the next batch during a forward
pass); the in-process gateway, one process per core, spends about a quarter less CPU per request
``inline`` (no thread hand-off, futures or GIL switches), so ``InProcessStages`` defaults to it.

The queue is bounded: beyond ``max_queue`` waiting requests a call raises :class:`Overloaded` at
once (the servicer maps it to RESOURCE_EXHAUSTED) instead of letting every request time out. When a
batch fails, its requests are retried one by one, so a bad request fails alone with its own error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from prometheus_client import Histogram

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Res = TypeVar("Res")

BATCH_SIZE = Histogram(
    "recstack_batch_size",
    "Requests scored together in one micro-batch, by batcher.",
    ["batcher"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
BATCH_WAIT = Histogram(
    "recstack_batch_queue_seconds",
    "Time a request waited for its micro-batch to start, by batcher.",
    ["batcher"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
BATCH_LATENCY = Histogram(
    "recstack_batch_seconds",
    "Compute time of one micro-batch, by batcher.",
    ["batcher"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)


INFERENCE_ENV = "RECSTACK_INFERENCE"
INFERENCE_MODES = ("inline", "thread")


def offload_from_env(default: bool = True) -> bool:
    """True (a worker thread) when ``RECSTACK_INFERENCE`` is ``thread``, False when ``inline``,
    ``default`` when unset or empty. Anything else raises ValueError naming the variable."""
    mode = os.environ.get(INFERENCE_ENV, "").strip().lower()
    if not mode:
        return default
    if mode not in INFERENCE_MODES:
        raise ValueError(f"{INFERENCE_ENV}={mode!r}: use one of {', '.join(INFERENCE_MODES)}")
    return mode == "thread"


class Overloaded(RuntimeError):
    """The batcher's queue is full: the service sheds the request (RESOURCE_EXHAUSTED)."""


class MicroBatcher(Generic[Req, Res]):
    """See the module docstring. One batch runs at a time per batcher."""

    def __init__(
        self,
        fn: Callable[[list[Req]], Sequence[Res]],
        name: str,
        max_batch: int = 64,
        max_queue: int = 512,
        offload: bool = True,
    ):
        if max_batch < 1 or max_queue < 1:
            raise ValueError(f"max_batch and max_queue must be >= 1, got {max_batch}, {max_queue}")
        self.fn = fn
        self.name = name
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.offload = offload_from_env(offload)
        self._pending: list[tuple[Req, asyncio.Future, float]] = []
        self._worker: asyncio.Task | None = None

    @property
    def queued(self) -> int:
        return len(self._pending)

    async def __call__(self, request: Req) -> Res:
        if len(self._pending) >= self.max_queue:
            raise Overloaded(
                f"{self.name}: {len(self._pending)} requests already queued (limit {self.max_queue})"
            )
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending.append((request, future, time.perf_counter()))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            live = [(r, f, t) for r, f, t in batch if not f.done()]  # skip requests cancelled meanwhile
            if not live:
                continue
            start = time.perf_counter()
            for _, _, t in live:
                BATCH_WAIT.labels(self.name).observe(start - t)
            BATCH_SIZE.labels(self.name).observe(len(live))
            requests = [r for r, _, _ in live]
            results = await asyncio.to_thread(self._run, requests) if self.offload else self._run(requests)
            BATCH_LATENCY.labels(self.name).observe(time.perf_counter() - start)
            for (_, future, _), (ok, value) in zip(live, results, strict=True):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
            if not self.offload:
                await asyncio.sleep(0)  # let the callers and the I/O run between inline batches

    def _run(self, requests: list[Req]) -> list[tuple[bool, object]]:
        """(ok, result or exception) per request; a failed batch is retried request by request."""
        try:
            out = list(self.fn(requests))
            if len(out) != len(requests):
                raise RuntimeError(
                    f"{self.name}: batch function returned {len(out)} results for {len(requests)}"
                )
            return [(True, r) for r in out]
        except Exception as exc:  # handed to the caller's await, which maps it to a status
            if len(requests) == 1:
                return [(False, exc)]
            return [self._one(r) for r in requests]

    def _one(self, request: Req) -> tuple[bool, object]:
        try:
            return True, self.fn([request])[0]
        except Exception as exc:  # handed to the caller's await, which maps it to a status
            return False, exc
