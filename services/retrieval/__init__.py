"""Two-tower candidate retrieval over a FAISS index (recstack.serving.retriever)."""
