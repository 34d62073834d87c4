"""Loading a serving core from the model bundle: at service start and on hot reload."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc

from recstack.rpc.server import StartupError, limit_threads, run
from recstack.rpc.servicer import ModelServicer
from recstack.rpc.settings import ModelServiceSettings

T = TypeVar("T")
log = logging.getLogger(__name__)


def load_core(artifacts: str | Path, factory: Callable[[Any], T]) -> tuple[T, str]:
    """Load the bundle under ``artifacts`` (resolving CURRENT) and build a core from it.

    Returns (core, bundle version), the core warmed up (``warm_up()`` of the core, or of each core
    of a dict of cores) so that the first request after SERVING is as fast as the next. A missing or
    broken bundle raises StartupError with the BundleError message (which file is missing and the
    command that creates a bundle).
    """
    from recstack.artifacts import BundleError, load_bundle
    from recstack.serving.errors import UnknownModelError

    try:
        bundle = load_bundle(Path(artifacts))
        core = factory(bundle)
    except (BundleError, UnknownModelError) as exc:
        raise StartupError(str(exc)) from exc
    for part in core.values() if isinstance(core, dict) else [core]:
        if hasattr(part, "warm_up"):  # first calls allocate and load kernels: do it before SERVING
            part.warm_up()
    return core, str(bundle.version)


def current_version_dir(artifacts: str | Path) -> Path | None:
    """The version directory ``artifacts`` resolves to now (None when it cannot be resolved)."""
    from recstack.artifacts.layout import BundleError, resolve_version_dir

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


def run_model_service(
    service_name: str,
    settings: ModelServiceSettings,
    servicer: ModelServicer,
    add_servicer: Callable[[Any, grpc.aio.Server], None],
    build_core: Callable[[Any], Any],
) -> int:
    """``run()`` for a model service (retrieval, ranking, rerank): one thread for torch and FAISS,
    the core ``build_core(bundle)`` built off the event loop (health SERVING once it is set on
    ``servicer``), then swapped on every new bundle (``settings.reload_s``)."""
    limit_threads()

    def swap(core: Any, version: str) -> None:
        servicer.core, servicer.version = core, version

    async def load() -> None:
        swap(*await asyncio.to_thread(load_core, settings.artifacts, build_core))
        start_reloader(settings.artifacts, settings.reload_s, build_core, swap)

    return run(lambda server: add_servicer(servicer, server), service_name, settings, load)
