"""Gateway servicer: validate, assign the variants, run the chain, reply, publish the impression.

Experiments come from an ``ExperimentsConfig`` (``RECSTACK_EXPERIMENTS`` file, reloaded by
``ConfigWatcher``; without a file the built-in ``DEFAULT_EXPERIMENT``). Each request is resolved
once: its variant per layer, the global holdout, a QA override (``context.force_variant``:
``VARIANT`` or ``EXPERIMENT/VARIANT``) and the merged pipeline that drives the chain.

Exposure is logged once per request, in its impression event: ``experiment_id`` / ``variant`` are
the first (primary) assignment, and the context carries every assignment as
``ab.<experiment_id> = variant``, ``holdout = "1"`` for held-out users and ``qa = "1"`` for forced
requests (the stream's A/B record writer skips those), and ``bandit_segment`` = the request's
Thompson segment when the pipeline has ``segment_by`` and the request has one (the stream then
updates that segment's arms too). Callers cannot set these reserved keys: request attributes named
``qa``, ``holdout``, ``bandit_segment`` or ``ab.*`` are dropped from the event context.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import Counter, Gauge

from recstack import tracing
from recstack.diversity.catalog import CatalogSimilarity
from recstack.events.producer import EventProducer
from recstack.events.schema import new_event
from recstack.experiments.assignment import UnknownVariantError
from recstack.experiments.config import ExperimentsConfig, Resolution
from recstack.exploration.segments import SEGMENT_CONTEXT_KEY
from recstack.logging import current_request_id, new_request_id, reset_request_id, set_request_id
from recstack.rpc.convert import scored_items
from recstack.rpc.server import REQUEST_ID_METADATA, StartupError
from recstack.serving.chain import Chain, RecommendState
from recstack.serving.stages import DiversityStage, PopularityStage
from recstack.v1 import gateway_pb2, gateway_pb2_grpc
from services.gateway.monitoring import REQUEST_LATENCY, REQUESTS, GatewayMonitor
from services.gateway.validation import RequestError, validate_request

log = logging.getLogger(__name__)

IMPRESSIONS = Counter(
    "recstack_gateway_impressions",
    "Impression events by outcome (sent, failed, dropped: the buffer was full, disabled).",
    ["outcome"],
)
IMPRESSIONS_PENDING = Gauge(
    "recstack_gateway_impressions_pending",
    "Impression events waiting for the broker's acknowledgement (bounded by RECSTACK_IMPRESSION_BUFFER).",
)
MAX_ECHO = 128  # characters of a caller's value repeated in logs
DEADLINE_MARGIN_S = 0.01
"""Time kept back from the caller's deadline to build and send the reply."""


@dataclass(frozen=True)
class BundleLists:
    """What the gateway needs from the bundle: its version, popularity list and known users."""

    version: str
    popularity: list[str]
    user_ids: frozenset[str]
    catalog_size: int = 0
    similarity: CatalogSimilarity | None = None
    created_at: Mapping[str, float] = field(default_factory=dict)


def read_bundle_lists(artifacts: Path) -> BundleLists:
    """Version, catalogue popularity, user ids, item similarities and creation times of the bundle
    (builds only the two-tower model, for the item embeddings of cosine diversity).

    Raises StartupError with the BundleError message (which file is missing, how to create it).
    """
    from recstack.artifacts import BundleError, load_bundle

    try:
        return bundle_lists(load_bundle(artifacts))
    except BundleError as exc:
        raise StartupError(str(exc)) from exc


def bundle_lists(bundle: Any) -> BundleLists:
    """BundleLists of a loaded ``recstack.artifacts.Bundle``: also the item similarities of the
    diversity stage (genres; two-tower item embeddings when the bundle has them) and the items'
    ``created_at`` (catalog.json ``"created_at": {item: unix s}``, optional: ``Bundle.created_at``
    is {} for bundles without it) for freshness."""
    return BundleLists(
        bundle.version,
        [str(x) for x in bundle.popularity],
        frozenset(map(str, bundle.user_ids)),
        catalog_size=len(bundle.catalog.get("item_ids", [])),
        similarity=CatalogSimilarity.from_bundle(bundle),
        created_at={k: float(v) for k, v in bundle.created_at.items()},
    )


RESERVED_CONTEXT = ("qa", "holdout", SEGMENT_CONTEXT_KEY, tracing.TRACEPARENT)
RESERVED_PREFIX = "ab."


def exposure_context(attributes: Mapping[str, str], resolution: Resolution) -> dict[str, str]:
    """The impression context: the request attributes without reserved keys, plus the exposure
    (``ab.<experiment>`` per assignment, ``holdout``, ``qa``). The bandit segment is added when the
    impression is published (``impression_context``): it needs the user's features."""
    out = {
        k: v for k, v in attributes.items() if k not in RESERVED_CONTEXT and not k.startswith(RESERVED_PREFIX)
    }
    for a in resolution.assignments:
        out[f"{RESERVED_PREFIX}{a.experiment_id}"] = a.variant
    if resolution.holdout:
        out["holdout"] = "1"
    if resolution.qa:
        out["qa"] = "1"
    return out


