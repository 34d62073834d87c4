"""Thompson sampling per user segment: segment ids, the borrowed prior, the policy and its draw
cache, the arm cache, the bandit servicer, the gateway (segment in the request and the impression)
and, against a real redis-server, two segments that learn opposite preferences."""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator, Sequence

import grpc
import numpy as np
import pytest
import redis.asyncio as aioredis

from recstack.events import new_event
from recstack.experiments.config import parse_experiments
from recstack.exploration.arms import ArmCache
from recstack.exploration.segments import (
    SEGMENT_CONTEXT_KEY,
    is_valid_segment,
    parse_segment_by,
    request_segment,
    safe_segment,
    segment_beta_params,
    top_genre,
)
from recstack.exploration.thompson import PolicyError, ThompsonSlatePolicy
from recstack.features.keys import Keys
from recstack.features.store import FeatureStore
from recstack.features.types import UserFeatures
from recstack.features.writer import FeatureWriter
from recstack.serving.chain import Chain
from recstack.serving.stages import LocalBandit, StageResult, build_stages
from recstack.v1 import bandit_pb2, bandit_pb2_grpc, common_pb2, gateway_pb2
from services.bandit.servicer import BanditServicer
from services.gateway.servicer import Recommender, impression_context
from tests.grpc_support import in_process_channel
from tests.helpers import POPULAR, FakeRanking, FakeRerank, FakeRetrieval, FakeStore

NAN = (math.nan, math.nan)
T0 = 1_700_000_000.0

# --- segment ids and segment_by ---------------------------------------------------------------


@pytest.mark.parametrize("segment", ["device:mobile", "genre:Sci-Fi", "a", "x" * 64, "v1.2_b-c:d"])
def test_valid_segments_pass_unchanged(segment: str) -> None:
    assert is_valid_segment(segment)
    assert safe_segment(segment) == segment


@pytest.mark.parametrize(
    "raw", ["genre:Children's", "device:mobile phone", "pays:Côte", "a/b", "x" * 65, "k:\n"]
)
def test_unsafe_values_map_to_distinct_valid_segments(raw: str) -> None:
    assert not is_valid_segment(raw)
    mapped = safe_segment(raw)
    assert is_valid_segment(mapped) and len(mapped) <= 64
    assert mapped == safe_segment(raw)  # deterministic
    assert mapped.startswith(re.sub(r"[^A-Za-z0-9_.:-]", "_", raw)[:55] + ".")  # readable part + hash
    # values that sanitise to the same readable text stay distinct
    assert safe_segment("device:mobile phone") != safe_segment("device:mobile/phone")
    assert safe_segment("") == ""


def test_segment_arm_keys_never_collide_with_each_other_or_global_arms() -> None:
    keys = Keys("p:")
    pairs = [("device:tv", "m0"), ("device", "tv:m0"), ("device:tv:4k", "m0"), ("device:tv", "4k:m0")]
    segment_keys = {keys.bandit_segment_arm(seg, item) for seg, item in pairs}
    assert len(segment_keys) == len(pairs)
    # an item id that spells out another arm's key suffix still gets its own key
    tricky_items = ["seg:device:tv:m0", "seg:device:tv|m0", "device:tv|m0"]
    assert not segment_keys & {keys.bandit_arm(item) for item in tricky_items}
    assert all(is_valid_segment(seg) and "|" not in seg for seg, _ in pairs)


def test_parse_segment_by() -> None:
    assert parse_segment_by("none") == "" and parse_segment_by("") == ""
    assert parse_segment_by("top_genre") == "top_genre"
    assert parse_segment_by("attribute:device") == "attribute:device"
    for bad in ("attribute:", "attribute:a b", "attribute:x:y", "genre", "attr:device", "top-genre"):
        with pytest.raises(ValueError, match="must be 'none', 'top_genre' or 'attribute:NAME'"):
            parse_segment_by(bad)


