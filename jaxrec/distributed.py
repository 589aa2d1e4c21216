"""Multi-process runs on JAX's own multi-controller runtime: one process per host, one global
mesh over every process's devices, XLA collectives between processes (gloo on CPU, NCCL on GPU).

Every process runs the same program on the same config. Each builds the same global batch
order from the seeds, keeps only the rows its own devices hold, and hands them to
`jax.make_array_from_process_local_data`; process 0 alone writes results, metrics and plots;
every process takes part in Orbax checkpoints (each writes the shards it owns).
"""

from __future__ import annotations

import logging
import os

from jaxrec.config import DistributedConfig
from jaxrec.errors import JaxrecError

log = logging.getLogger("jaxrec.distributed")

CLUSTER_SIZE_VARS = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")  # what jax detects on its own


def detected_cluster() -> bool:
    return any(int(os.environ.get(var, "1") or 1) > 1 for var in CLUSTER_SIZE_VARS)


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def coordinator_bind_address(address: str) -> str | None:
    """Where process 0's coordinator listens: on loopback only when the group is local (JAX's
    default, [::]:port, would accept connections on every interface); None (JAX's default) for a
    cluster, whose other hosts must reach it."""
    host, _, port = address.rpartition(":")
    return f"{host}:{port}" if host in LOOPBACK_HOSTS or host.startswith("127.") else None


def check_config(cfg: DistributedConfig) -> None:
    """The group's settings, each mistake in one line before anything starts (JAX reports them as
    tracebacks, some only after waiting for the other processes)."""
    if not 0 <= cfg.process_id < cfg.num_processes:
        raise JaxrecError(f"train.distributed.process_id={cfg.process_id} must lie in 0..{cfg.num_processes - 1}")
    if cfg.num_processes > 1 and cfg.coordinator_address is None and not detected_cluster():
        raise JaxrecError(
            f"train.distributed.num_processes={cfg.num_processes} needs train.distributed.coordinator_address="
            "HOST:PORT (where process 0 listens, e.g. 127.0.0.1:23456), or a cluster launcher (SLURM, MPI)"
        )
    if cfg.coordinator_address is not None:
        host, _, port = cfg.coordinator_address.rpartition(":")
        if not host.strip("[]") or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise JaxrecError(
                f"train.distributed.coordinator_address={cfg.coordinator_address!r} must be HOST:PORT with a "
                "port in 1..65535, e.g. 127.0.0.1:23456"
            )


def initialize(cfg: DistributedConfig) -> None:
    """jax.distributed.initialize once, before any other JAX call, when the config asks for
    several processes or a cluster launcher started several tasks; otherwise nothing."""
    check_config(cfg)
    if cfg.coordinator_address is None and cfg.num_processes == 1 and not detected_cluster():
        return
    import jax

    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if cfg.coordinator_address is None:
        jax.distributed.initialize(heartbeat_timeout_seconds=cfg.heartbeat_timeout_s)
    else:
        jax.distributed.initialize(
            cfg.coordinator_address,
            cfg.num_processes,
            cfg.process_id,
            heartbeat_timeout_seconds=cfg.heartbeat_timeout_s,
            initialization_timeout=max(60, cfg.heartbeat_timeout_s),
            coordinator_bind_address=coordinator_bind_address(cfg.coordinator_address),
        )
    log.info(
        "process %d of %d, %d local of %d devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def is_main() -> bool:
    import jax

    return jax.process_index() == 0


def process_rows(sharding, global_batch: int) -> slice:
    """The contiguous rows of a batch-sharded global batch that this process's devices hold."""
    import jax

    if jax.process_count() == 1:
        return slice(0, global_batch)
    bounds = [index[0] for index in sharding.addressable_devices_indices_map((global_batch,)).values()]
    start, stop = min(b.start or 0 for b in bounds), max(b.stop or global_batch for b in bounds)
    if sum((b.stop or global_batch) - (b.start or 0) for b in bounds) != stop - start:
        raise JaxrecError(
            "this process's devices do not hold a contiguous block of the batch; build the mesh "
            "with each process's devices adjacent (jax.make_mesh does)"
        )
    return slice(start, stop)


def global_batch(local: dict, sharding, global_batch_size: int) -> dict:
    """This process's rows of a batch -> global arrays sharded over every process's devices."""
    import jax

    return {
        name: jax.make_array_from_process_local_data(sharding, rows, (global_batch_size, *rows.shape[1:]))
        for name, rows in local.items()
    }


def gathered(x):
    """x itself, or (sharded over other processes too) its full value on every process."""
    if x.is_fully_addressable:
        return x
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(x, tiled=True)


def any_process(flag: bool) -> bool:
    """`flag` OR-ed over every process: one tiny host collective, so that all processes take the
    same decision (e.g. stop at the same step); the flag itself in a one-process run."""
    import jax

    if jax.process_count() == 1:
        return bool(flag)
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.asarray(multihost_utils.process_allgather(np.asarray([int(flag)], np.int32))).any())
