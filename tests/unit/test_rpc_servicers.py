"""Servicers over fake cores on a real in-process grpc.aio server: conversions and status codes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc
import numpy as np
import pytest

from recstack.exploration.arms import ArmCache
from recstack.exploration.thompson import ThompsonSlatePolicy
from recstack.features.types import UserFeatures
from recstack.rpc.convert import candidates_from_proto, candidates_to_proto
from recstack.serving.errors import UnknownItemError
from recstack.v1 import (
    bandit_pb2,
    bandit_pb2_grpc,
    common_pb2,
    rerank_pb2,
    rerank_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
)
from services.bandit.servicer import BanditServicer
from services.rerank.servicer import RerankServicer
from services.retrieval.servicer import RetrievalServicer
from tests.grpc_support import in_process_channel


class FakeRetriever:
    def __init__(self) -> None:
        self.users: list[UserFeatures] = []

    def retrieve(self, user: UserFeatures, n: int, exclude: set[str]):
        self.users.append(user)
        items = [f"i{i}" for i in range(10) if f"i{i}" not in exclude][:n]
        scores = np.linspace(1, 0, len(items))
        return items, scores, {"two_tower": scores * 2}

    def retrieve_many(self, requests: list) -> list:
        return [self.retrieve(*r) for r in requests]


class FakeReranker:
    def __init__(self) -> None:
        self.components: list[dict] = []

    def rerank(
        self, user: UserFeatures, candidates: list[str], upstream: np.ndarray, model: str | None, components
    ) -> tuple[list[str], np.ndarray]:
        self.components.append(components)
        unknown = [c for c in candidates if c.startswith("x")]
        if unknown:
            raise UnknownItemError(unknown, "v1")
        order = np.argsort(upstream)  # reverse the upstream order
        return [candidates[i] for i in order], upstream[order]

    def rerank_many(self, requests: list) -> list:
        return [self.rerank(*r) for r in requests]


class Arms:
    def __init__(self) -> None:
        self.down = False
        self.calls = 0

    async def __call__(self, items: Sequence[str]) -> dict[str, tuple[float, float]]:
        self.calls += 1
        if self.down:
            raise ConnectionError("redis down")
        out = {x: (1.0, 100.0) for x in items}  # known bad arms
        out["i5"] = (100.0, 1.0)
        return out


@pytest.fixture
async def channel() -> AsyncIterator[tuple[grpc.aio.Channel, FakeRetriever, Arms, FakeReranker]]:
    retriever = FakeRetriever()
    reranker = FakeReranker()
    arms = Arms()
    policy = ThompsonSlatePolicy(explore_slots=1, seed=0)
    async with in_process_channel(
        (retrieval_pb2_grpc.add_RetrievalServicer_to_server, RetrievalServicer(retriever, "v1")),
        (rerank_pb2_grpc.add_RerankServicer_to_server, RerankServicer(reranker, "v1")),
        (bandit_pb2_grpc.add_BanditServicer_to_server, BanditServicer(policy, ArmCache(arms, ttl_s=60))),
    ) as ch:
        yield ch, retriever, arms, reranker


def items(*ids: str) -> list[common_pb2.ScoredItem]:
    return [common_pb2.ScoredItem(item_id=x, score=float(len(ids) - i)) for i, x in enumerate(ids)]


def columns(*ids: str, **components: list[float]) -> common_pb2.Candidates:
    return candidates_to_proto(list(ids), [float(len(ids) - i) for i in range(len(ids))], components)


async def test_retrieve_converts_user_and_excludes(channel) -> None:  # noqa: ANN001
    ch, retriever, _, _ = channel
    stub = retrieval_pb2_grpc.RetrievalStub(ch)
    user = common_pb2.UserFeatures(user_id="u1", recent_items=["i9"], genre_scores={"Drama": 0.5})
    reply = await stub.Retrieve(retrieval_pb2.RetrieveRequest(user=user, n=3, exclude_items=["i0"]))
    ids, scores, components = candidates_from_proto(reply.candidates)
    assert ids == ["i1", "i2", "i3"]
    assert reply.model_version == "v1"
    assert retriever.users[0].recent_items == ["i9"]
    assert retriever.users[0].genre_scores == {"Drama": pytest.approx(0.5)}
    np.testing.assert_allclose(components["two_tower"], 2 * scores)


@pytest.mark.parametrize("n", [0, -1, 2001])
async def test_retrieve_rejects_bad_n(channel, n: int) -> None:  # noqa: ANN001
    stub = retrieval_pb2_grpc.RetrievalStub(channel[0])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Retrieve(retrieval_pb2.RetrieveRequest(n=n))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"n must be between 1 and 2000, got {n}" in info.value.details()


async def test_rerank_orders_and_maps_unknown_items(channel) -> None:  # noqa: ANN001
    stub = rerank_pb2_grpc.RerankStub(channel[0])
    reranker = channel[3]
    reply = await stub.Rerank(rerank_pb2.RerankRequest(candidates=columns("a", "b", "c")))
    assert list(reply.candidates.item_ids) == ["c", "b", "a"]
    # "b" has no such score (NaN): the core gets it as NaN
    await stub.Rerank(rerank_pb2.RerankRequest(candidates=columns("a", "b", two_tower=[0.25, float("nan")])))
    got = reranker.components[-1]["two_tower"]
    assert got[0] == 0.25 and np.isnan(got[1])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Rerank(rerank_pb2.RerankRequest(candidates=columns("a", "x1")))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown item ids 'x1'" in info.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Rerank(rerank_pb2.RerankRequest(candidates=columns("a"), model="lstm"))
    assert "model must be one of" in info.value.details()
    misaligned = common_pb2.Candidates(item_ids=["a", "b"], scores=[1.0])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Rerank(rerank_pb2.RerankRequest(candidates=misaligned))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "candidates.scores holds 1 values for 2 item_ids" in info.value.details()


async def test_bandit_explores_with_propensities_and_serves_stale_state(channel) -> None:  # noqa: ANN001
    ch, _, arms, _ = channel
    stub = bandit_pb2_grpc.BanditStub(ch)
    cands = items(*[f"i{i}" for i in range(8)])
    reply = await stub.Explore(bandit_pb2.ExploreRequest(candidates=cands, k=3))
    assert [x.item_id for x in reply.items][:2] == ["i0", "i1"]
    assert reply.items[2].item_id == "i5"  # the strong arm takes the exploration slot
    assert [x.propensity for x in reply.items][:2] == [1.0, 1.0]
    assert 0.5 < reply.items[2].propensity <= 1.0
    assert not reply.stale_state and reply.policy == "thompson"

    arms.down = True
    more = items(*[f"j{i}" for i in range(8)])  # not cached: needs Redis
    reply = await stub.Explore(bandit_pb2.ExploreRequest(candidates=more, k=3, explore_slots=2))
    assert reply.stale_state
    assert len(reply.items) == 3 and reply.items[0].item_id == "j0"

    for bad, message in (
        (bandit_pb2.ExploreRequest(candidates=cands, k=0), "k must be >= 1"),
        (bandit_pb2.ExploreRequest(candidates=cands, k=2, policy="greedy"), "policy must be"),
        (bandit_pb2.ExploreRequest(candidates=items("a", "a"), k=2), "distinct"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Explore(bad)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in info.value.details()


async def test_arm_cache_ttl_and_stale_fallback() -> None:
    now = [0.0]
    arms = Arms()
    cache = ArmCache(arms, ttl_s=5, clock=lambda: now[0])
    got, stale = await cache.get(["i5", "i6"])
    assert got == {"i5": (100.0, 1.0), "i6": (1.0, 100.0)} and not stale and arms.calls == 1
    await cache.get(["i5", "i6"])
    assert arms.calls == 1  # fresh: from the cache
    now[0] = 10.0
    arms.down = True
    got, stale = await cache.get(["i5"])
    assert stale and got == {"i5": (100.0, 1.0)}  # expired entry served when Redis is down
