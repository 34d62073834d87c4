"""`python -m services.ranking` (or `recstack serve ranking`)."""

from __future__ import annotations

import sys
from typing import Any

from recstack.rpc.loading import run_model_service
from recstack.rpc.settings import load_settings
from recstack.v1 import ranking_pb2_grpc
from services.ranking.servicer import RankingServicer
from services.ranking.settings import RankingSettings

SERVICE_NAME = "recstack.v1.Ranking"


def build_core(bundle: Any) -> Any:
    from recstack.serving.ranker import Ranker

    return Ranker(bundle)


def main() -> int:
    return run_model_service(
        SERVICE_NAME,
        load_settings(RankingSettings),
        RankingServicer(),
        ranking_pb2_grpc.add_RankingServicer_to_server,
        build_core,
    )


if __name__ == "__main__":
    sys.exit(main())
