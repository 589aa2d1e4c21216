"""What does each sharding strategy cost per device as the mesh grows, for a DLRM-style model?

For each strategy x device count x table size it trains DCN-v2 (26 tables of `rows` rows each,
13 dense features) on synthetic Zipf data (jaxrec.data.ctr) and records throughput, the
compiled step's memory per device, the bytes its collectives move, and how fast it reads and
writes embedding rows against the memory bandwidth measured in the same run.

One process started with max(--devices) devices (CPU devices are simulated with
jax_num_cpu_devices); each configuration builds its engine on the first n of them
(`build_engine(devices=jax.devices()[:n])`). Data-parallel uses the mesh data x model = n x 1,
the others 1 x n (conf/sharding/*.yaml).

--processes 1,2 adds the cost of crossing a process boundary: for P > 1 the benchmark starts P
local worker processes (jaxrec.launch_local.run_group; gloo collectives on 127.0.0.1 on CPU)
that form one JAX runtime with jax.distributed, and measures every device count n divisible by
P on n / P devices of each process, feeding each process its own rows of every batch. On a GPU
cluster the same workers cross hosts over NCCL; start one per host with --coordinator and
--process-id (the way jaxrec.train does under SLURM).

Conventions:
- step times: medians (p50, p90) of --steps timed steps after --warmup untimed ones, cycling
  --num-batches distinct batches; `compile_s` is the compilation alone.
- bytes_per_device: XLA's memory analysis of the compiled step (argument + output - alias + temp).
- comm_bytes_per_step: the bytes one device receives in a step, read from the compiled HLO by
  jaxrec.sharding.hlo (benchmarks.common.hlo_collective_bytes: ring formulas, the one accounting
  of jaxrec.plan and benchmarks.weak_scaling), times the device count. It includes the
  all-reduce of the dense gradients.
  `comm_bytes_planner` is the planner's estimate of the embedding traffic alone (bytes received).
- embedding_gbps: embedding bytes per step / p50 step time, where a step reads each unique row
  it looks up once and reads and writes each updated row and its optimiser slots on every
  replica (data-parallel tables: n replicas): sum over tables of
  U * row + replicas * U * 2 * (row + slots), U = unique ids of the table in the batch.
- roofline_gbps: a donated x <- x + 1 over 256 MB on the same n devices, read + write
  (benchmarks.common.copy_bandwidth_gbps), measured once per device count in this run.
Simulated CPU devices share the host's cores and memory: on CPU, examples/s/device falls with
n by construction; the comparison between strategies at one n is the informative part.

Run:   python -m benchmarks.sharding --out runs/bench/sharding          (~40 min on 2 CPU cores)
Smoke: python -m benchmarks.sharding --out /tmp/s --strategies row_wise,auto --devices 2 \\
           --rows 200 --num-sparse 4 --dim 4 --batch 32 --steps 2 --warmup 1
Legend: S categorical features (tables), V rows per table, B global batch, n devices.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import sys
import time
from collections import Counter
from pathlib import Path

import jax
import numpy as np

from benchmarks.common import (
    copy_bandwidth_gbps,
    hlo_collective_bytes,
    int_list,
    machine_info,
    plot_lines,
    summarize,
    time_calls,
    write_results,
)
from jaxrec import distributed
from jaxrec.config import Config, DistributedConfig, compose_config
from jaxrec.data.ctr import CtrPart, batch_inputs, ctr_schema, generate_ctr
from jaxrec.embedding.optimizers import ROW_OPTIMIZERS
from jaxrec.launch_local import free_port, run_group
from jaxrec.progress import write_json_atomic
from jaxrec.sharding.memory import estimate_memory
from jaxrec.train_lib import build_engine, dense_bytes, init_state, make_train_step

STRATEGIES = ("data_parallel", "table_wise", "row_wise", "column_wise", "auto")
COLUMNS = (
    "strategy",
    "num_devices",
    "processes",
    "rows",
    "plan",
    "examples_per_sec",
    "examples_per_sec_per_device",
    "step_ms_p50",
    "step_ms_p90",
    "compile_s",
    "bytes_per_device",
    "comm_bytes_per_step",
    "comm_bytes_planner",
    "embedding_gbps",
    "roofline_gbps",
)


def make_config(strategy: str, num_devices: int, args: argparse.Namespace) -> Config:
    cfg = compose_config(["model=dcn_v2"])
    cfg.model.dim, cfg.model.cross_layers = args.dim, args.cross_layers
    cfg.model.bottom_mlp, cfg.model.hidden = [64, args.dim], [64]
    cfg.optimizer.name, cfg.optimizer.table_optimizer = "adam", args.table_optimizer
    cfg.sharding.strategy = strategy
    mesh = (num_devices, 1) if strategy == "data_parallel" else (1, num_devices)
    cfg.sharding.mesh.data, cfg.sharding.mesh.model = mesh
    return cfg


def make_batches(rows: int, args: argparse.Namespace) -> list[dict[str, np.ndarray]]:
    dense, sparse, label, _ = generate_ctr(
        args.batch * args.num_batches, (rows,) * args.num_sparse, 13, seed=args.seed, zipf_a=args.zipf_a
    )
    part = CtrPart(dense, sparse, label)
    return [batch_inputs(part, np.arange(i * args.batch, (i + 1) * args.batch)) for i in range(args.num_batches)]


def embedding_bytes_per_step(engine, host: list[dict]) -> float:
    """Row bytes read (lookups) and read + written (updates, per replica) by one step, on average."""
    plan, (data, model) = engine.plan, engine.plan.mesh_shape
    total = 0.0
    for name, spec in plan.specs.items():
        group = plan.groups[plan.placements[name].group]
        slots = ROW_OPTIMIZERS[group.optimizer].slots.values()
        slot_bytes = 4 * sum(spec.dim if kind == "element" else 1 for kind, _ in slots)
        row_bytes = spec.dim * spec.itemsize
        replicas = data * (model if group.kind == "replicated" else 1)
        unique = np.mean([np.unique(b[name]).size for b in host])
        total += unique * row_bytes + replicas * unique * 2 * (row_bytes + slot_bytes)
    return total


def plan_summary(engine) -> str:
    counts = Counter(p.strategy for p in engine.plan.placements.values())
    return ", ".join(f"{strategy} x{count}" for strategy, count in sorted(counts.items()))


def mesh_devices(num_devices: int) -> list:
    """n devices, an equal share from every process (all n on this one when it is alone)."""
    per_process = num_devices // jax.process_count()
    return [
        d
        for p in range(jax.process_count())
        for d in [device for device in jax.devices() if device.process_index == p][:per_process]
    ]


def measure(
    strategy: str, num_devices: int, rows: int, host: list[dict], roofline: float, args: argparse.Namespace
) -> dict:
    """Build, compile and time one configuration (its arrays are freed once it returns)."""
    cfg = make_config(strategy, num_devices, args)
    engine = build_engine(cfg, ctr_schema((rows,) * args.num_sparse, 13), devices=mesh_devices(num_devices))
    state = init_state(engine, seed=0)
    sharding = engine.batch_sharding()
    mine = distributed.process_rows(sharding, args.batch)
    batches = [distributed.global_batch({k: v[mine] for k, v in b.items()}, sharding, args.batch) for b in host]
    jax.block_until_ready((state, batches))

    tick = time.perf_counter()
    compiled = make_train_step(engine).lower(state, batches[0]).compile()
    compile_s = time.perf_counter() - tick
    memory = compiled.memory_analysis()
    comm = hlo_collective_bytes(compiled.as_text())
    holder, cycle = {"state": state}, itertools.cycle(batches)
    del state

    def call():
        holder["state"], _ = compiled(holder["state"], next(cycle))
        jax.block_until_ready(holder["state"])

    times = summarize(time_calls(call, warmup=args.warmup, repeats=args.steps))
    estimate = estimate_memory(engine.plan, args.batch, dense_bytes(engine))
    step_s = times["p50"] / 1e3
    emb_bytes = embedding_bytes_per_step(engine, host)
    record = {
        "strategy": strategy,
        "num_devices": num_devices,
        "processes": jax.process_count(),
        "rows": rows,
        "tables": args.num_sparse,
        "dim": args.dim,
        "batch": args.batch,
        "plan": plan_summary(engine),
        "mesh": list(engine.plan.mesh_shape),
        "examples_per_sec": args.batch / step_s,
        "examples_per_sec_per_device": args.batch / step_s / num_devices,
        "step_ms_p50": times["p50"],
        "step_ms_p90": times["p90"],
        "step_ms_min": times["min"],
        "n_steps": times["n"],
        "compile_s": compile_s,
        "bytes_per_device": int(
            memory.argument_size_in_bytes
            + memory.output_size_in_bytes
            - memory.alias_size_in_bytes
            + memory.temp_size_in_bytes
        ),
        "bytes_per_device_planner": int(max(estimate.peak)),
        "comm_bytes_per_step": sum(comm.values()) * num_devices,
        "comm_bytes_by_op": comm,
        "comm_bytes_planner": estimate.comm_bytes_per_step,
        "embedding_bytes_per_step": emb_bytes,
        "embedding_gbps": emb_bytes / step_s / 1e9,
        "roofline_gbps": roofline,
        "roofline_fraction": emb_bytes / step_s / 1e9 / roofline,
    }
    return record


def plot(out: Path, records: list[dict]) -> None:
    for rows in sorted({r["rows"] for r in records}):
        for key, label in (
            ("examples_per_sec_per_device", "examples/s per device"),
            ("bytes_per_device", "bytes per device (XLA)"),
        ):
            series = {}
            for strategy, processes in dict.fromkeys((r["strategy"], r["processes"]) for r in records):
                points = sorted(
                    (r["num_devices"], r[key])
                    for r in records
                    if r["strategy"] == strategy and r["processes"] == processes and r["rows"] == rows
                )
                label = strategy if processes == 1 else f"{strategy}, {processes} processes"
                series[label] = ([p[0] for p in points], [p[1] for p in points])
            plot_lines(
                out / f"{key}_rows{rows}.png",
                series,
                xlabel="devices",
                ylabel=label,
                logy=key == "bytes_per_device",
                title=f"DCN-v2, {records[0]['tables']} tables x {rows:,} rows",
            )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--devices", type=int_list, default=[1, 2, 4, 8], help="device counts, e.g. 1,2,4,8")
    parser.add_argument(
        "--processes",
        type=int_list,
        default=[1, 2],
        help="process counts; P > 1 measures the device counts divisible by P across P processes",
    )
    parser.add_argument("--rows", type=int_list, default=[10**4, 10**5], help="rows per table, e.g. 1e4,1e5")
    parser.add_argument("--num-sparse", type=int, default=26, help="categorical features (tables)")
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--cross-layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1024, help="global batch")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--num-batches", type=int, default=4, help="distinct batches cycled")
    parser.add_argument("--table-optimizer", default="rowwise_adagrad")
    parser.add_argument("--zipf-a", type=float, default=1.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--coordinator", help="host:port of process 0: run as one worker of a process group")
    parser.add_argument("--process-id", type=int, default=0, help="with --coordinator: this worker's rank")
    args = parser.parse_args(argv)
    args.strategies = args.strategies.split(",")
    unknown = set(args.strategies) - set(STRATEGIES)
    if unknown:
        parser.error(f"--strategies: unknown {sorted(unknown)}; choose from {', '.join(STRATEGIES)}")
    if min(args.processes) < 1:
        parser.error(f"--processes: counts must be >= 1, got {args.processes}")
    return args


def measure_all(args: argparse.Namespace, device_counts: list[int]) -> list[dict]:
    """Every strategy x device count x table size, in this process (and its group, if any)."""
    roofline = {n: copy_bandwidth_gbps(mesh_devices(n)) for n in device_counts}
    records = []
    for rows in args.rows:
        host = make_batches(rows, args)
        for strategy, n in itertools.product(args.strategies, device_counts):
            record = measure(strategy, n, rows, host, roofline[n], args)
            gc.collect()
            jax.clear_caches()
            records.append(record)
            if distributed.is_main():
                print(
                    f"{strategy:>13} n={n} processes={record['processes']} rows={rows:,}: "
                    f"{record['examples_per_sec_per_device']:,.0f} ex/s/device, p50 {record['step_ms_p50']:.1f} ms, "
                    f"compile {record['compile_s']:.1f} s",
                    flush=True,
                )
    return records


def group_counts(args: argparse.Namespace, processes: int) -> list[int]:
    return [n for n in args.devices if n % processes == 0]


def run_worker(args: argparse.Namespace) -> None:
    """One process of a --processes group: its records go to --out/records.json (written by rank 0)."""
    processes = args.processes[0]
    jax.config.update("jax_num_cpu_devices", max(group_counts(args, processes)) // processes)
    distributed.initialize(
        DistributedConfig(coordinator_address=args.coordinator, num_processes=processes, process_id=args.process_id)
    )
    records = measure_all(args, group_counts(args, processes))
    if distributed.is_main():
        args.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.out / "records.json", {"records": records, "machine": machine_info()})


def run_group_of(processes: int, args: argparse.Namespace, argv: list[str]) -> list[dict]:
    """Starts `processes` workers on this machine and returns their records ([] if none apply)."""
    if not group_counts(args, processes):
        print(f"--processes {processes}: no device count in {args.devices} divides evenly; skipped")
        return []
    out, port = args.out / f"processes_{processes}", free_port()
    worker = [
        sys.executable,
        "-m",
        "benchmarks.sharding",
        *argv,
        "--processes",
        str(processes),
        "--out",
        str(out),
        "--coordinator",
        f"127.0.0.1:{port}",
    ]
    status = run_group([[*worker, "--process-id", str(rank)] for rank in range(processes)], out / "launch")
    if status != 0:
        raise SystemExit(
            f"benchmarks.sharding: the {processes}-process group failed (status {status}); logs in {out / 'launch'}"
        )
    return json.loads((out / "records.json").read_text())["records"]


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.coordinator is not None:
        run_worker(args)
        return
    single = 1 in args.processes
    jax.config.update("jax_num_cpu_devices", max(args.devices) if single else 1)  # CPU only
    available = len(jax.devices())
    skipped = [n for n in args.devices if n > available] if single else []
    if skipped:
        print(f"skipping device counts {skipped}: only {available} {jax.default_backend()} devices")
    start = time.perf_counter()
    records = measure_all(args, [n for n in args.devices if n <= available]) if single else []
    roofline = {(r["processes"], r["num_devices"]): r["roofline_gbps"] for r in records}
    for processes in (p for p in args.processes if p > 1):
        group = run_group_of(processes, args, argv)
        records += group
        roofline |= {(r["processes"], r["num_devices"]): r["roofline_gbps"] for r in group}
    wall_s = time.perf_counter() - start
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    notes = (
        f"{len(records)} configurations in {wall_s:.0f} s. DCN-v2 with {args.num_sparse} tables of dim "
        f"{args.dim}, {args.cross_layers} cross layers, {args.table_optimizer} tables, global batch "
        f"{args.batch}; p50/p90 of {args.steps} steps after {args.warmup} warm-up. comm_bytes_per_step: "
        "result bytes of the compiled step's collectives x devices (dense all-reduce included); "
        "comm_bytes_planner: the planner's embedding traffic (bytes received). embedding_gbps and "
        "roofline_gbps (donated x <- x + 1 on the same devices): see benchmarks/sharding.py. "
        "processes > 1: the same devices split over local processes (gloo on loopback on CPU)."
    )
    write_results(
        args.out,
        records,
        machine_info(),
        title="Sharding strategies: DCN-v2 on synthetic Zipf data",
        columns=COLUMNS,
        notes=notes,
        extra={
            "settings": settings,
            "wall_s": wall_s,
            "roofline_gbps": {f"{n}" if p == 1 else f"{n}x{p}proc": v for (p, n), v in roofline.items()},
        },
    )
    plot(args.out, records)
    print(f"wrote {args.out / 'results.json'} ({wall_s:.0f} s)")


if __name__ == "__main__":
    main()
