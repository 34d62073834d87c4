"""`python -m services.ranking` (or `recstack serve ranking`)."""

from __future__ import annotations

import asyncio
import sys

from recstack.rpc.loading import load_core, watch_bundle
from recstack.rpc.server import limit_threads, run
from recstack.rpc.settings import load_settings
from recstack.v1 import ranking_pb2_grpc
from services.ranking.servicer import RankingServicer
from services.ranking.settings import RankingSettings

SERVICE_NAME = "recstack.v1.Ranking"


def main() -> int:
    settings = load_settings(RankingSettings)
    limit_threads()
    servicer = RankingServicer()

    async def load() -> None:
        from recstack.serving.ranker import Ranker

        servicer.core, servicer.version = await asyncio.to_thread(load_core, settings.artifacts, Ranker)
        watch_bundle(settings.artifacts, settings.reload_s, Ranker, servicer)

    return run(
        lambda server: ranking_pb2_grpc.add_RankingServicer_to_server(servicer, server),
        SERVICE_NAME,
        settings,
        load,
    )


if __name__ == "__main__":
    sys.exit(main())
