"""`python -m services.retrieval` (or `recstack serve retrieval`)."""

from __future__ import annotations

import asyncio
import sys

from recstack.rpc.loading import load_core, watch_bundle
from recstack.rpc.server import limit_threads, run
from recstack.rpc.settings import load_settings
from recstack.v1 import retrieval_pb2_grpc
from services.retrieval.servicer import RetrievalServicer
from services.retrieval.settings import RetrievalSettings

SERVICE_NAME = "recstack.v1.Retrieval"


def main() -> int:
    settings = load_settings(RetrievalSettings)
    limit_threads()
    servicer = RetrievalServicer()

    async def load() -> None:
        from recstack.serving.retriever import Retriever

        servicer.core, servicer.version = await asyncio.to_thread(load_core, settings.artifacts, Retriever)
        watch_bundle(settings.artifacts, settings.reload_s, Retriever, servicer)

    return run(
        lambda server: retrieval_pb2_grpc.add_RetrievalServicer_to_server(servicer, server),
        SERVICE_NAME,
        settings,
        load,
    )


if __name__ == "__main__":
    sys.exit(main())
