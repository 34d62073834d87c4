"""Evaluation protocol (EVAL_PROTOCOL.md): leave-one-out split, full-ranking metrics."""

from recstack.evaluation.beyond import beyond_accuracy, top_k
from recstack.evaluation.metrics import hit_ratio, ndcg
from recstack.evaluation.protocol import (
    EvaluationError,
    candidate_ranks,
    evaluate_candidates,
    evaluate_sampled,
    evaluate_scores,
    history_matrix,
    target_ranks,
    user_histories,
)
from recstack.evaluation.split import Split, leave_one_out

__all__ = [
    "EvaluationError",
    "Split",
    "beyond_accuracy",
    "candidate_ranks",
    "evaluate_candidates",
    "evaluate_sampled",
    "evaluate_scores",
    "history_matrix",
    "hit_ratio",
    "leave_one_out",
    "ndcg",
    "target_ranks",
    "top_k",
    "user_histories",
]
