"""Gateway integrity: minted request ids, propensities, consumed items, cold-start popularity."""

from __future__ import annotations

from recstack.features.types import UserFeatures
from recstack.v1 import gateway_pb2, gateway_pb2_grpc
from services.gateway.servicer import GatewayServicer, Recommender
from tests.grpc_support import in_process_channel
from tests.helpers import FakeRanking, FakeRerank, FakeRetrieval, FakeStore, make_chain


class Publisher:
    def __init__(self) -> None:
        self.request_ids: list[str] = []

    def publish(self, state) -> None:  # noqa: ANN001
        self.request_ids.append(state.request_id)


async def test_callers_sharing_an_id_get_their_own_slates() -> None:
    store = FakeStore({u: UserFeatures(u, recent_items=["i0"]) for u in ("alice", "bob")})
    publisher = Publisher()
    recommender = Recommender(
        make_chain(store, FakeRetrieval(), FakeRanking(), FakeRerank()),
        {"alice", "bob"},
        impressions=publisher,
    )
    servicer = GatewayServicer(recommender)
    async with in_process_channel((gateway_pb2_grpc.add_GatewayServicer_to_server, servicer)) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        replies = [
            await stub.Recommend(
                gateway_pb2.RecommendRequest(user_id=u, k=3), metadata=(("x-request-id", "same"),)
            )
            for u in ("alice", "bob")
        ]
    ids = [r.request_id for r in replies]
    assert len(set(ids)) == 2 and "same" not in ids
    assert publisher.request_ids == ids  # the impressions carry the minted ids the replies return


async def test_items_placed_without_exploration_carry_propensity_one() -> None:
    import numpy as np

    from recstack.serving.chain import Chain, RecommendState

    store = FakeStore({"u1": UserFeatures("u1", recent_items=["i0"])})
    no_bandit = Chain(
        [
            s
            for s in make_chain(store, FakeRetrieval(), FakeRanking(), FakeRerank()).stages
            if s.name != "bandit"
        ]
    )
    publisher = Publisher()
    reply = await Recommender(no_bandit, {"u1"}, impressions=publisher).recommend(
        gateway_pb2.RecommendRequest(user_id="u1", k=4)
    )
    assert "bandit" not in reply.stages and [x.propensity for x in reply.items] == [1.0] * 4
    state = RecommendState(request_id="r", user_id="u", k=3, candidates=["a", "b", "c"])
    state.propensities = np.array([1.0, 0.4, 0.0])  # a filled slot carries no policy probability
    assert state.served_propensities().tolist() == [1.0, 0.4, 1.0]


async def test_consumed_items_never_come_back_unless_allowed() -> None:
    consumed = [f"i{k}" for k in range(60)]  # more than the 50 recent items
    store = FakeStore({"u1": UserFeatures("u1", recent_items=consumed[:50], consumed=consumed)})
    retrieval = FakeRetrieval()
    rec = Recommender(make_chain(store, retrieval, FakeRanking(), FakeRerank()), {"u1"})
    reply = await rec.recommend(gateway_pb2.RecommendRequest(user_id="u1", k=10))
    assert set(consumed) <= retrieval.seen_exclude
    assert not {x.item_id for x in reply.items} & set(consumed)
    allowed = gateway_pb2.RecommendContext(allow_consumed=True)
    await rec.recommend(gateway_pb2.RecommendRequest(user_id="u1", k=10, context=allowed))
    assert not retrieval.seen_exclude & set(consumed)


class TrendingStore(FakeStore):
    def __init__(self, pairs: list[tuple[str, float]]):
        super().__init__()
        self.pairs = pairs

    async def get_popular_scores(self, n: int, half_life_s: float) -> list[tuple[str, float]]:
        return self.pairs[:n]


async def test_cold_start_popularity_needs_support_before_the_stream_moves_an_item() -> None:
    from recstack.serving.chain import RecommendState
    from recstack.serving.stages import PopularityStage

    catalog = [f"i{k}" for k in range(10)]
    # one user rated three tail items (weight 1 each); i5 is really trending; "new" is not in the bundle
    pairs = [("new", 50.0), ("i5", 12.0), ("i9", 1.0), ("i8", 1.0), ("i7", 1.0)]
    stage = PopularityStage(TrendingStore(pairs), catalog, n=5, min_support=5.0)
    state = RecommendState(request_id="r", user_id="cold", k=5)
    await stage(state)
    assert state.candidates == ["i5", "i0", "i1", "i2", "i3"]
    assert state.model_versions["popularity"] == "popularity"
    quiet = RecommendState(request_id="r", user_id="cold", k=5)
    await PopularityStage(TrendingStore(pairs[2:]), catalog, n=5)(quiet)
    assert quiet.candidates == catalog[:5] and quiet.model_versions["popularity"] == "catalog_popularity"
