"""Shared fixtures: real Redis and Kafka (embedded unless REDIS_URL / KAFKA_BOOTSTRAP_SERVERS are set)
and one small trained bundle per session.

    redis_server   session: a Redis URL (REDIS_URL, else an embedded redis-server on a free port;
                   RECSTACK_TEST_REDIS=cluster: an embedded 3-master Redis Cluster instead, and
                   RECSTACK_REDIS_CLUSTER=true for this process and the workers it starts)
    redis_url      function: the same URL after FLUSHDB (isolation between tests)
    redis_cluster  session: an embedded 3-master Redis Cluster (tests/redis_cluster.py), always
    redis_cluster_url  function: its URL (any node) after FLUSHALL of every master
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
from recstack.redis_cluster import CLUSTER_ENV, cluster_enabled, sync_from_url
from tests.redis_cluster import EmbeddedRedisCluster


def cluster_backend() -> bool:
    """True when this run swaps the Redis fixture for a Redis Cluster (RECSTACK_TEST_REDIS=cluster)."""
    return os.environ.get("RECSTACK_TEST_REDIS", "").strip().lower() == "cluster"


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedisCluster]:
    with EmbeddedRedisCluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


@pytest.fixture
def redis_cluster_url(redis_cluster: EmbeddedRedisCluster) -> str:
    redis_cluster.flush()
    return redis_cluster.url


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if cluster_backend():
        previous = os.environ.get(CLUSTER_ENV)
        os.environ[CLUSTER_ENV] = "true"  # every client (tests and workers) is a cluster client
        try:
            with EmbeddedRedisCluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
                yield cluster.url
        finally:
            if previous is None:
                os.environ.pop(CLUSTER_ENV, None)
            else:
                os.environ[CLUSTER_ENV] = previous
        return
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    with EmbeddedRedis(log_dir=tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture
def redis_url(redis_server: str) -> str:
    client = sync_from_url(redis_server)
    try:
        if cluster_enabled():
            client.flushall(target_nodes=client.PRIMARIES)
        else:
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
