"""One ``serve()`` for every recstack gRPC service.

What every service gets from here:

- a grpc.aio server bound to ``settings.host:settings.port`` (SO_REUSEPORT off, so a second
  process on the same port fails instead of silently sharing it);
- the standard health service (grpc.health.v1): NOT_SERVING for "" and the service name until
  the async ``load`` has finished, then SERVING; NOT_SERVING again on shutdown;
- server reflection;
- Prometheus metrics on ``settings.metrics_port`` (0 disables the endpoint):
  ``recstack_grpc_requests_total{service,method,code}`` and
  ``recstack_grpc_request_latency_seconds{service,method,code}``;
- a request id per call (metadata ``x-request-id`` or a new one) in the logging contextvar;
- SIGTERM / SIGINT: health NOT_SERVING, stop accepting, drain in-flight calls for
  ``settings.grace_s`` seconds (keep it below the pod's terminationGracePeriodSeconds), exit 0.

Start-up failures (port in use, missing bundle) raise ``ServeError``; ``run()`` turns them into a
one-line message on stderr and exit code 2.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter, Histogram, start_http_server

from recstack import tracing
from recstack.logging import configure_logging, new_request_id, reset_request_id, set_request_id
from recstack.rpc import tls
from recstack.rpc.settings import ServiceSettings
from recstack.rpc.tracing import server_interceptors

log = logging.getLogger(__name__)

REQUEST_ID_METADATA = "x-request-id"
SHARED_PORT_ENV = "RECSTACK_SHARED_PORT"
EXIT_OK = 0
EXIT_STARTUP_FAILED = 2

GRPC_REQUESTS = Counter(
    "recstack_grpc_requests",
    "gRPC requests handled, by service, method and status code.",
    ["service", "method", "code"],
)
GRPC_LATENCY = Histogram(
    "recstack_grpc_request_latency_seconds",
    "gRPC request latency in seconds, by service, method and status code.",
    ["service", "method", "code"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)


class ServeError(Exception):
    """A service could not start; the message says what is wrong and how to fix it."""


class StartupError(ServeError):
    """The service's loader failed (e.g. a missing bundle); raised by loaders."""


Register = Callable[[grpc.aio.Server], None]
Loader = Callable[[], Awaitable[None]]


def limit_threads() -> None:
    """One intra-op thread for torch and FAISS in model-serving processes (the service scales
    by processes; oversubscribed thread pools only add tail latency)."""
    import faiss
    import torch

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)


def _split_method(full_method: str) -> tuple[str, str]:
    """ "/recstack.v1.Ranking/Rank" -> ("recstack.v1.Ranking", "Rank")."""
    parts = full_method.strip("/").split("/")
    if len(parts) == 2:
        return parts[0], parts[1]
    return "unknown", full_method


def _code_name(context: grpc.aio.ServicerContext, default: str) -> str:
    code = context.code()
    if code is None:
        return default
    if isinstance(code, grpc.StatusCode):
        return code.name
    return str(code)


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every unary-unary call and binds the request id for its duration."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        service, method = _split_method(handler_call_details.method)
        metadata = dict(handler_call_details.invocation_metadata or ())
        inner = handler.unary_unary
        decode = handler.request_deserializer

        def deserialize(data: bytes) -> Any:
            """Undecodable bytes become a marker the wrapper answers INVALID_ARGUMENT (counted, one
            warning) instead of grpc's UNKNOWN with a traceback."""
            try:
                return decode(data) if decode is not None else data
            except Exception as exc:
                return _Malformed(f"{type(exc).__name__}: {str(exc)[:120]}")

        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            request_id = str(metadata.get(REQUEST_ID_METADATA) or new_request_id())[:128]
            token = set_request_id(request_id)
            start = time.perf_counter()
            code = "UNKNOWN"
            try:
                if isinstance(request, _Malformed):
                    log.warning("malformed %s/%s request: %s", service, method, request.reason)
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid {method} message"
                    )
                response = await inner(request, context)
                code = _code_name(context, "OK")
                return response
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except Exception:
                code = _code_name(context, "UNKNOWN")
                if code == "UNKNOWN":
                    log.exception("unhandled error in %s/%s", service, method)
                raise
            finally:
                elapsed = time.perf_counter() - start
                GRPC_REQUESTS.labels(service, method, code).inc()
                GRPC_LATENCY.labels(service, method, code).observe(elapsed)
                reset_request_id(token)

        return grpc.unary_unary_rpc_method_handler(
            wrapper,
            request_deserializer=deserialize,
            response_serializer=handler.response_serializer,
        )


class _Malformed:
    """A request whose bytes did not decode (see MetricsInterceptor)."""

    def __init__(self, reason: str):
        self.reason = reason


