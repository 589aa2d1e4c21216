"""Per-device memory and communication estimates of a plan, from shapes alone.

The estimate mirrors what the shard_map kernels allocate (sharding/strategies.py):
params and slots are the group arrays as laid out (padding included); buffers are the largest
group's working set (groups run one after another and XLA reuses their buffers): the lookup's
exchange buffers and rows, or the update's exchanged keys, gradients, summed gradients, old rows
and slots (new values are written in place); activations are the looked-up rows and their
gradients. Communication counts the bytes each device receives from collectives in one normal
step, with the ring formulas of sharding.hlo, which reads the same figure from compiled HLO.

Legend: N devices, M model-axis size, n ids per device per group, d (local) dim.
"""

from __future__ import annotations

import dataclasses
import math

from jaxrec.embedding.optimizers import ROW_OPTIMIZERS
from jaxrec.embedding.specs import TableSpec
from jaxrec.sharding.placement import EmbeddingPlan, GroupLayout

FLOAT_BYTES = 4
ID_BYTES = 4
MEMORY_OVER_LINK = 10  # a device's memory is about this many times faster than its links (HBM vs NVLink/ICI)
COLLECTIVE_LATENCY_BYTES = 1 << 18  # a collective's fixed latency (~5 us) in bytes at ~50 GB/s of link


def _slot_width(optimizer: str, dim: int) -> int:
    return sum(dim if kind == "element" else 1 for kind, _ in ROW_OPTIMIZERS[optimizer].slots.values())


def table_bytes(spec: TableSpec) -> int:
    """Parameters plus optimiser slots of the whole table."""
    return spec.rows * (spec.dim * spec.itemsize + _slot_width(spec.optimizer, spec.dim) * FLOAT_BYTES)


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
    comm_bytes_per_step: int  # received, summed over devices
    comm_bytes_received_per_device: float  # embeddings, plus the dense gradients' all-reduce

    @property
    def peak(self) -> list[int]:
        return [
            p + s + b + a + self.dense for p, s, b, a in zip(self.params, self.slots, self.buffers, self.activations)
        ]


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


def _scalar_all_reduce(devices: int) -> float:
    """A 4-byte pmax / pmin over every device (the row exchange's round agreement)."""
    return 2 * (devices - 1) / devices * ID_BYTES


def _row_traffic(plan: EmbeddingPlan, group: GroupLayout, n: int, d: int, slot_width: int):
    """Row kind, one round of the owner-routed exchange (strategies._lookup_rows, _update_rows):
    (lookup buffers, update buffers, bytes received per device). The update holds the send and
    receive buckets of keys and gradients, what was gathered over `data`, and per unique row its
    summed gradient, old row and slots; it consumes the activations' gradients (n x d), which
    the activation term already counts. Fitted to XLA's temp bytes on CPU (MF, dim 64, 8 and 64
    devices, 1,024 and 16,384 examples per device): 5-6% above."""
    data, model = plan.mesh_shape
    c = plan.bucket_capacity(group.name, n)
    bucket = model * c
    gathered = data * bucket  # keys an owner applies per round
    unique = min(gathered, group.block_rows + 1)
    lookup = n * 6 * ID_BYTES + 2 * bucket * (ID_BYTES + d * group.itemsize)
    update = (
        2 * bucket * (ID_BYTES + d * FLOAT_BYTES)
        + (data - 1) * bucket * (2 * ID_BYTES + d * FLOAT_BYTES)
        + unique * (ID_BYTES + (2 * d + slot_width) * FLOAT_BYTES)
        - n * d * FLOAT_BYTES
    )
    received = (model - 1) * c * (2 * ID_BYTES + d * (group.itemsize + FLOAT_BYTES))
    received += (data - 1) * bucket * (ID_BYTES + d * FLOAT_BYTES)
    received += 4 * _scalar_all_reduce(plan.num_devices)  # round counts and next rounds, lookup and update
    return lookup, update, received


def _group_traffic(plan: EmbeddingPlan, group: GroupLayout, batch_size: int) -> tuple[int, int, float]:
    """(buffer bytes per device, activation bytes per device, bytes received per device per step)."""
    data, model = plan.mesh_shape
    n, devices = _ids_per_device(plan, group, batch_size), plan.num_devices
    d, full_d = _local_dim(group, model), group.padded_dim
    slots = ROW_OPTIMIZERS[group.optimizer].slots.values()
    slot_width = sum(d if kind == "element" else 1 for kind, _ in slots)
    activations = 2 * n * full_d * FLOAT_BYTES
    if group.kind == "row":
        lookup, update, received = _row_traffic(plan, group, n, d, slot_width)
        return max(lookup, update), activations, received
    if group.kind == "replicated" and group.exchange == "dense":
        rows = group.block_rows
        update = rows * (2 * (d + 1) + d + slot_width) * FLOAT_BYTES + n * (ID_BYTES + d * FLOAT_BYTES)
        return update, activations, 2 * (devices - 1) / devices * rows * (d + 1) * FLOAT_BYTES
    # replicated (sparse) and column: every device's unique keys and gradients are gathered
    gathered = devices * n
    unique = min(gathered, group.block_rows + 1)
    update = gathered * (2 * ID_BYTES + d * FLOAT_BYTES) + unique * (ID_BYTES + (2 * d + slot_width) * FLOAT_BYTES)
    received = (gathered - n) * (ID_BYTES + d * FLOAT_BYTES)
    lookup = 0
    if group.kind == "column":
        lookup = model * n * (ID_BYTES + d * group.itemsize)
        received = (model - 1) * n * ID_BYTES * 2 + (data - 1) * model * n * ID_BYTES  # keys: lookup, update
        received += (model - 1) / model * n * full_d * (group.itemsize + FLOAT_BYTES)  # rows back, grads out
        received += (data - 1) * model * n * d * FLOAT_BYTES  # gradients over data
        if group.optimizer == "rowwise_adagrad":  # the only optimiser that reads the row's square sum
            received += 2 * (model - 1) / model * unique * FLOAT_BYTES
    return max(lookup, update), activations, received


