"""What the model servicers (retrieval, ranking, rerank) and the bandit servicer share: status
codes for request errors and for a core that is not loaded yet, and one call into a serving core
that maps its exceptions to status codes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import grpc

from recstack.serving.batching import MicroBatcher, Overloaded

log = logging.getLogger(__name__)

T = TypeVar("T")


async def abort_invalid(context: grpc.aio.ServicerContext, message: str) -> NoReturn:
    """INVALID_ARGUMENT with a message that names the field."""
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)


def is_client_error(exc: BaseException) -> bool:
    """Errors caused by the request (unknown items or model, bad values): INVALID_ARGUMENT."""
    from recstack.serving.errors import UnknownItemError, UnknownModelError

    return isinstance(exc, UnknownItemError | UnknownModelError | ValueError)


class ModelServicer:
    """Base of a servicer over one serving core that hot reload swaps.

    core: the core built from the bundle (None until loaded); version: that bundle's version.
    ``recstack.rpc.loading.run_model_service`` sets both. ``what`` names the service in
    status messages.
    """

    what = "service"
    batch_method = ""  # the core's batch method (e.g. "retrieve_many"); "" = no micro-batching

    def __init__(self, core: Any = None, version: str = ""):
        self.core = core
        self.version = version
        self.batch = self.batcher(self.what, self.batch_method) if self.batch_method else None

    async def loaded_core(self, context: grpc.aio.ServicerContext) -> Any:
        """The current core; UNAVAILABLE while the bundle is still loading."""
        core = self.core
        if core is None:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"{self.what} is still loading its model bundle; retry shortly"
            )
        return core

    def batcher(self, name: str, method: str, max_batch: int = 64, max_queue: int = 512) -> MicroBatcher:
        """A micro-batcher over ``core.<method>(requests)`` of whichever core is loaded when a batch
        starts; each result comes back with that core's bundle version."""

        def run(requests: list) -> list:
            core, version = self.core, self.version
            return [(r, version) for r in getattr(core, method)(requests)]

        return MicroBatcher(run, name, max_batch=max_batch, max_queue=max_queue)

    async def call_batched(
        self, context: grpc.aio.ServicerContext, batcher: MicroBatcher, request: Any
    ) -> Any:
        """``await batcher(request)`` -> (result, bundle version); a full queue aborts with
        RESOURCE_EXHAUSTED, request errors with INVALID_ARGUMENT, anything else with INTERNAL."""
        try:
            return await batcher(request)
        except Overloaded as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{exc}; retry with backoff")
        except Exception as exc:
            if is_client_error(exc):
                await abort_invalid(context, str(exc))
            log.error("%s failed: %r", self.what, exc, exc_info=exc)
            await context.abort(grpc.StatusCode.INTERNAL, f"{self.what} failed: {type(exc).__name__}")

    async def call_core(self, context: grpc.aio.ServicerContext, method: Callable[..., T], *args: Any) -> T:
        """``method(*args)``; request errors (``is_client_error``) abort with INVALID_ARGUMENT and
        their message, anything else is logged and aborts with INTERNAL."""
        try:
            return method(*args)
        except Exception as exc:
            if is_client_error(exc):
                await abort_invalid(context, str(exc))
            log.exception("%s failed", self.what)
            await context.abort(grpc.StatusCode.INTERNAL, f"{self.what} failed: {type(exc).__name__}")
