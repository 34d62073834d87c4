"""A/A and planted-lift experiments through the live stack, analysed by `recstack ab report`.

Real processes: redis-server, Tansu (Kafka), retrieval, ranking, rerank, bandit, the gateway with
an experiments file (RECSTACK_EXPERIMENTS) and the feature-stream worker. Two experiments run at
once in two layers, so every request is in both:

- ``aa-test`` (layer ranking): two identical variants: the report must find no significant
  difference and no sample ratio mismatch;
- ``lift-test`` (layer diversity): control (no diversity) vs treatment (MMR): simulated users click
  each shown item with p = 0.05 under control and p = 0.15 under treatment (a planted lift); the
  report must detect it.

Users call Recommend; the gateway publishes one impression per request (exposure); once the stream
has applied them, the users' clicks (and likes) are produced with the request id; the stream
attributes them to the variants; the CLI reads the per-user records from Redis. The click draws
use a fixed seed and the assignment is a stable hash, so the outcome data are the same every run.
A QA request (force_variant) and the 10 % global holdout must leave no A/B record.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis
import yaml

from recstack.devstack.embedded import free_port
from recstack.events import new_event
from recstack.events.producer import EventProducer
from recstack.events.topics import ensure_topics
from recstack.experiments.config import parse_experiments
from recstack.features.keys import Keys
from recstack.v1 import gateway_pb2, gateway_pb2_grpc
from tests.integration.procs import REPO, metrics, service_stack, start_all, stop_all
from tests.integration.stream_support import start_worker, stop_worker, wait_for, worker_env

pytestmark = pytest.mark.integration

EXPERIMENTS = {
    "holdout": 0.1,
    "holdout_salt": "ab-live-holdout",
    "experiments": [
        {
            "id": "aa-test",
            "salt": "aa-salt",
            "layer": "ranking",
            "variants": [
                {"name": "control", "pipeline": {"ranker": "multitask"}},
                {"name": "copy", "pipeline": {"ranker": "multitask"}},
            ],
        },
        {
            "id": "lift-test",
            "salt": "lift-salt",
            "layer": "diversity",
            "variants": [
                {"name": "control", "pipeline": {"diversity": {"method": "none"}}},
                {"name": "treatment", "pipeline": {"diversity": {"method": "mmr", "lambda": 0.7}}},
            ],
        },
    ],
}
N_USERS = 360
K = 5
P_CLICK = {"control": 0.05, "treatment": 0.15}
P_LIKE_AFTER_CLICK = 0.3
SEED = 7


@pytest.fixture(scope="module")
def live(
    small_bundle: Path, redis_server: str, kafka_broker: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict]:
    work = tmp_path_factory.mktemp("ab-live")
    config = work / "experiments.yaml"
    config.write_text(yaml.safe_dump(EXPERIMENTS))
    topic = f"ab-events-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_broker, {topic: 2, f"{topic}.dlq": 1})
    prefix = f"ab{uuid.uuid4().hex[:6]}:"
    services = service_stack(
        small_bundle,
        redis_server,
        work,
        stage_timeout_s=3,
        RECSTACK_RELOAD_S="0",
        RECSTACK_REDIS_PREFIX=prefix,
    )
    gw = services["gateway"].env
    gw.update(
        KAFKA_BOOTSTRAP_SERVERS=kafka_broker, RECSTACK_EVENTS_TOPIC=topic, RECSTACK_EXPERIMENTS=str(config)
    )
    stream_log = work / "stream.log"
    stream_env = worker_env(
        kafka_broker,
        topic,
        f"{topic}.dlq",
        redis_server,
        small_bundle,
        free_port(),
        RECSTACK_REDIS_PREFIX=prefix,
        RECSTACK_REWARD_WINDOW_S="600",  # the clicks come well inside the reward window
    )
    stream = None
    try:
        stream = start_worker(stream_env, stream_log)
        start_all(services.values())
        yield {
            "services": services,
            "stream": stream,
            "stream_log": stream_log,
            "topic": topic,
            "prefix": prefix,
            "config": config,
            "redis_url": redis_server,
            "kafka": kafka_broker,
            "work": work,
        }
    finally:
        if stream is not None:
            stop_worker(stream)
        stop_all(services.values())


async def call_all(
    port: int, requests: list[gateway_pb2.RecommendRequest]
) -> list[gateway_pb2.RecommendResponse]:
    sem = asyncio.Semaphore(8)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)

        async def one(request: gateway_pb2.RecommendRequest) -> gateway_pb2.RecommendResponse:
            async with sem:
                return await stub.Recommend(request, timeout=30)

        return await asyncio.gather(*(one(r) for r in requests))


def simulate_clicks(replies: dict[str, gateway_pb2.RecommendResponse], lift_variant: dict[str, str]) -> list:
    """Clicks (and likes after clicks) with the planted per-variant click probability."""
    rng = np.random.default_rng(SEED)
    events = []
    for user in sorted(replies):
        reply = replies[user]
        p = P_CLICK[lift_variant.get(user, "control")]
        for item in reply.items:
            if rng.random() < p:
                events.append(new_event(user, "click", item.item_id, request_id=reply.request_id))
                if rng.random() < P_LIKE_AFTER_CLICK:
                    events.append(new_event(user, "like", item.item_id, request_id=reply.request_id))
    return events


def report(live: dict, experiment: str) -> tuple[str, str]:
    out = live["work"] / "reports"
    argv = [sys.executable, "-m", "recstack.cli", "ab", "report", experiment]
    argv += ["--redis", live["redis_url"], "--prefix", live["prefix"], "--config", str(live["config"])]
    argv += ["--out", str(out)]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout, (out / experiment / "report.md").read_text()


def row(markdown: str, metric: str, variant: str) -> list[str]:
    for line in markdown.splitlines():
        if line.startswith(f"| {metric} | {variant} |"):
            return [c.strip() for c in line.strip("|").split("|")]
    raise AssertionError(f"no row for {metric}/{variant} in:\n{markdown}")


def test_aa_and_planted_lift_through_the_live_stack(live: dict) -> None:
    cfg = parse_experiments(EXPERIMENTS)
    keys = Keys(live["prefix"])
    client = redis.Redis.from_url(live["redis_url"], decode_responses=True)
    users = [f"ab-user-{i}" for i in range(N_USERS)]
    requests = [gateway_pb2.RecommendRequest(user_id=u, k=K) for u in users]
    qa = gateway_pb2.RecommendRequest(user_id="ab-qa-user", k=K)
    qa.context.force_variant = "lift-test/treatment"
    gateway = live["services"]["gateway"]
    procs = [s.proc for s in live["services"].values()] + [live["stream"]]

    replies_list = asyncio.run(call_all(gateway.port, [*requests, qa]))
    replies = dict(zip(users, replies_list[:-1], strict=True))
    qa_reply = replies_list[-1]

    # The variant's pipeline drives the chain: only lift-test/treatment diversifies.
    lift_variant: dict[str, str] = {}
    for user, reply in replies.items():
        resolution = cfg.resolve(user)
        assigned = {a.experiment_id: a.variant for a in resolution.assignments}
        assert reply.variant == (assigned.get("aa-test") or "holdout")
        assert len(reply.items) == K
        if resolution.holdout:
            continue
        lift_variant[user] = assigned["lift-test"]
        assert ("diversity" in reply.stages) == (assigned["lift-test"] == "treatment"), list(reply.stages)
    assert "diversity" in qa_reply.stages
    held_out = [u for u in users if u not in lift_variant]
    assert 15 < len(held_out) < 60

    # Exposure: one impression per request, applied by the stream (QA and holdout included).
    def impressions_applied() -> bool:
        pipe = client.pipeline(transaction=False)
        for user in [*users, "ab-qa-user"]:
            pipe.hget(keys.user_stats(user), "impression")
        return all(v == "1" for v in pipe.execute())

    wait_for(
        impressions_applied, "the stream to apply every impression", procs, live["stream_log"], timeout=60
    )

    clicks = simulate_clicks({**replies, "ab-qa-user": qa_reply}, {**lift_variant, "ab-qa-user": "treatment"})

    async def produce() -> None:
        async with EventProducer(live["kafka"], live["topic"]) as producer:
            await producer.send_many(clicks)

    asyncio.run(produce())
    analysed = [e for e in clicks if e.user_id in lift_variant]
    want = {t: sum(e.event_type == t for e in analysed) for t in ("click", "like")}
    assert want["click"] > 50

    def outcomes_attributed() -> bool:
        got = {"click": 0, "like": 0}
        for variant in ("control", "treatment"):
            stats = client.hgetall(keys.experiment_stats("lift-test", variant))
            for t in got:
                got[t] += int(stats.get(t, 0))
        return got == want

    wait_for(outcomes_attributed, f"the stream to attribute {want}", procs, live["stream_log"], timeout=60)

    # QA and holdout traffic left no A/B record.
    for user in ["ab-qa-user", *held_out]:
        record = client.hgetall(keys.user_experiments(user))
        assert not [f for f in record if f.split("\n")[0] in ("lift-test", "aa-test")], (user, record)
    client.close()

    out, md = report(live, "aa-test")
    assert "no SRM" in md and "SRM detected" not in md
    for metric in ("ctr", "likes", "purchases"):
        assert row(md, metric, "copy")[-1] == "no", md
    assert "# A/B report: aa-test" in out

    _, md = report(live, "lift-test")
    assert "no SRM" in md
    ctr = row(md, "ctr", "treatment")
    assert ctr[-1] == "yes", md
    assert ctr[5].startswith("+"), ctr  # relative lift positive
    expected_users = sum(1 for v in lift_variant.values() if v == "treatment")
    assert f"| treatment | 0.500 | {expected_users} |" in md

    # Gateway metrics of the same run.
    text = metrics(gateway)
    assert (
        'recstack_gateway_requests_total{experiment="lift-test",outcome="qa",variant="treatment"} 1.0' in text
    )
    assert 'recstack_gateway_requests_total{experiment="",outcome=' in text and 'variant="holdout"}' in text
    assert "recstack_gateway_intra_list_diversity_count" in text
    assert "recstack_gateway_catalog_coverage" in text
