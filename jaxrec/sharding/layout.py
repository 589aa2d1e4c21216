"""Where every logical row lives, and the two paths that touch a whole table at once:
initialisation and the relayout to and from the plan-independent checkpoint form.

Neither path may hold a whole table on one device (a sharded table is sharded because it does
not fit one):
  init       each device draws only its own rows, chunk by chunk inside shard_map. A row's
             value is a function of the table, the seed and the logical row (a counter-based
             draw: normal(fold_in(table key, row))), never of the plan, so a run initialises
             identically under every strategy, mesh and device count.
  logical    each table as [rows_pad, dim], rows in logical order, sharded by rows over as many
             devices as divide rows_pad (logical_spec). rows_pad depends on rows alone
             (padded_rows), so a checkpoint written on one mesh restores onto any other. The
             relayouts are reshapes and transposes of the stacked group arrays under sharding
             constraints, which XLA partitions into all-to-alls (no all-gather of the table).

Legend: M model-axis size, q rows of one table per shard, d dim, w slot width.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxrec.sharding import strategies  # a module reference: strategies imports embedding, which imports us

if TYPE_CHECKING:  # the plan types import the embedding package, which imports this module
    from jaxrec.sharding.placement import EmbeddingPlan, GroupLayout

INIT_CHUNK_ROWS = 1 << 14  # rows drawn at once per device: bounds the init's temporaries
PAD_UNIT_ROWS = 4096  # logical tables are padded to a multiple of min(this, next power of two)


def padded_rows(rows: int) -> int:
    """Rows of a table's logical (checkpoint) form: a function of `rows` alone, divisible by
    every power of two up to PAD_UNIT_ROWS (so by any power-of-two device count up to it)."""
    unit = min(PAD_UNIT_ROWS, 1 << max(rows - 1, 0).bit_length())
    return math.ceil(rows / unit) * unit


def logical_spec(mesh, rows: int) -> P:
    """Rows split over the most mesh axes that divide them (all devices when they do)."""
    for axes in ((strategies.DATA, strategies.MODEL), (strategies.MODEL,), (strategies.DATA,)):
        if rows % math.prod(mesh.shape[a] for a in axes) == 0:
            return P(axes, None)
    return P()


def _row_tables(group: GroupLayout, plan: EmbeddingPlan):
    """(table index, rows, owner, shards, base) of each table of a group."""
    for t, name in enumerate(group.tables):
        place = plan.placements[name]
        yield t, plan.specs[name].rows, place.owner, place.shards, place.base


def _locate(plan: EmbeddingPlan, group: GroupLayout, device, local_r):
    """Stacked rows (this model-axis device, local row) -> (table index, logical row), -1 where
    the row holds no table (padding). Tables are few per group: one vectorised test each."""
    table_r = jnp.full(local_r.shape, -1, jnp.int32)
    logical_r = jnp.zeros(local_r.shape, jnp.int32)
    for t, rows, owner, shards, base in _row_tables(group, plan):
        if group.kind == "row":
            logical = (local_r - base) * shards + (device - owner)
            mine = (device >= owner) & (device < owner + shards) & (local_r >= base)
        else:
            logical, mine = local_r - base, local_r >= base
        mine = mine & (logical < rows)
        table_r = jnp.where(mine, t, table_r)
        logical_r = jnp.where(mine, logical, logical_r)
    return table_r, logical_r


def _draw_rows(table_keys, stds, dim: int, table_r, logical_r):
    """init_std * normal(fold_in(table key, logical row)) per row; zeros where table_r is -1."""
    keys = jax.random.wrap_key_data(table_keys[jnp.maximum(table_r, 0)])
    draw = jax.vmap(lambda key, row: jax.random.normal(jax.random.fold_in(key, row), (dim,)))
    values = draw(keys, logical_r) * stds[jnp.maximum(table_r, 0)][:, None]
    return jnp.where((table_r >= 0)[:, None], values, 0.0)


def init_group(plan: EmbeddingPlan, mesh, group: GroupLayout, table_keys, stds) -> jax.Array:
    """The group's stacked array, each device drawing its own block in INIT_CHUNK_ROWS chunks.

    table_keys: uint32 key data [tables, ...] (one key per table of the group); stds: [tables]."""
    model = plan.mesh_shape[1]
    rows, width = group.array_shape(model)
    local_rows = group.block_rows
    local_width = width // model if group.kind == "column" else width
    chunk = min(INIT_CHUNK_ROWS, local_rows)

    def local(table_keys, stds):
        device = jax.lax.axis_index(strategies.MODEL)
        col0 = device * local_width if group.kind == "column" else 0

        def body(c, block_rd):
            start = jnp.minimum(c * chunk, local_rows - chunk)  # the last chunk overlaps: same values
            local_r = start + jnp.arange(chunk, dtype=jnp.int32)
            table_r, logical_r = _locate(plan, group, device, local_r)
            values = _draw_rows(table_keys, stds, group.dim, table_r, logical_r)
            values = jnp.pad(values, ((0, 0), (0, group.padded_dim - group.dim)))
            values = jax.lax.dynamic_slice_in_dim(values, col0, local_width, axis=1)
            return jax.lax.dynamic_update_slice(block_rd, values.astype(block_rd.dtype), (start, 0))

        block_rd = jnp.zeros((local_rows, local_width), group.dtype)
        return jax.lax.fori_loop(0, math.ceil(local_rows / chunk), body, block_rd)

    return jax.shard_map(
        local, mesh=mesh, in_specs=(P(), P()), out_specs=strategies.TABLE_SPECS[group.kind], check_vma=False
    )(table_keys, stds)


def _fit_rows(x_rd, rows: int):
    """Pad with zero rows or cut to `rows`."""
    if x_rd.shape[0] >= rows:
        return x_rd[:rows]
    return jnp.pad(x_rd, ((0, rows - x_rd.shape[0]), (0, 0)))


def to_logical(plan: EmbeddingPlan, mesh, table: str, group_array, width: int):
    """One table's rows (first `width` columns) out of its group array, in logical order, padded
    to padded_rows and sharded by rows (logical_spec). `plan` may be another mesh's (a
    checkpoint's): the result is laid out on `mesh` either way."""
    spec, place = plan.specs[table], plan.placements[table]
    group = plan.groups[place.group]
    rows_pad = padded_rows(spec.rows)
    if group.kind == "row":
        model, q = plan.mesh_shape[1], math.ceil(spec.rows / place.shards)
        x = group_array.reshape(model, group.block_rows, group_array.shape[1])
        if model == mesh.shape[strategies.MODEL]:  # laid out on this mesh: block m is on device m
            x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(strategies.MODEL, None, None)))
        x = x[place.owner : place.owner + place.shards, place.base : place.base + q, :width]
        if rows_pad % place.shards == 0:  # pad each shard's rows first: the reshape then splits evenly
            x = jnp.pad(x, ((0, 0), (0, rows_pad // place.shards - q), (0, 0)))
        x = x.transpose(1, 0, 2).reshape(-1, width)  # logical row i = j * shards + s
    else:
        x = group_array[place.base : place.base + spec.rows, :width]
    return jax.lax.with_sharding_constraint(_fit_rows(x, rows_pad), NamedSharding(mesh, logical_spec(mesh, rows_pad)))


def write_logical(plan: EmbeddingPlan, mesh, table: str, group_array, logical_rw):
    """group_array with `table`'s rows set from its logical form (any padded length >= rows)."""
    spec, place = plan.specs[table], plan.placements[table]
    group = plan.groups[place.group]
    width = logical_rw.shape[1]
    if group.kind != "row":
        return group_array.at[place.base : place.base + spec.rows, :width].set(
            logical_rw[: spec.rows].astype(group_array.dtype)
        )
    model, q = plan.mesh_shape[1], math.ceil(spec.rows / place.shards)
    if logical_rw.shape[0] % place.shards == 0 and logical_rw.shape[0] >= q * place.shards:
        # the padded form reshapes evenly over the mesh (rows beyond `rows` are zero); cut after
        x = logical_rw.reshape(-1, place.shards, width).transpose(1, 0, 2)[:, :q]
    else:  # a checkpoint written before padding: exactly `rows` rows
        x = _fit_rows(logical_rw[: spec.rows], q * place.shards).reshape(q, place.shards, width).transpose(1, 0, 2)
    if place.shards == model:  # row-wise: shard s's rows go to device s (XLA: an all-to-all)
        x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(strategies.MODEL, None, None)))
    stacked = group_array.reshape(model, group.block_rows, group_array.shape[1])
    stacked = stacked.at[place.owner : place.owner + place.shards, place.base : place.base + q, :width].set(
        x.astype(group_array.dtype)
    )
    return stacked.reshape(group_array.shape)
