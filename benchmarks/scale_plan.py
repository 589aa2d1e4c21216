"""How would DLRM-style models of 10^9 .. 10^11 parameters be placed on 8 .. 256 devices?

Nothing is allocated: for each parameter count x device count it builds the DCN-v2 engine
(sharding=auto), asks the planner for its choice, per-device bytes and communication, and
lowers the real train step on abstract inputs (ShapeDtypeStructs) to read XLA's per-device
memory and the collectives of the compiled program.

The model follows MLPerf's DLRM-DCNv2 (Criteo 1TB): 26 tables of dim 128 with MLPerf's
vocabulary sizes, the tables of 10^6 rows or more scaled so the embeddings hold the requested
parameters; 13 dense features through a 512-256-128 bottom MLP, 3 full-rank cross layers over
D = 128 + 26 x 128 = 3456 (MLPerf uses low-rank ones), a 1024-1024-512-256 top MLP; Adagrad for
the dense parameters, row-wise Adagrad for the tables; global batch 65,536. The memory budget
(--budget-gb, default 80: an 80 GB accelerator) steers `auto` and decides `fits`.

A process sees the number of simulated CPU devices it started with, so the parent runs one child
process per device count (`--child N`, with jax_num_cpu_devices = N) and gathers their records.
bytes_per_device_xla: argument + output - alias + temp of the compiled step (as jaxrec.plan);
received_per_device_xla: bytes one device receives in a step, read from the compiled HLO by
jaxrec.sharding.hlo (the one accounting jaxrec.plan and benchmarks.weak_scaling use), the dense
gradients' all-reduce included; received_per_device_planner: the planner's estimate of the same.

Run:   python -m benchmarks.scale_plan --out runs/bench/scale_plan
Smoke: python -m benchmarks.scale_plan --out /tmp/p --params 1e6 --devices 8 --dim 8 --batch 64 --small \
           --tables 4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

from benchmarks.common import machine_info, run_children, write_results

# MLPerf DLRM-DCNv2 on Criteo 1TB: rows per table (ids hashed to at most 40M).
MLPERF_VOCABS = (
    40_000_000,
    39_060,
    17_295,
    7_424,
    20_265,
    3,
    7_122,
    1_543,
    63,
    40_000_000,
    3_067_956,
    405_282,
    10,
    2_209,
    11_938,
    155,
    4,
    976,
    14,
    40_000_000,
    40_000_000,
    40_000_000,
    590_152,
    12_973,
    108,
    36,
)
LARGE = 10**6  # tables at least this large are scaled with the parameter count
COLUMNS = (
    "params",
    "num_devices",
    "plan",
    "largest_table_rows",
    "bytes_per_device_planner",
    "bytes_per_device_xla",
    "planner_over_xla",
    "fits",
    "received_per_device_planner",
    "received_per_device_xla",
    "compile_s",
)


def vocab_sizes(params: float, dim: int, small: bool = False, tables: int = 26) -> tuple[int, ...]:
    """The first `tables` of MLPerf's vocabularies with the large ones scaled so that
    sum(rows) x dim = params (the small ones are kept, or all scaled with --small for toy sizes)."""
    rows, vocabs = params / dim, MLPERF_VOCABS[:tables]
    if small:
        scale = rows / sum(vocabs)
        return tuple(max(1, round(v * scale)) for v in vocabs)
    fixed = sum(v for v in vocabs if v < LARGE)
    scale = (rows - fixed) / sum(v for v in vocabs if v >= LARGE)
    if scale <= 0:
        raise SystemExit(f"--params {params:g} is below the small tables' {fixed * dim:,} parameters; use --small")
    return tuple(round(v * scale) if v >= LARGE else v for v in vocabs)


def make_config(num_devices: int, args: argparse.Namespace):
    from jaxrec.config import compose_config

    cfg = compose_config(["model=dcn_v2"])
    cfg.model.dim, cfg.model.cross_layers = args.dim, 3
    cfg.model.bottom_mlp = [512, 256, args.dim] if not args.small else [8, args.dim]
    cfg.model.hidden = [1024, 1024, 512, 256] if not args.small else [8]
    cfg.optimizer.name, cfg.optimizer.table_optimizer = "adagrad", "rowwise_adagrad"
    cfg.sharding.strategy, cfg.sharding.mesh.data, cfg.sharding.mesh.model = "auto", 1, num_devices
    cfg.sharding.memory_budget_gb = args.budget_gb
    cfg.train.batch_size = args.batch
    return cfg


def plan_one(params: float, num_devices: int, args: argparse.Namespace) -> dict:
    """Planner numbers, then XLA's, for one model on this process's `num_devices` devices."""
    import jax

    from jaxrec.data.ctr import ctr_schema
    from jaxrec.sharding.hlo import received_bytes_per_device
    from jaxrec.sharding.memory import estimate_memory
    from jaxrec.train_lib import abstract_inputs, build_engine, dense_bytes, dense_param_bytes, make_train_step

    vocabs = vocab_sizes(params, args.dim, args.small, args.tables)
    engine = build_engine(make_config(num_devices, args), ctr_schema(vocabs, 13))
    dense = dense_bytes(engine)
    estimate = estimate_memory(engine.plan, args.batch, dense, dense_param_bytes=dense_param_bytes(engine))
    peak = max(estimate.peak)
    counts = Counter(p.strategy for p in engine.plan.placements.values())
    record = {
        "params": params,
        "embedding_params": sum(vocabs) * args.dim,
        "dense_params": sum(x.size for x in jax.tree.leaves(engine.abstract_state.params)),
        "num_devices": num_devices,
        "batch": args.batch,
        "dim": args.dim,
        "budget_gb": args.budget_gb,
        "plan": ", ".join(f"{s} x{c}" for s, c in sorted(counts.items())),
        "largest_table_rows": max(vocabs),
        "bytes_per_device_planner": int(peak),
        "fits": peak <= args.budget_gb * 1e9,
        "received_per_device_planner": estimate.comm_bytes_received_per_device,
        "bytes_per_device_xla": None,
        "planner_over_xla": None,
        "received_per_device_xla": None,
        "compile_s": None,
    }
    if params > args.xla_max_params:
        return record | {"xla_skipped": f"params > --xla-max-params {args.xla_max_params:g}"}
    tick = time.perf_counter()
    compiled = make_train_step(engine).lower(*abstract_inputs(engine, args.batch)).compile()
    stats = compiled.memory_analysis()
    xla = int(
        stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes + stats.temp_size_in_bytes
    )
    return record | {
        "bytes_per_device_xla": xla,
        "planner_over_xla": peak / xla,
        "received_per_device_xla": received_bytes_per_device(compiled.as_text()),
        "compile_s": time.perf_counter() - tick,
    }


def child(num_devices: int, args: argparse.Namespace) -> None:
    """One JSON record per line on stdout, for every requested parameter count."""
    import jax

    jax.config.update("jax_num_cpu_devices", num_devices)
    for params in args.params:
        try:
            record = plan_one(params, num_devices, args)
        except Exception as err:  # noqa: BLE001 - a failed configuration is reported, not fatal
            record = {"params": params, "num_devices": num_devices, "error": f"{type(err).__name__}: {err}"[:500]}
        print("RECORD " + json.dumps(record), flush=True)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--params", type=_floats, default=[1e9, 1e10, 1e11], help="embedding parameters")
    parser.add_argument("--devices", type=lambda t: [int(x) for x in t.split(",")], default=[8, 64, 256])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--batch", type=int, default=65_536, help="global batch")
    parser.add_argument("--budget-gb", type=float, default=80.0, help="memory per device")
    parser.add_argument("--xla-max-params", type=float, default=float("inf"), help="skip XLA above this")
    parser.add_argument("--small", action="store_true", help="toy sizes: scale every table, tiny MLPs")
    parser.add_argument("--tables", type=int, default=26, help="the first N of MLPerf's tables (toy runs)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is None and args.out is None:
        parser.error("--out is required")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child is not None:
        return child(args.child, args)
    start = time.perf_counter()
    flags = list(argv if argv is not None else sys.argv[1:])
    records = run_children("benchmarks.scale_plan", flags, args.devices, expected=len(args.params))
    wall_s = time.perf_counter() - start
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "child"}
    notes = (
        f"{len(records)} configurations in {wall_s:.0f} s, one process per device count, nothing allocated. "
        f"sharding=auto, memory budget {args.budget_gb:g} GB per device, global batch {args.batch}, dim "
        f"{args.dim}; see benchmarks/scale_plan.py for the model and the conventions."
    )
    write_results(
        args.out,
        records,
        machine_info(),
        title="Planning DLRM-style DCN-v2 at scale (abstract lowering)",
        columns=COLUMNS,
        extra={"settings": settings, "wall_s": wall_s},
        notes=notes,
    )
    print(f"wrote {args.out / 'results.json'} ({wall_s:.0f} s)")


if __name__ == "__main__":
    main()
