"""`python -m services.bandit` (or `recstack serve bandit`)."""

from __future__ import annotations

import logging
import sys

import redis.asyncio as aioredis

from recstack.exploration.arms import ArmCache
from recstack.exploration.thompson import ThompsonSlatePolicy
from recstack.features.keys import Keys
from recstack.features.store import FeatureStore
from recstack.rpc.server import run
from recstack.rpc.settings import load_settings
from recstack.v1 import bandit_pb2_grpc
from services.bandit.servicer import BanditServicer
from services.bandit.settings import BanditSettings

SERVICE_NAME = "recstack.v1.Bandit"
log = logging.getLogger("services.bandit")


def main() -> int:
    settings = load_settings(BanditSettings)
    redis = aioredis.from_url(settings.redis_url, socket_timeout=1.0, socket_connect_timeout=0.5)
    store = FeatureStore(redis, Keys(settings.redis_prefix))
    arms = ArmCache(store.get_arms, ttl_s=settings.arms_ttl_s, timeout_s=settings.arms_timeout_s)
    policy = ThompsonSlatePolicy(
        settings.explore_slots, settings.prior_alpha, settings.prior_beta, settings.seed, settings.n_draws
    )
    servicer = BanditServicer(policy, arms)

    async def load() -> None:
        try:
            await redis.ping()
        except Exception as exc:  # the bandit serves prior state without Redis
            log.warning(
                "Redis at %s unavailable at start (%r); serving prior arm statistics", settings.redis_url, exc
            )

    async def on_stop() -> None:
        await redis.aclose()

    return run(
        lambda server: bandit_pb2_grpc.add_BanditServicer_to_server(servicer, server),
        SERVICE_NAME,
        settings,
        load,
        on_stop=on_stop,
    )


if __name__ == "__main__":
    sys.exit(main())
