"""The planner: where every table lives, and what that costs each device.

Tables are stacked into groups (one array per kind, dim and optimiser) so that one collective
serves all of a group's tables, as FBGEMM's table-batched embeddings do. Row-wise and
table-wise tables share the `row` layout: a table is spread over `shards` consecutive model-axis
devices starting at `owner`, its row i living on device `owner + i % shards` at local row
`base + i // shards` (`i % shards` spreads hot ids over devices, which contiguous ranges would
not). Row-wise is shards = model axis size, table-wise is shards = 1, and table-row-wise (as
TorchRec's) gives each table a block of consecutive devices sized by its share of the lookups, so
no table's owners take more than their share of every device's keys as the mesh grows.

Estimates are per device, in bytes, from shapes alone: nothing is allocated or generated.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jaxrec.embedding.specs import TableSpec
from jaxrec.errors import JaxrecError
from jaxrec.sharding.memory import FLOAT_BYTES, ID_BYTES, step_cost, table_bytes
from jaxrec.sharding.placement import DEFAULT_CAPACITY_FACTOR, EmbeddingPlan, GroupLayout, TablePlacement

KIND_OF_STRATEGY = {
    "none": "replicated",
    "data_parallel": "replicated",
    "table_wise": "row",
    "table_row_wise": "row",
    "row_wise": "row",
    "column_wise": "column",
}
REPLICATE_BELOW_BYTES = 4 << 20  # `auto` never replicates tables whose rows and slots take more


def _group_key(spec: TableSpec, strategy: str, exchange: str = "sparse") -> tuple:
    return KIND_OF_STRATEGY[strategy], spec.dim, spec.optimizer, spec.lr, spec.dtype, exchange


def replicated_exchange(spec: TableSpec, num_devices: int, batch_per_device: int) -> str:
    """How a replicated table's gradients travel: "dense" when all-reducing a table-sized gradient
    (and a touched-row count) receives fewer bytes than all-gathering every device's keys and
    gradients, else "sparse"."""
    keys = batch_per_device * spec.ids_per_example
    sparse = (num_devices - 1) * keys * (ID_BYTES + spec.dim * FLOAT_BYTES)
    dense = 2 * (num_devices - 1) / num_devices * spec.rows * (spec.dim + 1) * FLOAT_BYTES
    return "dense" if dense < sparse else "sparse"


def _pack_or_split(specs: list[TableSpec], model: int, budget_bytes: float) -> dict[str, str]:
    """`auto` for tables sharing one row group. SPMD shards are uniform, so the fullest device
    sets every device's block: aim every device at the balanced fill (sum of rows / model).
    Tables above it, or above a quarter of the budget, are split row-wise (adding rows/model to
    every device); the others, largest first, go whole onto the least-filled device while that
    stays within the balanced fill, else they are split too."""
    target = math.ceil(sum(s.rows for s in specs) / model)
    chosen, fill = {}, np.zeros(model, dtype=np.int64)
    for spec in sorted(specs, key=lambda s: -s.rows):
        if spec.rows > target or table_bytes(spec) > budget_bytes / 4:
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


def choose_strategies(
    specs: list[TableSpec], strategy: str, overrides: dict[str, str], model: int, budget_bytes: float
) -> dict[str, str]:
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
        if model == 1 or table_bytes(spec) <= min(REPLICATE_BELOW_BYTES, budget_bytes / 16):
            chosen[spec.name] = "data_parallel"
        else:
            sharded.setdefault(_group_key(spec, "row_wise"), []).append(spec)
    for members in sharded.values():
        chosen |= _pack_or_split(members, model, budget_bytes)
    return chosen


def _row_blocks(specs: list[TableSpec], model: int) -> dict[str, int]:
    """Devices per table-row-wise table: the model axis split in proportion to each table's ids
    per example (its share of the lookups), at least one each; with more tables than devices,
    one each (they are then packed like table-wise ones)."""
    if len(specs) >= model:
        return {s.name: 1 for s in specs}
    weights = np.array([s.ids_per_example for s in specs], dtype=np.float64)
    shards = np.maximum(1, np.floor(model * weights / weights.sum())).astype(int)
    while shards.sum() > model:
        shards[np.argmax(shards)] -= 1
    for index in np.argsort(-weights, kind="stable")[: model - shards.sum()]:
        shards[index] += 1
    return {s.name: int(n) for s, n in zip(specs, shards)}


def _layout_row_group(specs: list[TableSpec], strategies: dict[str, str], model: int):
    """Row-wise tables at one base on every device; table-row-wise ones on consecutive blocks of
    devices (_row_blocks), each at its block's fill; then table-wise ones greedily onto the
    least-filled device (largest first), as TorchRec's greedy proposer does."""
    fill = np.zeros(model, dtype=np.int64)
    placements = {}
    for spec in (s for s in specs if strategies[s.name] == "row_wise"):
        base = int(fill.max())
        placements[spec.name] = (0, model, base)
        fill[:] = base + math.ceil(spec.rows / model)
    blocked = [s for s in specs if strategies[s.name] == "table_row_wise"]
    blocks, owner = _row_blocks(blocked, model), 0
    for spec in blocked:
        shards = blocks[spec.name]
        if shards == 1:
            owner = int(np.argmin(fill))
        base = int(fill[owner : owner + shards].max())
        placements[spec.name] = (owner, shards, base)
        fill[owner : owner + shards] = base + math.ceil(spec.rows / shards)
        owner = (owner + shards) % model
    for spec in sorted((s for s in specs if strategies[s.name] == "table_wise"), key=lambda s: -s.rows):
        owner = int(np.argmin(fill))
        placements[spec.name] = (owner, 1, int(fill[owner]))
        fill[owner] += spec.rows
    return placements, max(int(fill.max()), 1)