def dense_all_reduce_bytes(num_devices: int, param_bytes: int) -> float:
    """Bytes a device receives per step all-reducing the dense parameters' gradients."""
    return 2 * (num_devices - 1) / num_devices * param_bytes


def group_comm_bytes(plan: EmbeddingPlan, group: str, batch_size: int) -> float:
    """Bytes one device receives per step for one group's lookup and update."""
    return _group_traffic(plan, plan.groups[group], batch_size)[2]


def _collectives(plan: EmbeddingPlan, group: GroupLayout) -> int:
    """Collectives a group's lookup and update issue per normal step (each pays a link latency)."""
    data, model = plan.mesh_shape
    if plan.num_devices == 1:
        return 0
    if group.kind == "row":  # keys and rows, keys and gradients; round agreement; gathers over data
        return 4 + 4 + (2 if data > 1 else 0)
    if group.kind == "column":
        return 4 + (2 if data > 1 else 0) + (group.optimizer == "rowwise_adagrad")
    return 1 if group.exchange == "dense" else 2


def step_cost(plan: EmbeddingPlan, batch_size: int) -> float:
    """The planner's step cost of the embeddings, in bytes of link traffic: bytes received per
    device, plus COLLECTIVE_LATENCY_BYTES per collective, plus the bytes of rows and buffers a
    device reads and writes, discounted by how much faster memory is than links."""
    cost = 0.0
    for group in plan.groups.values():
        buffers, _, received = _group_traffic(plan, group, batch_size)
        cost += received + buffers / MEMORY_OVER_LINK + _collectives(plan, group) * COLLECTIVE_LATENCY_BYTES
    return cost


def estimate_memory(
    plan: EmbeddingPlan, batch_size: int, dense_bytes: int = 0, dense_param_bytes: int = 0
) -> MemoryEstimate:
    """dense_param_bytes: the dense parameters alone, whose gradients are all-reduced each step."""
    devices = plan.num_devices
    model = plan.mesh_shape[1]
    params, slots, buffers, activations = [0] * devices, [0] * devices, 0, 0
    received = dense_all_reduce_bytes(devices, dense_param_bytes)
    for group in plan.groups.values():
        p, s = _group_arrays(group, model)
        params = [x + p for x in params]
        slots = [x + s for x in slots]
        b, a, r = _group_traffic(plan, group, batch_size)
        buffers, activations, received = max(buffers, b), activations + a, received + r
    return MemoryEstimate(
        params, slots, [buffers] * devices, [activations] * devices, dense_bytes, round(received * devices), received
    )


def _gb(num_bytes: float) -> str:
    return f"{num_bytes / 1e9:.3g} GB"


def check_fits(plan: EmbeddingPlan, estimate: MemoryEstimate, budget_bytes: float) -> None:
    """Fails before anything is allocated, naming the largest table and the smallest mesh that fits."""
    peak = max(estimate.peak)
    if peak <= budget_bytes:
        return
    from jaxrec.errors import JaxrecError

    largest = max(plan.specs.values(), key=table_bytes)
    total = sum(table_bytes(s) for s in plan.specs.values())
    overhead = peak - max(p + s for p, s in zip(estimate.params, estimate.slots))
    room = budget_bytes - overhead
    needed = 2 ** math.ceil(math.log2(max(total / room, 1))) if room > 0 else None
    hint = (
        f"the smallest mesh that fits is {needed} devices with sharding=row_wise"
        if needed
        else "no mesh fits: the batch's buffers alone exceed the budget; lower train.batch_size"
    )
    raise JaxrecError(
        f"the model does not fit sharding.memory_budget_gb={budget_bytes / 1e9:g}: it needs {_gb(peak)} on its "
        f"fullest device (mesh data x model = {plan.mesh_shape[0]}x{plan.mesh_shape[1]}); largest table "
        f"'{largest.name}' is {largest.rows:,} x {largest.dim} ({_gb(table_bytes(largest))} with optimiser "
        f"slots); {hint}"
    )


def largest_batch_that_fits(
    plan: EmbeddingPlan, budget_bytes: float, dense_bytes: int = 0, max_batch: int = 1 << 20
) -> int:
    """The largest power-of-two global batch (a multiple of the device count) whose plan fits."""
    batch = plan.num_devices
    if max(estimate_memory(plan, batch, dense_bytes).peak) > budget_bytes:
        check_fits(plan, estimate_memory(plan, batch, dense_bytes), budget_bytes)
    while batch * 2 <= max_batch and max(estimate_memory(plan, batch * 2, dense_bytes).peak) <= budget_bytes:
        batch *= 2
    return batch
