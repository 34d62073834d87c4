"""Tracing of the gateway's chain (recstack.tracing): one ``Recommend`` span per request with a
``stage.<name>`` child per stage that ran or was skipped, over the real in-process serving cores
(what RECSTACK_STAGES=inprocess runs), the impression's traceparent, the stream's links, and
nothing at all while tracing is off."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from recstack import tracing
from recstack.artifacts import load_bundle
from recstack.events import UserEvent, event_to_json
from recstack.exploration.arms import ArmCache
from recstack.exploration.thompson import ThompsonSlatePolicy
from recstack.features.types import UserFeatures
from recstack.serving.chain import Chain
from recstack.serving.inprocess import InProcessStages
from recstack.serving.stages import LocalBandit, build_stages
from recstack.v1 import gateway_pb2
from services.feature_stream.processor import BatchProcessor, RawMessage
from services.gateway.servicer import ImpressionPublisher, Recommender
from tests.helpers import FakeStore


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    try:
        yield exporter
    finally:
        tracing.use(None)
        provider.shutdown()


class FailingRanking:
    async def rank(self, *args, **kwargs):  # noqa: ANN002, ANN003
        raise ConnectionError("ranking replica down")


class CapturingProducer:
    def __init__(self) -> None:
        self.events: list[UserEvent] = []

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def send(self, event: UserEvent) -> None:
        self.events.append(event)


def in_process_recommender(bundle_dir: Path, fail_ranking: bool = False) -> tuple[Recommender, str]:
    bundle = load_bundle(bundle_dir)
    users = json.loads((bundle_dir / bundle.version / "users.json").read_text())["user_ids"]
    items = [str(x) for x in bundle.popularity]
    user = str(users[0])
    store = FakeStore({user: UserFeatures(user, recent_items=items[:3])})
    cores = InProcessStages(bundle)
    bandit = LocalBandit(ThompsonSlatePolicy(explore_slots=1, seed=0), ArmCache(store.get_arms))
    stages = build_stages(
        store,
        cores.retrieval,
        FailingRanking() if fail_ranking else cores.ranking,
        cores.rerank,
        bandit,
        items,
        retrieval_timeout_s=30,
        ranking_timeout_s=30,
        rerank_timeout_s=30,
        bandit_timeout_s=30,
    )
    recommender = Recommender(
        Chain(stages, items),
        frozenset(map(str, users)),
        impressions=ImpressionPublisher(CapturingProducer()),  # type: ignore[arg-type]
    )
    return recommender, user


def by_name(exporter: InMemorySpanExporter) -> dict[str, object]:
    out = {}
    for span in exporter.get_finished_spans():
        assert span.name not in out, f"two spans named {span.name}"
        out[span.name] = span
    return out


async def test_recommend_is_one_trace_with_a_span_per_stage(
    small_bundle: Path, spans: InMemorySpanExporter
) -> None:
    recommender, user = in_process_recommender(small_bundle)
    reply = await recommender.recommend(gateway_pb2.RecommendRequest(user_id=user, k=7))
    await recommender.impressions.close()  # type: ignore[union-attr]
    named = by_name(spans)
    root = named["Recommend"]
    assert root.parent is None
    stage_spans = {name for name in named if name.startswith("stage.")}
    assert stage_spans == {f"stage.{s}" for s in reply.stages if s != "fill"} | {
        f"stage.{s}" for s in reply.skipped
    }
    core = ("features", "retrieval", "ranking", "rerank", "bandit")
    assert {f"stage.{s}" for s in core} <= stage_spans
    for name in stage_spans:
        child = named[name]
        assert child.context.trace_id == root.context.trace_id
        assert child.parent.span_id == root.context.span_id, name
        assert child.status.status_code is not StatusCode.ERROR, name
    attrs = root.attributes
    assert attrs["recstack.request_id"] == reply.request_id and attrs["recstack.k"] == 7
    assert attrs["recstack.variant"] == reply.variant != ""
    assert attrs["recstack.degraded"] is False and tuple(attrs["recstack.skipped"]) == ()
    assert tuple(attrs["recstack.stages"]) == tuple(reply.stages)
    assert user not in {str(v) for v in attrs.values()}  # the span carries no user id
    # the impression: published under the request's trace, its event carries the traceparent
    publish = named["impression.publish"]
    assert publish.kind is SpanKind.PRODUCER and publish.parent.span_id == root.context.span_id
    (event,) = recommender.impressions.producer.events  # type: ignore[union-attr]
    trace_id, span_id = f"{publish.context.trace_id:032x}", f"{publish.context.span_id:016x}"
    assert event.context[tracing.TRACEPARENT].startswith(f"00-{trace_id}-{span_id}-")
    linked = tracing.link_to(event.context[tracing.TRACEPARENT]).context
    assert (linked.trace_id, linked.span_id) == (publish.context.trace_id, publish.context.span_id)


async def test_a_failing_stage_is_an_error_span_and_the_root_says_degraded(
    small_bundle: Path, spans: InMemorySpanExporter
) -> None:
    recommender, user = in_process_recommender(small_bundle, fail_ranking=True)
    reply = await recommender.recommend(gateway_pb2.RecommendRequest(user_id=user, k=5))
    await recommender.impressions.close()  # type: ignore[union-attr]
    named = by_name(spans)
    assert reply.degraded and "ranking" in reply.skipped
    ranking = named["stage.ranking"]
    assert ranking.status.status_code is StatusCode.ERROR
    assert "ranking replica down" in ranking.status.description
    assert ranking.attributes["recstack.outcome"] == "error"
    root = named["Recommend"]
    assert root.attributes["recstack.degraded"] is True
    assert tuple(root.attributes["recstack.skipped"]) == ("ranking",)


async def test_tracing_off_records_nothing_and_writes_no_traceparent(small_bundle: Path) -> None:
    assert not tracing.enabled()
    assert tracing.span("x") is tracing.span("y")  # one shared no-op context, nothing allocated
    assert tracing.current_traceparent() == ""
    recommender, user = in_process_recommender(small_bundle)
    await recommender.recommend(gateway_pb2.RecommendRequest(user_id=user, k=5))
    await recommender.impressions.close()  # type: ignore[union-attr]
    (event,) = recommender.impressions.producer.events  # type: ignore[union-attr]
    assert tracing.TRACEPARENT not in event.context


async def test_callers_cannot_set_the_traceparent_of_the_impression(small_bundle: Path) -> None:
    recommender, user = in_process_recommender(small_bundle)
    forged = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    request = gateway_pb2.RecommendRequest(user_id=user, k=5)
    request.context.attributes[tracing.TRACEPARENT] = forged
    await recommender.recommend(request)
    await recommender.impressions.close()  # type: ignore[union-attr]
    (event,) = recommender.impressions.producer.events  # type: ignore[union-attr]
    assert tracing.TRACEPARENT not in event.context


class Writer:
    async def apply(self, events, sources=None):  # noqa: ANN001
        from recstack.features.writer import ApplyResult

        return ApplyResult(len(events), 0, 0)


async def test_the_stream_links_its_batch_span_to_the_impressions_traces(spans: InMemorySpanExporter) -> None:
    from recstack.events import new_event

    traced = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    events = [
        new_event("u1", "impression", items=["i1"], context={tracing.TRACEPARENT: traced}),
        new_event("u2", "impression", items=["i2"]),  # untraced: no link
        new_event("u3", "impression", items=["i3"], context={tracing.TRACEPARENT: "00-garbage"}),
    ]

    async def sink(*args: object) -> None:
        raise AssertionError("no dead letters expected")

    processor = BatchProcessor(Writer(), sink)  # type: ignore[arg-type]
    messages = [RawMessage(event_to_json(e), b"k", "user-events", 0, i) for i, e in enumerate(events)]
    outcome = await processor.process(messages)
    assert outcome.applied == 3
    (span,) = spans.get_finished_spans()
    assert span.name == "stream.apply_batch" and span.attributes["recstack.applied"] == 3
    (link,) = span.links
    assert f"{link.context.trace_id:032x}" == "a" * 32 and f"{link.context.span_id:016x}" == "b" * 16
    assert link.attributes["recstack.event_id"] == events[0].event_id


def test_configure_needs_an_endpoint() -> None:
    assert tracing.configure("recstack-test", environ={}) is False
    off = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_SDK_DISABLED": "true"}
    assert tracing.configure("recstack-test", environ=off) is False
    assert not tracing.enabled()
