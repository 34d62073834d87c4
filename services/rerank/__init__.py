"""Sequential re-ranking with SASRec / GRU4Rec / BERT4Rec (recstack.serving.reranker)."""
