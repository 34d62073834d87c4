"""`python -m services.rerank` (or `recstack serve rerank`)."""

from __future__ import annotations

import sys
from typing import Any

from recstack.rpc.loading import run_model_service
from recstack.rpc.settings import load_settings
from recstack.v1 import rerank_pb2_grpc
from services.rerank.servicer import RerankServicer
from services.rerank.settings import RerankSettings

SERVICE_NAME = "recstack.v1.Rerank"


def build_core(bundle: Any) -> Any:
    from recstack.serving.reranker import Reranker

    return Reranker(bundle)


def main() -> int:
    return run_model_service(
        SERVICE_NAME,
        load_settings(RerankSettings),
        RerankServicer(),
        rerank_pb2_grpc.add_RerankServicer_to_server,
        build_core,
    )


if __name__ == "__main__":
    sys.exit(main())
