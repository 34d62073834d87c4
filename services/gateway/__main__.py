"""`python -m services.gateway` (or `recstack serve gateway`): the gateway on RECSTACK_PORT (50051)."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import redis.asyncio as aioredis

from recstack.events.producer import EventProducer
from recstack.experiments.config import ConfigWatcher, ExperimentConfigError, ExperimentsConfig
from recstack.features.keys import Keys
from recstack.features.store import FeatureStore
from recstack.redis_cluster import async_from_url
from recstack.rpc.backends import GrpcBandit, GrpcRanking, GrpcRerank, GrpcRetrieval
from recstack.rpc.client import insecure_channel
from recstack.rpc.loading import start_reloader
from recstack.rpc.server import StartupError, limit_threads, run
from recstack.rpc.settings import load_settings
from recstack.rpc.workers import extra_workers
from recstack.serving.chain import Chain
from recstack.serving.stages import LocalBandit, build_stages
from recstack.v1 import gateway_pb2_grpc
from services.gateway.monitoring import GatewayMonitor
from services.gateway.servicer import (
    GatewayServicer,
    ImpressionPublisher,
    Recommender,
    bundle_lists,
    read_bundle_lists,
)
from services.gateway.settings import GatewaySettings

SERVICE_NAME = "recstack.v1.Gateway"
log = logging.getLogger("services.gateway")


def load_watcher(settings: GatewaySettings) -> ConfigWatcher | None:
    """The experiments file's watcher (None without RECSTACK_EXPERIMENTS); a bad file at start is a
    StartupError naming the file and the bad field."""
    if not settings.experiments:
        return None
    try:
        return ConfigWatcher(settings.experiments, interval_s=settings.experiments_reload_s)
    except ExperimentConfigError as exc:
        raise StartupError(f"RECSTACK_EXPERIMENTS: {exc}") from exc


async def watch_experiments(watcher: ConfigWatcher, recommender: Recommender, interval_s: float) -> None:
    """Re-read the experiments file every ``interval_s`` (off the event loop); a valid change is
    swapped in, an invalid one is logged by the watcher (with the bad field) and ignored."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            if await asyncio.to_thread(watcher.reload):
                recommender.use_experiments(watcher.config)
        except Exception:  # the watcher must survive anything (e.g. a file system error)
            log.exception("experiments watcher failed; keeping the current configuration")


async def stage_backends(settings: GatewaySettings, channels: list, store: FeatureStore) -> dict[str, object]:
    """The backend of each stage: in process (the bundle's cores in this process, reloaded with the
    bundle; with RECSTACK_STAGES=inprocess also Thompson sampling) or a gRPC stub over a new
    channel (appended to ``channels``)."""
    grpc_backends = {
        "retrieval": (GrpcRetrieval, settings.retrieval_addr, settings.retrieval_timeout_s),
        "ranking": (GrpcRanking, settings.ranking_addr, settings.ranking_timeout_s),
        "rerank": (GrpcRerank, settings.rerank_addr, settings.rerank_timeout_s),
        "bandit": (GrpcBandit, settings.bandit_addr, settings.bandit_timeout_s),
    }
    local = [s for s in ("retrieval", "ranking", "rerank") if settings.in_process(s)]
    out: dict[str, object] = {}
    if local:
        from recstack.rpc.loading import load_core
        from recstack.serving.inprocess import InProcessStages

        limit_threads()
        cores, version = await asyncio.to_thread(load_core, settings.artifacts, InProcessStages.build)
        in_process = InProcessStages.from_cores(cores, version)
        start_reloader(settings.artifacts, settings.reload_s, InProcessStages.build, in_process.swap)
        log.info("stages in process: %s (bundle %s)", ", ".join(local), version)
        out.update({s: getattr(in_process, s) for s in local})
    for stage, (backend, address, timeout_s) in grpc_backends.items():
        if stage not in out:
            channels.append(insecure_channel(address))
            out[stage] = backend(channels[-1], timeout_s)
    if settings.stages == "inprocess":
        out["bandit"] = ThompsonInProcess(local_thompson(store), out["bandit"])
    return out


