"""One pass over a block of the catalogue: everything full-ranking metrics need, per user,
without ever handing a [users, items] score matrix to anyone.

For a chunk of users and a block of items (all items on one device, or one shard of them; see
sharding/topk.py), `sweep_block` returns per-target counts of the non-excluded items that score
above and equal to the target, the number of non-excluded items, whether any score is broken
(NaN or +inf), and the block's best K non-excluded items. Counts and flags add up over blocks
and top-K lists merge, so the full-catalogue result is a sum over shards plus a merge. The
metrics (eval/metrics.py) are then computed from [users, targets] counts alone.

Legend: B users, R items in the block, X excluded-id slots, T target slots, K cutoff.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Sweep(NamedTuple):
    """Per user of a chunk, over the whole catalogue."""

    target_scores_bt: jax.Array  # float32; 0 in padding slots
    target_excluded_bt: jax.Array  # bool: the target is excluded (can never be recommended)
    greater_bt: jax.Array  # int32: non-excluded items scoring strictly above the target
    equal_bt: jax.Array  # int32: non-excluded items scoring equal (the target itself included)
    allowed_b: jax.Array  # int32: non-excluded items
    broken_b: jax.Array  # bool: some item's score is NaN or +inf
    top_ids_bk: jax.Array  # int32: best non-excluded items, best first, ties to the lower id; -1 if none


def excluded_mask(offset, rows: int, num_items: int, exclude_bx):
    """bool [B, R]: excluded items of the block [offset, offset + R), and the padding beyond
    num_items. Ids outside the block (other shards, the fill value N) are dropped."""
    local_bx = exclude_bx - offset
    local_bx = jnp.where((local_bx >= 0) & (local_bx < rows), local_bx, rows)
    rows_b1 = jnp.arange(exclude_bx.shape[0])[:, None]
    excluded_br = jnp.zeros((exclude_bx.shape[0], rows), bool).at[rows_b1, local_bx].set(True, mode="drop")
    return excluded_br | (offset + jnp.arange(rows) >= num_items)[None, :]


def block_targets(scores_br, excluded_br, offset, targets_bt):
    """(target scores, target excluded) for the targets inside this block, zero/False elsewhere:
    summing over blocks gives each target's own score and flag."""
    rows = scores_br.shape[1]
    local_bt = targets_bt - offset
    inside_bt = (targets_bt >= 0) & (local_bt >= 0) & (local_bt < rows)
    safe_bt = jnp.where(inside_bt, local_bt, 0)
    scores_bt = jnp.where(inside_bt, jnp.take_along_axis(scores_br, safe_bt, axis=1), 0.0)
    return scores_bt, inside_bt & jnp.take_along_axis(excluded_br, safe_bt, axis=1)


def block_counts(scores_br, excluded_br, target_scores_bt):
    """(greater_bt, equal_bt, allowed_b, broken_b) over this block's items.

    One fused two-output reduction rather than a [B, T, R] array (on CPU ~10x faster than two
    sums, and ~100x faster than sorting)."""
    scores_b1r = jnp.where(excluded_br, jnp.nan, scores_br)[:, None, :]  # NaN compares false: excluded
    target_bt1 = target_scores_bt[:, :, None]
    zero = jnp.int32(0)
    greater_bt, equal_bt = jax.lax.reduce(
        ((scores_b1r > target_bt1).astype(jnp.int32), (scores_b1r == target_bt1).astype(jnp.int32)),
        (zero, zero),
        lambda a, b: (a[0] + b[0], a[1] + b[1]),
        (2,),
    )
    return greater_bt, equal_bt, jnp.sum(~excluded_br, axis=1, dtype=jnp.int32), broken_scores(scores_br)


def broken_scores(scores_br):
    """bool [B]: rows holding a NaN or +inf score (a diverged model), whose metrics are NaN: a
    NaN compares false to everything and would otherwise rank its target first. Padding items
    repeat a real one, so they flag nothing new."""
    return jnp.any(jnp.isnan(scores_br) | (scores_br == jnp.inf), axis=1)


def block_top_k(scores_br, excluded_br, offset, k: int):
    """(scores, global ids) of the block's best min(K, R) non-excluded items; -1 ids where the
    block has fewer allowed items. Ties go to the lower id (lax.top_k keeps the earlier one)."""
    masked_br = jnp.where(excluded_br, -jnp.inf, scores_br)
    scores_bk, local_bk = jax.lax.top_k(masked_br, min(k, scores_br.shape[1]))
    allowed_bk = ~jnp.take_along_axis(excluded_br, local_bk, axis=1)
    return jnp.where(allowed_bk, scores_bk, -jnp.inf), jnp.where(allowed_bk, local_bk + offset, -1)


def merge_top_k(scores_bc, ids_bc, k: int):
    """(scores, ids) of the best K of concatenated per-block candidates: allowed ones (id >= 0)
    first, by score, ties to the earlier candidate (blocks come in id order, so to the lower
    id); then -1 fillers at -inf. A sort over the few candidates (blocks x K), so an allowed
    item scoring -inf still beats a filler."""
    if ids_bc.shape[1] < k:
        pad = ((0, 0), (0, k - ids_bc.shape[1]))
        scores_bc = jnp.pad(scores_bc, pad, constant_values=-jnp.inf)
        ids_bc = jnp.pad(ids_bc, pad, constant_values=-1)
    position_bc = jnp.broadcast_to(jnp.arange(ids_bc.shape[1]), ids_bc.shape)
    best_bk = jnp.lexsort((position_bc, -scores_bc, ids_bc < 0), axis=1)[:, :k]
    return jnp.take_along_axis(scores_bc, best_bk, axis=1), jnp.take_along_axis(ids_bc, best_bk, axis=1)


def sweep_block(scores_br, offset, num_items: int, exclude_bx, targets_bt, k: int) -> Sweep:
    """The Sweep of a block that holds the whole catalogue (offset 0, one device)."""
    excluded_br = excluded_mask(offset, scores_br.shape[1], num_items, exclude_bx)
    target_scores_bt, target_excluded_bt = block_targets(scores_br, excluded_br, offset, targets_bt)
    greater_bt, equal_bt, allowed_b, broken_b = block_counts(scores_br, excluded_br, target_scores_bt)
    top_scores_bk, top_ids_bk = block_top_k(scores_br, excluded_br, offset, k)
    return Sweep(
        target_scores_bt,
        target_excluded_bt,
        greater_bt,
        equal_bt,
        allowed_b,
        broken_b,
        merge_top_k(top_scores_bk, top_ids_bk, k)[1],
    )
