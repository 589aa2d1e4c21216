"""The planner: where every table lives, and what that costs each device.

Tables are stacked into groups (one array per kind, dim and optimiser) so that one collective
serves all of a group's tables, as FBGEMM's table-batched embeddings do. Row-wise and
table-wise tables share the `row` layout: a table is spread over `shards` consecutive model-axis
devices starting at `owner`, its row i living on device `owner + i % shards` at local row
`base + i // shards` (`i % shards` spreads hot ids over devices, which contiguous ranges would
not). Row-wise is shards = model axis size, table-wise is shards = 1.

Estimates are per device, in bytes, from shapes alone: nothing is allocated or generated.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from jaxrec.embedding.optimizers import ROW_OPTIMIZERS
from jaxrec.embedding.specs import TableSpec
from jaxrec.errors import JaxrecError

KIND_OF_STRATEGY = {
    "none": "replicated",
    "data_parallel": "replicated",
    "table_wise": "row",
    "row_wise": "row",
    "column_wise": "column",
}
FLOAT_BYTES = 4
ID_BYTES = 4
REPLICATE_BELOW_BYTES = 4 << 20  # `auto` never replicates tables whose rows and slots take more


@dataclasses.dataclass(frozen=True)
class TablePlacement:
    strategy: str
    group: str
    owner: int  # first model-axis device holding rows (row kind)
    shards: int  # model-axis devices the rows are spread over (row kind)
    base: int  # first row of the table in the group's (per-device) block


@dataclasses.dataclass(frozen=True)
class GroupLayout:
    name: str
    kind: str  # replicated | row | column
    dim: int
    padded_dim: int  # column kind: dim rounded up to a multiple of the model axis
    block_rows: int  # row kind: rows per device; other kinds: all rows
    optimizer: str
    lr: float
    tables: tuple[str, ...]
    dtype: str = "float32"  # storage of the rows; optimiser slots are float32

    @property
    def itemsize(self) -> int:
        return np.dtype(jnp.dtype(self.dtype)).itemsize

    def array_shape(self, model: int) -> tuple[int, int]:
        rows = self.block_rows * model if self.kind == "row" else self.block_rows
        return rows, self.padded_dim


@dataclasses.dataclass(frozen=True)
class EmbeddingPlan:
    mesh_shape: tuple[int, int]  # (data, model)
    specs: dict[str, TableSpec]
    placements: dict[str, TablePlacement]
    groups: dict[str, GroupLayout]

    @property
    def num_devices(self) -> int:
        return self.mesh_shape[0] * self.mesh_shape[1]

    def group_keys(self, table: str, ids):
        """Logical row ids of `table` -> row indices in its group's stacked array (jnp or np).

        A negative id (the padding of an embedding bag) stays -1: it reads zeros, updates nothing."""
        place = self.placements[table]
        group = self.groups[place.group]
        if group.kind != "row":
            keys = ids + place.base
        else:
            device = place.owner + ids % place.shards
            keys = device * group.block_rows + place.base + ids // place.shards
        where = jnp.where if isinstance(ids, jnp.ndarray) else np.where
        return where(ids < 0, -1, keys)


def _group_key(spec: TableSpec, strategy: str) -> tuple:
    return KIND_OF_STRATEGY[strategy], spec.dim, spec.optimizer, spec.lr, spec.dtype


def _table_bytes(spec: TableSpec) -> int:
    """Parameters plus optimiser slots of the whole table."""
    slots = ROW_OPTIMIZERS[spec.optimizer].slots.values()
    slot_width = sum(spec.dim if kind == "element" else 1 for kind, _ in slots)
    return spec.rows * (spec.dim * spec.itemsize + slot_width * FLOAT_BYTES)


def _pack_or_split(specs: list[TableSpec], model: int, budget_bytes: float) -> dict[str, str]:
    """`auto` for tables sharing one row group. SPMD shards are uniform, so the fullest device
    sets every device's block: aim every device at the balanced fill (sum of rows / model).
    Tables above it, or above a quarter of the budget, are split row-wise (adding rows/model to
    every device); the others, largest first, go whole onto the least-filled device while that
    stays within the balanced fill, else they are split too."""
    target = math.ceil(sum(s.rows for s in specs) / model)
    chosen, fill = {}, np.zeros(model, dtype=np.int64)
    for spec in sorted(specs, key=lambda s: -s.rows):
        if spec.rows > target or _table_bytes(spec) > budget_bytes / 4:
            chosen[spec.name] = "row_wise"
            fill += math.ceil(spec.rows / model)
    for spec in sorted((s for s in specs if s.name not in chosen), key=lambda s: -s.rows):
        device = int(np.argmin(fill))
        if fill[device] + spec.rows <= target:
            chosen[spec.name] = "table_wise"
            fill[device] += spec.rows
        else:
            chosen[spec.name] = "row_wise"
            fill += math.ceil(spec.rows / model)
    return chosen


def choose_strategies(specs: list[TableSpec], strategy: str, overrides: dict[str, str], model: int,
                      budget_bytes: float) -> dict[str, str]:
    """Per-table strategy: overrides first, then the configured strategy or the `auto` rule.

    auto: replicate tables under min(REPLICATE_BELOW_BYTES, budget / 16) (their lookups need no
    communication) and everything on a single-device model axis; pack the others table-wise
    where that keeps devices balanced, else split them row-wise (_pack_or_split).
    """
    chosen = dict(overrides)
    if strategy != "auto":
        return {s.name: chosen.get(s.name, strategy) for s in specs}
    sharded: dict[tuple, list[TableSpec]] = {}
    for spec in specs:
        if spec.name in chosen:
            continue
        if model == 1 or _table_bytes(spec) <= min(REPLICATE_BELOW_BYTES, budget_bytes / 16):
            chosen[spec.name] = "data_parallel"
        else:
            sharded.setdefault(_group_key(spec, "row_wise"), []).append(spec)
    for members in sharded.values():
        chosen |= _pack_or_split(members, model, budget_bytes)
    return chosen


def _layout_row_group(specs: list[TableSpec], strategies: dict[str, str], model: int):
    """Row-wise tables at one base on every device, then table-wise ones greedily onto the
    least-filled device (largest first), as TorchRec's greedy proposer does."""
    fill = np.zeros(model, dtype=np.int64)
    placements = {}
    for spec in (s for s in specs if strategies[s.name] == "row_wise"):
        base = int(fill.max())
        placements[spec.name] = (0, model, base)
        fill[:] = base + math.ceil(spec.rows / model)
    for spec in sorted((s for s in specs if strategies[s.name] == "table_wise"), key=lambda s: -s.rows):
        owner = int(np.argmin(fill))
        placements[spec.name] = (owner, 1, int(fill[owner]))
        fill[owner] += spec.rows
    return placements, max(int(fill.max()), 1)