def server_options(settings: ServiceSettings, shared: bool) -> list[tuple[str, int]]:
    """grpc.aio server options: the shared port switch and the maximum connection age (with the
    drain grace as its grace), after which clients reconnect and re-resolve their target."""
    options = [("grpc.so_reuseport", 1 if shared else 0)]
    if settings.max_connection_age_s > 0:
        options += [
            ("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(max(settings.grace_s, 1.0) * 1000)),
        ]
    return options


def _check_port_free(host: str, port: int, what: str, variable: str) -> None:
    """Raise ServeError when host:port cannot be bound (checked before grpc logs its own error)."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ServeError(
                    f"{what} port {port} is already in use; stop the other process or set {variable} "
                    "to a free port"
                ) from exc
            raise ServeError(f"cannot bind {what} port {host}:{port}: {exc.strerror}") from exc


async def serve(
    register: Register,
    service_name: str,
    settings: ServiceSettings,
    load: Loader,
    *,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> int:
    """Run one gRPC service until SIGTERM/SIGINT (or ``stop`` is set); return the exit code.

    register: adds the servicer to the server (e.g. ``lambda s: add_RankingServicer_to_server(x, s)``).
    service_name: the proto full name, e.g. "recstack.v1.Ranking" (health and reflection).
    load: loads the model/bundle; health turns SERVING when it returns. It raises ServeError
        (StartupError) with a user-facing message on failure.
    on_stop: awaited after the server has drained (close Redis clients, channels ...).
    ready: set once the service reports SERVING (tests).
    stop: an alternative to a signal (tests).
    interceptors: run after the metrics interceptor (the gateway's caller authentication).
    TLS: RECSTACK_TLS_* (recstack/rpc/tls.py); unset, the port is plaintext.
    Raises ServeError when a port is taken or the loader fails.
    """
    # Worker processes of one service share its gRPC port (SO_REUSEPORT: the kernel spreads the
    # connections); a lone process refuses a taken port with a clear error instead.
    shared = os.environ.get(SHARED_PORT_ENV) == "1"
    if not shared:
        _check_port_free(settings.host, settings.port, "gRPC", "RECSTACK_PORT")
    _check_port_free("0.0.0.0", settings.metrics_port, "metrics", "RECSTACK_METRICS_PORT")

    server = grpc.aio.server(
        interceptors=[MetricsInterceptor(), *server_interceptors(), *interceptors],
        options=server_options(settings, shared),
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    register(server)
    reflection.enable_server_reflection(
        (service_name, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", service_name):
        await health_servicer.set(name, not_serving)
    address = f"{settings.host}:{settings.port}"
    try:
        bound = tls.add_port(server, address)
    except tls.TlsError as exc:
        raise ServeError(str(exc)) from exc
    except RuntimeError as exc:
        raise ServeError(f"cannot bind gRPC port {address}; set RECSTACK_PORT to a free port") from exc
    metrics_server = None
    if settings.metrics_port:
        try:
            metrics_server, _ = start_http_server(settings.metrics_port)
        except OSError as exc:
            raise ServeError(
                f"metrics port {settings.metrics_port} is unavailable ({exc.strerror}); "
                "set RECSTACK_METRICS_PORT to a free port"
            ) from exc

    stop_event = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop_event.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):
            log.debug("cannot install a handler for %s", sig.name)

    await server.start()
    log.info("%s listening on %s (metrics port %s), loading", service_name, bound, settings.metrics_port)
    try:
        load_task = asyncio.ensure_future(load())
        stop_task = asyncio.ensure_future(stop_event.wait())
        await asyncio.wait({load_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if load_task.done():
            load_task.result()  # re-raises a loader failure
            for name in ("", service_name):
                await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
            log.info("%s SERVING on port %s", service_name, bound)
            if ready is not None:
                ready.set()
            await stop_task
        else:
            load_task.cancel()
        stop_task.cancel()
        log.info("%s shutting down: draining for up to %.1f s", service_name, settings.grace_s)
        await health_servicer.enter_graceful_shutdown()
        await server.stop(settings.grace_s)
        log.info("%s stopped", service_name)
        return EXIT_OK
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await server.stop(0)
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
        if on_stop is not None:
            await on_stop()


def run(
    register: Register,
    service_name: str,
    settings: ServiceSettings,
    load: Loader,
    *,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> int:
    """Configure JSON logging, run ``serve()`` and map start-up failures to exit code 2."""
    configure_logging(settings.log_level)
    tracing.configure(service_name)
    try:
        return asyncio.run(
            serve(register, service_name, settings, load, on_stop=on_stop, interceptors=interceptors)
        )
    except ServeError as exc:
        sys.stderr.write(f"error: {service_name}: {exc}\n")
        return EXIT_STARTUP_FAILED
