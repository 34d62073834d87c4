"""`python -m services.rerank` (or `recstack serve rerank`)."""

from __future__ import annotations

import asyncio
import sys

from recstack.rpc.loading import load_core, watch_bundle
from recstack.rpc.server import limit_threads, run
from recstack.rpc.settings import load_settings
from recstack.v1 import rerank_pb2_grpc
from services.rerank.servicer import RerankServicer
from services.rerank.settings import RerankSettings

SERVICE_NAME = "recstack.v1.Rerank"


def main() -> int:
    settings = load_settings(RerankSettings)
    limit_threads()
    servicer = RerankServicer()

    async def load() -> None:
        from recstack.serving.reranker import Reranker

        servicer.core, servicer.version = await asyncio.to_thread(load_core, settings.artifacts, Reranker)
        watch_bundle(settings.artifacts, settings.reload_s, Reranker, servicer)

    return run(
        lambda server: rerank_pb2_grpc.add_RerankServicer_to_server(servicer, server),
        SERVICE_NAME,
        settings,
        load,
    )


if __name__ == "__main__":
    sys.exit(main())
