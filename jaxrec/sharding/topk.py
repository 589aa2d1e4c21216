"""Ranking over a catalogue split into contiguous row blocks over the mesh: full-ranking
evaluation and exact serving top-K share it. Each device scores only its own block of items,
masks the excluded ones and reduces the block to per-user counts and a local top K
(eval/sweep.py); counts are summed over the mesh (psum) and the candidate lists all-gathered
and merged (exact: the global top K lies within the union of per-block top Ks). Nothing of size
[users, items] leaves a device, and no device holds more than its block of the catalogue.

Legend: B queries, N items, e vector width, X excluded-id slots, T target slots, K results,
R rows per block.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxrec.eval.sweep import (
    Sweep,
    block_counts,
    block_targets,
    block_top_k,
    excluded_mask,
    merge_top_k,
)
from jaxrec.sharding.mesh import make_mesh
from jaxrec.sharding.strategies import ALL_AXES, MODEL


def masked_scores(query_be, items_ne, exclude_bx):
    """float32 [B, N] scores with the excluded ids at -inf (out-of-range ids are dropped)."""
    scores_bn = query_be.astype(jnp.float32) @ items_ne.astype(jnp.float32).T
    rows_b1 = jnp.arange(scores_bn.shape[0])[:, None]
    return scores_bn.at[rows_b1, exclude_bx].set(-jnp.inf, mode="drop")


def _block_offset(axes, rows: int):
    """First global item of this device's block (blocks in device order over `axes`)."""
    return jax.lax.axis_index(axes) * rows


def _merged_top_k(scores_br, excluded_br, offset, axes, k: int):
    """Per-block top K, all-gathered over `axes` (in block order) and merged: [B, K] each."""
    scores_bk, ids_bk = block_top_k(scores_br, excluded_br, offset, k)
    scores_bc = jax.lax.all_gather(scores_bk, axes, axis=1, tiled=True)
    ids_bc = jax.lax.all_gather(ids_bk, axes, axis=1, tiled=True)
    return merge_top_k(scores_bc, ids_bc, k)


def sweep_sharded(mesh, score_block, num_items: int, k: int, query, items, exclude_bx, targets_bt) -> Sweep:
    """The Sweep of a catalogue whose item inputs `items` (a pytree of [N_pad, ...] arrays, N_pad
    a multiple of the device count) are split into blocks over every device.

    score_block(query, items_block) -> float32 [B, R] scores of the block's items; `query` and
    the id lists are replicated. Items at or beyond num_items are padding (never ranked)."""

    def local(query, items_block, exclude_bx, targets_bt):
        scores_br = score_block(query, items_block).astype(jnp.float32)
        offset = _block_offset(ALL_AXES, scores_br.shape[1])
        excluded_br = excluded_mask(offset, scores_br.shape[1], num_items, exclude_bx)
        target_scores_bt, target_excluded_bt = block_targets(scores_br, excluded_br, offset, targets_bt)
        target_scores_bt = jax.lax.psum(target_scores_bt, ALL_AXES)  # each target lives in one block
        target_excluded_bt = jax.lax.psum(target_excluded_bt.astype(jnp.int32), ALL_AXES) > 0
        greater_bt, equal_bt, allowed_b, broken_b = block_counts(scores_br, excluded_br, target_scores_bt)
        greater_bt, equal_bt, allowed_b = jax.lax.psum((greater_bt, equal_bt, allowed_b), ALL_AXES)
        broken_b = jax.lax.psum(broken_b.astype(jnp.int32), ALL_AXES) > 0
        _, top_ids_bk = _merged_top_k(scores_br, excluded_br, offset, ALL_AXES, k)
        return Sweep(target_scores_bt, target_excluded_bt, greater_bt, equal_bt, allowed_b, broken_b, top_ids_bk)

    return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(ALL_AXES), P(), P()), out_specs=P(), check_vma=False)(
        query, items, exclude_bx, targets_bt
    )


def pick_sharded(mesh, score_block, query, items, ids_bm):
    """float32 [B, M] scores of the given items per query (sampled evaluation), each taken on
    the device whose block holds it and summed over the mesh."""

    def local(query, items_block, ids_bm):
        scores_br = score_block(query, items_block).astype(jnp.float32)
        offset = _block_offset(ALL_AXES, scores_br.shape[1])
        scores_bm, _ = block_targets(scores_br, jnp.zeros(scores_br.shape, bool), offset, ids_bm)
        return jax.lax.psum(scores_bm, ALL_AXES)

    return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(ALL_AXES), P()), out_specs=P(), check_vma=False)(
        query, items, ids_bm
    )


class ShardedTopK:
    """Exact top-K with the item matrix split into contiguous row blocks over `num_shards`
    devices; for catalogues whose matrix does not fit one device.

    The matrix is padded to num_shards * R rows; padding rows are never returned. Queries and
    exclusion lists are replicated; each device scores only its own block."""

    def __init__(self, items_ne: np.ndarray, num_shards: int, devices=None):
        self.num_items, width = items_ne.shape
        self.mesh = make_mesh((1, num_shards), devices)
        rows = -(-self.num_items // num_shards)
        padded = np.zeros((rows * num_shards, width), items_ne.dtype)
        padded[: self.num_items] = items_ne
        self.items_ne = jax.device_put(padded, NamedSharding(self.mesh, P(MODEL, None)))
        self._top_k = jax.jit(self._sharded, static_argnames="k")

    def __call__(self, query_be, exclude_bx, k: int):
        """(scores_bk, ids_bk), as exact_top_k (slots beyond the allowed items: -inf, -1)."""
        return self._top_k(query_be, self.items_ne, exclude_bx, k=k)

    def _sharded(self, query_be, items_ne, exclude_bx, k: int):
        num_items = self.num_items

        def local(query_be, items_re, exclude_bx):
            scores_br = query_be.astype(jnp.float32) @ items_re.astype(jnp.float32).T
            offset = _block_offset(MODEL, items_re.shape[0])
            excluded_br = excluded_mask(offset, items_re.shape[0], num_items, exclude_bx)
            return _merged_top_k(scores_br, excluded_br, offset, MODEL, k)

        return jax.shard_map(
            local, mesh=self.mesh, in_specs=(P(), P(MODEL, None), P()), out_specs=(P(), P()), check_vma=False
        )(query_be, items_ne, exclude_bx)
