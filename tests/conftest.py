"""Shared fixtures: real Redis and Kafka (embedded unless REDIS_URL / KAFKA_BOOTSTRAP_SERVERS are set)
and one small trained bundle per session.

    redis_server   session: a Redis URL (REDIS_URL, else an embedded redis-server on a free port)
    redis_url      function: the same URL after FLUSHDB (isolation between tests)
    kafka_broker   session: a Kafka bootstrap (KAFKA_BOOTSTRAP_SERVERS, else an embedded Tansu)
    kafka_topic    function: factory `kafka_topic(partitions=1, prefix="t") -> name`, a fresh created topic
    small_bundle   session: Path of a bundle trained with TrainConfig.small() on synthetic data
                   (RECSTACK_TEST_BUNDLE=DIR reuses an existing bundle instead of training)
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from recstack.devstack.bundle import SMALL_DATA_SPEC, BundleMissingError, bundle_exists, train_small_bundle
from recstack.devstack.embedded import EmbeddedKafka, EmbeddedRedis
from recstack.events.topics import ensure_topics


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    with EmbeddedRedis(log_dir=tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture
def redis_url(redis_server: str) -> str:
    import redis

    client = redis.Redis.from_url(redis_server)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_server


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if bootstrap:
        yield bootstrap
        return
    with EmbeddedKafka(log_dir=tmp_path_factory.mktemp("kafka")) as broker:
        yield broker.bootstrap


@pytest.fixture
def kafka_topic(kafka_broker: str) -> Callable[..., str]:
    def make(partitions: int = 1, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        ensure_topics(kafka_broker, {name: partitions})
        return name

    return make


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reuse = os.environ.get("RECSTACK_TEST_BUNDLE")
    if reuse:
        path = Path(reuse)
        if not bundle_exists(path):
            pytest.fail(f"RECSTACK_TEST_BUNDLE={reuse} holds no bundle (CURRENT + manifest.json); unset it")
        return path
    out = tmp_path_factory.mktemp("bundle")
    try:
        import torch

        torch.set_num_threads(1)
        train_small_bundle(out, SMALL_DATA_SPEC)
    except BundleMissingError as exc:
        pytest.fail(str(exc), pytrace=False)
    if not bundle_exists(out):
        pytest.fail(f"train_bundle wrote no CURRENT + manifest.json under {out}", pytrace=False)
    return out
