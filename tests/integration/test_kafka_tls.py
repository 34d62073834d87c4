"""Kafka over mutual TLS with real processes: recstack's clients against a real broker behind TLS.

Tansu 0.6 (the embedded broker) serves plaintext only, so, as a TLS sidecar would in production, a
TLS-terminating proxy (tests/tls_proxy.py, its own process) fronts a dedicated Tansu:

    client --mTLS--> proxy (localhost:P, requires a client certificate) --plaintext--> Tansu (127.0.0.1:T)

Tansu advertises ``localhost:P``, so the Metadata it returns sends every client back through the
proxy; nothing reaches the broker without a TLS handshake the proxy accepted. The certificates come
from ``recstack auth dev-certs``. The tests prove that KAFKA_SECURITY_PROTOCOL=SSL with KAFKA_SSL_CA /
KAFKA_SSL_CERT / KAFKA_SSL_KEY (recstack/events/kafka_security.py) makes the event producer, the
topic admin, an aiokafka consumer and the feature-stream worker (Faust ``broker_credentials``) speak
mTLS, and that plaintext, certificate-less and wrongly-trusting clients are refused promptly.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from recstack.devstack.embedded import EmbeddedKafka, free_port
from recstack.devstack.process import ManagedProcess
from recstack.events import event_to_json, new_event
from recstack.events.kafka_security import aiokafka_kwargs
from recstack.events.producer import EventProducer, ProducerError
from recstack.events.topics import ensure_topics
from recstack.features.keys import Keys
from recstack.redis_cluster import sync_from_url
from tests.integration.stream_support import (
    REPO,
    start_worker,
    stop_worker,
    wait_for,
    worker_env,
    write_catalog,
)

pytestmark = pytest.mark.integration

DEADLINE_S = 30.0  # generous bound that turns a hang into a failure
FAIL_FAST_MS = 5000  # request timeout of the clients that must be refused


class ProxiedTansu(EmbeddedKafka):
    """The embedded Tansu (same command line as the `kafka_broker` fixture) listening on 127.0.0.1:T
    but advertising tcp://localhost:P, the TLS proxy's port."""

    name = "kafka-behind-tls"

    def __init__(self, advertised_port: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.advertised_port = advertised_port

    def argv(self) -> list[str]:
        argv = super().argv()
        argv[argv.index("--advertised-listener-url") + 1] = f"tcp://localhost:{self.advertised_port}"
        return argv

    def ready(self) -> bool:
        # listening is enough here: a plaintext admin client would be sent on to the TLS proxy
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex((self.host, self.port)) == 0


@dataclass
class TlsKafka:
    bootstrap: str  # localhost:P, the proxy
    env: dict[str, str]  # KAFKA_SECURITY_PROTOCOL=SSL and KAFKA_SSL_* of a trusted client
    pki: Path  # ca.crt, client.*, server.* from `recstack auth dev-certs`
    rogue_pki: Path  # the same from another CA
    proxy_log: Path

    def handshakes(self) -> dict[str, list[str]]:
        """The proxy's log lines of accepted and refused TLS handshakes so far."""
        lines = self.proxy_log.read_text(errors="replace").splitlines()
        return {
            kind: [line for line in lines if line.startswith(f"handshake {kind} ")]
            for kind in ("accepted", "refused")
        }


def dev_certs(out: Path) -> Path:
    """A CA plus server and client certificates, made by the project's own CLI."""
    done = subprocess.run(
        [sys.executable, "-m", "recstack.cli", "auth", "dev-certs", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert all((out / name).is_file() for name in ("ca.crt", "client.crt", "client.key", "server.key"))
    return out


async def _list_topics(bootstrap: str, pki: Path) -> list[str]:
    """The broker's topics over mTLS, with a TLS context built here rather than by the code under test
    (so a bug in kafka_security.py fails a test, not the fixture)."""
    from aiokafka.admin import AIOKafkaAdminClient

    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(pki / "client.crt", pki / "client.key")
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=3000, security_protocol="SSL", ssl_context=ctx
    )
    await asyncio.wait_for(admin.start(), 5)
    try:
        return await asyncio.wait_for(admin.list_topics(), 5)
    finally:
        await admin.close()


def _wait_until_answers(kafka: TlsKafka, proxy: ManagedProcess) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            asyncio.run(_list_topics(kafka.bootstrap, kafka.pki))
            return
        except Exception as exc:  # not up yet; give up with the proxy's log after the deadline
            if proxy.poll() is not None or time.monotonic() > deadline:
                raise proxy.failure(f"broker did not answer over mTLS ({exc!r})") from exc
        time.sleep(0.2)


@pytest.fixture(scope="module")
def tls_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsKafka]:
    root = tmp_path_factory.mktemp("kafka-tls")
    pki, rogue = dev_certs(root / "pki"), dev_certs(root / "rogue-pki")
    proxy_port = free_port()
    broker = ProxiedTansu(proxy_port, log_dir=root)
    proxy = ManagedProcess(
        "tls-proxy",
        [sys.executable, "-m", "tests.tls_proxy", "--listen-port", str(proxy_port),
         "--target", f"{broker.host}:{broker.port}", "--cert", str(pki / "server.crt"),
         "--key", str(pki / "server.key"), "--client-ca", str(pki / "ca.crt")],
        root / "tls-proxy.log", cwd=REPO,
    )  # fmt: skip
    env = {
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CA": str(pki / "ca.crt"),
        "KAFKA_SSL_CERT": str(pki / "client.crt"),
        "KAFKA_SSL_KEY": str(pki / "client.key"),
    }
    kafka = TlsKafka(f"localhost:{proxy_port}", env, pki, rogue, proxy.log_path)
    with broker:
        proxy.start()
        try:
            deadline = time.monotonic() + DEADLINE_S
            while "tls_proxy ready on" not in (proxy.log_path.read_text() if proxy.log_path.exists() else ""):
                if proxy.poll() is not None or time.monotonic() > deadline:
                    raise proxy.failure("did not print its ready line")
                time.sleep(0.05)
            _wait_until_answers(kafka, proxy)
            yield kafka
        finally:
            proxy.stop()


@pytest.fixture
def tls_env(tls_kafka: TlsKafka, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This process's KAFKA_* security variables: a trusted mTLS client of the proxied broker."""
    for name, value in tls_kafka.env.items():
        monkeypatch.setenv(name, value)
    return tls_kafka.env


def new_topics(bootstrap: str, *prefixes: str) -> list[str]:
    """Fresh single-partition topics, created by recstack's admin path (over TLS under tls_env)."""
    names = [f"{prefix}-{uuid.uuid4().hex[:12]}" for prefix in prefixes]
    ensure_topics(bootstrap, dict.fromkeys(names, 1))
    return names


async def read_back(bootstrap: str, topic: str, n: int) -> list:
    """Up to n records from the topic's start, by an aiokafka consumer with recstack's KAFKA_* settings."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None, **aiokafka_kwargs()
    )
    await asyncio.wait_for(consumer.start(), DEADLINE_S)
    try:
        records: list = []
        deadline = time.monotonic() + DEADLINE_S
        while len(records) < n and time.monotonic() < deadline:
            for part in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(part)
        return records
    finally:
        await consumer.stop()


def poll(predicate: Callable[[], Any], what: str, log: Path) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}; proxy log:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    return value


def test_event_producer_and_consumer_round_trip_over_mtls(tls_kafka: TlsKafka, tls_env: dict) -> None:
    (topic,) = new_topics(tls_kafka.bootstrap, "events")
    before = len(tls_kafka.handshakes()["accepted"])
    events = [new_event("u1", "click", "i1"), new_event("u2", "view", "i2"), new_event("u1", "like", "i2")]

    async def produce() -> None:
        async with EventProducer(tls_kafka.bootstrap, topic, signer=None) as producer:
            await asyncio.wait_for(producer.send_many(events), DEADLINE_S)

    asyncio.run(produce())
    records = asyncio.run(read_back(tls_kafka.bootstrap, topic, len(events)))

    assert [r.value for r in records] == [event_to_json(e) for e in events]
    assert [r.key for r in records] == [b"u1", b"u2", b"u1"]
    handshakes = tls_kafka.handshakes()
    accepted = handshakes["accepted"][before:]
    assert accepted, "no TLS handshake reached the proxy"
    # every connection presented the client certificate the dev CA issued
    assert all(line.endswith("client=commonName=client") for line in accepted), accepted


def _refused(tls_kafka: TlsKafka, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """Start recstack's EventProducer with env's KAFKA_* settings against the proxy; it must fail
    (ProducerError) before DEADLINE_S. Returns the error and the proxy's reason for the refusal."""
    for name in ("KAFKA_SECURITY_PROTOCOL", "KAFKA_SSL_CA", "KAFKA_SSL_CERT", "KAFKA_SSL_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    seen = tls_kafka.handshakes()

    async def start() -> None:
        producer = EventProducer(tls_kafka.bootstrap, "never", signer=None, request_timeout_ms=FAIL_FAST_MS)
        await asyncio.wait_for(producer.start(), DEADLINE_S)  # a hang fails as TimeoutError
        await producer.stop()

    with pytest.raises(ProducerError) as failure:
        asyncio.run(start())
    refused = poll(
        lambda: tls_kafka.handshakes()["refused"][len(seen["refused"]) :],
        "the proxy to log a refused handshake",
        tls_kafka.proxy_log,
    )
    # nothing got through the TLS layer to the broker
    assert tls_kafka.handshakes()["accepted"] == seen["accepted"]
    return str(failure.value), refused[0]


def test_plaintext_client_cannot_bootstrap(tls_kafka: TlsKafka, monkeypatch: pytest.MonkeyPatch) -> None:
    error, reason = _refused(tls_kafka, {}, monkeypatch)
    assert "cannot connect to Kafka at" in error and tls_kafka.bootstrap in error
    # the proxy read a Kafka request where a TLS ClientHello belongs
    assert re.search(r"WRONG_VERSION_NUMBER|RECORD_LAYER_FAILURE|HTTP_REQUEST|UNKNOWN_PROTOCOL", reason), (
        reason
    )


def test_tls_client_without_certificate_is_refused(
    tls_kafka: TlsKafka, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA": tls_kafka.env["KAFKA_SSL_CA"]}
    error, reason = _refused(tls_kafka, env, monkeypatch)
    assert "cannot connect to Kafka at" in error
    assert re.search(r"PEER_DID_NOT_RETURN_A_CERTIFICATE|certificate required", reason, re.I), reason


def test_tls_client_trusting_another_ca_fails_verification(
    tls_kafka: TlsKafka, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rogue = tls_kafka.rogue_pki
    env = {
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CA": str(rogue / "ca.crt"),
        "KAFKA_SSL_CERT": str(rogue / "client.crt"),
        "KAFKA_SSL_KEY": str(rogue / "client.key"),
    }
    caplog.set_level(logging.ERROR, logger="aiokafka")
    error, _ = _refused(tls_kafka, env, monkeypatch)
    assert "cannot connect to Kafka at" in error
    # the client itself rejected the proxy's certificate (aiokafka logs why it could not connect)
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text, caplog.text


def test_feature_stream_worker_consumes_over_mtls(
    tls_kafka: TlsKafka, tls_env: dict, redis_url: str, tmp_path: Path
) -> None:
    events_topic, dlq_topic = new_topics(tls_kafka.bootstrap, "events", "dlq")
    artifacts = write_catalog(tmp_path / "artifacts", {"i1": ["Action"], "i2": ["Drama", "Comedy"]})
    env = worker_env(
        tls_kafka.bootstrap, events_topic, dlq_topic, redis_url, artifacts, free_port(), **tls_env
    )
    log = tmp_path / "worker.log"
    keys = Keys(env["RECSTACK_REDIS_PREFIX"])
    r = sync_from_url(redis_url, decode_responses=True)
    proc = start_worker(env, log)
    try:
        view, click = new_event("u1", "view", "i2"), new_event("u1", "click", "i1")
        bad = b'{"schema_version": 1, "event_id": "x", "user_id": "u1", "event_type": "teleport"}'

        async def produce() -> None:
            async with EventProducer(tls_kafka.bootstrap, events_topic, signer=None) as producer:
                await producer.send(view)
                await producer.send(click)
                await producer.send_raw(bad, key=b"u1")

        asyncio.run(produce())
        wait_for(lambda: r.hget(keys.user_stats("u1"), "click"), "features in redis", proc, log)
        stats = r.hgetall(keys.user_stats("u1"))
        assert (stats["view"], stats["click"], stats["total"]) == ("1", "1", "2")
        assert r.lrange(keys.recent_items("u1"), 0, -1) == ["i1", "i2"]
        assert r.hget(keys.item_stats("i1"), "click") == "1"
        # the worker's Faust producer wrote the dead letter over TLS too
        dead = asyncio.run(read_back(tls_kafka.bootstrap, dlq_topic, 1))
        assert [d.value for d in dead] == [bad]
        assert dict(dead[0].headers)["recstack-reason"] == b"unknown_event_type"
    finally:
        stop_worker(proc)
        r.close()
