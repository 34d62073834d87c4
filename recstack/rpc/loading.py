"""Loading a serving core from the model bundle at service start."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc

from recstack.rpc.server import StartupError

T = TypeVar("T")
log = logging.getLogger(__name__)


def load_core(artifacts: str | Path, factory: Callable[[Any], T]) -> tuple[T, str]:
    """Load the bundle under ``artifacts`` (resolving CURRENT) and build a core from it.

    Returns (core, bundle version). A missing or broken bundle raises StartupError with the
    BundleError message (which file is missing and the command that creates a bundle).
    """
    from recstack.artifacts import BundleError, load_bundle
    from recstack.serving.errors import UnknownModelError

    try:
        bundle = load_bundle(Path(artifacts))
        return factory(bundle), str(bundle.version)
    except (BundleError, UnknownModelError) as exc:
        raise StartupError(str(exc)) from exc


async def abort_not_loaded(context: grpc.aio.ServicerContext, what: str) -> NoReturn:
    await context.abort(
        grpc.StatusCode.UNAVAILABLE, f"{what} is still loading its model bundle; retry shortly"
    )


async def abort_invalid(context: grpc.aio.ServicerContext, message: str) -> NoReturn:
    """INVALID_ARGUMENT with a message that names the field."""
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)


def is_client_error(exc: BaseException) -> bool:
    """Errors caused by the request (unknown items or model, bad values): INVALID_ARGUMENT."""
    from recstack.serving.errors import UnknownItemError, UnknownModelError

    return isinstance(exc, UnknownItemError | UnknownModelError | ValueError)


def current_version_dir(artifacts: str | Path) -> Path | None:
    """The version directory ``artifacts`` resolves to now (None when it cannot be resolved)."""
    from recstack.artifacts import BundleError
    from recstack.artifacts.bundle import resolve_version_dir

    try:
        return resolve_version_dir(Path(artifacts)).resolve()
    except BundleError:
        return None


class BundleReloader:
    """Polls ``artifacts/CURRENT``; when it names a new version, builds a new core off the event
    loop and hands it to ``apply(core, version)`` (a plain attribute swap on the event loop, so a
    request sees either the old or the new core, never a mix). A broken new bundle is logged and
    the old core keeps serving.
    """

    def __init__(
        self,
        artifacts: str | Path,
        factory: Callable[[Any], T],
        apply: Callable[[T, str], None],
        interval_s: float = 30.0,
    ):
        self.artifacts = artifacts
        self.factory = factory
        self.apply = apply
        self.interval_s = interval_s
        self.loaded: Path | None = current_version_dir(artifacts)

    async def check(self) -> bool:
        """Reload when CURRENT moved; return True when a new core was applied."""
        target = await asyncio.to_thread(current_version_dir, self.artifacts)
        if target is None or target == self.loaded:
            return False
        try:
            core, version = await asyncio.to_thread(load_core, target, self.factory)
        except StartupError as exc:
            log.error("bundle %s not loaded, keeping the current one: %s", target, exc)
            self.loaded = target  # do not retry a broken version on every poll
            return False
        self.apply(core, version)
        self.loaded = target
        log.info("switched to bundle %s", version)
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check()
            except Exception:  # a reload problem must never stop the service
                log.exception("bundle reload check failed")


_reload_tasks: set[asyncio.Task[None]] = set()


def start_reloader(
    artifacts: str | Path, interval_s: float, factory: Callable[[Any], T], apply: Callable[[T, str], None]
) -> None:
    """Run a BundleReloader in the background (inside the running event loop); 0 disables it."""
    if interval_s <= 0:
        return
    task = asyncio.create_task(BundleReloader(artifacts, factory, apply, interval_s).run())
    _reload_tasks.add(task)
    task.add_done_callback(_reload_tasks.discard)


def watch_bundle(
    artifacts: str | Path, interval_s: float, factory: Callable[[Any], Any], target: Any
) -> None:
    """Hot reload for a model servicer: swaps ``target.core`` / ``target.version`` on a new bundle."""

    def apply(core: Any, version: str) -> None:
        target.core, target.version = core, version

    start_reloader(artifacts, interval_s, factory, apply)
