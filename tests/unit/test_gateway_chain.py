"""The gateway chain with in-process fake backends: ordering, degradation, fallbacks, cold start."""

from __future__ import annotations

import asyncio
from collections.abc import Collection

import numpy as np
import pytest

from recstack.features.types import UserFeatures
from recstack.serving.chain import RecommendState
from recstack.serving.stages import StageResult
from recstack.v1 import gateway_pb2
from services.gateway.servicer import Recommender
from services.gateway.validation import RequestError
from tests.helpers import FakeRanking, FakeRerank, FakeRetrieval, FakeStore, make_chain


def state(
    user_id: str = "u1", k: int = 5, known: bool = True, exclude: Collection[str] = ()
) -> RecommendState:
    return RecommendState(request_id="r1", user_id=user_id, k=k, known_user=known, exclude=set(exclude))


async def test_full_chain_runs_every_stage() -> None:
    store = FakeStore({"u1": UserFeatures("u1", recent_items=["i0", "i1"])})
    rerank = FakeRerank()
    retrieval = FakeRetrieval()
    chain = make_chain(store, retrieval, FakeRanking(), rerank)
    s = await chain.run(state(exclude=["i2"]))
    assert s.stages_ran == ["features", "retrieval", "ranking", "rerank", "bandit"]
    assert not s.degraded and s.skipped == {}
    assert len(s.candidates) == 5 and len(set(s.candidates)) == 5
    assert {"i0", "i1", "i2"} <= retrieval.seen_exclude
    assert not {"i0", "i1", "i2"} & set(s.candidates)
    assert s.candidates[:4] == ["i49", "i48", "i47", "i46"]  # ranking reversed the retrieval order
    assert s.propensities is not None and s.propensities[0] == 1.0 and 0 < s.propensities[-1] <= 1
    assert rerank.calls == 1
    # the rerank stage gets every earlier stage's scores of each candidate (its fusion reads them)
    sent = rerank.components[0]
    assert set(sent) == {"retrieval", "two_tower", "p_click"}
    first = rerank.items[0].index("i49")
    assert sent["retrieval"][first] == pytest.approx(1 / 47) and sent["p_click"][first] == 0.5


async def test_failing_stage_is_skipped_and_order_kept() -> None:
    store = FakeStore({"u1": UserFeatures("u1", recent_items=["i0"])})
    chain = make_chain(store, FakeRetrieval(), FakeRanking(fail=True), FakeRerank())
    s = await chain.run(state())
    assert s.degraded
    assert "ranking" in s.skipped and "boom" in s.skipped["ranking"]
    assert "ranking" not in s.stages_ran
    assert s.candidates[:4] == ["i1", "i2", "i3", "i4"]  # retrieval order kept


async def test_slow_stage_times_out() -> None:
    store = FakeStore({"u1": UserFeatures("u1", recent_items=["i0"])})
    chain = make_chain(store, FakeRetrieval(), FakeRanking(delay=1.0), FakeRerank())
    s = await chain.run(state())
    assert s.degraded and s.skipped["ranking"].startswith("timeout after 50 ms")
    assert s.candidates[0] == "i1"


async def test_retrieval_down_falls_back_to_popularity() -> None:
    store = FakeStore({"u1": UserFeatures("u1", recent_items=["i49"])})
    chain = make_chain(store, FakeRetrieval(fail=True), FakeRanking(), FakeRerank())
    s = await chain.run(state(exclude=["i48"]))
    assert s.degraded and "retrieval" in s.skipped
    assert "popularity" in s.stages_ran
    assert store.popular_calls == 1
    assert not {"i48", "i49"} & set(s.candidates)
    assert len(s.candidates) == 5


