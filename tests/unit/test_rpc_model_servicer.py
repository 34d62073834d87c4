"""recstack.rpc.servicer.ModelServicer through the ranking servicer on a real grpc.aio server:
not loaded -> UNAVAILABLE, request errors -> INVALID_ARGUMENT, core failures -> INTERNAL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest

from recstack.features.types import UserFeatures
from recstack.v1 import common_pb2, ranking_pb2, ranking_pb2_grpc
from services.ranking.servicer import RankingServicer
from tests.grpc_support import in_process_channel


class FakeRanker:
    def rank(
        self, user: UserFeatures, candidates: list[str], model: str, weights: dict | None
    ) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
        if "bad" in candidates:
            raise ValueError("candidate 'bad' is not in the bundle")
        if "boom" in candidates:
            raise RuntimeError("broken model")
        scores = np.arange(len(candidates), dtype=np.float64)
        return candidates[::-1], scores[::-1], {"click": scores[::-1] / 10}

    def rank_many(self, requests: list) -> list:
        return [self.rank(*r) for r in requests]


@pytest.fixture
async def stub_and_servicer() -> AsyncIterator[tuple[ranking_pb2_grpc.RankingStub, RankingServicer]]:
    servicer = RankingServicer()
    async with in_process_channel((ranking_pb2_grpc.add_RankingServicer_to_server, servicer)) as channel:
        yield ranking_pb2_grpc.RankingStub(channel), servicer


def request(*items: str) -> ranking_pb2.RankRequest:
    return ranking_pb2.RankRequest(
        candidates=common_pb2.Candidates(item_ids=list(items), scores=[0.0] * len(items))
    )


async def test_status_codes_of_a_model_servicer(
    stub_and_servicer: tuple[ranking_pb2_grpc.RankingStub, RankingServicer],
) -> None:
    stub, servicer = stub_and_servicer
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Rank(request("a"))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "ranking is still loading" in info.value.details()

    servicer.core, servicer.version = FakeRanker(), "v7"
    reply = await stub.Rank(request("a", "b"))
    assert list(reply.candidates.item_ids) == ["b", "a"]
    assert reply.candidates.components["p_click"].values[0] == pytest.approx(0.1)
    assert reply.model_version == "v7"

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Rank(request("a", "bad"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "candidate 'bad' is not in the bundle"

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Rank(request("boom"))
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert info.value.details() == "ranking failed: RuntimeError"


class SlowRanker(FakeRanker):
    """Holds every batch for a while, so that concurrent requests queue up behind it."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def rank_many(self, requests: list) -> list:
        import time

        self.batches.append(len(requests))
        time.sleep(0.05)
        return super().rank_many(requests)


async def test_concurrent_requests_are_batched_and_a_full_queue_sheds_load(
    stub_and_servicer: tuple[ranking_pb2_grpc.RankingStub, RankingServicer],
) -> None:
    import asyncio

    stub, servicer = stub_and_servicer
    core = SlowRanker()
    servicer.core, servicer.version = core, "v1"
    replies = await asyncio.gather(*(stub.Rank(request("a", str(k))) for k in range(12)))
    assert all(len(r.candidates.item_ids) == 2 for r in replies)
    assert len(core.batches) < 12 and max(core.batches) > 1  # requests waiting behind a batch go together
    # a bad request in a batch fails alone
    mixed = await asyncio.gather(
        *(stub.Rank(request("a", "bad" if k == 3 else str(k))) for k in range(8)), return_exceptions=True
    )
    assert [isinstance(r, grpc.aio.AioRpcError) for r in mixed] == [k == 3 for k in range(8)]
    assert mixed[3].code() == grpc.StatusCode.INVALID_ARGUMENT
    servicer.batch.max_queue = 2
    shed = await asyncio.gather(*(stub.Rank(request("a", str(k))) for k in range(10)), return_exceptions=True)
    codes = {r.code() for r in shed if isinstance(r, grpc.aio.AioRpcError)}
    assert (
        codes == {grpc.StatusCode.RESOURCE_EXHAUSTED} and sum(not isinstance(r, Exception) for r in shed) >= 2
    )
