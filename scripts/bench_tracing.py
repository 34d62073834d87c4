"""Per-request cost of tracing on the gateway's path: Recommender.recommend over the standard chain
with instant fake backends (features, retrieval of 200 candidates, ranking, rerank, bandit), so
what is timed is the gateway's own work plus the spans.

CPU time of the process per request (time.process_time, so other processes on a shared machine
matter less); modes interleaved in rounds, the median and the fastest round reported:
  off         recstack.tracing disabled (no OTEL_EXPORTER_OTLP_ENDPOINT): the production default
  api-noop    the OpenTelemetry API's no-op provider (what ungated API calls would cost)
  sdk-unsampled  an SDK TracerProvider whose sampler drops every trace (OTEL_TRACES_SAMPLER=always_off;
              a ratio sampler costs this on the requests it drops)
  sdk         an SDK TracerProvider without span processors (spans recorded, never exported)
  sdk-memory  SDK + SimpleSpanProcessor(InMemorySpanExporter)
  sdk-batch   SDK + BatchSpanProcessor with an exporter that drops the spans (OTLP minus the network)

Usage: python scripts/bench_tracing.py [--requests 2000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence

import numpy as np
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from recstack import tracing
from recstack.features.types import UserFeatures
from recstack.serving.chain import Chain
from recstack.serving.stages import StageResult, build_stages
from recstack.v1 import gateway_pb2
from services.gateway.servicer import Recommender

ITEMS = [f"i{i}" for i in range(1000)]


class Backends:
    """Every backend at once, answering at once."""

    def __init__(self) -> None:
        self.features = UserFeatures("u1", recent_items=ITEMS[:3])
        self.candidates = ITEMS[10:210]
        self.scores = np.linspace(1.0, 0.0, len(self.candidates))

    async def get_user_features(self, user_id: str) -> UserFeatures:
        return self.features

    async def get_popular_scores(self, n: int, half_life_s: float) -> list[tuple[str, float]]:
        return []

    async def retrieve(self, user, n, exclude) -> StageResult:  # noqa: ANN001
        return StageResult(self.candidates, self.scores, "v")

    async def rank(self, user, items: Sequence[str], scores, model, weights=None) -> StageResult:  # noqa: ANN001
        return StageResult(list(items), np.asarray(scores), "v")

    async def rerank(self, user, items: Sequence[str], scores, model, components=None) -> StageResult:  # noqa: ANN001
        return StageResult(list(items), np.asarray(scores), "v")

    async def explore(self, user, items, scores, k, policy, explore_slots, segment="") -> StageResult:  # noqa: ANN001
        result = StageResult(list(items[:k]), np.asarray(scores[:k]), "thompson")
        result.propensities = np.ones(k)
        return result


class DropExporter(SpanExporter):
    def export(self, spans) -> SpanExportResult:  # noqa: ANN001
        return SpanExportResult.SUCCESS


def providers(memory_exporter: InMemorySpanExporter) -> dict[str, object]:
    memory = TracerProvider()
    memory.add_span_processor(SimpleSpanProcessor(memory_exporter))
    batch = TracerProvider()
    batch.add_span_processor(BatchSpanProcessor(DropExporter(), max_queue_size=65536))
    return {
        "off": None,
        "api-noop": trace.NoOpTracerProvider(),
        "sdk-unsampled": TracerProvider(sampler=ALWAYS_OFF),
        "sdk": TracerProvider(),
        "sdk-memory": memory,
        "sdk-batch": batch,
    }


async def run(requests: int, rounds: int) -> dict[str, list[float]]:
    b = Backends()
    stages = build_stages(b, b, b, b, b, ITEMS, ranking_timeout_s=1, retrieval_timeout_s=1)
    recommender = Recommender(Chain(stages, ITEMS), frozenset({"u1"}))
    request = gateway_pb2.RecommendRequest(user_id="u1", k=10)
    memory_exporter = InMemorySpanExporter()
    modes = providers(memory_exporter)
    for provider in modes.values():  # warm up every path
        tracing.use(provider)
        for _ in range(200):
            await recommender.recommend(request)
    out: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(rounds):
        for mode, provider in modes.items():
            tracing.use(provider)
            start = time.process_time()  # CPU time of this process: robust to a busy machine
            for _ in range(requests):
                reply = await recommender.recommend(request)
            out[mode].append((time.process_time() - start) / requests * 1e6)
            assert list(reply.stages) == ["features", "retrieval", "ranking", "rerank", "bandit"]
            if isinstance(provider, TracerProvider):
                provider.force_flush()
        memory_exporter.clear()  # keep the in-memory exporter small between rounds
    tracing.use(None)
    for provider in modes.values():
        if isinstance(provider, TracerProvider):
            provider.shutdown()
    return out


def disabled_primitives_us(n: int = 200_000) -> float:
    """CPU us of what the off path adds to one request: 6 ``tracing.span`` blocks (Recommend and 5
    stages) with ``is_recording()`` checks, as chain.py and servicer.py make them."""
    tracing.use(None)
    start = time.process_time()
    for _ in range(n):
        for _ in range(6):
            with tracing.span("stage.x") as span:
                span.is_recording()
    return (time.process_time() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    results = asyncio.run(run(args.requests, args.rounds))
    base, base_min = statistics.median(results["off"]), min(results["off"])
    print(f"{'mode':<13} {'median':>8} {'+vs off':>8} {'min':>8} {'+vs off':>8}   CPU us/request per round")
    for mode, values in results.items():
        med, low = statistics.median(values), min(values)
        spread = ", ".join(f"{v:.0f}" for v in values)
        print(f"{mode:<13} {med:>8.1f} {med - base:>+8.1f} {low:>8.1f} {low - base_min:>+8.1f}   [{spread}]")
    print(f"off path's own calls (6 no-op span blocks): {disabled_primitives_us():.2f} CPU us/request")


if __name__ == "__main__":
    main()
