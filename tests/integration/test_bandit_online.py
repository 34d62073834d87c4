"""Online learning end to end: rewards produced into Kafka move the LinUCB bandit's choice.

Real processes: redis-server, the Tansu broker, the feature-stream worker
(``python -m services.feature_stream``) and the bandit service (``python -m services.bandit``).
The bandit records the context of every explored item under the request id it got in the
``x-request-id`` metadata (what the gateway sends); the stream joins impressions and clicks of
that request id and updates ``bandit:linucb:{item}`` in Redis; the bandit re-reads it after its
cache TTL. The second test runs the gateway chain (retrieval, ranking, rerank, bandit, gateway
processes on the small bundle) with LinUCB as the default pipeline: the gateway's own impression
and a click on the explored item update that item's LinUCB statistics. No component is faked.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from recstack.devstack.embedded import free_port
from recstack.events import event_to_json, new_event
from recstack.features.keys import Keys
from recstack.redis_cluster import sync_from_url
from recstack.v1 import bandit_pb2, bandit_pb2_grpc, common_pb2, gateway_pb2, gateway_pb2_grpc
from tests.integration.procs import Service, service_env, service_stack, start_all, stop_all, wait_serving
from tests.integration.stream_support import (
    produce,
    start_worker,
    stop_worker,
    wait_for,
    worker_env,
    write_catalog,
)

pytestmark = pytest.mark.integration

GENRES = {f"m{j}": [["Action", "Drama", "Comedy", "Horror"][j % 4]] for j in range(12)}
CANDIDATES = list(GENRES)
USER = common_pb2.UserFeatures(user_id="u-online", genre_scores={"Action": 0.3, "Drama": 0.6})
DEADLINE_S = 30.0


@pytest.fixture
def online(
    kafka_broker: str, kafka_topic: Callable[..., str], redis_url: str, tmp_path: Path
) -> Iterator[dict]:
    artifacts = write_catalog(tmp_path / "artifacts", GENRES)
    env = worker_env(
        kafka_broker, kafka_topic(1, "events"), kafka_topic(1, "dlq"), redis_url, artifacts, free_port()
    )
    worker_log = tmp_path / "worker.log"
    worker = start_worker(env, worker_log)
    port = free_port()
    bandit = Service(
        "bandit", port, 0, service_env("bandit", port, 0, artifacts, redis_url), tmp_path / "bandit.log"
    )
    bandit.env.update(
        RECSTACK_REDIS_PREFIX=env["RECSTACK_REDIS_PREFIX"],
        RECSTACK_ARMS_TTL_S="0.2",
        RECSTACK_LINUCB_ALPHA="0.1",
        RECSTACK_LINUCB_EPSILON="0",
        RECSTACK_REWARD_WINDOW_S=env["RECSTACK_REWARD_WINDOW_S"],
        RECSTACK_GRACE_S="1",
    )
    bandit.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        wait_serving(bandit, timeout_s=60)
        yield {
            "stub": bandit_pb2_grpc.BanditStub(channel),
            "bootstrap": kafka_broker,
            "topic": env["RECSTACK_EVENTS_TOPIC"],
            "prefix": env["RECSTACK_REDIS_PREFIX"],
            "redis": sync_from_url(redis_url),
            "procs": [worker, bandit.proc],
            "log": worker_log,
            "bandit_log": bandit.log_path,
        }
    finally:
        channel.close()
        bandit.stop()
        stop_worker(worker)


def explore(
    stub: bandit_pb2_grpc.BanditStub, request_id: str, k: int, slots: int, policy: str = "linucb"
) -> list[str]:
    candidates = [
        common_pb2.ScoredItem(item_id=item, score=1.0 - j / len(CANDIDATES))
        for j, item in enumerate(CANDIDATES)
    ]
    reply = stub.Explore(
        bandit_pb2.ExploreRequest(user=USER, candidates=candidates, k=k, policy=policy, explore_slots=slots),
        metadata=(("x-request-id", request_id),),
        timeout=5,
    )
    assert not reply.stale_state
    return [x.item_id for x in reply.items]


@pytest.mark.parametrize("policy", ["linucb", "linucb-hybrid"])
def test_clicks_in_kafka_move_the_linucb_choice_within_seconds(online: dict, policy: str) -> None:
    """Disjoint and hybrid LinUCB: each learns from the rewards of the requests it served."""
    stub, r, prefix = online["stub"], online["redis"], online["prefix"]
    before = explore(stub, "probe-0", k=1, slots=1, policy=policy)[0]
    target = next(item for item in reversed(CANDIDATES) if item != before)

    # Five requests that explore the whole candidate list (every context recorded), each served
    # and clicked on `target` only: impressions, then clicks, with the request ids.
    events = []
    for _ in range(5):
        rid = f"req-{uuid.uuid4().hex[:8]}"
        served = explore(stub, rid, k=len(CANDIDATES), slots=len(CANDIDATES), policy=policy)
        assert sorted(served) == sorted(CANDIDATES)
        wait_for(
            lambda rid=rid: r.exists(Keys(prefix).bandit_contexts(rid)),
            "recorded contexts",
            online["procs"],
            online["bandit_log"],
        )
        events.append(
            new_event(
                USER.user_id, "impression", request_id=rid, items=served, positions=list(range(len(served)))
            )
        )
        events.append(new_event(USER.user_id, "click", target, request_id=rid))
    start = time.monotonic()
    asyncio.run(
        produce(
            online["bootstrap"], online["topic"], [(USER.user_id.encode(), event_to_json(e)) for e in events]
        )
    )

    def updated() -> bool:
        n = r.hget(Keys(prefix).linear_arm(target, policy), "n")
        return n is not None and int(n) >= 5

    wait_for(
        updated, f"5 {policy} updates of the clicked item", online["procs"], online["log"], timeout=DEADLINE_S
    )
    probes = iter(range(1, 10_000))
    chosen = wait_for(
        lambda: explore(stub, f"probe-{next(probes)}", k=1, slots=1, policy=policy)[0] == target,
        f"the bandit to choose {target} (was {before})",
        online["procs"],
        online["bandit_log"],
        timeout=DEADLINE_S,
    )
    assert chosen
    elapsed = time.monotonic() - start
    assert elapsed < DEADLINE_S
    # the window closes: the unclicked items get zero rewards from the stream's settle timer
    wait_for(
        lambda: r.hget(Keys(prefix).linear_arm(before, policy), "n") is not None,
        f"zero rewards for {before}",
        online["procs"],
        online["log"],
        timeout=DEADLINE_S,
    )
    assert explore(stub, "probe-final", k=1, slots=1, policy=policy)[0] == target
    other = "linucb-hybrid" if policy == "linucb" else "linucb"
    assert r.hget(Keys(prefix).linear_arm(target, other), "n") is None  # only the serving policy learned


def test_gateway_linucb_slot_is_learned_from_its_own_impression_and_a_click(
    small_bundle: Path, kafka_broker: str, kafka_topic: Callable[..., str], redis_url: str, tmp_path: Path
) -> None:
    """The whole online path with the real gateway: Recommend (default pipeline: LinUCB, one slot)
    -> the bandit records the explored context under the gateway's request id -> the gateway's
    impression and a click with that request id go through Kafka and the stream -> the LinUCB
    statistics of the explored item change in Redis."""
    experiments = tmp_path / "experiments.json"
    experiments.write_text(json.dumps({"default_pipeline": {"bandit": {"policy": "linucb", "slots": 1}}}))
    env = worker_env(
        kafka_broker, kafka_topic(1, "events"), kafka_topic(1, "dlq"), redis_url, small_bundle, free_port()
    )
    prefix, topic = env["RECSTACK_REDIS_PREFIX"], env["RECSTACK_EVENTS_TOPIC"]
    worker_log = tmp_path / "worker.log"
    worker = start_worker(env, worker_log)
    services = service_stack(
        small_bundle,
        redis_url,
        tmp_path,
        stage_timeout_s=5,
        RECSTACK_REDIS_PREFIX=prefix,
        RECSTACK_RELOAD_S="0",
    )
    services["gateway"].env.update(
        KAFKA_BOOTSTRAP_SERVERS=kafka_broker,
        RECSTACK_EVENTS_TOPIC=topic,
        RECSTACK_EXPERIMENTS=str(experiments),
    )
    services["bandit"].env.update(RECSTACK_LINUCB_EPSILON="0", RECSTACK_REWARD_WINDOW_S="600")
    r = sync_from_url(redis_url)
    try:
        start_all(services.values())
        version = (small_bundle / "CURRENT").read_text().strip()
        user = str(json.loads((small_bundle / version / "users.json").read_text())["user_ids"][0])
        with grpc.insecure_channel(f"127.0.0.1:{services['gateway'].port}") as channel:
            reply = gateway_pb2_grpc.GatewayStub(channel).Recommend(
                gateway_pb2.RecommendRequest(user_id=user, k=5), timeout=30
            )
        assert "bandit" in reply.stages and "bandit" not in reply.skipped, dict(reply.skipped)
        explored = reply.items[-1].item_id
        assert 0 < reply.items[-1].propensity <= 1
        # the gateway's impression (published to Kafka) reaches the stream and opens the window
        wait_for(
            lambda: r.zscore(Keys(prefix).bandit_contexts_pending(), reply.request_id) is not None,
            "the gateway's impression to open the LinUCB reward window",
            worker,
            worker_log,
            timeout=DEADLINE_S,
        )
        assert r.hexists(Keys(prefix).bandit_contexts(reply.request_id), f"x:{explored}")
        click = new_event(user, "click", explored, request_id=reply.request_id)
        asyncio.run(produce(kafka_broker, topic, [(user.encode(), event_to_json(click))]))
        wait_for(
            lambda: r.hget(Keys(prefix).linear_arm(explored, "linucb"), "n") == b"1",
            f"the click to update the LinUCB arm of {explored}",
            worker,
            worker_log,
            timeout=DEADLINE_S,
        )
    finally:
        r.close()
        stop_all(services.values())
        stop_worker(worker)


def thompson_pick(stub: bandit_pb2_grpc.BanditStub, items: list[str], segment: str) -> tuple[str, float]:
    """The item a one-slot Thompson slate over ``items`` explores for ``segment``, with its propensity."""
    candidates = [common_pb2.ScoredItem(item_id=x, score=1.0) for x in items]
    reply = stub.Explore(
        bandit_pb2.ExploreRequest(candidates=candidates, k=1, explore_slots=1, segment=segment), timeout=5
    )
    assert not reply.stale_state and reply.policy == "thompson"
    return reply.items[0].item_id, reply.items[0].propensity


def test_thompson_segments_learn_opposite_preferences_through_the_stream(online: dict) -> None:
    """Impressions carrying a bandit segment (as the gateway publishes them) and clicks go through
    Kafka and the stream worker: "device:tv" users click m1, "device:mobile" users click m0, both
    items are served every time. The worker writes rewards and, when the 1 s windows close, zero
    rewards to the global and the segment arms; the bandit service then explores m1 for tv and m0
    for mobile although the global arms are tied."""
    stub, r, prefix = online["stub"], online["redis"], online["prefix"]
    served = ["m0", "m1"]
    events = []
    for n in range(10):
        for segment, clicked in (("device:tv", "m1"), ("device:mobile", "m0")):
            rid = f"ts-{segment}-{n}-{uuid.uuid4().hex[:6]}"
            context = {"bandit_segment": segment}
            events.append(
                new_event(
                    "u-seg", "impression", request_id=rid, items=served, positions=[0, 1], context=context
                )
            )
            events.append(new_event("u-seg", "click", clicked, request_id=rid))
    asyncio.run(produce(online["bootstrap"], online["topic"], [(b"u-seg", event_to_json(e)) for e in events]))

    def settled() -> bool:
        tv = r.hget(Keys(prefix).bandit_segment_arm("device:tv", "m0"), "beta")
        mobile = r.hget(Keys(prefix).bandit_segment_arm("device:mobile", "m1"), "beta")
        return tv is not None and mobile is not None and float(tv) == 11 and float(mobile) == 11

    wait_for(settled, "zero rewards in both segments", online["procs"], online["log"], timeout=DEADLINE_S)
    for item in served:  # globally a tie: 10 rewards and 10 zero rewards each
        assert {k: float(v) for k, v in r.hgetall(Keys(prefix).bandit_arm(item)).items()} == {
            b"alpha": 11.0,
            b"beta": 11.0,
        }
    assert float(r.hget(Keys(prefix).bandit_segment_arm("device:tv", "m1"), "alpha")) == 11
    time.sleep(0.3)  # past the bandit's arm cache TTL (0.2 s)
    tv = [thompson_pick(stub, served, "device:tv") for _ in range(20)]
    mobile = [thompson_pick(stub, served, "device:mobile") for _ in range(20)]
    assert sum(item == "m1" for item, _ in tv) >= 16, tv
    assert sum(item == "m0" for item, _ in mobile) >= 16, mobile
    assert all(p > 0.8 for item, p in tv if item == "m1")
    with pytest.raises(grpc.RpcError) as info:
        thompson_pick(stub, served, "device tv")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
