"""MicroBatcher: concurrent requests share a batch, a full queue sheds, a failed batch is retried
one by one, inline and thread modes give the same results."""

from __future__ import annotations

import asyncio
import threading

import pytest

from recstack.serving.batching import INFERENCE_ENV, MicroBatcher, Overloaded, offload_from_env


def make(offload: bool, max_batch: int = 64, max_queue: int = 512):
    calls: list[list[int]] = []
    threads: list[int] = []

    def fn(requests: list[int]) -> list[int]:
        calls.append(list(requests))
        threads.append(threading.get_ident())
        if any(r < 0 for r in requests):
            raise ValueError(f"negative request in {requests}")
        return [r * 10 for r in requests]

    return MicroBatcher(fn, "test", max_batch, max_queue, offload=offload), calls, threads


@pytest.mark.parametrize("offload", [False, True])
def test_concurrent_requests_share_batches(offload: bool) -> None:
    async def main():
        batcher, calls, threads = make(offload, max_batch=4)
        out = await asyncio.gather(*(batcher(i) for i in range(10)))
        return out, calls, threads, threading.get_ident()

    out, calls, threads, loop_thread = asyncio.run(main())
    assert out == [i * 10 for i in range(10)]
    assert all(len(c) <= 4 for c in calls) and len(calls) < 10  # the rest queued into batches
    assert sorted(r for c in calls for r in c) == list(range(10))
    assert all((t != loop_thread) == offload for t in threads)


@pytest.mark.parametrize("offload", [False, True])
def test_failed_batch_fails_only_the_bad_request(offload: bool) -> None:
    async def main():
        batcher, _, _ = make(offload)
        return await asyncio.gather(*(batcher(i) for i in (1, -1, 2, 3)), return_exceptions=True)

    out = asyncio.run(main())
    assert out[0] == 10 and out[2] == 20 and out[3] == 30
    assert isinstance(out[1], ValueError) and "negative" in str(out[1])


def test_full_queue_sheds_with_overloaded() -> None:
    async def main():
        batcher, _, _ = make(True, max_batch=1, max_queue=3)
        return await asyncio.gather(*(batcher(i) for i in range(8)), return_exceptions=True)

    out = asyncio.run(main())
    shed = [r for r in out if isinstance(r, Overloaded)]
    assert shed and "limit 3" in str(shed[0])
    assert [r for r in out if not isinstance(r, Exception)] == [r * 10 for r in range(len(out) - len(shed))]


def test_inference_mode_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(INFERENCE_ENV, raising=False)
    assert offload_from_env(True) is True and offload_from_env(False) is False  # the caller's default
    monkeypatch.setenv(INFERENCE_ENV, "thread")
    assert offload_from_env(False) is True
    monkeypatch.setenv(INFERENCE_ENV, "inline")
    assert offload_from_env(True) is False
    assert MicroBatcher(lambda r: r, "x", offload=True).offload is False
    monkeypatch.setenv(INFERENCE_ENV, "gpu")
    with pytest.raises(ValueError, match="RECSTACK_INFERENCE='gpu'"):
        offload_from_env()