def impression_context(state: RecommendState, traceparent: str = "") -> dict[str, str]:
    """The impression event's context: ``state.attributes`` (``exposure_context``) plus
    ``bandit_segment`` when the request has a segment and ``traceparent`` (W3C) while tracing."""
    segment = state.bandit_segment
    out = {**state.attributes, SEGMENT_CONTEXT_KEY: segment} if segment else state.attributes
    return {**out, tracing.TRACEPARENT: traceparent} if traceparent else out


class ImpressionPublisher:
    """Fire-and-forget impression events: never blocks nor fails a reply.

    The Kafka producer is started lazily (and retried at most every ``retry_s`` seconds) so that
    a gateway started before Kafka still serves; failures are logged and counted. While the broker
    is down, impressions wait in the producer (up to its request timeout) and at most
    ``max_pending`` of them are held: past that they are dropped and counted (``dropped``), so a
    long outage costs exposure records, never the gateway's memory or its replies.
    """

    def __init__(self, producer: EventProducer | None, retry_s: float = 5.0, max_pending: int = 10_000):
        self.producer = producer
        self.retry_s = retry_s
        self.max_pending = max_pending
        self._started = False
        self._next_try = 0.0
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    def publish(self, state: RecommendState) -> None:
        if self.producer is None:
            IMPRESSIONS.labels("disabled").inc()
            return
        if len(self._tasks) >= self.max_pending:
            IMPRESSIONS.labels("dropped").inc()
            return
        task = asyncio.create_task(self._send(state))
        self._tasks.add(task)
        IMPRESSIONS_PENDING.set(len(self._tasks))
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        IMPRESSIONS_PENDING.set(len(self._tasks))

    async def _ensure_started(self) -> bool:
        assert self.producer is not None
        async with self._lock:
            loop = asyncio.get_running_loop()
            if self._started:
                return True
            if loop.time() < self._next_try:
                return False
            try:
                await self.producer.start()
            except Exception as exc:
                self._next_try = loop.time() + self.retry_s
                log.warning("impressions: Kafka unavailable (%s); retrying in %.0f s", exc, self.retry_s)
                return False
            self._started = True
            return True

    async def _send(self, state: RecommendState) -> None:
        token = set_request_id(state.request_id)
        try:
            with tracing.span("impression.publish", kind=tracing.SpanKind.PRODUCER):
                await self._send_event(state)
        finally:
            reset_request_id(token)

    async def _send_event(self, state: RecommendState) -> None:
        try:
            if not await self._ensure_started():
                IMPRESSIONS.labels("failed").inc()
                return
            assert self.producer is not None
            event = new_event(
                state.user_id,
                "impression",
                request_id=state.request_id,
                context=impression_context(state, tracing.current_traceparent()),
                items=list(state.candidates),
                positions=list(range(len(state.candidates))),
                propensities=[float(p) for p in state.served_propensities()],
                variant=state.variant,
                experiment_id=state.experiment_id,
                model_versions=state.model_versions,
            )
            await self.producer.send(event)
            IMPRESSIONS.labels("sent").inc()
        except Exception:
            IMPRESSIONS.labels("failed").inc()
            log.warning("impression for request %s not published", state.request_id, exc_info=True)

    async def close(self, timeout_s: float = 5.0) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)
        if self.producer is not None and self._started:
            await self.producer.stop()


