"""OpenTelemetry tracing of the serving path: off (and close to free) unless configured.

``configure(service_name)`` (called by every service's ``run()``) turns tracing on when
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set: an SDK TracerProvider named ``OTEL_SERVICE_NAME`` (default:
the service's name) exports with OTLP/gRPC through a BatchSpanProcessor. ``OTEL_SDK_DISABLED=true``
keeps it off. Tests call ``use(provider)`` with a provider of their own (an InMemorySpanExporter).

Disabled, ``span()`` returns a shared ``nullcontext`` without touching the OpenTelemetry API at all
(one global read), channels and servers get no interceptors (recstack/rpc/tracing.py), and no
``traceparent`` is written into impression events: the gateway's CPU-bound request path pays
nothing measurable (scripts/bench_tracing.py measures it).

Spans: ``Recommend`` (one per request; root, or the child of the gateway's gRPC server span) with
``stage.<name>`` children (features, retrieval, popularity, ranking, rerank, diversity, bandit),
the gRPC client spans of the downstream calls under their stage, the stage services' server spans
under those (W3C ``traceparent`` metadata), ``impression.publish`` (the impression's ``context``
carries its ``traceparent``) and the feature stream's ``stream.apply_batch`` linked to the
impressions of its batch.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, Link, Span, SpanKind, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)

ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
SERVICE_NAME_ENV = "OTEL_SERVICE_NAME"
DISABLED_ENV = "OTEL_SDK_DISABLED"
TRACEPARENT = "traceparent"
INSTRUMENTATION = "recstack"
__all__ = [
    "Link",
    "Span",
    "SpanKind",
    "StatusCode",
    "configure",
    "current_traceparent",
    "enabled",
    "link_to",
    "span",
    "use",
]

_DISABLED: contextlib.nullcontext[Span] = contextlib.nullcontext(INVALID_SPAN)
_PROPAGATOR = TraceContextTextMapPropagator()


class _State:
    tracer: Tracer | None = None
    provider: Any = None


_state = _State()


def enabled() -> bool:
    """Whether spans are recorded in this process."""
    return _state.tracer is not None


def provider() -> Any:
    """The TracerProvider in use (None while disabled)."""
    return _state.provider


def use(tracer_provider: Any) -> None:
    """Record spans with ``tracer_provider`` (an SDK TracerProvider); None turns tracing off.

    Only recstack's own spans and interceptors use it (the OpenTelemetry global provider is set by
    ``configure`` alone), so tests can switch providers."""
    _state.provider = tracer_provider
    _state.tracer = None if tracer_provider is None else tracer_provider.get_tracer(INSTRUMENTATION)


def configure(service_name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Turn tracing on with OTLP export when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set; return whether
    it is on. The exporter reads the standard OTEL_EXPORTER_OTLP_* variables (endpoint, headers,
    certificate, insecure)."""
    env = os.environ if environ is None else environ
    if not env.get(ENDPOINT_ENV) or env.get(DISABLED_ENV, "").lower() == "true":
        return False
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = env.get(SERVICE_NAME_ENV) or service_name
    tracer_provider = TracerProvider(resource=Resource.create({"service.name": name}))
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(tracer_provider)
    use(tracer_provider)
    atexit.register(tracer_provider.shutdown)  # flushes the batch of the last spans
    log.info("tracing on: OTLP to %s as service %s", env[ENDPOINT_ENV], name)
    return True


def span(
    name: str,
    attributes: Mapping[str, Any] | None = None,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    links: Iterable[Link] | None = None,
) -> contextlib.AbstractContextManager[Span]:
    """A span made current for the ``with`` block (a shared no-op context while disabled).

    Exceptions escaping the block are recorded on the span and set its status to ERROR."""
    tracer = _state.tracer
    if tracer is None:
        return _DISABLED
    return tracer.start_as_current_span(name, attributes=attributes, kind=kind, links=links)


def current_traceparent() -> str:
    """The W3C traceparent of the current span ("" while disabled or without a span)."""
    if _state.tracer is None:
        return ""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get(TRACEPARENT, "")


def link_to(traceparent: str) -> Link | None:
    """A link to the span a W3C traceparent names (None when it is empty or malformed)."""
    if not traceparent:
        return None
    ctx = trace.get_current_span(_PROPAGATOR.extract({TRACEPARENT: traceparent})).get_span_context()
    return Link(ctx) if ctx.is_valid else None