def test_request_segment_from_attribute_and_top_genre() -> None:
    attrs = {"device": "mobile", "page": "home", "odd": "a b"}
    scores = {"Drama": 0.2, "Action": 0.5, "Comedy": 0.5, "Bad": math.nan}
    assert request_segment("attribute:device", attrs, {}) == "device:mobile"
    assert request_segment("attribute:missing", attrs, {}) == ""
    assert request_segment("attribute:odd", attrs, {}) == safe_segment("odd:a b")
    assert is_valid_segment(request_segment("attribute:odd", attrs, {}))
    assert top_genre(scores) == "Action"  # tie with Comedy: the smaller name
    assert request_segment("top_genre", attrs, scores) == "genre:Action"
    assert request_segment("top_genre", attrs, {}) == ""  # no genres: no segment
    assert request_segment("top_genre", attrs, {"Drama": 0.0}) == ""
    assert request_segment("", attrs, scores) == ""


# --- the borrowed prior -----------------------------------------------------------------------


def test_borrowed_prior_scales_global_evidence_to_the_strength() -> None:
    # global: 10 successes, 30 failures (stored with the Beta(1, 1): 11, 31); segment: 2 / 0
    glob = np.array([[11.0, 31.0]])
    seg = np.array([[3.0, 1.0]])
    a, b = segment_beta_params(glob, seg, (1.0, 1.0), strength=10)
    # 40 observations scaled to 10: 2.5 successes, 7.5 failures lent to the prior
    assert a == pytest.approx([1.0 + 2.5 + 2.0]) and b == pytest.approx([1.0 + 7.5 + 0.0])
    a, b = segment_beta_params(glob, seg, (2.0, 3.0), strength=0)  # independent segments
    assert a == pytest.approx([2.0 + 2.0]) and b == pytest.approx([3.0])
    a, b = segment_beta_params(glob, seg, (1.0, 1.0), strength=100)  # fewer than the strength: all of it
    assert a == pytest.approx([1.0 + 10 + 2]) and b == pytest.approx([1.0 + 30])


def test_borrowed_prior_for_cold_and_invalid_arms() -> None:
    glob = np.array([NAN, [5.0, 1.0], NAN, [-1.0, 4.0], [math.inf, 2.0]])
    seg = np.array([NAN, NAN, [1.0, 4.0], NAN, NAN])
    a, b = segment_beta_params(glob, seg, (0.5, 2.0), strength=10)
    # cold everywhere -> the cold-item prior; global only -> prior + global (4 <= 10);
    # segment only -> prior + segment; invalid stored values count as no arm
    assert a == pytest.approx([0.5, 4.5, 0.5, 0.5, 0.5])
    assert b == pytest.approx([2.0, 2.0, 5.0, 2.0, 2.0])
    with pytest.raises(ValueError, match="strength"):
        segment_beta_params(glob, seg, (1.0, 1.0), strength=-1)


def test_empty_segment_matches_the_global_arm_at_default_priors() -> None:
    """A segment without data and a global arm within the strength draws exactly the global posterior."""
    glob = np.array([[4.0, 7.0], [1.0, 1.0]])
    a, b = segment_beta_params(glob, np.array([NAN, NAN]), (1.0, 1.0), strength=10)
    assert a == pytest.approx([4.0, 1.0]) and b == pytest.approx([7.0, 1.0])


# --- the policy -------------------------------------------------------------------------------

POOL = [f"i{j}" for j in range(8)]
SCORES = np.linspace(1.0, 0.0, 8)


def test_policy_segment_draws_from_the_segment_posterior() -> None:
    policy = ThompsonSlatePolicy(explore_slots=1, seed=0, segment_prior_strength=5)
    arms = {x: (1.0, 40.0) for x in POOL}  # globally every item is bad ...
    arms["i6"] = (60.0, 2.0)  # ... except i6
    seg_arms = {"i3": (80.0, 1.0), "i6": (1.0, 60.0)}  # in segment s: i3 is great, i6 is bad
    a, b = policy.segment_params(POOL[2:], arms, seg_arms)
    # i3: global 0 / 39 scaled to 5 -> 0 / 5, plus the segment's 79 / 0
    assert (a[1], b[1]) == pytest.approx((1.0 + 79.0, 1.0 + 5.0))
    global_pick = policy.select(POOL, SCORES, k=3, arms=arms)[0][-1]
    seg_items, _, seg_props = policy.select(POOL, SCORES, k=3, arms=arms, segment="s", segment_arms=seg_arms)
    assert global_pick == "i6" and seg_items[-1] == "i3" and seg_props[-1] > 0.9
    with pytest.raises(PolicyError, match="segment_prior_strength"):
        ThompsonSlatePolicy(segment_prior_strength=-1)