async def test_redis_down_degrades_features_and_cold_path_for_unknown_user() -> None:
    store = FakeStore(down=True)
    retrieval = FakeRetrieval()
    chain = make_chain(store, retrieval, FakeRanking(), FakeRerank())
    s = await chain.run(state(user_id="stranger", known=False))
    assert s.degraded and "features" in s.skipped
    assert s.stages_ran == ["popularity", "bandit"]
    assert s.candidates[0] == "i49"  # catalogue popularity
    assert "bandit" in s.skipped  # arm statistics stale


async def test_known_user_without_features_takes_full_path() -> None:
    chain = make_chain(FakeStore(), FakeRetrieval(), FakeRanking(), FakeRerank())
    s = await chain.run(state(known=True))
    assert s.stages_ran == ["features", "retrieval", "ranking", "bandit"]  # no recent items: no rerank
    assert not s.degraded


async def test_short_candidate_list_is_filled() -> None:
    class Few(FakeRetrieval):
        async def retrieve(self, user: UserFeatures, n: int, exclude: Collection[str]) -> StageResult:
            return StageResult(["i0", "i1"], np.array([2.0, 1.0]), "v1")

    chain = make_chain(FakeStore(), Few(), FakeRanking(), FakeRerank())
    s = await chain.run(state(k=5))
    assert len(s.candidates) == 5 and len(set(s.candidates)) == 5
    assert "fill" in s.stages_ran


async def test_recommender_builds_reply_and_rejects_bad_requests() -> None:
    store = FakeStore({"u1": UserFeatures("u1", recent_items=["i0"])})
    rec = Recommender(make_chain(store, FakeRetrieval(), FakeRanking(fail=True), FakeRerank()), {"u1"})
    reply = await rec.recommend(gateway_pb2.RecommendRequest(user_id="u1", k=3))
    assert len(reply.items) == 3
    assert reply.degraded and "ranking" in reply.skipped
    assert reply.variant in {"control", "treatment"}
    assert reply.request_id
    assert list(reply.stages) == ["features", "retrieval", "rerank", "bandit"]
    for item in reply.items:  # the stages' named scores of every served item
        assert set(item.scores) == {"retrieval", "two_tower"} and item.scores["two_tower"] == 0.5
    with pytest.raises(RequestError, match="k must be between 1 and 100, got 0"):
        await rec.recommend(gateway_pb2.RecommendRequest(user_id="u1", k=0))


async def test_caller_deadline_cuts_stages() -> None:
    store = FakeStore({"u1": UserFeatures("u1", recent_items=["i0"])})
    chain = make_chain(store, FakeRetrieval(), FakeRanking(delay=0.03), FakeRerank())
    s = state()
    s.deadline = asyncio.get_running_loop().time() + 0.01  # less than the ranking stage needs
    await chain.run(s)
    assert s.degraded
    assert s.skipped["ranking"].startswith("timeout after")
    assert s.skipped["bandit"] == "request deadline reached"
    assert len(s.candidates) == 5  # the reply is still built from what ran


async def test_use_bundle_switches_known_users_and_popularity() -> None:
    from services.gateway.servicer import BundleLists

    rec = Recommender(make_chain(FakeStore(), FakeRetrieval(), FakeRanking(), FakeRerank()), set())
    reply = await rec.recommend(
        gateway_pb2.RecommendRequest(user_id="u7", k=3, context={"force_variant": "control"})
    )
    assert list(reply.stages) == ["features", "popularity", "bandit"]  # unknown: cold start
    assert reply.items[0].item_id == "i49"
    rec.use_bundle(BundleLists("v2", ["i3", "i4", "i5"], frozenset({"u7"})))
    reply = await rec.recommend(
        gateway_pb2.RecommendRequest(user_id="u7", k=3, context={"force_variant": "control"})
    )
    assert list(reply.stages) == ["features", "retrieval", "ranking", "bandit"]
    reply = await rec.recommend(
        gateway_pb2.RecommendRequest(user_id="stranger", k=3, context={"force_variant": "control"})
    )
    assert reply.items[0].item_id == "i3"  # the new bundle's popularity list