class Recommender:
    """The gateway's logic without gRPC: validate, assign, run the chain, build the reply.

    ``experiments`` is read once per request; ``use_experiments`` replaces it (one assignment:
    the gateway's experiments watcher switches configurations without a restart).
    """

    def __init__(
        self,
        chain: Chain,
        known_users: Collection[str],
        experiments: ExperimentsConfig | None = None,
        impressions: ImpressionPublisher | None = None,
        monitor: GatewayMonitor | None = None,
    ):
        self.chain = chain
        self.known_users = known_users
        self.experiments = experiments if experiments is not None else ExperimentsConfig.builtin()
        self.impressions = impressions
        self.monitor = monitor

    def use_experiments(self, config: ExperimentsConfig) -> None:
        self.experiments = config

    def use_bundle(self, lists: BundleLists) -> None:
        """Switch to a new bundle's known users, popularity lists and catalogue (hot reload)."""
        self.known_users = lists.user_ids
        self.chain.fill_items = list(lists.popularity)
        for stage in self.chain.stages:
            if isinstance(stage, PopularityStage):
                stage.catalog_popularity = list(lists.popularity)
            if isinstance(stage, DiversityStage) and lists.similarity is not None:
                stage.similarity = lists.similarity
        if self.monitor is not None:
            self.monitor.use_catalog(lists.catalog_size, lists.similarity, lists.created_at)

    async def recommend(
        self, request: gateway_pb2.RecommendRequest, time_remaining_s: float | None = None
    ) -> gateway_pb2.RecommendResponse:
        """Raises RequestError / UnknownVariantError for invalid requests.

        time_remaining_s: the caller's remaining deadline; stages are cut to finish
        ``DEADLINE_MARGIN_S`` before it. Traced as the span ``Recommend`` (recstack.tracing).
        """
        with tracing.span("Recommend") as span:
            return await self._recommend(request, time_remaining_s, span)

    async def _recommend(
        self, request: gateway_pb2.RecommendRequest, time_remaining_s: float | None, span: tracing.Span
    ) -> gateway_pb2.RecommendResponse:
        start = time.perf_counter()
        try:
            validate_request(request)
            resolution = self.experiments.resolve(request.user_id, request.context.force_variant)
        except (RequestError, UnknownVariantError):
            REQUEST_LATENCY.labels("invalid").observe(time.perf_counter() - start)
            raise
        primary = resolution.primary
        state = RecommendState(
            request_id=current_request_id() or new_request_id(),
            user_id=request.user_id,
            k=request.k,
            variant=primary.variant if primary else ("holdout" if resolution.holdout else ""),
            experiment_id=primary.experiment_id if primary else "",
            pipeline=resolution.pipeline,
            exclude=set(request.context.exclude_items),
            allow_consumed=request.context.allow_consumed,
            attributes=exposure_context(request.context.attributes, resolution),
            known_user=request.user_id in self.known_users,
        )
        if time_remaining_s is not None:
            state.deadline = asyncio.get_running_loop().time() + time_remaining_s - DEADLINE_MARGIN_S
        try:
            await self.chain.run(state)
        except Exception:
            REQUEST_LATENCY.labels("error").observe(time.perf_counter() - start)
            raise
        reply = gateway_pb2.RecommendResponse(
            request_id=state.request_id,
            variant=state.variant,
            stages=state.stages_ran,
            degraded=state.degraded,
            skipped=state.skipped,
            model_versions=state.model_versions,
        )
        reply.items.extend(
            scored_items(state.candidates, state.scores, state.components, state.served_propensities())
        )
        outcome = "degraded" if state.degraded else "ok"
        if span.is_recording():
            annotate(span, state)
        if self.monitor is not None:
            self.monitor.observe(state.candidates)
        count_request(resolution, outcome)
        REQUEST_LATENCY.labels(outcome).observe(time.perf_counter() - start)
        if self.impressions is not None:
            self.impressions.publish(state)
        return reply


def annotate(span: tracing.Span, state: RecommendState) -> None:
    """The ``Recommend`` span's attributes: the request id the gateway minted (never the user id),
    k, the assignment, the stages that ran and those skipped (degraded)."""
    span.set_attributes(
        {
            "recstack.request_id": state.request_id,
            "recstack.k": state.k,
            "recstack.variant": state.variant,
            "recstack.experiment_id": state.experiment_id,
            "recstack.known_user": state.known_user,
            "recstack.items": len(state.candidates),
            "recstack.stages": state.stages_ran,
            "recstack.degraded": state.degraded,
            "recstack.skipped": sorted(state.skipped),
        }
    )


def count_request(resolution: Resolution, outcome: str) -> None:
    """``recstack_gateway_requests_total`` once per experiment of the request (see monitoring)."""
    labels = [(a.experiment_id, a.variant) for a in resolution.assignments]
    if not labels:
        labels = [("", "holdout" if resolution.holdout else "none")]
    for experiment_id, variant in labels:
        REQUESTS.labels(experiment_id, variant, outcome).inc()
        if resolution.qa:
            REQUESTS.labels(experiment_id, variant, "qa").inc()


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    """Maps Recommender errors to status codes; UNAVAILABLE until ``recommender`` is set."""

    def __init__(self, recommender: Recommender | None = None):
        self.recommender = recommender

    async def Recommend(
        self, request: gateway_pb2.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.RecommendResponse:
        recommender = self.recommender
        if recommender is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "gateway is still loading; retry shortly")
        # The id that joins the impression with its clicks, rewards and A/B outcomes is minted here,
        # never taken from the caller: two callers sending the same x-request-id must not share a
        # slate (nor steer another user's rewards). The caller's id is logged beside it.
        caller = dict(context.invocation_metadata() or ()).get(REQUEST_ID_METADATA)
        token = set_request_id(new_request_id())
        if caller:
            log.info("request from caller id %s", str(caller)[:MAX_ECHO])
        try:
            return await recommender.recommend(request, context.time_remaining())
        except (RequestError, UnknownVariantError) as exc:
            REQUESTS.labels("", "", "invalid").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Exception:
            REQUESTS.labels("", "", "error").inc()
            log.exception("Recommend failed")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the gateway logs")
        finally:
            reset_request_id(token)