def test_draw_cache_keeps_each_segments_samples_and_propensities_stay_right() -> None:
    """Requests alternating between segments with opposite arms: every reported propensity is that
    of the request's own posterior, and each segment keeps its own cached samples."""
    policy = ThompsonSlatePolicy(explore_slots=1, seed=4, n_draws=2000, segment_prior_strength=0)
    seg_arms = {
        "a": {"i4": (300.0, 1.0), "i5": (1.0, 300.0)},
        "b": {"i4": (1.0, 300.0), "i5": (300.0, 1.0)},
    }
    props: dict[str, dict[str, float]] = {"a": {}, "b": {}}
    for n in range(200):
        seg = "ab"[n % 2]
        items, _, p = policy.select(POOL, SCORES, k=3, arms={}, segment=seg, segment_arms=seg_arms[seg])
        props[seg].setdefault(items[-1], float(p[-1]))
        assert props[seg][items[-1]] == float(p[-1])  # cached: the same estimate every time
    assert props["a"]["i4"] > 0.9 and "i5" not in props["a"]
    assert props["b"]["i5"] > 0.9 and "i4" not in props["b"]
    assert len(policy._draws) == 2 * len(POOL[2:])  # one row per (segment, item)


# --- arm cache --------------------------------------------------------------------------------


class SegmentArms:
    """A fake FeatureStore: global arms and per-segment arms, counting round trips."""

    def __init__(self) -> None:
        self.global_arms = {"i1": (5.0, 2.0)}
        self.segments = {"s1": {"i1": (2.0, 9.0)}, "s2": {"i2": (3.0, 1.0)}}
        self.reads: list[tuple[tuple[str, ...], str]] = []

    async def get_arms(self, items: Sequence[str]) -> dict[str, tuple[float, float]]:
        self.reads.append((tuple(items), ""))
        return {x: self.global_arms[x] for x in items if x in self.global_arms}

    async def get_segment_arms(self, items: Sequence[str], segment: str):  # noqa: ANN201
        self.reads.append((tuple(items), segment))
        seg = self.segments.get(segment, {})
        return (
            {x: self.global_arms[x] for x in items if x in self.global_arms},
            {x: seg[x] for x in items if x in seg},
        )


async def test_arm_cache_reads_global_and_segment_arms_in_one_call_and_caches_both() -> None:
    store = SegmentArms()
    now = [0.0]
    cache = ArmCache(store.get_arms, ttl_s=5, clock=lambda: now[0], segment_reader=store.get_segment_arms)
    glob, seg, stale = await cache.get_segmented(["i1", "i2"], "s1")
    assert (glob, seg, stale) == ({"i1": (5.0, 2.0)}, {"i1": (2.0, 9.0)}, False)
    assert store.reads == [(("i1", "i2"), "s1")]
    assert await cache.get(["i1"]) == ({"i1": (5.0, 2.0)}, False)  # global entries came with it
    _, seg, _ = await cache.get_segmented(["i1", "i2"], "s1")
    assert seg == {"i1": (2.0, 9.0)} and len(store.reads) == 1  # fresh: no read
    _, seg, _ = await cache.get_segmented(["i2"], "s2")  # another segment: its own entries
    assert seg == {"i2": (3.0, 1.0)} and store.reads[-1] == (("i2",), "s2")
    now[0] = 6.0
    await cache.get_segmented(["i1"], "s1")
    assert store.reads[-1] == (("i1",), "s1")  # expired: read again
    with pytest.raises(RuntimeError, match="segment_reader"):
        await ArmCache(store.get_arms).get_segmented(["i1"], "s1")


