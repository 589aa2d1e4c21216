"""Ranking and rating evaluation: per-batch metrics and the full-ranking evaluator."""

from jaxrec.eval.evaluator import (
    evaluate_ranking,
    evaluate_ranking_sweeps,
    evaluate_ratings,
    evaluate_sampled,
    evaluate_sampled_picks,
    most_popular_scores,
)
from jaxrec.eval.metrics import rank_metrics, rating_metrics, target_ranks, top_k_items

__all__ = [
    "evaluate_ranking",
    "evaluate_ranking_sweeps",
    "evaluate_ratings",
    "evaluate_sampled",
    "evaluate_sampled_picks",
    "most_popular_scores",
    "rank_metrics",
    "rating_metrics",
    "target_ranks",
    "top_k_items",
]
