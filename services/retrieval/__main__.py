"""`python -m services.retrieval` (or `recstack serve retrieval`)."""

from __future__ import annotations

import sys
from typing import Any

from recstack.rpc.loading import run_model_service
from recstack.rpc.settings import load_settings
from recstack.v1 import retrieval_pb2_grpc
from services.retrieval.servicer import RetrievalServicer
from services.retrieval.settings import RetrievalSettings

SERVICE_NAME = "recstack.v1.Retrieval"


def build_core(bundle: Any) -> Any:
    from recstack.serving.retriever import Retriever

    return Retriever(bundle)


def main() -> int:
    return run_model_service(
        SERVICE_NAME,
        load_settings(RetrievalSettings),
        RetrievalServicer(),
        retrieval_pb2_grpc.add_RetrievalServicer_to_server,
        build_core,
    )


if __name__ == "__main__":
    sys.exit(main())
