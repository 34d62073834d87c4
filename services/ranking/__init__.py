"""Multi-task ranking (p_click, p_like, p_purchase) or NCF (recstack.serving.ranker)."""