def make_plan(specs: list[TableSpec], mesh_shape: tuple[int, int], strategy: str,
              overrides: dict[str, str] | None = None, budget_bytes: float = 16e9) -> EmbeddingPlan:
    unknown = set(overrides or {}) - {s.name for s in specs}
    if unknown:
        names = ", ".join(s.name for s in specs)
        raise JaxrecError(f"sharding.tables names unknown table(s) {sorted(unknown)}; this model's tables: {names}")
    model = mesh_shape[1]
    strategies = choose_strategies(specs, strategy, overrides or {}, model, budget_bytes)
    if mesh_shape != (1, 1) and "none" in strategies.values():
        raise JaxrecError(f"sharding strategy 'none' needs a 1x1 mesh, got data x model = {mesh_shape}; "
                          "use data_parallel to replicate tables on several devices")
    buckets: dict[tuple, list[TableSpec]] = {}
    for spec in specs:
        buckets.setdefault(_group_key(spec, strategies[spec.name]), []).append(spec)
    placements, groups = {}, {}
    for (kind, dim, optimizer, lr, dtype), members in buckets.items():
        name = f"{kind}_{dim}d_{optimizer}_{len(groups)}"
        padded_dim = dim
        if kind == "row":
            layout, block_rows = _layout_row_group(members, strategies, model)
        else:
            layout, offset = {}, 0
            for spec in members:
                layout[spec.name] = (0, 1, offset)
                offset += spec.rows
            block_rows = offset
            if kind == "column":
                padded_dim = math.ceil(dim / model) * model
        for spec in members:
            owner, shards, base = layout[spec.name]
            placements[spec.name] = TablePlacement(strategies[spec.name], name, owner, shards, base)
        groups[name] = GroupLayout(name, kind, dim, padded_dim, block_rows, optimizer, lr,
                                   tuple(s.name for s in members), dtype)
    return EmbeddingPlan(tuple(mesh_shape), {s.name: s for s in specs}, placements, groups)