class ThompsonInProcess:
    """The bandit stage of an in-process gateway: Thompson sampling here (its arms come from Redis,
    the same ArmCache the bandit service reads), the contextual policies at the bandit service."""

    def __init__(self, local: LocalBandit, remote: object):
        self.local = local
        self.remote = remote

    async def explore(self, user, items, scores, k, policy, explore_slots, segment=""):  # noqa: ANN001
        backend = self.local if policy in ("", "thompson") else self.remote
        return await backend.explore(user, items, scores, k, policy, explore_slots, segment=segment)


def local_thompson(store: FeatureStore) -> LocalBandit:
    """Thompson over the stream's arms with the bandit service's settings (same variables)."""
    from recstack.exploration.arms import ArmCache
    from recstack.exploration.thompson import ThompsonSlatePolicy
    from services.bandit.settings import BanditSettings

    b = BanditSettings()
    policy = ThompsonSlatePolicy(
        b.explore_slots,
        b.prior_alpha,
        b.prior_beta,
        b.seed,
        b.n_draws,
        segment_prior_strength=b.segment_prior_strength,
    )
    arms = ArmCache(
        store.get_arms, ttl_s=b.arms_ttl_s, timeout_s=b.arms_timeout_s, segment_reader=store.get_segment_arms
    )
    return LocalBandit(policy, arms)


def main() -> int:
    settings = load_settings(GatewaySettings)
    servicer = GatewayServicer()
    channels = []
    resources: dict[str, object] = {}

    async def load() -> None:
        watcher = await asyncio.to_thread(load_watcher, settings)
        experiments = watcher.config if watcher is not None else ExperimentsConfig.builtin()
        lists = await asyncio.to_thread(read_bundle_lists, Path(settings.artifacts))
        redis = async_from_url(settings.redis_url, socket_timeout=1.0, socket_connect_timeout=0.5)
        resources["redis"] = redis
        store = FeatureStore(redis, Keys(settings.redis_prefix))
        backends = await stage_backends(settings, channels, store)
        stages = build_stages(
            store,
            backends["retrieval"],
            backends["ranking"],
            backends["rerank"],
            backends["bandit"],
            lists.popularity,
            n_candidates=settings.n_candidates,
            features_timeout_s=settings.features_timeout_s,
            retrieval_timeout_s=settings.retrieval_timeout_s,
            ranking_timeout_s=settings.ranking_timeout_s,
            rerank_timeout_s=settings.rerank_timeout_s,
            bandit_timeout_s=settings.bandit_timeout_s,
            popularity_timeout_s=settings.popularity_timeout_s,
            popularity_min_support=settings.popularity_min_support,
            popularity_half_life_s=settings.popularity_half_life_s,
            similarity=lists.similarity,
            diversity_window=settings.diversity_window,
            diversity_timeout_s=settings.diversity_timeout_s,
        )
        producer = (
            EventProducer(settings.kafka_bootstrap_servers, settings.events_topic, request_timeout_ms=5_000)
            if settings.kafka_bootstrap_servers
            else None
        )
        impressions = ImpressionPublisher(producer, max_pending=settings.impression_buffer)
        resources["impressions"] = impressions
        monitor = GatewayMonitor(
            lists.catalog_size, lists.similarity, lists.created_at, settings.coverage_window_s
        )
        recommender = Recommender(
            Chain(stages, lists.popularity),
            lists.user_ids,
            experiments=experiments,
            impressions=impressions,
            monitor=monitor,
        )
        servicer.recommender = recommender
        if watcher is not None and settings.experiments_reload_s > 0:
            task = asyncio.create_task(watch_experiments(watcher, recommender, settings.experiments_reload_s))
            resources["experiments_task"] = task
        start_reloader(
            settings.artifacts, settings.reload_s, bundle_lists, lambda new, _v: recommender.use_bundle(new)
        )

    async def on_stop() -> None:
        task = resources.get("experiments_task")
        if isinstance(task, asyncio.Task):
            task.cancel()
        impressions = resources.get("impressions")
        if isinstance(impressions, ImpressionPublisher):
            await impressions.close()
        for channel in channels:
            await channel.close()
        redis = resources.get("redis")
        if isinstance(redis, aioredis.Redis):
            await redis.aclose()

    argv = [sys.executable, "-m", "services.gateway"]
    with extra_workers(settings.workers, argv, settings.metrics_port):
        return run(
            lambda server: gateway_pb2_grpc.add_GatewayServicer_to_server(servicer, server),
            SERVICE_NAME,
            settings,
            load,
            on_stop=on_stop,
        )


if __name__ == "__main__":
    sys.exit(main())
