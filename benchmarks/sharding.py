"""What does each sharding strategy cost per device as the mesh grows, for a DLRM-style model?

For each strategy x device count x table size it trains DCN-v2 (26 tables of `rows` rows each,
13 dense features) on synthetic Zipf data (jaxrec.data.ctr) and records throughput, the
compiled step's memory per device, the bytes its collectives move, and how fast it reads and
writes embedding rows against the memory bandwidth measured in the same run.

One process started with max(--devices) devices (CPU devices are simulated with
jax_num_cpu_devices); each configuration builds its engine on the first n of them
(`build_engine(devices=jax.devices()[:n])`). Data-parallel uses the mesh data x model = n x 1,
the others 1 x n (conf/sharding/*.yaml).

Conventions:
- step times: medians (p50, p90) of --steps timed steps after --warmup untimed ones, cycling
  --num-batches distinct batches; `compile_s` is the compilation alone.
- bytes_per_device: XLA's memory analysis of the compiled step (argument + output - alias + temp).
- comm_bytes_per_step: the result bytes of every collective in the compiled HLO of one device
  (benchmarks.common.hlo_collective_bytes) times the device count: what the collectives write
  in one step, all devices together. It includes the all-reduce of the dense gradients.
  `comm_bytes_planner` is the planner's estimate of the embedding traffic alone (bytes received).
- embedding_gbps: embedding bytes per step / p50 step time, where a step reads each unique row
  it looks up once and reads and writes each updated row and its optimiser slots on every
  replica (data-parallel tables: n replicas): sum over tables of
  U * row + replicas * U * 2 * (row + slots), U = unique ids of the table in the batch.
- roofline_gbps: a donated x <- x + 1 over 256 MB on the same n devices, read + write
  (benchmarks.common.copy_bandwidth_gbps), measured once per device count in this run.
Simulated CPU devices share the host's cores and memory: on CPU, examples/s/device falls with
n by construction; the comparison between strategies at one n is the informative part.

Run:   python -m benchmarks.sharding --out runs/bench/sharding          (~10 min on 2 CPU cores)
Smoke: python -m benchmarks.sharding --out /tmp/s --strategies row_wise,auto --devices 2 \\
           --rows 200 --num-sparse 4 --dim 4 --batch 32 --steps 2 --warmup 1
Legend: S categorical features (tables), V rows per table, B global batch, n devices.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import time
from collections import Counter
from pathlib import Path

import jax
import numpy as np

from benchmarks.common import (
    copy_bandwidth_gbps, hlo_collective_bytes, machine_info, plot_lines, summarize, time_calls, write_results,
)
from jaxrec.config import Config
from jaxrec.data.ctr import CtrPart, batch_inputs, ctr_schema, generate_ctr
from jaxrec.embedding.optimizers import ROW_OPTIMIZERS
from jaxrec.sharding.memory import estimate_memory
from jaxrec.train_lib import build_engine, dense_bytes, init_state, make_train_step

STRATEGIES = ("data_parallel", "table_wise", "row_wise", "column_wise", "auto")
COLUMNS = ("strategy", "num_devices", "rows", "plan", "examples_per_sec", "examples_per_sec_per_device",
           "step_ms_p50", "step_ms_p90", "compile_s", "bytes_per_device", "comm_bytes_per_step",
           "comm_bytes_planner", "embedding_gbps", "roofline_gbps")


def make_config(strategy: str, num_devices: int, args: argparse.Namespace) -> Config:
    cfg = Config()
    cfg.model.name, cfg.model.dim, cfg.model.cross_layers = "dcn_v2", args.dim, args.cross_layers
    cfg.model.bottom_mlp, cfg.model.hidden = [64, args.dim], [64]
    cfg.optimizer.name, cfg.optimizer.table_optimizer = "adam", args.table_optimizer
    cfg.sharding.strategy = strategy
    mesh = (num_devices, 1) if strategy == "data_parallel" else (1, num_devices)
    cfg.sharding.mesh.data, cfg.sharding.mesh.model = mesh
    return cfg


def make_batches(rows: int, args: argparse.Namespace) -> list[dict[str, np.ndarray]]:
    dense, sparse, label, _ = generate_ctr(args.batch * args.num_batches, (rows,) * args.num_sparse, 13,
                                           seed=args.seed, zipf_a=args.zipf_a)
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


def measure(strategy: str, num_devices: int, rows: int, host: list[dict], roofline: float,
            args: argparse.Namespace) -> dict:
    """Build, compile and time one configuration (its arrays are freed once it returns)."""
    cfg = make_config(strategy, num_devices, args)
    engine = build_engine(cfg, ctr_schema((rows,) * args.num_sparse, 13), devices=jax.devices()[:num_devices])
    state = init_state(engine, seed=0)
    batches = [jax.device_put(b, engine.batch_sharding()) for b in host]
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
        "strategy": strategy, "num_devices": num_devices, "rows": rows, "tables": args.num_sparse,
        "dim": args.dim, "batch": args.batch, "plan": plan_summary(engine),
        "mesh": list(engine.plan.mesh_shape),
        "examples_per_sec": args.batch / step_s, "examples_per_sec_per_device": args.batch / step_s / num_devices,
        "step_ms_p50": times["p50"], "step_ms_p90": times["p90"], "step_ms_min": times["min"],
        "n_steps": times["n"], "compile_s": compile_s,
        "bytes_per_device": int(memory.argument_size_in_bytes + memory.output_size_in_bytes
                                - memory.alias_size_in_bytes + memory.temp_size_in_bytes),
        "bytes_per_device_planner": int(max(estimate.peak)),
        "comm_bytes_per_step": sum(comm.values()) * num_devices, "comm_bytes_by_op": comm,
        "comm_bytes_planner": estimate.comm_bytes_per_step,
        "embedding_bytes_per_step": emb_bytes, "embedding_gbps": emb_bytes / step_s / 1e9,
        "roofline_gbps": roofline, "roofline_fraction": emb_bytes / step_s / 1e9 / roofline,
    }
    return record


def plot(out: Path, records: list[dict]) -> None:
    for rows in sorted({r["rows"] for r in records}):
        for key, label in (("examples_per_sec_per_device", "examples/s per device"),
                           ("bytes_per_device", "bytes per device (XLA)")):
            series = {}
            for strategy in dict.fromkeys(r["strategy"] for r in records):
                points = sorted((r["num_devices"], r[key]) for r in records if r["strategy"] == strategy
                                and r["rows"] == rows)
                series[strategy] = ([p[0] for p in points], [p[1] for p in points])
            plot_lines(out / f"{key}_rows{rows}.png", series, xlabel="devices", ylabel=label,
                       logy=key == "bytes_per_device", title=f"DCN-v2, {records[0]['tables']} tables x {rows:,} rows")


def _ints(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",")]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--devices", type=_ints, default=[1, 2, 4, 8], help="device counts, e.g. 1,2,4,8")
    parser.add_argument("--rows", type=_ints, default=[10**4, 10**5], help="rows per table, e.g. 1e4,1e5")
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
    args = parser.parse_args(argv)
    args.strategies = args.strategies.split(",")
    unknown = set(args.strategies) - set(STRATEGIES)
    if unknown:
        parser.error(f"--strategies: unknown {sorted(unknown)}; choose from {', '.join(STRATEGIES)}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    jax.config.update("jax_num_cpu_devices", max(args.devices))  # CPU only; accelerators are real devices
    available = len(jax.devices())
    skipped = [n for n in args.devices if n > available]
    devices = [n for n in args.devices if n <= available]
    if skipped:
        print(f"skipping device counts {skipped}: only {available} {jax.default_backend()} devices")
    start, records = time.perf_counter(), []
    roofline = {n: copy_bandwidth_gbps(jax.devices()[:n]) for n in devices}
    for rows in args.rows:
        host = make_batches(rows, args)
        for strategy, n in itertools.product(args.strategies, devices):
            record = measure(strategy, n, rows, host, roofline[n], args)
            gc.collect()
            jax.clear_caches()
            records.append(record)
            print(f"{strategy:>13} n={n} rows={rows:,}: {record['examples_per_sec_per_device']:,.0f} ex/s/device, "
                  f"p50 {record['step_ms_p50']:.1f} ms, compile {record['compile_s']:.1f} s", flush=True)
    wall_s = time.perf_counter() - start
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    notes = (f"{len(records)} configurations in {wall_s:.0f} s. DCN-v2 with {args.num_sparse} tables of dim "
             f"{args.dim}, {args.cross_layers} cross layers, {args.table_optimizer} tables, global batch "
             f"{args.batch}; p50/p90 of {args.steps} steps after {args.warmup} warm-up. comm_bytes_per_step: "
             "result bytes of the compiled step's collectives x devices (dense all-reduce included); "
             "comm_bytes_planner: the planner's embedding traffic (bytes received). embedding_gbps and "
             "roofline_gbps (donated x <- x + 1 on the same devices): see benchmarks/sharding.py.")
    write_results(args.out, records, machine_info(), title="Sharding strategies: DCN-v2 on synthetic Zipf data",
                  columns=COLUMNS, extra={"settings": settings, "wall_s": wall_s, "roofline_gbps": roofline},
                  notes=notes)
    plot(args.out, records)
    print(f"wrote {args.out / 'results.json'} ({wall_s:.0f} s)")


if __name__ == "__main__":
    main()
