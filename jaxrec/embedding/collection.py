"""The embedding collection: every table of a model, looked up and updated through a plan.

Models never see this: they declare tables (TableSpec) and which table each feature reads,
and receive embedding activations. The train step asks the collection for the activations,
differentiates the model with respect to them, and hands those gradients back here, where the
sparse row optimisers update only the rows the batch touched. Tables therefore never pass
through optax and no dense table-sized gradient is ever built.

Legend: B global batch, S ids per example of a feature, d dim.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from jaxrec.embedding.optimizers import ROW_OPTIMIZERS
from jaxrec.embedding.specs import TableSpec
from jaxrec.sharding import layout, strategies

if TYPE_CHECKING:  # the plan types import the embedding package, which imports this module
    from jaxrec.sharding.placement import EmbeddingPlan


@flax.struct.dataclass
class EmbeddingState:
    tables: dict[str, jax.Array]  # group name -> stacked array
    slots: dict[str, dict[str, jax.Array]]  # group name -> slot name -> array


# How a bag of ids pools its rows: mean and sum, and sqrtn = sum / sqrt(number of real ids), the
# combiner of TF's embedding_lookup_sparse and of SVD++'s implicit term |N(u)|^-1/2 sum_j y_j.
COMBINERS = ("mean", "sum", "sqrtn")


class EmbeddingCollection:
    def __init__(self, plan: EmbeddingPlan, mesh, features: dict[str, str], bags: dict[str, str] | None = None):
        """features: feature name -> table name (several features may read one table).
        bags: feature -> combiner ("mean", "sum" or "sqrtn") for features whose last id axis is a bag of a
        variable number of ids, padded with -1 (TorchRec's EmbeddingBag)."""
        self.plan = plan
        self.mesh = mesh
        self.features = dict(features)
        self.bags = dict(bags or {})
        for feature, combiner in self.bags.items():
            if combiner not in COMBINERS:
                raise ValueError(f"bag {feature!r}: combiner {combiner!r} is not one of {COMBINERS}")

    @property
    def specs(self) -> dict[str, TableSpec]:
        return self.plan.specs

    def _optimizer(self, group: str):
        return ROW_OPTIMIZERS[self.plan.groups[group].optimizer]

    def shardings(self) -> EmbeddingState:
        """NamedShardings of the state, for jit's in/out shardings and checkpoint restore."""
        tables, slots = {}, {}
        for name, group in self.plan.groups.items():
            tables[name] = NamedSharding(self.mesh, strategies.TABLE_SPECS[group.kind])
            slots[name] = {
                slot: NamedSharding(self.mesh, strategies.slot_spec(group.kind, slot_kind))
                for slot, (slot_kind, _) in self._optimizer(name).slots.items()
            }
        return EmbeddingState(tables, slots)

    def abstract_state(self) -> EmbeddingState:
        """Shapes, dtypes and shardings of the state, without allocating it."""
        shapes, shardings = jax.eval_shape(self._empty_state), self.shardings()
        return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), shapes, shardings)

    def _empty_state(self) -> EmbeddingState:
        """Zero tables and freshly initialised optimiser slots, laid out by the plan."""
        model = self.plan.mesh_shape[1]
        tables, slots = {}, {}
        for name, group in self.plan.groups.items():
            shape = group.array_shape(model)
            tables[name] = jnp.zeros(shape, group.dtype)
            slots[name] = {
                slot: jnp.full(shape if kind == "element" else (shape[0], 1), value, jnp.float32)
                for slot, (kind, value) in self._optimizer(name).slots.items()
            }
        return EmbeddingState(tables, slots)

    def init(self, rng: jax.Array) -> EmbeddingState:
        """Every table initialised already sharded: each device draws only its own rows, and a
        row's value depends on the table, the seed and the logical row, never on the plan
        (sharding.layout)."""
        return self.jitted_init()(rng)

    def jitted_init(self):
        """init's jitted function (rng -> state), for compiling on an abstract key."""
        return jax.jit(self._init, out_shardings=self.shardings())

    def _init(self, rng):
        state = self._empty_state()
        tables = dict(state.tables)
        for name, group in self.plan.groups.items():
            keys = jnp.stack([jax.random.key_data(jax.random.fold_in(rng, _stable_hash(t))) for t in group.tables])
            stds = jnp.asarray([self.specs[t].init_std for t in group.tables], jnp.float32)
            tables[name] = layout.init_group(self.plan, self.mesh, group, keys, stds)
        return state.replace(tables=tables)

    def _group_batches(self, ids: dict[str, jax.Array]):
        """Per group: the features it serves and their keys concatenated to [B, S_total]."""
        by_group: dict[str, list[str]] = {}
        for feature in ids:
            by_group.setdefault(self.plan.placements[self.features[feature]].group, []).append(feature)
        for group, feats in by_group.items():
            keys = [self.plan.group_keys(self.features[f], ids[f].reshape(ids[f].shape[0], -1)) for f in feats]
            yield group, feats, jnp.concatenate(keys, axis=1)

    def lookup(self, state: EmbeddingState, ids: dict[str, jax.Array], with_overflow: bool = False):
        """ids: feature -> int array [B, ...] -> activations [B, ..., d] of the feature's table.

        with_overflow: also return whether any row group's all_to_all buckets overflowed their
        capacity this step (it then took more rounds; no id is ever dropped)."""
        out, overflowed = {}, jnp.zeros((), bool)
        for group, feats, keys_bs in self._group_batches(ids):
            layout = self.plan.groups[group]
            capacity = (
                self.plan.bucket_capacity(group, keys_bs.size // self.plan.num_devices) if layout.kind == "row" else 0
            )
            rows, group_overflowed = strategies.lookup(
                self.mesh, layout.kind, layout.block_rows, capacity, state.tables[group], keys_bs
            )
            overflowed = overflowed | group_overflowed
            rows = rows[..., : layout.dim]
            offset = 0
            for feature in feats:
                width = int(np.prod(ids[feature].shape[1:], dtype=int))
                out[feature] = rows[:, offset : offset + width].reshape(*ids[feature].shape, layout.dim)
                offset += width
        return (out, overflowed) if with_overflow else out

    def pool(self, acts: dict[str, jax.Array], ids: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Bag features pooled over their last id axis ([B, ..., S, d] -> [B, ..., d]); padding
        ids (-1) read zero rows and are left out of the count (mean, sqrtn); an empty bag pools to
        zero. Differentiable: the train step takes gradients w.r.t. the rows looked up, so each id
        of a bag gets its share."""
        pooled = dict(acts)
        for feature, combiner in self.bags.items():
            if feature not in acts:
                continue
            total = jnp.sum(acts[feature], axis=-2)
            if combiner != "sum":
                count = jnp.maximum(jnp.sum(ids[feature] >= 0, axis=-1, keepdims=True), 1).astype(total.dtype)
                total = total / (count if combiner == "mean" else jnp.sqrt(count))
            pooled[feature] = total
        return pooled

    def apply_gradients(
        self, state: EmbeddingState, ids: dict[str, jax.Array], grads: dict[str, jax.Array], step: jax.Array
    ) -> EmbeddingState:
        """Sparse update of the rows `ids` touched, with gradients w.r.t. the activations."""
        tables, slots = dict(state.tables), dict(state.slots)
        for group, feats, keys_bs in self._group_batches(ids):
            layout = self.plan.groups[group]
            grads_bsd = jnp.concatenate([grads[f].reshape(keys_bs.shape[0], -1, layout.dim) for f in feats], axis=1)
            pad = layout.padded_dim - layout.dim
            if pad:
                grads_bsd = jnp.pad(grads_bsd, ((0, 0), (0, 0), (0, pad)))
            capacity = (
                self.plan.bucket_capacity(group, keys_bs.size // self.plan.num_devices) if layout.kind == "row" else 0
            )
            tables[group], slots[group] = strategies.update(
                self.mesh,
                layout.kind,
                layout.block_rows,
                capacity,
                layout.exchange,
                self._optimizer(group),
                layout.lr,
                layout.dim,
                tables[group],
                slots[group],
                step,
                keys_bs,
                grads_bsd,
            )
        return EmbeddingState(tables, slots)

    def dense_gradients(
        self, state: EmbeddingState, ids: dict[str, jax.Array], grads: dict[str, jax.Array]
    ) -> dict[str, jax.Array]:
        """Table-shaped gradients for training tables with dense optax: the O(rows) baseline."""
        dense = {}
        for group, feats, _ in self._group_batches(ids):
            layout = self.plan.groups[group]
            grads_nd = jnp.concatenate([grads[f].reshape(-1, layout.dim) for f in feats])
            keys_n = jnp.concatenate([self.plan.group_keys(self.features[f], ids[f].reshape(-1)) for f in feats])
            zeros = jnp.zeros_like(state.tables[group])
            keys_n = jnp.where(keys_n < 0, zeros.shape[0], keys_n)  # padding: dropped
            dense[group] = zeros.at[keys_n, : layout.dim].add(grads_nd, mode="drop")
        return dense

    def slot_widths(self, table: str) -> dict[str, int]:
        spec = self.specs[table]
        slots = self._optimizer(self.plan.placements[table].group).slots
        return {name: spec.dim if kind == "element" else 1 for name, (kind, _) in slots.items()}

    def to_logical(self, state: EmbeddingState) -> dict:
        """Plan-independent form: {"tables": {t: [rows_pad, dim]}, "slots": {t: {slot: [rows_pad, w]}}},
        rows in logical order, padded (layout.padded_rows) and sharded by rows over the mesh.

        Checkpoints hold this form, so a run saved under one plan restores under any other."""
        tables, slots = {}, {}
        for name, spec in self.specs.items():
            group = self.plan.placements[name].group
            tables[name] = layout.to_logical(self.plan, self.mesh, name, state.tables[group], spec.dim)
            slots[name] = {
                slot: layout.to_logical(self.plan, self.mesh, name, state.slots[group][slot], width)
                for slot, width in self.slot_widths(name).items()
            }
        return {"tables": tables, "slots": slots}

    def logical_shardings(self, logical_shapes: dict) -> dict:
        """Shardings of a logical form with the given shapes (those of a checkpoint, which may
        predate the padding): rows split over the mesh where they divide."""
        return jax.tree.map(
            lambda shape: NamedSharding(self.mesh, layout.logical_spec(self.mesh, shape[0])),
            logical_shapes,
            is_leaf=lambda x: isinstance(x, tuple),
        )

    def from_logical(self, logical: dict) -> EmbeddingState:
        """The inverse of to_logical, laid out by this collection's plan (any padded row count)."""
        state = self._empty_state()
        tables, slots = dict(state.tables), {name: dict(group) for name, group in state.slots.items()}
        for name, group in self.plan.groups.items():
            for table in group.tables:
                tables[name] = layout.write_logical(self.plan, self.mesh, table, tables[name], logical["tables"][table])
                for slot, value in logical["slots"][table].items():
                    slots[name][slot] = layout.write_logical(self.plan, self.mesh, table, slots[name][slot], value)
        return EmbeddingState(tables, slots)

    def table(self, state: EmbeddingState, name: str) -> jax.Array:
        """The logical [rows, dim] table, for export and peers: sharded by rows where the row
        count divides the mesh, so it can stay on device; np.asarray() brings it to the host."""
        group = self.plan.placements[name].group
        return layout.to_logical(self.plan, self.mesh, name, state.tables[group], self.specs[name].dim)[
            : self.specs[name].rows
        ]


def _stable_hash(name: str) -> int:
    """A process-independent integer for a table name (Python's hash() is salted per process)."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF
