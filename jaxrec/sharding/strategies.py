"""Sharded lookups and sparse row updates per group kind (with sharding/topk.py, the only shard_map code).

A group is one stacked array holding one or more tables (see sharding.planner). Its kind fixes
the layout on the (data, model) mesh:
  replicated  [rows, d]             P()               every device holds every row
  row         [model * block, d]    P(model, None)    device m holds block m (row-/table-wise)
  column      [rows, d_pad]         P(None, model)    device m holds a slice of every row
Every kind is replicated over the data axis. Batches are split over all devices.

Ids arrive as group keys (a row index into the stacked array, or -1: bag padding, and the
padding of deduplicated key lists, which reads zeros and updates nothing). Each device
deduplicates its keys before any communication.

Row lookup: all-gather the unique keys over `model`, each device reads the rows it owns (zero
elsewhere), and a reduce-scatter over `model` returns to every device the rows of its own keys.
We use all-gather + reduce-scatter rather than all-to-all because all-to-all needs static
per-destination buckets: without dropping ids, each bucket must hold a device's whole batch
(all ids may land on one shard), which moves exactly as many bytes as the reduce-scatter.

Updates: the summed gradient of each unique key is all-gathered over every device (a table
replicated over `data` must receive the same update on every replica), deduplicated again
globally, and the row optimiser touches only those rows: O(batch x dim) per step.

Legend: n keys on this device, k gathered keys, d (local) dim, b local batch.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaxrec.embedding.optimizers import RowOptimizer

DATA, MODEL = "data", "model"
ALL_AXES = (DATA, MODEL)
BATCH_SPEC = P(ALL_AXES)

TABLE_SPECS = {"replicated": P(), "row": P(MODEL, None), "column": P(None, MODEL)}
ROW_SLOT_SPECS = {"replicated": P(), "row": P(MODEL, None), "column": P()}


def slot_spec(kind: str, slot_kind: str) -> P:
    return TABLE_SPECS[kind] if slot_kind == "element" else ROW_SLOT_SPECS[kind]


def _dedup(keys_n: jax.Array, rows: int):
    """Unique keys padded with -1 to a static length, and each key's position among them.

    Keys lie in [-1, rows). With more keys than rows (a long bag over a small catalogue, like
    SVD++'s batch x max_history history ids over N items) the unique keys are found by marking
    rows instead of sorting: slot r + 1 holds key r if present and -1 otherwise, so the -1
    padding may sit anywhere in the list, and everything after the dedup works on rows + 1
    slots rather than on n. Measured on ml-100k SVD++ (256 x 128 history ids, 1,682 items, 2
    shared CPU cores): 132 ms a step with the sort over n, 21 ms this way."""
    if keys_n.shape[0] <= rows:
        return jnp.unique(keys_n, size=keys_n.shape[0], fill_value=-1, return_inverse=True)
    present_r = jnp.zeros(rows + 1, bool).at[keys_n + 1].set(True)
    return jnp.where(present_r, jnp.arange(rows + 1) - 1, -1), keys_n + 1


def _read_rows(table_rd: jax.Array, local_k: jax.Array) -> jax.Array:
    """Rows at `local_k`; zero where the index is -1 (not on this device, or padding)."""
    mine = local_k >= 0
    rows = table_rd[jnp.where(mine, local_k, 0)]
    return jnp.where(mine[:, None], rows, 0)


def _owned_local(keys_k: jax.Array, block_rows: int) -> jax.Array:
    """Row-kind keys -> this device's local row index, -1 for keys owned elsewhere."""
    mine = (keys_k >= 0) & (keys_k // block_rows == jax.lax.axis_index(MODEL))
    return jnp.where(mine, keys_k % block_rows, -1)


def _lookup_local(kind: str, block_rows: int, rows: int, table_rd, keys_bs):
    keys_n = keys_bs.reshape(-1)
    uniq_n, inverse_n = _dedup(keys_n, rows)
    if kind == "replicated":
        rows_nd = _read_rows(table_rd, uniq_n)
    elif kind == "row":
        all_keys = jax.lax.all_gather(uniq_n, MODEL, tiled=True)
        partial = _read_rows(table_rd, _owned_local(all_keys, block_rows))
        rows_nd = jax.lax.psum_scatter(partial, MODEL, scatter_dimension=0, tiled=True)
    else:
        all_keys = jax.lax.all_gather(uniq_n, MODEL, tiled=True)
        cols = _read_rows(table_rd, all_keys)
        rows_nd = jax.lax.all_to_all(cols, MODEL, split_axis=0, concat_axis=1, tiled=True)
    return rows_nd[inverse_n].reshape(*keys_bs.shape, rows_nd.shape[-1])


def lookup(mesh, kind: str, block_rows: int, table: jax.Array, keys_bs: jax.Array) -> jax.Array:
    """Embedding rows for group keys [B, S] -> [B, S, d_pad], batch-sharded like the keys."""
    fn = functools.partial(_lookup_local, kind, block_rows, table.shape[0])
    return jax.shard_map(
        fn,
        mesh=mesh,
        in_specs=(TABLE_SPECS[kind], BATCH_SPEC),
        out_specs=BATCH_SPEC,
        check_vma=False,
    )(table, keys_bs)


def _apply_rows(optimizer: RowOptimizer, lr: float, dim: int, kind: str, step, table_rd, slots, local_k, grads_kd):
    """Sum gradients per unique local row, then update only those rows and their slots."""
    uniq_k, inverse_k = _dedup(local_k, table_rd.shape[0])
    grads_kd = jax.ops.segment_sum(grads_kd, inverse_k, num_segments=uniq_k.shape[0])
    row_sq_k = jnp.sum(jnp.square(grads_kd), axis=-1)
    if kind == "column":
        row_sq_k = jax.lax.psum(row_sq_k, MODEL)
    valid = uniq_k >= 0
    read_at = jnp.where(valid, uniq_k, 0)
    write_at = jnp.where(valid, uniq_k, table_rd.shape[0])  # out of range: dropped
    old_slots = {name: slot[read_at] for name, slot in slots.items()}
    new_rows, new_slots = optimizer.update(table_rd[read_at], grads_kd, old_slots, lr, step, row_sq_k / dim)
    table_rd = table_rd.at[write_at].set(new_rows.astype(table_rd.dtype), mode="drop")
    slots = {name: slots[name].at[write_at].set(new_slots[name], mode="drop") for name in slots}
    return table_rd, slots


def _update_local(kind, block_rows, rows, optimizer, lr, dim, table_rd, slots, step, keys_bs, grads_bsd):
    keys_n = keys_bs.reshape(-1)
    grads_nd = grads_bsd.reshape(keys_n.shape[0], -1)
    uniq_n, inverse_n = _dedup(keys_n, rows)
    grads_nd = jax.ops.segment_sum(grads_nd, inverse_n, num_segments=uniq_n.shape[0])
    if kind == "column":
        grads_kd = jax.lax.all_to_all(grads_nd, MODEL, split_axis=1, concat_axis=0, tiled=True)
        grads_kd = jax.lax.all_gather(grads_kd, DATA, tiled=True)
        keys_k = jax.lax.all_gather(jax.lax.all_gather(uniq_n, MODEL, tiled=True), DATA, tiled=True)
    else:
        grads_kd = jax.lax.all_gather(grads_nd, ALL_AXES, tiled=True)
        keys_k = jax.lax.all_gather(uniq_n, ALL_AXES, tiled=True)
    local_k = _owned_local(keys_k, block_rows) if kind == "row" else keys_k
    return _apply_rows(optimizer, lr, dim, kind, step, table_rd, slots, local_k, grads_kd)


def update(mesh, kind: str, block_rows: int, optimizer: RowOptimizer, lr: float, dim: int,
           table, slots: dict, step, keys_bs, grads_bsd):
    """Applies the row optimiser to the rows `keys_bs` touched; returns (table, slots)."""
    slot_specs = {name: slot_spec(kind, optimizer.slots[name][0]) for name in slots}
    fn = functools.partial(_update_local, kind, block_rows, table.shape[0], optimizer, lr, dim)
    return jax.shard_map(
        fn,
        mesh=mesh,
        in_specs=(TABLE_SPECS[kind], slot_specs, P(), BATCH_SPEC, BATCH_SPEC),
        out_specs=(TABLE_SPECS[kind], slot_specs),
        check_vma=False,
    )(table, slots, step, keys_bs, grads_bsd)
