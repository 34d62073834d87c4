"""Trace context over gRPC: the OpenTelemetry grpc.aio interceptors, only while tracing is on.

Client channels (``recstack.rpc.client``) get a client span per call that injects the W3C
``traceparent`` into the call's metadata; servers (``recstack.rpc.server``) get a server span per
call, the child of the caller's span when the metadata carries one. Both come from
opentelemetry-instrumentation-grpc (its ``aio_client_interceptors`` / ``aio_server_interceptor``
work with the pinned grpcio); while tracing is off (recstack.tracing) the lists are empty, so the
calls run without an interceptor layer at all.
"""

from __future__ import annotations

from typing import Any

from recstack import tracing

# Health checks and reflection would add a span per probe: not traced.
UNTRACED_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection")


def _traced(call_details: Any) -> bool:
    method = call_details.method
    if isinstance(method, bytes):
        method = method.decode()
    return not str(method).lstrip("/").startswith(UNTRACED_SERVICES)


def client_interceptors() -> list[Any]:
    """Interceptors of a client channel: a span per call and the traceparent in its metadata."""
    if not tracing.enabled():
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors(tracer_provider=tracing.provider(), filter_=_traced))


def server_interceptors() -> list[Any]:
    """Interceptors of a server: a span per call that continues the caller's trace."""
    if not tracing.enabled():
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor(tracer_provider=tracing.provider(), filter_=_traced)]