# --- the bandit servicer ----------------------------------------------------------------------


@pytest.fixture
async def bandit_stub() -> AsyncIterator[bandit_pb2_grpc.BanditStub]:
    store = SegmentArms()
    store.global_arms = {f"i{j}": (1.0, 50.0) for j in range(8)}
    store.segments = {"device:tv": {"i6": (90.0, 1.0)}}
    cache = ArmCache(store.get_arms, ttl_s=60, segment_reader=store.get_segment_arms)
    servicer = BanditServicer(ThompsonSlatePolicy(explore_slots=1, seed=0), cache)
    async with in_process_channel((bandit_pb2_grpc.add_BanditServicer_to_server, servicer)) as channel:
        yield bandit_pb2_grpc.BanditStub(channel)


async def test_servicer_explores_the_segment_and_rejects_invalid_segments(bandit_stub) -> None:  # noqa: ANN001
    candidates = [common_pb2.ScoredItem(item_id=f"i{j}", score=1.0 - j / 8) for j in range(8)]
    request = bandit_pb2.ExploreRequest(candidates=candidates, k=3, segment="device:tv")
    reply = await bandit_stub.Explore(request)
    assert reply.items[-1].item_id == "i6" and reply.items[-1].propensity > 0.9
    request.segment = "device:smart tv"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await bandit_stub.Explore(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "segment must be 1..64 characters" in info.value.details()


# --- the gateway ------------------------------------------------------------------------------


class SegmentStore(FakeStore):
    """FakeStore with segment arms: every item bad, except ``best[segment]`` in its segment."""

    def __init__(self, features: dict[str, UserFeatures], best: dict[str, str]):
        super().__init__(features)
        self.best = best
        self.segments_read: list[str] = []

    async def get_segment_arms(self, items: Sequence[str], segment: str):  # noqa: ANN201
        self.segments_read.append(segment)
        glob = {x: (1.0, 50.0) for x in items}
        best = self.best.get(segment)
        return glob, ({best: (200.0, 1.0)} if best in items else {})


def segment_recommender(segment_by: str, store: SegmentStore, published: list) -> Recommender:
    cfg = parse_experiments({"default_pipeline": {"bandit": {"slots": 1, "segment_by": segment_by}}})
    cache = ArmCache(store.get_arms, segment_reader=store.get_segment_arms)
    bandit = LocalBandit(ThompsonSlatePolicy(seed=0), cache)
    chain = Chain(build_stages(store, FakeRetrieval(), FakeRanking(), FakeRerank(), bandit, POPULAR), POPULAR)

    class Publisher:
        def publish(self, state) -> None:  # noqa: ANN001 - the ImpressionPublisher interface
            published.append(state)

    return Recommender(chain, {"u1"}, cfg, Publisher())  # type: ignore[arg-type]


async def test_gateway_sends_the_attribute_segment_and_records_it_in_the_impression() -> None:
    store = SegmentStore({}, {"device:tv": "i20", "device:mobile": "i30"})
    published: list = []
    rec = segment_recommender("attribute:device", store, published)
    picks = {}
    for device in ("tv", "mobile"):
        request = gateway_pb2.RecommendRequest(user_id="u1", k=4)
        request.context.attributes.update({"device": device, SEGMENT_CONTEXT_KEY: "forged"})
        reply = await rec.recommend(request)
        assert "bandit" in reply.stages and "bandit" not in reply.skipped
        picks[device] = reply.items[-1].item_id
        context = impression_context(published[-1])
        assert context[SEGMENT_CONTEXT_KEY] == f"device:{device}"  # the client's value was dropped
        assert context["device"] == device
    assert store.segments_read == ["device:tv", "device:mobile"]
    assert picks == {"tv": "i20", "mobile": "i30"}

    # an unsafe attribute value is mapped to a valid id; no attribute: no segment, global arms
    odd = gateway_pb2.RecommendRequest(user_id="u1", k=4)
    odd.context.attributes["device"] = "smart tv/4k"
    reply = await rec.recommend(odd)
    assert "bandit" not in reply.skipped
    assert impression_context(published[-1])[SEGMENT_CONTEXT_KEY] == safe_segment("device:smart tv/4k")
    assert is_valid_segment(store.segments_read[-1])
    reads = len(store.segments_read)
    reply = await rec.recommend(gateway_pb2.RecommendRequest(user_id="u1", k=4))
    assert "bandit" in reply.stages and len(store.segments_read) == reads
    assert SEGMENT_CONTEXT_KEY not in impression_context(published[-1])


async def test_gateway_top_genre_segment_comes_from_the_users_features() -> None:
    users = {"u1": UserFeatures("u1", genre_scores={"Drama": 0.7, "Action": 0.2})}
    store = SegmentStore(users, {"genre:Drama": "i25"})
    published: list = []
    rec = segment_recommender("top_genre", store, published)
    reply = await rec.recommend(gateway_pb2.RecommendRequest(user_id="u1", k=4))
    assert reply.items[-1].item_id == "i25"
    assert impression_context(published[-1])[SEGMENT_CONTEXT_KEY] == "genre:Drama"
    assert store.segments_read == ["genre:Drama"]


async def test_local_bandit_rejects_an_invalid_segment() -> None:
    store = SegmentStore({}, {})
    bandit = LocalBandit(
        ThompsonSlatePolicy(seed=0), ArmCache(store.get_arms, segment_reader=store.get_segment_arms)
    )
    user = UserFeatures("u1")
    with pytest.raises(ValueError, match="not a valid segment"):
        await bandit.explore(user, POOL, SCORES, 3, "thompson", 1, segment="a b")
    result = await bandit.explore(user, POOL, SCORES, 3, "thompson", 1, segment="ok")
    assert isinstance(result, StageResult) and len(result.items) == 3


# --- end to end over Redis: two segments, opposite click behaviour ----------------------------


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield r
    await r.aclose()


async def test_two_segments_with_opposite_clicks_prefer_different_items(client: aioredis.Redis) -> None:
    """Mobile users click "a", desktop users click "b" (both items are served every time). After the
    stream wrote rewards and zero rewards, the segment draws prefer each segment's own item while
    the global arms see a tie."""
    keys = Keys("seg:")
    writer = FeatureWriter(client, keys=keys, reward_window_s=10)
    events = []
    for n in range(30):
        for seg, clicked in (("device:mobile", "a"), ("device:desktop", "b")):
            req = f"r-{seg}-{n}"
            ctx = {SEGMENT_CONTEXT_KEY: seg}
            events.append(
                new_event("u", "impression", request_id=req, items=["a", "b"], context=ctx, timestamp=T0)
            )
            events.append(new_event("u", "click", clicked, request_id=req, timestamp=T0 + 1))
    await writer.apply(events)
    await writer.settle(now=T0 + 100)
    store = FeatureStore(client, keys)
    cache = ArmCache(store.get_arms, segment_reader=store.get_segment_arms)
    policy = ThompsonSlatePolicy(explore_slots=1, seed=0, segment_prior_strength=10)
    glob, _, _ = await cache.get_segmented(["a", "b"], "device:mobile")
    assert glob == {"a": (31.0, 31.0), "b": (31.0, 31.0)}  # globally a tie
    wins = {}
    for seg in ("device:mobile", "device:desktop"):
        arms, seg_arms, stale = await cache.get_segmented(["top", "a", "b"], seg)
        assert not stale
        picks = [
            policy.select(["top", "a", "b"], [3.0, 2.0, 1.0], 2, arms, segment=seg, segment_arms=seg_arms)[0][
                -1
            ]
            for _ in range(200)
        ]
        wins[seg] = {x: picks.count(x) for x in ("a", "b")}
    assert wins["device:mobile"]["a"] > 190 and wins["device:desktop"]["b"] > 190
