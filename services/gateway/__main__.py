"""`python -m services.gateway` (or `recstack serve gateway`): the gateway on RECSTACK_PORT (50051)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import redis.asyncio as aioredis

from recstack.events.producer import EventProducer
from recstack.features.keys import Keys
from recstack.features.store import FeatureStore
from recstack.rpc.client import insecure_channel
from recstack.rpc.loading import start_reloader
from recstack.rpc.server import run
from recstack.rpc.settings import load_settings
from recstack.serving.chain import Chain
from recstack.serving.stages import GrpcBandit, GrpcRanking, GrpcRerank, GrpcRetrieval, build_stages
from recstack.v1 import gateway_pb2_grpc
from services.gateway.servicer import (
    GatewayServicer,
    ImpressionPublisher,
    Recommender,
    bundle_lists,
    read_bundle_lists,
)
from services.gateway.settings import GatewaySettings

SERVICE_NAME = "recstack.v1.Gateway"


def main() -> int:
    settings = load_settings(GatewaySettings)
    servicer = GatewayServicer()
    channels = []
    resources: dict[str, object] = {}

    async def load() -> None:
        lists = await asyncio.to_thread(read_bundle_lists, Path(settings.artifacts))
        redis = aioredis.from_url(settings.redis_url, socket_timeout=1.0, socket_connect_timeout=0.5)
        resources["redis"] = redis
        store = FeatureStore(redis, Keys(settings.redis_prefix))
        for addr in (
            settings.retrieval_addr,
            settings.ranking_addr,
            settings.rerank_addr,
            settings.bandit_addr,
        ):
            channels.append(insecure_channel(addr))
        stages = build_stages(
            store,
            GrpcRetrieval(channels[0], settings.retrieval_timeout_s),
            GrpcRanking(channels[1], settings.ranking_timeout_s),
            GrpcRerank(channels[2], settings.rerank_timeout_s),
            GrpcBandit(channels[3], settings.bandit_timeout_s),
            lists.popularity,
            n_candidates=settings.n_candidates,
            features_timeout_s=settings.features_timeout_s,
            retrieval_timeout_s=settings.retrieval_timeout_s,
            ranking_timeout_s=settings.ranking_timeout_s,
            rerank_timeout_s=settings.rerank_timeout_s,
            bandit_timeout_s=settings.bandit_timeout_s,
        )
        producer = (
            EventProducer(settings.kafka_bootstrap_servers, settings.events_topic, request_timeout_ms=5_000)
            if settings.kafka_bootstrap_servers
            else None
        )
        impressions = ImpressionPublisher(producer)
        resources["impressions"] = impressions
        recommender = Recommender(Chain(stages, lists.popularity), lists.user_ids, impressions=impressions)
        servicer.recommender = recommender
        start_reloader(
            settings.artifacts, settings.reload_s, bundle_lists, lambda new, _v: recommender.use_bundle(new)
        )

    async def on_stop() -> None:
        impressions = resources.get("impressions")
        if isinstance(impressions, ImpressionPublisher):
            await impressions.close()
        for channel in channels:
            await channel.close()
        redis = resources.get("redis")
        if isinstance(redis, aioredis.Redis):
            await redis.aclose()

    return run(
        lambda server: gateway_pb2_grpc.add_GatewayServicer_to_server(servicer, server),
        SERVICE_NAME,
        settings,
        load,
        on_stop=on_stop,
    )


if __name__ == "__main__":
    sys.exit(main())
