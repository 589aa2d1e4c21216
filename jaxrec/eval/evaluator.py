"""Full-ranking and rating evaluation over a whole data set, batch by batch.

Shape suffixes: U users, B batch, N items, E exclusion slots, T target slots, K cutoff.

Every item is ranked for every user that has targets; nothing [U, N] is ever built. The host
keeps CSR arrays (indptr/indices) of each user's excluded and target items and ships only
padded per-batch id lists; the [B, N] exclusion mask is scattered on device. Batches have a
fixed size (the last is padded with a repeat of its last user and masked out), so `score_fn`
compiles once. Ranking targets costs O(B*T*N), so users are visited in order of target count
and each batch pads T only to the next power of two: one heavy user cannot inflate every
batch, at the price of one metric-step compile per power of two (none with leave-one-out).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.data.types import Interactions
from jaxrec.errors import JaxrecError
from jaxrec.eval import metrics
from jaxrec.eval.sweep import Sweep, sweep_block

ScoreFn = Callable[[jax.Array], jax.Array]  # user_ids_b int32 [B] -> scores_bn float32 [B, N]
SweepFn = Callable[[jax.Array, np.ndarray, np.ndarray], Sweep]  # (users_b, exclude_bx, targets_bt) -> Sweep
PickFn = Callable[[jax.Array, jax.Array], jax.Array]  # (users_b, items_bm) -> scores_bm
PredictFn = Callable[[jax.Array, jax.Array], jax.Array]  # (user_b, item_b) -> rating_b


def _pair_keys(parts: Sequence[Interactions], num_items: int) -> np.ndarray:
    """Sorted distinct user * N + item keys of all (user, item) pairs in `parts`."""
    keys = [p.user.astype(np.int64) * num_items + p.item for p in parts]
    return np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.int64)


def _csr(keys: np.ndarray, num_users: int, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(indptr [U + 1], items) of sorted pair keys; each row's items come out ascending."""
    counts_u = np.bincount(keys // num_items, minlength=num_users)
    indptr = np.concatenate([[0], np.cumsum(counts_u)]).astype(np.int64)
    return indptr, (keys % num_items).astype(np.int32)


def _users_by_target_count(indptr: np.ndarray) -> np.ndarray:
    """Users with at least one target, most targets first (see module docstring)."""
    counts_u = np.diff(indptr)
    users = np.flatnonzero(counts_u)
    return users[np.argsort(-counts_u[users], kind="stable")].astype(np.int32)


def _pad_rows(csr, users_b: np.ndarray, width: int, fill: int) -> np.ndarray:
    """int32 [B, width]: each user's CSR row, right-padded with `fill`."""
    indptr, items = csr
    start_b, length_b = indptr[users_b], indptr[users_b + 1] - indptr[users_b]
    slot_w = np.arange(width)
    inside_bw = slot_w[None, :] < length_b[:, None]
    index_bw = np.minimum(start_b[:, None] + slot_w[None, :], max(len(items) - 1, 0))
    gathered_bw = items[index_bw] if len(items) else np.zeros_like(index_bw)
    return np.where(inside_bw, gathered_bw, fill).astype(np.int32)


@functools.partial(jax.jit, static_argnames="ks")
def _batch_sums(sweep: Sweep, targets_bt, real_b, ks):
    """Metric sums over the real users of one batch (padding rows repeat a real user)."""
    per_user = metrics.sweep_metrics(sweep, targets_bt, ks)
    return {name: jnp.where(real_b, value_b, 0.0).sum() for name, value_b in per_user.items()}


_sweep_block = jax.jit(sweep_block, static_argnames=("num_items", "k"))


def dense_sweep_fn(score_fn: ScoreFn, num_items: int, k: int) -> SweepFn:
    """A SweepFn over a score_fn that returns every item's score ([B, N] on one device): for
    baselines and small catalogues. Sharded models use sharding.topk.sweep_sharded instead."""

    def fn(users_b, exclude_bx, targets_bt):
        scores_bn = score_fn(users_b)
        if scores_bn.shape != (users_b.shape[0], num_items):
            raise JaxrecError(f"score_fn returned shape {scores_bn.shape}, expected {(users_b.shape[0], num_items)}")
        return _sweep_block(scores_bn, 0, num_items, exclude_bx, targets_bt, k)

    return fn


def _check_ranking_args(train: Interactions, targets: Interactions, ks, batch_size: int) -> None:
    if targets.num_items != train.num_items or targets.num_users != train.num_users:
        raise JaxrecError("evaluate_ranking: train and targets must share one user/item id space")
    if not ks or min(ks) < 1 or max(ks) > train.num_items:
        raise JaxrecError(f"evaluate_ranking: cutoffs {ks} must lie in 1..{train.num_items}")
    if batch_size < 1:
        raise JaxrecError(f"evaluate_ranking: batch_size must be positive, got {batch_size}")


def evaluate_ranking(
    score_fn: ScoreFn,
    train: Interactions,
    targets: Interactions,
    *,
    exclude: Sequence[Interactions] = (),
    ks: Sequence[int] = (10, 20),
    batch_size: int = 256,
) -> dict[str, float]:
    """Mean full-ranking metrics over users with at least one target, from a score_fn that
    returns every item's score (see evaluate_ranking_sweeps for the rules and keys)."""
    return evaluate_ranking_sweeps(
        dense_sweep_fn(score_fn, train.num_items, max(ks)),
        train,
        targets,
        exclude=exclude,
        ks=ks,
        batch_size=batch_size,
    )


def evaluate_ranking_sweeps(
    sweep_fn: SweepFn,
    train: Interactions,
    targets: Interactions,
    *,
    exclude: Sequence[Interactions] = (),
    ks: Sequence[int] = (10, 20),
    batch_size: int = 256,
) -> dict[str, float]:
    """Mean full-ranking metrics over users with at least one target.

    Items in `train` and in every `exclude` set (e.g. validation items when testing) are
    removed from each user's ranking; a target that is also excluded is dropped. Keys:
    hr@k, ndcg@k, recall@k, precision@k, coverage@k for each k in ks, plus mrr and auc.
    See `metrics` for the pessimistic tie rule (tied targets are ordered by item id here).
    Only per-target counts and top-K ids come back per batch (eval/sweep.py). Returns {} when no
    user has a target.
    """
    ks = tuple(sorted(set(int(k) for k in ks)))
    _check_ranking_args(train, targets, ks, batch_size)
    num_users, num_items = train.num_users, train.num_items
    seen_keys = _pair_keys([train, *exclude], num_items)
    target_keys = _pair_keys([targets], num_items)
    target_keys = target_keys[~np.isin(target_keys, seen_keys)]
    seen, wanted = _csr(seen_keys, num_users, num_items), _csr(target_keys, num_users, num_items)
    users = _users_by_target_count(wanted[0])
    if len(users) == 0:
        return {}
    exclude_width = max(int(np.diff(seen[0])[users].max()), 1)
    sums, best_pos_n = None, np.full(num_items, max(ks), np.int32)
    for start in range(0, len(users), batch_size):
        users_b = users[start : start + batch_size]
        target_width = 1 << (int(np.diff(wanted[0])[users_b[0]]) - 1).bit_length()
        real_b = np.arange(batch_size) < len(users_b)
        users_b = np.pad(users_b, (0, batch_size - len(users_b)), mode="edge").astype(np.int32)
        targets_bt = _pad_rows(wanted, users_b, target_width, fill=-1)
        sweep = sweep_fn(jnp.asarray(users_b), _pad_rows(seen, users_b, exclude_width, fill=num_items), targets_bt)
        batch_sums = _batch_sums(sweep, targets_bt, real_b, ks)
        sums = batch_sums if sums is None else jax.tree.map(jnp.add, sums, batch_sums)
        ids_bk = np.asarray(sweep.top_ids_bk)[real_b]
        position_bk = np.broadcast_to(np.arange(ids_bk.shape[1]), ids_bk.shape)
        np.minimum.at(best_pos_n, ids_bk[ids_bk >= 0], position_bk[ids_bk >= 0])
    result = {name: float(total) / len(users) for name, total in sums.items()}
    broken = math.isnan(result["mrr"])  # some user's scores were NaN or +inf: no coverage either
    result.update({f"coverage@{k}": math.nan if broken else float(np.mean(best_pos_n < k)) for k in ks})
    return result


def evaluate_ratings(predict_fn: PredictFn, inter: Interactions, *, batch_size: int = 4096) -> dict[str, float]:
    """RMSE and MAE of `predict_fn` over all pairs of `inter`.

    Calls predict_fn with a fixed batch size (last batch padded, padding dropped) so it
    compiles once.
    """
    if len(inter) == 0:
        raise JaxrecError("evaluate_ratings: no interactions to evaluate")
    padded = -len(inter) % batch_size
    user_p = np.pad(inter.user, (0, padded), mode="edge")
    item_p = np.pad(inter.item, (0, padded), mode="edge")
    preds = [
        predict_fn(jnp.asarray(user_p[s : s + batch_size]), jnp.asarray(item_p[s : s + batch_size]))
        for s in range(0, len(user_p), batch_size)
    ]
    pred_n = jnp.concatenate(preds)[: len(inter)]
    return {name: float(v) for name, v in metrics.rating_metrics(pred_n, inter.rating).items()}


def most_popular_scores(train: Interactions) -> ScoreFn:
    """score_fn of the most-popular baseline: every user gets the training count of each item."""
    counts_n = jnp.asarray(np.bincount(train.item, minlength=train.num_items), jnp.float32)

    @jax.jit
    def score(user_ids_b):
        return jnp.broadcast_to(counts_n, (user_ids_b.shape[0], counts_n.shape[0]))

    return score


def sample_negatives(users: np.ndarray, seen_keys: np.ndarray, num_items: int, count: int, seed: int) -> np.ndarray:
    """int32 [len(users), count]: per user, `count` distinct items whose (user * N + item) key is
    not in the sorted `seen_keys`, uniformly at random (rejection sampling, vectorised)."""
    rng = np.random.default_rng(seed)
    seen_u = np.bincount(seen_keys // num_items, minlength=int(users.max(initial=0)) + 1)[users]
    if np.any(num_items - seen_u < count):
        raise JaxrecError(f"sampled evaluation: some user has fewer than {count} items left to sample")
    out = np.zeros((len(users), count), np.int32)
    todo = np.arange(len(users))
    while todo.size:
        cand = rng.integers(0, num_items, (todo.size, 2 * count + 8))
        keys = users[todo, None].astype(np.int64) * num_items + cand
        pos = np.minimum(np.searchsorted(seen_keys, keys), max(len(seen_keys) - 1, 0))
        valid = seen_keys[pos] != keys if len(seen_keys) else np.ones(keys.shape, bool)
        order = np.argsort(cand, axis=1, kind="stable")
        ordered = np.take_along_axis(cand, order, axis=1)
        repeat = np.zeros(cand.shape, bool)
        np.put_along_axis(repeat, order[:, 1:], ordered[:, 1:] == ordered[:, :-1], axis=1)
        valid &= ~repeat
        enough = valid.sum(axis=1) >= count
        first = np.argsort(~valid, axis=1, kind="stable")[:, :count]
        out[todo[enough]] = np.take_along_axis(cand, first, axis=1)[enough]
        todo = todo[~enough]
    return out


@functools.partial(jax.jit, static_argnames="ks")
def _sampled_step(target_scores_bt, negative_scores_bm, targets_bt, real_b, ks):
    """Metric sums of each target ranked against the user's sampled negatives only."""
    rank_bt = jnp.sum(negative_scores_bm[:, None, :] >= target_scores_bt[:, :, None], axis=-1)  # ties count against
    valid_bt = (targets_bt >= 0) & real_b[:, None]
    per_target = {"mrr": 1.0 / (rank_bt + 1)}
    for k in ks:
        hit_bt = rank_bt < k
        per_target |= {
            f"hr@{k}": hit_bt.astype(jnp.float32),
            f"ndcg@{k}": jnp.where(hit_bt, 1 / jnp.log2(rank_bt + 2), 0),
        }
    count_b = jnp.maximum(valid_bt.sum(axis=1), 1)
    picked_bc = jnp.concatenate([jnp.where(targets_bt >= 0, target_scores_bt, 0.0), negative_scores_bm], axis=1)
    broken_b = real_b & metrics.broken_scores(picked_bc)  # NaN metrics, as in metrics.rank_metrics
    return {
        name: jnp.sum(jnp.where(broken_b, jnp.nan, jnp.where(valid_bt, value, 0).sum(axis=1) / count_b))
        for name, value in per_target.items()
    }


def dense_pick_fn(score_fn: ScoreFn) -> PickFn:
    """A PickFn over a score_fn that returns every item's score."""
    return lambda users_b, items_bm: jnp.take_along_axis(score_fn(users_b), jnp.maximum(items_bm, 0), axis=1)


def evaluate_sampled(score_fn: ScoreFn, train: Interactions, targets: Interactions, **kwargs) -> dict[str, float]:
    """evaluate_sampled_picks over a score_fn that returns every item's score."""
    return evaluate_sampled_picks(dense_pick_fn(score_fn), train, targets, **kwargs)


def evaluate_sampled_picks(
    pick_fn: PickFn,
    train: Interactions,
    targets: Interactions,
    *,
    exclude: Sequence[Interactions] = (),
    num_negatives: int = 100,
    seed: int = 0,
    ks: Sequence[int] = (10,),
    batch_size: int = 256,
) -> dict[str, float]:
    """The sampled protocol of NCF (He et al., 2017): each target ranked against `num_negatives`
    items the user never interacted with (in train, exclude or targets), drawn once per seed.
    Keys hr@k, ndcg@k, mrr (per target, averaged per user, then over users). Krichene & Rendle
    (2020) show these can order models differently from full ranking; report both.
    pick_fn(users_b, items_bm) -> scores_bm: only the targets' and negatives' scores are needed."""
    ks = tuple(sorted(set(int(k) for k in ks)))
    _check_ranking_args(train, targets, ks, batch_size)
    num_users, num_items = train.num_users, train.num_items
    seen_keys = _pair_keys([train, *exclude, targets], num_items)
    target_keys = _pair_keys([targets], num_items)
    wanted = _csr(target_keys[~np.isin(target_keys, _pair_keys([train, *exclude], num_items))], num_users, num_items)
    users = _users_by_target_count(wanted[0])
    if len(users) == 0:
        return {}
    negatives_um = sample_negatives(users, seen_keys, num_items, num_negatives, seed)
    sums = None
    for start in range(0, len(users), batch_size):
        users_b = users[start : start + batch_size]
        negatives_bm = negatives_um[start : start + batch_size]
        target_width = 1 << (int(np.diff(wanted[0])[users_b[0]]) - 1).bit_length()
        real_b = np.arange(batch_size) < len(users_b)
        pad = batch_size - len(users_b)
        users_b = np.pad(users_b, (0, pad), mode="edge").astype(np.int32)
        negatives_bm = np.pad(negatives_bm, ((0, pad), (0, 0)), mode="edge")
        targets_bt = _pad_rows(wanted, users_b, target_width, fill=-1)
        picked_bc = pick_fn(jnp.asarray(users_b), jnp.concatenate([targets_bt, negatives_bm], axis=1))
        batch_sums = _sampled_step(
            picked_bc[:, : targets_bt.shape[1]], picked_bc[:, targets_bt.shape[1] :], targets_bt, real_b, ks
        )
        sums = batch_sums if sums is None else jax.tree.map(jnp.add, sums, batch_sums)
    return {name: float(total) / len(users) for name, total in sums.items()}
