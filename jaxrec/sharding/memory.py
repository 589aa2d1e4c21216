"""Per-device memory and communication estimates of a plan, from shapes alone."""

from __future__ import annotations

from jaxrec.embedding.optimizers import ROW_OPTIMIZERS
from jaxrec.sharding.planner import FLOAT_BYTES, EmbeddingPlan


def _slot_width(optimizer: str, dim: int) -> int:
    return sum(dim if kind == "element" else 1 for kind, _ in ROW_OPTIMIZERS[optimizer].slots.values())


def table_bytes_per_device(plan: EmbeddingPlan, table: str) -> list[int]:
    """Parameter + optimiser-slot bytes of one table on each device (device = data-major index)."""
    spec, place = plan.specs[table], plan.placements[table]
    group = plan.groups[place.group]
    data, model = plan.mesh_shape
    width = spec.dim + _slot_width(group.optimizer, spec.dim)
    if group.kind == "replicated":
        per_model = [spec.rows * width] * model
    elif group.kind == "column":
        slots = ROW_OPTIMIZERS[group.optimizer].slots.values()
        cols = group.padded_dim // model
        local_width = cols + sum(cols if kind == "element" else 1 for kind, _ in slots)
        per_model = [spec.rows * local_width] * model
    else:
        per_model = [0] * model
        for shard in range(place.shards):
            rows = len(range(shard, spec.rows, place.shards))
            per_model[place.owner + shard] = rows * width
    return [b * FLOAT_BYTES for _ in range(data) for b in per_model]