def _assemble(
    specs: list[TableSpec],
    mesh_shape: tuple[int, int],
    strategies: dict[str, str],
    capacity_factor: float,
    batch_per_device: int,
) -> EmbeddingPlan:
    model, devices = mesh_shape[1], mesh_shape[0] * mesh_shape[1]
    buckets: dict[tuple, list[TableSpec]] = {}
    for spec in specs:
        exchange = "sparse"
        if KIND_OF_STRATEGY[strategies[spec.name]] == "replicated":
            exchange = replicated_exchange(spec, devices, batch_per_device)
        buckets.setdefault(_group_key(spec, strategies[spec.name], exchange), []).append(spec)
    placements, groups = {}, {}
    for (kind, dim, optimizer, lr, dtype, exchange), members in buckets.items():
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
        groups[name] = GroupLayout(
            name, kind, dim, padded_dim, block_rows, optimizer, lr, tuple(s.name for s in members), dtype, exchange
        )
    return EmbeddingPlan(tuple(mesh_shape), {s.name: s for s in specs}, placements, groups, capacity_factor)


def _cost(specs, mesh_shape, strategies, capacity_factor, batch_per_device) -> float:
    plan = _assemble(specs, mesh_shape, strategies, capacity_factor, batch_per_device)
    return step_cost(plan, batch_per_device * plan.num_devices)


def _mind_communication(specs, mesh_shape, chosen, fixed, capacity_factor, batch_per_device):
    """`auto` after memory: a replicated table becomes row-wise when that costs less (its sparse
    update grows with the device count), and a row group's table-wise packing gives way to
    row-wise when that costs less (an owner of a hot table fills every device's buckets).
    Returns the new choice and every table's cost alone under each candidate."""
    model = mesh_shape[1]
    costs, chosen = {}, dict(chosen)
    for spec in specs:
        candidates = ["row_wise", "table_wise", "column_wise"] if model > 1 else []
        if chosen[spec.name] == "data_parallel":
            candidates.append("data_parallel")
        costs[spec.name] = {
            c: _cost([spec], mesh_shape, {spec.name: c}, capacity_factor, batch_per_device) for c in candidates
        }
        if (
            spec.name not in fixed
            and chosen[spec.name] == "data_parallel"
            and model > 1
            and costs[spec.name]["row_wise"] < costs[spec.name]["data_parallel"]
        ):
            chosen[spec.name] = "row_wise"
    packed = [s for s in specs if s.name not in fixed and chosen[s.name] == "table_wise"]
    if packed:
        rows = [s for s in specs if KIND_OF_STRATEGY[chosen[s.name]] == "row"]
        split = chosen | {s.name: "row_wise" for s in packed}
        if _cost(rows, mesh_shape, split, capacity_factor, batch_per_device) < 0.95 * _cost(
            rows, mesh_shape, chosen, capacity_factor, batch_per_device
        ):
            chosen = split
    return chosen, costs


def check_table_overrides(overrides: dict[str, str], table_names: list[str]) -> None:
    """sharding.tables may only name tables the model has."""
    unknown = set(overrides) - set(table_names)
    if unknown:
        raise JaxrecError(
            f"sharding.tables names unknown table(s) {sorted(unknown)}; this model's tables: {', '.join(table_names)}"
        )


def make_plan(
    specs: list[TableSpec],
    mesh_shape: tuple[int, int],
    strategy: str,
    overrides: dict[str, str] | None = None,
    budget_bytes: float = 16e9,
    capacity_factor: float = DEFAULT_CAPACITY_FACTOR,
    batch_per_device: int = 1024,
) -> EmbeddingPlan:
    """batch_per_device: examples per device that `auto` and the replicated exchange are costed at."""
    check_table_overrides(overrides or {}, [s.name for s in specs])
    model = mesh_shape[1]
    strategies = choose_strategies(specs, strategy, overrides or {}, model, budget_bytes)
    if mesh_shape != (1, 1) and "none" in strategies.values():
        raise JaxrecError(
            f"sharding strategy 'none' needs a 1x1 mesh, got data x model = {mesh_shape}; "
            "use data_parallel to replicate tables on several devices"
        )
    costs = {}
    if strategy == "auto":
        strategies, costs = _mind_communication(
            specs, mesh_shape, strategies, set(overrides or {}), capacity_factor, batch_per_device
        )
    plan = _assemble(specs, mesh_shape, strategies, capacity_factor, batch_per_device)
    return dataclasses.replace(plan, candidate_costs=costs)
