"""Where every table lives: the EmbeddingPlan the planner returns, and its parts.

A plan stacks tables into groups (one array per kind, dim and optimiser) and places each table
in its group. Row-wise and table-wise tables share the `row` layout: a table is spread over
`shards` consecutive model-axis devices starting at `owner`, its row i living on device
`owner + i % shards` at local row `base + i // shards`. The planner (planner.py) makes plans
from the memory and communication estimates of sharding/memory.py, which read plans: both sit
above this module.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from jaxrec.embedding.specs import TableSpec

DEFAULT_CAPACITY_FACTOR = 1.5  # conf/sharding/*.yaml sets sharding.capacity_factor; see README


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
    exchange: str = "sparse"  # replicated kind: how gradients travel, "sparse" (all-gather) or "dense" (all-reduce)

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
    capacity_factor: float = DEFAULT_CAPACITY_FACTOR  # row kind: bucket capacity over a balanced share
    # `auto`: each table's estimated step cost (sharding.memory.step_cost, alone on this mesh) per candidate
    candidate_costs: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)

    @property
    def num_devices(self) -> int:
        return self.mesh_shape[0] * self.mesh_shape[1]

    def owner_share(self, group: str) -> float:
        """The largest fraction of a row group's keys that one model-axis device owns, from the
        tables' ids per example and placements (1 / model for row-wise alone)."""
        model = self.mesh_shape[1]
        share = np.zeros(model)
        tables = self.groups[group].tables
        total = sum(self.specs[t].ids_per_example for t in tables)
        for table in tables:
            place = self.placements[table]
            share[place.owner : place.owner + place.shards] += self.specs[table].ids_per_example / place.shards
        return float(share.max() / total)

    def bucket_capacity(self, group: str, keys_per_device: int) -> int:
        """C of a row group's [model, C] all_to_all buckets: capacity_factor x the owner's share
        of a device's keys, at least 2 (strategies' rounds need it) and at most all of them."""
        wanted = math.ceil(self.capacity_factor * self.owner_share(group) * keys_per_device)
        return max(2, min(wanted, keys_per_device))

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
