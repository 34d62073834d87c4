"""Forged events on the real events topic: the feature-stream worker (a real process, Tansu, and
redis-server read as an ACL user) with RECSTACK_EVENT_KEYS_FILE applies only events signed by a known
producer; unsigned, wrong-key and unknown-producer events are dead-lettered ``unauthenticated`` and
never reach Redis. `recstack events produce` signs what it sends when configured."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import yaml

from recstack.devstack.embedded import free_port
from recstack.events import event_to_json, new_event
from recstack.events.producer import EventProducer
from recstack.events.signing import Signer, new_secret
from recstack.features.keys import Keys
from recstack.metrics_text import sample, scrape
from tests.integration.stream_support import (
    REPO,
    read_topic,
    start_worker,
    stop_worker,
    wait_for,
    worker_env,
    write_catalog,
)

pytestmark = pytest.mark.integration

SECRETS = {"gateway": new_secret(), "cli": new_secret()}
USER, PASSWORD = "stream-writer", "stream-pw-0123456789"


@pytest.fixture
def worker(
    kafka_broker: str, kafka_topic: Callable[..., str], redis_url: str, tmp_path: Path
) -> Iterator[dict]:
    admin = redis.Redis.from_url(redis_url, decode_responses=True)
    admin.acl_setuser(USER, enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], channels=["*"],
                      commands=["+@all"])  # fmt: skip
    keys_file = tmp_path / "event-keys.yaml"
    keys_file.write_text(yaml.safe_dump({"producers": SECRETS}))
    artifacts = write_catalog(tmp_path / "artifacts", {"i1": ["Action"], "i2": ["Drama"]})
    acl_url = redis_url.replace("redis://", f"redis://{USER}:{PASSWORD}@", 1)
    env = worker_env(
        kafka_broker, kafka_topic(1, "events"), kafka_topic(1, "dlq"), acl_url, artifacts, free_port(),
        RECSTACK_EVENT_KEYS_FILE=str(keys_file),
    )  # fmt: skip
    log = tmp_path / "worker.log"
    proc = start_worker(env, log)
    try:
        yield {"proc": proc, "log": log, "env": env, "redis": admin, "keys_file": keys_file}
    finally:
        stop_worker(proc)
        admin.close()


async def send(env: dict, signer: Signer | None, events: list, raw_headers: list | None = None) -> None:
    async with EventProducer(
        env["KAFKA_BOOTSTRAP_SERVERS"], env["RECSTACK_EVENTS_TOPIC"], signer=signer
    ) as p:
        for event in events:
            if raw_headers is None:
                await p.send(event)
            else:
                await p.send_raw(event_to_json(event), key=event.user_id.encode(), headers=raw_headers)


def test_forged_events_are_dead_lettered_and_never_reach_redis(worker: dict) -> None:
    env, r = worker["env"], worker["redis"]
    keys = Keys(env["RECSTACK_REDIS_PREFIX"])
    proc, log = worker["proc"], worker["log"]
    gateway = Signer("gateway", SECRETS["gateway"].encode())
    wrong_key = Signer("gateway", SECRETS["cli"].encode())
    unknown = Signer("mallory", SECRETS["gateway"].encode())
    forged_unsigned, forged_wrong, forged_unknown = (new_event(u, "click", "i1") for u in ("f1", "f2", "f3"))
    tampered = new_event("f4", "click", "i1")
    signed = new_event("u1", "click", "i1")
    asyncio.run(send(env, None, [forged_unsigned]))
    asyncio.run(send(env, wrong_key, [forged_wrong]))
    asyncio.run(send(env, unknown, [forged_unknown]))
    # the headers of a genuine event on another value: the signature does not match
    asyncio.run(send(env, None, [tampered], raw_headers=gateway.headers(event_to_json(signed))))
    asyncio.run(send(env, gateway, [signed]))

    wait_for(lambda: r.hget(keys.user_stats("u1"), "click"), "the signed event in redis", proc, log)
    dead = asyncio.run(read_topic(env["KAFKA_BOOTSTRAP_SERVERS"], env["RECSTACK_DEAD_LETTER_TOPIC"], 4))
    assert len(dead) == 4
    reasons = [dict(d.headers)["recstack-reason"] for d in dead]
    assert reasons == [b"unauthenticated"] * 4
    details = [dict(d.headers)["recstack-error"].decode() for d in dead]
    assert "unsigned" in details[0] and "bad signature" in details[1] and "unknown producer" in details[2]
    assert "bad signature" in details[3]
    assert dict(dead[2].headers)["recstack-producer"] == b"mallory"
    # the worker applies in offset order: the signed one came last, so the forged ones were decided
    assert not any(r.keys(f"{keys.user_tag(u)}*") for u in ("f1", "f2", "f3", "f4"))
    assert r.hget(keys.item_stats("i1"), "click") == "1"
    text = scrape(int(env["RECSTACK_METRICS_PORT"]))
    assert sample(text, "recstack_stream_dead_letters_total", reason="unauthenticated") == 4
    assert sample(text, "recstack_stream_signed_events_total", producer="gateway") == 1


def test_cli_produce_signs_when_configured(worker: dict) -> None:
    env, proc, log = worker["env"], worker["proc"], worker["log"]
    port = int(env["RECSTACK_METRICS_PORT"])
    cmd = [sys.executable, "-m", "recstack.cli", "events", "produce", "--from", "synthetic:n_users=20",
           "--limit", "15", "--bootstrap", env["KAFKA_BOOTSTRAP_SERVERS"],
           "--topic", env["RECSTACK_EVENTS_TOPIC"]]  # fmt: skip
    signing = {"RECSTACK_EVENT_KEYS_FILE": str(worker["keys_file"]), "RECSTACK_EVENT_PRODUCER_ID": "cli"}
    done = subprocess.run(cmd, cwd=REPO, env={**env, **signing}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    wait_for(
        lambda: sample(scrape(port), "recstack_stream_signed_events_total", producer="cli") == 15,
        "15 events signed by cli",
        proc,
        log,
    )
    unsigned = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert unsigned.returncode == 0, unsigned.stderr[-2000:]
    wait_for(
        lambda: sample(scrape(port), "recstack_stream_dead_letters_total", reason="unauthenticated") == 15,
        "15 unsigned events dead-lettered",
        proc,
        log,
    )
    assert sample(scrape(port), "recstack_stream_signed_events_total", producer="cli") == 15


def test_redis_acl_user_with_a_wrong_password_is_refused(redis_url: str) -> None:
    from recstack import redis_client

    admin = redis.Redis.from_url(redis_url)
    admin.acl_setuser(USER, enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], commands=["+@all"])
    admin.close()
    good = redis_client.sync_redis(redis_url.replace("redis://", f"redis://{USER}:{PASSWORD}@", 1))
    assert good.acl_whoami() in (USER, USER.encode())
    good.close()
    bad = redis_client.sync_redis(redis_url.replace("redis://", f"redis://{USER}:wrong@", 1))
    with pytest.raises(redis.AuthenticationError):
        bad.ping()
    bad.close()
