"""Per-device memory and communication estimates of a plan, from shapes alone.

The estimate mirrors what the shard_map kernels allocate (sharding/strategies.py):
params and slots are the group arrays as laid out (padding included); buffers are the largest
group's working set (groups run one after another and XLA reuses their buffers): the lookup's
gathered keys and rows, or the update's gathered keys, gradients, summed gradients, old rows and
slots (new values are written in place); activations are the looked-up rows and their gradients.
Calibrated against XLA's temp bytes on CPU: linear in the batch, within a few % for lazy Adam. Communication counts the bytes each
device receives from collectives in one step, summed over devices.

Legend: N devices, M model-axis size, n ids per device per group, d (local) dim.
"""

from __future__ import annotations

import dataclasses
import math

from jaxrec.embedding.optimizers import ROW_OPTIMIZERS
from jaxrec.sharding.planner import FLOAT_BYTES, ID_BYTES, EmbeddingPlan, GroupLayout


def _slot_width(optimizer: str, dim: int) -> int:
    return sum(dim if kind == "element" else 1 for kind, _ in ROW_OPTIMIZERS[optimizer].slots.values())


def table_bytes_per_device(plan: EmbeddingPlan, table: str) -> list[int]:
    """Parameter + optimiser-slot bytes of one table on each device (device = data-major index)."""
    spec, place = plan.specs[table], plan.placements[table]
    group = plan.groups[place.group]
    data, model = plan.mesh_shape
    cols = group.padded_dim // model if group.kind == "column" else spec.dim
    row_bytes = cols * spec.itemsize + _slot_width(group.optimizer, cols) * FLOAT_BYTES
    if group.kind != "row":
        per_model = [spec.rows * row_bytes] * model
    else:
        per_model = [0] * model
        for shard in range(place.shards):
            per_model[place.owner + shard] = len(range(shard, spec.rows, place.shards)) * row_bytes
    return [b for _ in range(data) for b in per_model]


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    params: list[int]  # bytes per device (data-major device order)
    slots: list[int]
    buffers: list[int]
    activations: list[int]
    dense: int  # dense parameters and their optimiser state, on every device
    comm_bytes_per_step: int

    @property
    def peak(self) -> list[int]:
        return [p + s + b + a + self.dense for p, s, b, a in
                zip(self.params, self.slots, self.buffers, self.activations)]


def _local_dim(group: GroupLayout, model: int) -> int:
    return group.padded_dim // model if group.kind == "column" else group.padded_dim


def _group_arrays(group: GroupLayout, model: int) -> tuple[int, int]:
    """(param bytes, slot bytes) of one device's piece of a group."""
    rows, d = group.block_rows, _local_dim(group, model)
    slots = ROW_OPTIMIZERS[group.optimizer].slots.values()
    slot_width = sum(d if kind == "element" else 1 for kind, _ in slots)
    return rows * d * group.itemsize, rows * slot_width * FLOAT_BYTES


def _ids_per_device(plan: EmbeddingPlan, group: GroupLayout, batch_size: int) -> int:
    per_example = sum(plan.specs[t].ids_per_example for t in group.tables)
    return math.ceil(batch_size / plan.num_devices) * per_example


def _group_traffic(plan: EmbeddingPlan, group: GroupLayout, batch_size: int) -> tuple[int, int, int]:
    """(buffer bytes per device, activation bytes per device, bytes received per device)."""
    data, model = plan.mesh_shape
    n, devices = _ids_per_device(plan, group, batch_size), plan.num_devices
    d, full_d = _local_dim(group, model), group.padded_dim
    slots = ROW_OPTIMIZERS[group.optimizer].slots.values()
    slot_width = sum(d if kind == "element" else 1 for kind, _ in slots)
    gathered = devices * n  # keys every device sees in the update
    # per gathered key: the key, its position and its gradient; per unique local row (at most
    # block_rows + 1: strategies._dedup marks rows once keys outnumber them): the row id, the
    # summed gradient, the old row and its slots
    unique = min(gathered, group.block_rows + 1)
    update = gathered * (2 * ID_BYTES + d * FLOAT_BYTES) + unique * (ID_BYTES + (2 * d + slot_width) * FLOAT_BYTES)
    lookup = 0 if group.kind == "replicated" else model * n * (ID_BYTES + d * group.itemsize)
    activations = 2 * n * full_d * FLOAT_BYTES
    received = (gathered - n) * (ID_BYTES + d * group.itemsize)
    if group.kind != "replicated":
        received += (model - 1) * n * (ID_BYTES + d * group.itemsize)
    return max(lookup, update), activations, received


def estimate_memory(plan: EmbeddingPlan, batch_size: int, dense_bytes: int = 0) -> MemoryEstimate:
    devices = plan.num_devices
    model = plan.mesh_shape[1]
    params, slots, buffers, activations, comm = [0] * devices, [0] * devices, 0, 0, 0
    for group in plan.groups.values():
        p, s = _group_arrays(group, model)
        params = [x + p for x in params]
        slots = [x + s for x in slots]
        b, a, r = _group_traffic(plan, group, batch_size)
        buffers, activations, comm = max(buffers, b), activations + a, comm + r * devices
    return MemoryEstimate(params, slots, [buffers] * devices, [activations] * devices, dense_bytes, comm)


def _gb(num_bytes: float) -> str:
    return f"{num_bytes / 1e9:.3g} GB"


def check_fits(plan: EmbeddingPlan, estimate: MemoryEstimate, budget_bytes: float) -> None:
    """Fails before anything is allocated, naming the largest table and the smallest mesh that fits."""
    peak = max(estimate.peak)
    if peak <= budget_bytes:
        return
    from jaxrec.errors import JaxrecError
    from jaxrec.sharding.planner import _table_bytes

    largest = max(plan.specs.values(), key=_table_bytes)
    total = sum(_table_bytes(s) for s in plan.specs.values())
    overhead = peak - max(p + s for p, s in zip(estimate.params, estimate.slots))
    room = budget_bytes - overhead
    needed = 2 ** math.ceil(math.log2(max(total / room, 1))) if room > 0 else None
    hint = (f"the smallest mesh that fits is {needed} devices with sharding=row_wise"
            if needed else "no mesh fits: the batch's buffers alone exceed the budget; lower train.batch_size")
    raise JaxrecError(
        f"the model does not fit sharding.memory_budget_gb={budget_bytes / 1e9:g}: it needs {_gb(peak)} on its "
        f"fullest device (mesh data x model = {plan.mesh_shape[0]}x{plan.mesh_shape[1]}); largest table "
        f"'{largest.name}' is {largest.rows:,} x {largest.dim} ({_gb(_table_bytes(largest))} with optimiser "
        f"slots); {hint}"
    )


def largest_batch_that_fits(plan: EmbeddingPlan, budget_bytes: float, dense_bytes: int = 0,
                            max_batch: int = 1 << 20) -> int:
    """The largest power-of-two global batch (a multiple of the device count) whose plan fits."""
    batch = plan.num_devices
    if max(estimate_memory(plan, batch, dense_bytes).peak) > budget_bytes:
        check_fits(plan, estimate_memory(plan, batch, dense_bytes), budget_bytes)
    while batch * 2 <= max_batch and max(estimate_memory(plan, batch * 2, dense_bytes).peak) <= budget_bytes:
        batch *= 2
    return batch
