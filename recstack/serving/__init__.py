"""Serving cores (no grpc): Retriever, Ranker, Reranker and the features adapter they share.

Import the cores from their modules (``recstack.serving.retriever`` etc.); this package imports
nothing heavy so that grpc-free tools can use the adapter alone.
"""
