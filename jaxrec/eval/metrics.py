"""Ranking and rating metrics for one batch of users, as pure jit-friendly jnp functions; CTR
metrics (AUC, logloss, accuracy) of a whole split's logits, in numpy.

Shape suffixes: B users in the batch, N items, T target slots, K cutoff.

Inputs shared by the ranking functions:
    scores_bn: float32 [B, N], higher = recommended first.
    exclude_bn: bool [B, N], items the user may not be recommended (training history, and for
        test evaluation the validation items). They are removed from the ranking entirely.
    targets_bt: int32 [B, T], the relevant items, distinct within a row, -1 = padding. A target
        that is also excluded is dropped, because it can never be recommended.

Tie rule (pessimistic, so a constant model earns nothing): a target's rank is
    1 + (non-excluded items scoring strictly higher)
      + (non-excluded non-target items scoring equal)
      + (targets scoring equal that sit in an earlier slot of targets_bt).
The last term gives tied targets distinct ranks, so the ranks form a permutation and NDCG <= 1.
AUC counts ties between a target and a non-target as 1/2. A user with any NaN or +inf score (a
diverged model) gets NaN for every metric, so the mean over users is NaN too: a NaN compares false
to everything and would otherwise rank its target first. -inf is a score like any other (ranked
last; retrieval marks items it did not return with it).

The CTR AUC is exact: the Mann-Whitney statistic over ranks, ties averaged (a tie between a
positive and a negative counts one half), computed from every example's logit, so no binning or
per-batch averaging bends it. Logloss is computed from logits (softplus), so a confident wrong
prediction costs its true value instead of log(eps).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.eval.sweep import Sweep, block_counts, block_targets, broken_scores  # noqa: F401 (re-exported)


class _TargetCounts(NamedTuple):
    """Per-target counts over non-excluded items; `all_*` include targets, `tgt_*` only targets."""

    valid_bt: jax.Array  # bool: real, non-excluded target
    all_greater_bt: jax.Array
    all_equal_bt: jax.Array  # includes the target itself
    tgt_greater_bt: jax.Array
    tgt_equal_bt: jax.Array  # includes the target itself
    tgt_equal_earlier_bt: jax.Array
    num_negatives_b: jax.Array  # non-excluded non-target items


def _count_targets(target_scores_bt, valid_bt):
    """Valid targets scoring above / equal to each target ([B, T, T] compare; T is small)."""
    score_i = target_scores_bt[:, :, None]
    score_j = target_scores_bt[:, None, :]
    valid_j = valid_bt[:, None, :]
    slots = jnp.arange(target_scores_bt.shape[1])
    earlier_tt = slots[None, :] < slots[:, None]
    equal_btt = (score_j == score_i) & valid_j
    greater_bt = ((score_j > score_i) & valid_j).sum(axis=-1)
    return greater_bt, equal_btt.sum(axis=-1), (equal_btt & earlier_tt).sum(axis=-1)


def _count(scores_bn, exclude_bn, targets_bt) -> tuple[_TargetCounts, jax.Array]:
    """Everything the metrics need, in one pass over the batch: (counts, broken_b)."""
    return _counts_from_sweep(sweep_mask(scores_bn, exclude_bn, targets_bt), targets_bt)


def sweep_mask(scores_bn, exclude_bn, targets_bt) -> Sweep:
    """The Sweep (without top-K ids) of a [B, N] score matrix and an exclusion mask."""
    target_scores_bt, target_excluded_bt = block_targets(scores_bn, exclude_bn, 0, targets_bt)
    greater_bt, equal_bt, allowed_b, broken_b = block_counts(scores_bn, exclude_bn, target_scores_bt)
    return Sweep(target_scores_bt, target_excluded_bt, greater_bt, equal_bt, allowed_b, broken_b, None)


def _counts_from_sweep(sweep: Sweep, targets_bt) -> tuple[_TargetCounts, jax.Array]:
    valid_bt = (targets_bt >= 0) & ~sweep.target_excluded_bt
    tgt_greater_bt, tgt_equal_bt, tgt_earlier_bt = _count_targets(sweep.target_scores_bt, valid_bt)
    counts = _TargetCounts(
        valid_bt,
        sweep.greater_bt,
        sweep.equal_bt,
        tgt_greater_bt,
        tgt_equal_bt,
        tgt_earlier_bt,
        sweep.allowed_b - valid_bt.sum(axis=1),
    )
    return counts, sweep.broken_b


def target_ranks(scores_bn, exclude_bn, targets_bt):
    """1-based pessimistic rank of each target (module docstring); 0 in padding/excluded slots."""
    c, _ = _count(scores_bn, exclude_bn, targets_bt)
    return jnp.where(c.valid_bt, _ranks(c), 0)


def _ranks(c: _TargetCounts):
    return 1 + c.all_greater_bt + (c.all_equal_bt - c.tgt_equal_bt) + c.tgt_equal_earlier_bt


def _auc(c: _TargetCounts):
    """Per user: correctly ordered (target, non-target) pairs, ties 1/2; 0.5 if no pairs exist."""
    neg_greater_bt = c.all_greater_bt - c.tgt_greater_bt
    neg_equal_bt = c.all_equal_bt - c.tgt_equal_bt
    neg_below_bt = c.num_negatives_b[:, None] - neg_greater_bt - neg_equal_bt
    correct_b = jnp.where(c.valid_bt, neg_below_bt + 0.5 * neg_equal_bt, 0.0).sum(axis=1)
    pairs_b = c.valid_bt.sum(axis=1) * c.num_negatives_b
    return jnp.where(pairs_b > 0, correct_b / jnp.maximum(pairs_b, 1), 0.5)


def _cutoff_metrics(ranks_bt, valid_bt, k: int) -> dict[str, jax.Array]:
    """HR, NDCG, Recall, Precision at one cutoff; binary relevance, log2(rank + 1) discount."""
    num_targets_b = valid_bt.sum(axis=1)
    hit_bt = valid_bt & (ranks_bt <= k)
    hits_b = hit_bt.sum(axis=1)
    dcg_b = jnp.where(hit_bt, 1.0 / jnp.log2(ranks_bt + 1.0), 0.0).sum(axis=1)
    ideal_cum_k = jnp.asarray(np.cumsum(1.0 / np.log2(np.arange(k) + 2.0)), jnp.float32)
    idcg_b = ideal_cum_k[jnp.clip(num_targets_b, 1, k) - 1]
    has_targets_b = num_targets_b > 0
    return {
        f"hr@{k}": (hits_b > 0).astype(jnp.float32),
        f"ndcg@{k}": jnp.where(has_targets_b, dcg_b / idcg_b, 0.0),
        f"recall@{k}": hits_b / jnp.maximum(num_targets_b, 1),
        f"precision@{k}": hits_b / k,
    }


def rank_metrics(scores_bn, exclude_bn, targets_bt, ks: tuple[int, ...]) -> dict[str, jax.Array]:
    """Per-user ranking metrics, each float32 [B]: hr@k, ndcg@k, recall@k, precision@k, mrr, auc.

    MRR uses the full ranking (1 / rank of the best-ranked target). A row without valid targets
    gets 0 everywhere (0.5 for AUC); callers average only over users that have targets.
    """
    return sweep_metrics(sweep_mask(scores_bn, exclude_bn, targets_bt), targets_bt, ks)


def sweep_metrics(sweep: Sweep, targets_bt, ks: tuple[int, ...]) -> dict[str, jax.Array]:
    """rank_metrics from a Sweep: what a sharded evaluation returns instead of scores."""
    c, broken_b = _counts_from_sweep(sweep, targets_bt)
    ranks_bt = _ranks(c)
    out = {}
    for k in ks:
        out.update(_cutoff_metrics(ranks_bt, c.valid_bt, k))
    out["mrr"] = jnp.where(c.valid_bt, 1.0 / ranks_bt, 0.0).max(axis=1, initial=0.0)
    out["auc"] = _auc(c)
    return {name: jnp.where(broken_b, jnp.nan, value).astype(jnp.float32) for name, value in out.items()}


def top_k_items(scores_bn, exclude_bn, k: int):
    """int32 [B, K] best non-excluded items, best first; ties go to the lower item id.

    Slots left over when a user has fewer than K allowed items hold -1. The list does not look at
    targets, so it can disagree with the pessimistic ranks on ties; it only feeds item coverage.
    """
    masked_bn = jnp.where(exclude_bn, -jnp.inf, scores_bn)
    _, ids_bk = jax.lax.top_k(masked_bn, k)
    return jnp.where(jnp.take_along_axis(exclude_bn, ids_bk, axis=1), -1, ids_bk)


def rating_metrics(pred, true) -> dict[str, jax.Array]:
    """RMSE and MAE of rating predictions; pred and true are aligned float arrays [n]."""
    error = jnp.asarray(pred, jnp.float32) - jnp.asarray(true, jnp.float32)
    return {"rmse": jnp.sqrt(jnp.mean(error**2)), "mae": jnp.mean(jnp.abs(error))}


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counting 1/2; NaN when
    the labels hold one class only."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels) > 0.5
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if not positives or not negatives:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    # Average rank (1-based) of each run of tied scores.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    ranks = np.empty(len(scores))
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def logloss(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy of sigmoid(logits): log(1 + e^l) - y l."""
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels, np.float64)
    return float(np.mean(np.logaddexp(0.0, logits) - labels * logits))


def ctr_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """AUC, logloss and accuracy (logit > 0 read as a click) of a split's logits [n] and labels [n]."""
    return {
        "auc": auc(logits, labels),
        "logloss": logloss(logits, labels),
        "accuracy": float(np.mean((np.asarray(logits) > 0) == (np.asarray(labels) > 0.5))),
    }
