"""FeatureWriter Lua logic and FeatureStore reads against a real redis-server (tests/conftest.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from recstack.events import new_event
from recstack.features.catalog import CatalogError, ItemCatalog
from recstack.features.keys import Keys
from recstack.features.store import FeatureStore
from recstack.features.writer import EventWeights, FeatureWriter

GENRES = {"i1": ["Action", "Comedy"], "i2": ["Drama"], "i3": []}
T0 = 1_700_000_000.0


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield r
    await r.aclose()


def ev(user: str, etype: str, item: str = "", ts: float = T0, **kw: object):
    return new_event(user, etype, item, timestamp=ts, **kw)


async def test_recent_items_newest_first_dedup_and_capped(client: aioredis.Redis) -> None:
    writer = FeatureWriter(client, recent_cap=3)
    events = [ev("u", "view", f"i{n}", T0 + n) for n in range(5)] + [ev("u", "click", "i3", T0 + 9)]
    result = await writer.apply(events)
    assert result.applied == 6 and result.duplicates == 0
    assert await client.lrange("{u:u}:recent_items", 0, -1) == ["i3", "i4", "i2"]


async def test_genre_ema_decays_all_and_adds_weighted(client: aioredis.Redis) -> None:
    writer = FeatureWriter(client, catalog=GENRES)
    await writer.apply(
        [ev("u", "click", "i1"), ev("u", "purchase", "i2"), ev("u", "rating", "i3", rating=4.0)]
    )
    scores = {k: float(v) for k, v in (await client.hgetall("{u:u}:genre_scores")).items()}
    # click i1: Action=Comedy=0.1; purchase i2: decay 0.9, Drama += 0.2; rating i3 (no genres): decay 0.9
    assert scores["Action"] == pytest.approx(0.1 * 0.9 * 0.9)
    assert scores["Comedy"] == pytest.approx(0.1 * 0.9 * 0.9)
    assert scores["Drama"] == pytest.approx(0.2 * 0.9)


async def test_configurable_weights_and_popularity(client: aioredis.Redis) -> None:
    writer = FeatureWriter(client, catalog=GENRES, weights=EventWeights(view=0.25))
    await writer.apply([ev("a", "view", "i1"), ev("b", "view", "i1"), ev("a", "like", "i2")])
    pop = await client.zrevrange("{items:popularity}", 0, -1, withscores=True)
    assert pop == [("i2", 1.5), ("i1", 0.5)]
    assert float(await client.hget("{u:a}:genre_scores", "Action")) == pytest.approx(0.1 * 0.25 * 0.9)


async def test_counters_last_active_and_item_stats(client: aioredis.Redis) -> None:
    writer = FeatureWriter(client)
    await writer.apply(
        [ev("u", "click", "i1", T0 + 50), ev("u", "view", "i1", T0 + 10), ev("u", "session_start")]
    )
    stats = await client.hgetall("{u:u}:stats")
    assert stats["click"] == "1" and stats["view"] == "1" and stats["session_start"] == "1"
    assert stats["total"] == "2"  # session events are not interactions
    assert float(stats["last_active"]) == T0 + 50
    assert await client.hgetall("{i:i1}:stats") == {"click": "1", "view": "1"}


async def test_impression_counts_only(client: aioredis.Redis) -> None:
    writer = FeatureWriter(client)
    await writer.apply([ev("u", "impression", items=["i1", "i2"], request_id="r1")])
    assert await client.hget("{i:i1}:stats", "impression") == "1"
    assert await client.hget("{i:i2}:stats", "impression") == "1"
    assert await client.exists("{u:u}:recent_items", "{items:popularity}", "{i:i1}:ts") == 0


async def test_duplicate_event_ids_are_applied_once(client: aioredis.Redis) -> None:
    writer = FeatureWriter(client, dedup_ttl_s=60)
    click = ev("u", "click", "i1", request_id="r1")
    first = await writer.apply([click, click])
    again = await writer.apply([click])
    assert (first.applied, first.duplicates, again.applied, again.duplicates) == (1, 1, 0, 1)
    assert await client.hget("{u:u}:stats", "click") == "1"
    assert await client.hget("{i:i1}:ts", "alpha") == "2"
    assert 0 < await client.ttl(f"{{u:u}}:event:{click.event_id}") <= 60


async def test_rewards_and_windowed_zero_rewards(client: aioredis.Redis) -> None:
    writer = FeatureWriter(client, reward_window_s=30)
    store = FeatureStore(client)
    imp = ev("u", "impression", items=["i1", "i2", "i3"], request_id="r1", ts=T0)
    result = await writer.apply(
        [imp, ev("u", "click", "i1", T0 + 1, request_id="r1"), ev("u", "like", "i1", T0 + 2, request_id="r1")]
    )
    assert result.rewards == 1  # one reward per (request, item)
    assert (await writer.settle(now=T0 + 29)).requests == 0
    settled = await writer.settle(now=T0 + 31)
    assert (settled.requests, settled.zero_rewards) == (1, 2)
    arms = await store.get_arms(["i1", "i2", "i3", "never"])
    assert arms == {"i1": (2.0, 1.0), "i2": (1.0, 2.0), "i3": (1.0, 2.0)}
    assert (await writer.settle(now=T0 + 100)).requests == 0


async def test_click_without_request_id_is_no_reward(client: aioredis.Redis) -> None:
    await FeatureWriter(client).apply([ev("u", "click", "i1")])
    assert await client.exists("{i:i1}:ts") == 0


async def test_prefix_and_store_round_trip(client: aioredis.Redis) -> None:
    keys = Keys(prefix="t1:")
    writer = FeatureWriter(client, keys=keys, catalog=GENRES)
    await writer.apply([ev("u", "view", "i2", T0), ev("u", "click", "i1", T0 + 1)])
    features = await FeatureStore(client, keys).get_user_features("u")
    assert features.recent_items == ["i1", "i2"]
    assert set(features.genre_scores) == {"Action", "Comedy", "Drama"}
    assert features.counters == {"view": 1, "click": 1, "total": 2}
    assert features.last_active == T0 + 1
    assert await FeatureStore(client, keys).get_popular(1) == ["i1"]
    assert await client.exists("{u:u}:stats") == 0
    cold = await FeatureStore(client).get_user_features("nobody")
    assert cold.is_cold and cold.counters == {}


async def test_store_works_without_decode_responses(redis_url: str) -> None:
    raw_client = aioredis.Redis.from_url(redis_url)
    try:
        await FeatureWriter(raw_client, catalog=GENRES).apply([ev("u", "click", "i1", request_id="r")])
        store = FeatureStore(raw_client)
        features = await store.get_user_features("u")
        assert features.recent_items == ["i1"] and features.counters["click"] == 1
        assert await store.get_popular(5) == ["i1"]
        assert await store.get_arms(["i1"]) == {"i1": (2.0, 1.0)}
    finally:
        await raw_client.aclose()


async def test_script_reloaded_after_script_flush(client: aioredis.Redis) -> None:
    writer = FeatureWriter(client)
    await writer.apply([ev("u", "view", "i1")])
    await client.script_flush()
    assert (await writer.apply([ev("u", "view", "i2")])).applied == 1


def test_catalog_from_artifacts(tmp_path: Path) -> None:
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "catalog.json").write_text(json.dumps({"item_ids": ["i1"], "genres": {"i1": ["A"]}}))
    with pytest.raises(CatalogError, match="recstack train"):
        ItemCatalog.from_artifacts(tmp_path)
    (tmp_path / "CURRENT").write_text("v1\n")
    catalog = ItemCatalog.from_artifacts(tmp_path)
    assert catalog.version == "v1" and catalog.genres_of("i1") == ("A",) and catalog.genres_of("x") == ()


async def test_experiment_exposures_and_outcomes(client: aioredis.Redis) -> None:
    writer = FeatureWriter(client, keys=Keys("x:"), reward_window_s=10)
    store = FeatureStore(client, Keys("x:"))

    def imp(user: str, req: str, variant: str, ts: float = T0):
        return ev(
            user, "impression", items=["i1", "i2"], request_id=req, experiment_id="e1", variant=variant, ts=ts
        )

    await writer.apply(
        [
            imp("a", "r1", "A"),
            imp("a", "r2", "A", T0 + 1),
            imp("b", "r3", "B"),
            ev("a", "click", "i1", T0 + 2, request_id="r1"),
            ev("a", "click", "i2", T0 + 3, request_id="r2"),
            ev("b", "purchase", "i2", T0 + 4, request_id="r3"),
            ev("b", "click", "i2", T0 + 5, request_id="unknown-request"),
        ]
    )
    stats = await store.get_experiment("e1")
    assert stats["A"] == {"impressions": 2, "users": 1, "click": 2, "users_click": 1}
    assert stats["B"] == {"impressions": 1, "users": 1, "purchase": 1, "users_purchase": 1}
    user_a = await store.get_experiment_user("e1", "a")
    assert user_a["variant"] == "A" and user_a["impressions"] == "2" and user_a["click"] == "2"
    assert float(user_a["first_exposure"]) == T0
    assert await store.get_experiment("nothing") == {}
    await writer.settle(now=T0 + 100)
    assert await client.exists("x:imp:r1:exp", "x:imp:r1") == 0


async def test_event_failing_in_redis_is_reported_and_others_applied(client: aioredis.Redis) -> None:
    await client.set("{u:bad}:recent_items", "not a list")
    writer = FeatureWriter(client)
    events = [ev("ok", "view", "i1"), ev("bad", "view", "i1"), ev("ok", "view", "i2")]
    result = await writer.apply(events)
    assert result.applied == 2 and result.duplicates == 0
    assert len(result.failed) == 1 and result.failed[0][0] == 1 and "WRONGTYPE" in result.failed[0][1]
    assert await client.lrange("{u:ok}:recent_items", 0, -1) == ["i2", "i1"]


async def test_qa_impressions_write_no_ab_record_but_still_count(client: aioredis.Redis) -> None:
    """Forced-variant (QA) requests are flagged qa=1 by the gateway: no exposure, no outcome."""
    writer = FeatureWriter(client, reward_window_s=10)
    store = FeatureStore(client)
    qa = {"qa": "1", "ab.e1": "B"}
    await writer.apply(
        [
            ev("q", "impression", items=["i1"], request_id="rq", experiment_id="e1", variant="B", context=qa),
            ev("q", "click", "i1", T0 + 1, request_id="rq"),
        ]
    )
    assert await store.get_experiment("e1") == {}
    assert await store.get_experiment_user("e1", "q") == {}
    assert await client.hget("{i:i1}:stats", "impression") == "1"  # the impression itself counts
    assert await client.hget("{i:i1}:ts", "alpha") == "2"  # and so does the bandit reward


async def test_impression_in_two_layers_writes_both_experiments(client: aioredis.Redis) -> None:
    """Context ab.<experiment>=variant adds exposures; outcomes are attributed to every one."""
    writer = FeatureWriter(client, reward_window_s=10)
    store = FeatureStore(client)
    context = {"ab.e1": "A", "ab.e2": "T", "page": "home"}
    await writer.apply(
        [
            ev(
                "u",
                "impression",
                items=["i1"],
                request_id="r",
                experiment_id="e1",
                variant="A",
                context=context,
            ),
            ev("u", "like", "i1", T0 + 1, request_id="r"),
        ]
    )
    assert (await store.get_experiment("e1"))["A"] == {
        "impressions": 1,
        "users": 1,
        "like": 1,
        "users_like": 1,
    }
    assert (await store.get_experiment("e2"))["T"] == {
        "impressions": 1,
        "users": 1,
        "like": 1,
        "users_like": 1,
    }
    assert (await store.get_experiment_user("e2", "u"))["variant"] == "T"


async def test_popularity_decays_with_its_half_life(client: aioredis.Redis) -> None:
    hour = 3600.0
    writer = FeatureWriter(client, popularity_half_life_s=hour)
    # i1: two clicks an hour ago (each worth 1/2 now); i2: one click now -> a tie at 1.0;
    # i3: one view now (0.5); a replay changes nothing
    events = [ev("a", "click", "i1", T0), ev("b", "click", "i1", T0), ev("c", "click", "i2", T0 + hour)]
    events.append(ev("c", "view", "i3", T0 + hour))
    await writer.apply(events)
    await writer.apply(events)
    store = FeatureStore(client)
    scores = dict(await store.get_popular_scores(10, hour, now=T0 + hour))
    assert scores == pytest.approx({"i1": 1.0, "i2": 1.0, "i3": 0.5})
    await writer.apply([ev("d", "view", "i2", T0 + 2 * hour)])  # i2 pulls ahead, i1 keeps decaying
    assert (await store.get_popular(3))[:1] == ["i2"]
    scores = dict(await store.get_popular_scores(10, hour, now=T0 + 2 * hour))
    assert scores == pytest.approx({"i1": 0.5, "i2": 0.5 + 0.5, "i3": 0.25})


async def test_popularity_rescales_its_epoch_and_keeps_the_ratios(client: aioredis.Redis) -> None:
    hour = 3600.0
    # rescale as soon as an increment's exponent passes 2 (about 2.9 half-lives)
    writer = FeatureWriter(client, popularity_half_life_s=hour, popularity_rescale_at=2.0)
    await writer.apply([ev("a", "click", "i1", T0), ev("a", "like", "i2", T0 + hour)])
    assert float(await client.get("{items:popularity}:epoch")) == T0
    await writer.apply([ev("b", "view", "i3", T0 + 10 * hour)])
    assert float(await client.get("{items:popularity}:epoch")) == T0 + 10 * hour
    raw_scores = dict(await client.zrange("{items:popularity}", 0, -1, withscores=True))
    assert raw_scores["i3"] == pytest.approx(0.5)  # stored at the new epoch: no scaling
    decayed = dict(await FeatureStore(client).get_popular_scores(10, hour, now=T0 + 10 * hour))
    assert decayed == pytest.approx({"i1": 2.0**-10, "i2": 1.5 * 2.0**-9, "i3": 0.5})


async def test_zero_half_life_keeps_plain_weighted_counts(client: aioredis.Redis) -> None:
    writer = FeatureWriter(client, popularity_half_life_s=0)
    await writer.apply([ev("a", "click", "i1", T0), ev("a", "click", "i1", T0 + 1e6)])
    assert await client.zscore("{items:popularity}", "i1") == 2.0
    assert await client.exists("{items:popularity}:epoch") == 0


async def test_redis_out_of_memory_fails_the_whole_call(client: aioredis.Redis) -> None:
    """maxmemory reached: the call raises (the stream retries it) instead of reporting every event
    as failed (which would dead-letter them); the events applied before the error stay applied once."""
    from redis.exceptions import OutOfMemoryError

    writer = FeatureWriter(client)
    first = ev("u", "view", "i1")
    await writer.apply([first])
    await client.config_set("maxmemory", "1")
    try:
        with pytest.raises(OutOfMemoryError):
            await writer.apply([ev("u", "view", "i2")])
    finally:
        await client.config_set("maxmemory", "0")
    result = await writer.apply([first, ev("u", "view", "i2")])
    assert (result.applied, result.duplicates) == (1, 1)
    assert await client.lrange("{u:u}:recent_items", 0, -1) == ["i2", "i1"]


async def test_segment_rewards_and_zero_rewards_update_segment_and_global_arms_once(
    client: aioredis.Redis,
) -> None:
    """An impression with a bandit segment: a reward and a settle update the global arm and the
    segment arm, once per (request, item) even when the batch is replayed or clicked twice."""
    writer = FeatureWriter(client, keys=Keys("p:"), reward_window_s=30)
    store = FeatureStore(client, Keys("p:"))
    seg = {"bandit_segment": "device:tv"}
    imp = ev("u", "impression", items=["i1", "i2"], request_id="r1", context=seg)
    plain = ev("v", "impression", items=["i1", "i2"], request_id="r2")  # no segment: global only
    batch = [
        imp,
        plain,
        ev("u", "click", "i1", T0 + 1, request_id="r1"),
        ev("u", "purchase", "i1", T0 + 2, request_id="r1"),  # same (request, item): no second reward
        ev("v", "click", "i2", T0 + 1, request_id="r2"),
    ]
    assert (await writer.apply(batch)).rewards == 2
    assert (await writer.apply(batch)).applied == 0  # replay: every event is a duplicate
    assert await client.get("{p:u:u}:imp:r1:seg") == "device:tv"
    assert 0 < await client.ttl("{p:u:u}:imp:r1:seg") <= await client.ttl("{p:u:u}:imp:r1")
    assert await client.exists("{p:u:v}:imp:r2:seg") == 0
    settled = await writer.settle(now=T0 + 31)
    assert (settled.requests, settled.zero_rewards) == (2, 2)
    again = await writer.settle(now=T0 + 100)
    assert (again.requests, again.zero_rewards) == (0, 0)
    glob, in_seg = await store.get_segment_arms(["i1", "i2", "i3"], "device:tv")
    # global: i1 rewarded in r1 (alpha) and zero in r2; i2 zero in r1 and rewarded in r2
    assert glob == {"i1": (2.0, 2.0), "i2": (2.0, 2.0)}
    assert in_seg == {"i1": (2.0, 1.0), "i2": (1.0, 2.0)}  # only r1's outcomes
    assert await client.hgetall("{p:i:i1}:tsseg:device:tv") == {"alpha": "2", "beta": "1"}
    # segment arms expire after segment_arm_ttl_s without updates (a reward or a zero reward)
    day = 86400
    assert 29 * day < await client.ttl("{p:i:i1}:tsseg:device:tv") <= 30 * day
    assert 29 * day < await client.ttl("{p:i:i2}:tsseg:device:tv") <= 30 * day
    assert await client.ttl("{p:i:i1}:ts") == -1  # global arms never expire
    assert await client.exists("{p:u:u}:imp:r1", "{p:u:u}:imp:r1:seg", "{p:u:u}:imp:r1:exp") == 0
    assert await store.get_segment_arms([], "device:tv") == ({}, {})


async def test_segment_arm_ttl_zero_keeps_segment_arms(client: aioredis.Redis) -> None:
    with pytest.raises(ValueError, match="segment_arm_ttl_s"):
        FeatureWriter(client, segment_arm_ttl_s=-1)
    writer = FeatureWriter(client, reward_window_s=10, segment_arm_ttl_s=0)
    ctx = {"bandit_segment": "device:tv"}
    await writer.apply(
        [
            ev("u", "impression", items=["i1", "i2"], request_id="r", context=ctx),
            ev("u", "click", "i1", T0 + 1, request_id="r"),
        ]
    )
    await writer.settle(now=T0 + 100)
    assert await client.ttl("{i:i1}:tsseg:device:tv") == -1
    assert await client.ttl("{i:i2}:tsseg:device:tv") == -1


async def test_invalid_segment_in_an_impression_is_ignored(client: aioredis.Redis) -> None:
    writer = FeatureWriter(client, reward_window_s=10)
    bad = {"bandit_segment": "x}:{evil key"}
    result = await writer.apply(
        [
            ev("u", "impression", items=["i1"], request_id="r", context=bad),
            ev("u", "click", "i1", T0 + 1, request_id="r"),
        ]
    )
    assert result.applied == 2 and result.rewards == 1 and not result.failed
    assert await client.exists("{u:u}:imp:r:seg") == 0
    assert await client.keys("{i:*}:tsseg:*") == []
    assert await client.hget("{i:i1}:ts", "alpha") == "2"


async def test_segment_arms_are_read_in_one_round_trip(client: aioredis.Redis) -> None:
    await client.hset("{i:i1}:ts", mapping={"alpha": 3, "beta": 4})
    await client.hset("{i:i2}:tsseg:s", mapping={"alpha": 5, "beta": 1})
    commands: list[tuple[object, ...]] = []
    execute_command = client.execute_command

    async def counting(*args: object, **kwargs: object):  # noqa: ANN202
        commands.append(args)
        return await execute_command(*args, **kwargs)

    client.execute_command = counting  # type: ignore[method-assign]
    got = await FeatureStore(client).get_segment_arms(["i1", "i2"], "s")
    assert got == ({"i1": (3.0, 4.0)}, {"i2": (5.0, 1.0)})
    # one round trip: one script call over the 2 global and 2 segment arm keys (EVAL after a
    # NOSCRIPT on the first call against a fresh server, so the last command is the one that ran)
    assert commands[-1][0] in ("EVALSHA", "EVAL") and commands[-1][2] == 4
    assert all(c[0] in ("EVALSHA", "EVAL", "SCRIPT LOAD") for c in commands) and len(commands) <= 3


async def test_consumed_items_are_kept_beyond_the_recent_items_and_capped(client: aioredis.Redis) -> None:
    """A user with 1,000 events: every consumed item is known to the gateway (not only the 50 recent)."""
    writer = FeatureWriter(client)
    events = [ev("u1", "view" if k % 3 else "click", f"i{k}", ts=T0 + k) for k in range(1000)]
    for start in range(0, len(events), 250):
        await writer.apply(events[start : start + 250])
    features = await FeatureStore(client).get_user_features("u1")
    assert len(features.recent_items) == 50
    assert set(features.consumed) == {f"i{k}" for k in range(1000)}
    # beyond the cap the oldest consumption is forgotten first
    small = FeatureWriter(client, consumed_cap=10)
    await small.apply([ev("u2", "view", f"j{k}", ts=T0 + k) for k in range(15)])
    assert set((await FeatureStore(client).get_user_features("u2")).consumed) == {
        f"j{k}" for k in range(5, 15)
    }
    with pytest.raises(ValueError, match="consumed_cap"):
        FeatureWriter(client, consumed_cap=0)


async def test_partition_offsets_make_a_replay_of_any_age_a_no_op(client: aioredis.Redis) -> None:
    import asyncio

    writer = FeatureWriter(client, dedup_ttl_s=1)  # markers gone after a second
    events = [ev("u1", "click", f"i{k}", ts=T0 + k) for k in range(10)]
    sources = [("user-events:3", 100 + k) for k in range(10)]
    assert (await writer.apply(events, sources)).applied == 10
    assert await client.hget("{u:u1}:offsets", "user-events:3") == "109"
    for k in range(10):  # every tag group the batch touched keeps its own applied offset
        assert await client.hget(f"{{i:i{k}}}:offsets", "user-events:3") == str(100 + k)
    assert await client.hget("{items:popularity}:offsets", "user-events:3") == "109"
    await asyncio.sleep(1.2)
    assert not await client.exists(f"{{u:u1}}:event:{events[0].event_id}")  # the markers expired
    replay = await writer.apply(events, sources)  # e.g. after a stall longer than the marker TTL
    assert (replay.applied, replay.duplicates) == (0, 10)
    assert await client.hget("{u:u1}:stats", "click") == "10"
    later = await writer.apply([ev("u1", "click", "i99", ts=T0 + 99)], [("user-events:3", 110)])
    assert later.applied == 1 and await client.hget("{u:u1}:offsets", "user-events:3") == "110"
    other = await writer.apply([ev("u1", "view", "i5")], [("user-events:4", 0)])  # another partition
    assert other.applied == 1
