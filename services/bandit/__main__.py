"""`python -m services.bandit` (or `recstack serve bandit`)."""

from __future__ import annotations

import asyncio
import logging
import sys

from recstack.artifacts.layout import CatalogError, resolve_catalog_dir
from recstack.exploration import kernels
from recstack.exploration.arms import ArmCache
from recstack.exploration.context import ContextBuilder
from recstack.exploration.online import ContextualExplorer, make_policies, make_state_caches
from recstack.exploration.rewards import ContextRecorder
from recstack.exploration.thompson import ThompsonSlatePolicy
from recstack.features.keys import Keys
from recstack.features.store import FeatureStore
from recstack.redis_cluster import async_from_url
from recstack.rpc.server import run
from recstack.rpc.settings import load_settings
from recstack.v1 import bandit_pb2_grpc
from services.bandit.servicer import BanditServicer
from services.bandit.settings import BanditSettings

SERVICE_NAME = "recstack.v1.Bandit"
log = logging.getLogger("services.bandit")


def main() -> int:
    settings = load_settings(BanditSettings)
    redis = async_from_url(settings.redis_url, socket_timeout=1.0, socket_connect_timeout=0.5)
    store = FeatureStore(redis, Keys(settings.redis_prefix))
    arms = ArmCache(
        store.get_arms,
        ttl_s=settings.arms_ttl_s,
        timeout_s=settings.arms_timeout_s,
        segment_reader=store.get_segment_arms,
    )
    policy = ThompsonSlatePolicy(
        settings.explore_slots,
        settings.prior_alpha,
        settings.prior_beta,
        settings.seed,
        settings.n_draws,
        segment_prior_strength=settings.segment_prior_strength,
    )
    builder = ContextBuilder([], {}, settings.context_dim)  # the catalogue's genres come in load()
    policies = make_policies(
        settings.context_dim,
        settings.linucb_alpha,
        settings.linucb_epsilon,
        settings.linucb_ridge,
        settings.lints_v,
        settings.seed,
        settings.n_draws,
        settings.hybrid_shared_dim or None,
    )
    states = make_state_caches(
        redis, policies, settings.redis_prefix, settings.arms_ttl_s, settings.arms_timeout_s
    )
    recorder = (
        ContextRecorder(redis, settings.redis_prefix, settings.reward_window_s)
        if settings.record_contexts
        else None
    )
    contextual = ContextualExplorer(policies, builder, states, recorder, settings.explore_slots)
    servicer = BanditServicer(policy, arms, contextual)

    loaded: list[str] = []  # the catalogue version the contextual features use now
    watch: set[asyncio.Task] = set()

    async def refresh_catalog() -> None:
        version = (await asyncio.to_thread(resolve_catalog_dir, settings.artifacts)).name
        if loaded and loaded[-1] == version:
            return
        contextual.builder = await asyncio.to_thread(
            ContextBuilder.from_artifacts, settings.artifacts, settings.context_dim
        )
        loaded.append(version)
        log.info("contextual features use the catalogue of bundle %s", version)

    async def watch_catalog() -> None:
        while True:
            await asyncio.sleep(settings.reload_s)
            try:
                await refresh_catalog()
            except CatalogError as exc:  # a broken new bundle: keep the current features
                log.error("catalogue not reloaded, keeping the current one: %s", exc)

    async def load() -> None:
        await asyncio.to_thread(kernels.warm_up)  # compile the scoring kernels before SERVING
        try:
            await refresh_catalog()
        except CatalogError as exc:
            log.warning("no bundle catalogue, contextual policies see no genre features: %s", exc)
        if settings.reload_s > 0:
            task = asyncio.create_task(watch_catalog())
            watch.add(task)
            task.add_done_callback(watch.discard)
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
