"""Weak scaling: does a device's embedding traffic and memory stay flat as the mesh grows?

Per-device batch fixed (--per-device examples); for each device count N on a (1, N) mesh, each
model and each strategy, the real train step is lowered and compiled on abstract inputs
(nothing allocated) and read:
- xla_received_bytes: bytes one device receives per normal step, from the compiled HLO
  (jaxrec.sharding.hlo: ring formulas; a while loop's body once, a conditional's update branch);
- planner_received_bytes: the planner's estimate of the same (jaxrec.sharding.memory);
- ideal_bytes: keys out, rows back, keys + gradients out for every key of the device (no
  capacity slack, no dedup), plus the dense gradients' all-reduce;
- temp_bytes: XLA's temporary bytes per device.
Overflow rates are simulated in numpy for Zipf (exponent --zipf) and uniform ids: the share of
batches in which some device's (owner) bucket exceeds its capacity C, so that the step takes
more than one round. Device counts in --planner-only get planner and overflow figures only.

Models: MF (2^24 users and items, dim 64, row-wise Adagrad, no biases, 4 negatives: 6 keys per
example) and DCN-v2 (26 tables of 2^20 rows, dim 16, row-wise Adagrad, 13 dense features).

A process sees the simulated CPU devices it started with, so the parent runs one child per N.

Run:   python -m benchmarks.weak_scaling --out runs/bench/weak_scaling
Smoke: python -m benchmarks.weak_scaling --out /tmp/ws --devices 8 --planner-only 16 --models mf \
           --strategies row_wise --rows-log2 14
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import int_list, machine_info, plot_lines, run_children, write_results

COLUMNS = (
    "model",
    "strategy",
    "num_devices",
    "plan",
    "xla_received_mb",
    "planner_received_mb",
    "planner_over_xla",
    "ideal_mb",
    "xla_over_ideal",
    "temp_mb",
    "overflow_zipf",
    "overflow_uniform",
    "compile_s",
)
DCN_TABLES = 26


def make_config(model: str, strategy: str, num_devices: int, args):
    from jaxrec.config import compose_config

    cfg = compose_config([f"model={model}"])
    cfg.sharding.strategy, cfg.sharding.mesh.data, cfg.sharding.mesh.model = strategy, 1, num_devices
    cfg.sharding.memory_budget_gb = 80.0
    cfg.sharding.capacity_factor = args.capacity_factor
    cfg.optimizer.name, cfg.optimizer.table_optimizer = "adagrad", "rowwise_adagrad"
    cfg.train.batch_size = args.per_device * num_devices
    if model == "mf":
        cfg.model.dim, cfg.model.use_bias = 64, False
    else:
        cfg.model.dim, cfg.model.cross_layers = 16, 3
        cfg.model.bottom_mlp, cfg.model.hidden = [64, 16], [256, 128]
    return cfg


def build(model: str, strategy: str, num_devices: int, args, devices=None):
    from jaxrec.data.ctr import ctr_schema
    from jaxrec.data.types import Schema
    from jaxrec.train_lib import build_engine

    rows = 2**args.rows_log2
    schema = Schema(rows, rows) if model == "mf" else ctr_schema([rows // 16] * DCN_TABLES, 13)
    return build_engine(make_config(model, strategy, num_devices, args), schema, devices)


def _draw(kind: str, rows: int, size, rng, zipf: float) -> np.ndarray:
    if kind == "uniform":
        return rng.integers(0, rows, size)
    ranks = rng.zipf(zipf, size) - 1
    return np.minimum(ranks, rows - 1) * 2654435761 % rows  # hot ids spread over the id space


def overflow_rate(plan, model: str, kind: str, per_device: int, zipf: float, batches: int, seed: int = 0) -> float:
    """Share of batches in which some device's unique keys for one owner exceed C (row groups)."""
    rng, n_dev = np.random.default_rng(seed), plan.num_devices
    model_axis = plan.mesh_shape[1]
    overflowed = 0
    for _ in range(batches):
        keys: dict[str, list[np.ndarray]] = {}
        for table, spec in plan.specs.items():
            ids = _draw(kind, spec.rows, (n_dev, per_device * spec.ids_per_example), rng, zipf)
            keys.setdefault(plan.placements[table].group, []).append(plan.group_keys(table, ids))
        hit = False
        for group, parts in keys.items():
            layout = plan.groups[group]
            if layout.kind != "row":
                continue
            all_keys = np.concatenate(parts, axis=1)
            capacity = plan.bucket_capacity(group, all_keys.shape[1])
            for device_keys in all_keys:
                owners = np.unique(device_keys) // layout.block_rows
                hit |= np.bincount(owners, minlength=model_axis).max() > capacity
        overflowed += hit
    return overflowed / batches


def ideal_bytes(plan, per_device: int, dense_param_bytes: int) -> float:
    """Keys out, rows back, keys and float32 gradients out, per key of the device; dense all-reduce."""
    from jaxrec.sharding.memory import dense_all_reduce_bytes

    total = 0.0
    for spec in plan.specs.values():
        total += per_device * spec.ids_per_example * (8 + spec.dim * (spec.itemsize + 4))
    return total + dense_all_reduce_bytes(plan.num_devices, dense_param_bytes)


def measure(model: str, strategy: str, num_devices: int, args, compile_step: bool) -> dict:
    from collections import Counter

    import jax

    from jaxrec.sharding.hlo import received_bytes_per_device
    from jaxrec.sharding.memory import estimate_memory
    from jaxrec.train_lib import abstract_inputs, dense_param_bytes, make_train_step

    devices = jax.devices() if compile_step else [None] * num_devices
    engine = build(model, strategy, num_devices, args, devices if compile_step else None) if compile_step else None
    plan = engine.plan if engine else _plan_only(model, strategy, num_devices, args)
    dense_params = dense_param_bytes(engine) if engine else _DENSE_CACHE.get(model, 0)
    batch = args.per_device * num_devices
    estimate = estimate_memory(plan, batch, dense_param_bytes=dense_params)
    counts = Counter(p.strategy for p in plan.placements.values())
    record = {
        "model": model,
        "strategy": strategy,
        "num_devices": num_devices,
        "per_device": args.per_device,
        "plan": ", ".join(f"{s} x{c}" for s, c in sorted(counts.items())),
        "planner_received_mb": estimate.comm_bytes_received_per_device / 1e6,
        "ideal_mb": ideal_bytes(plan, args.per_device, dense_params) / 1e6,
        "overflow_zipf": overflow_rate(plan, model, "zipf", args.per_device, args.zipf, args.batches),
        "overflow_uniform": overflow_rate(plan, model, "uniform", args.per_device, args.zipf, args.batches),
    }
    if not compile_step:
        return record
    tick = time.perf_counter()
    compiled = make_train_step(engine).lower(*abstract_inputs(engine, batch)).compile()
    xla = received_bytes_per_device(compiled.as_text())
    return record | {
        "xla_received_mb": xla / 1e6,
        "planner_over_xla": estimate.comm_bytes_received_per_device / xla,
        "xla_over_ideal": xla / 1e6 / record["ideal_mb"],
        "temp_mb": compiled.memory_analysis().temp_size_in_bytes / 1e6,
        "compile_s": time.perf_counter() - tick,
    }


_DENSE_CACHE: dict[str, int] = {}


def _plan_only(model: str, strategy: str, num_devices: int, args):
    """The plan for a device count this process cannot simulate (planner-only rows)."""
    import jax

    from jaxrec.sharding.planner import make_plan
    from jaxrec.train_lib import dense_param_bytes

    engine = build(model, strategy, 8, args, jax.devices()[:8])
    _DENSE_CACHE[model] = dense_param_bytes(engine)

    return make_plan(
        list(engine.plan.specs.values()),
        (1, num_devices),
        strategy,
        budget_bytes=80e9,
        capacity_factor=args.capacity_factor,
        batch_per_device=args.per_device,
    )


def child(num_devices: int, args) -> None:
    import jax

    compile_step = num_devices not in args.planner_only
    jax.config.update("jax_num_cpu_devices", num_devices if compile_step else 8)
    for model in args.models:
        for strategy in args.strategies:
            try:
                record = measure(model, strategy, num_devices, args, compile_step)
            except Exception as err:  # noqa: BLE001 - a failed configuration is reported, not fatal
                record = {
                    "model": model,
                    "strategy": strategy,
                    "num_devices": num_devices,
                    "error": f"{type(err).__name__}: {err}"[:500],
                }
            print("RECORD " + json.dumps(record), flush=True)


def plot(out: Path, records: list[dict]) -> None:
    for model in sorted({r["model"] for r in records}):
        series = {}
        for strategy in sorted({r["strategy"] for r in records if r["model"] == model}):
            rows = sorted(
                (r for r in records if r["model"] == model and r["strategy"] == strategy and r.get("xla_received_mb")),
                key=lambda r: r["num_devices"],
            )
            if rows:
                series[f"{strategy} (XLA)"] = ([r["num_devices"] for r in rows], [r["xla_received_mb"] for r in rows])
        planned = sorted(
            (r for r in records if r["model"] == model and r["strategy"] == "row_wise" and "planner_received_mb" in r),
            key=lambda r: r["num_devices"],
        )
        if planned:
            series["row_wise (planner)"] = (
                [r["num_devices"] for r in planned],
                [r["planner_received_mb"] for r in planned],
            )
            series["ideal"] = ([r["num_devices"] for r in planned], [r["ideal_mb"] for r in planned])
        plot_lines(
            out / f"bytes_{model}.png",
            series,
            xlabel="devices",
            ylabel="MB received per device per step",
            title=f"{model}: weak scaling, fixed batch per device",
            logx=True,
            logy=True,
        )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--devices", type=int_list, default=[8, 16, 32, 64])
    parser.add_argument("--planner-only", type=int_list, default=[128, 256])
    parser.add_argument("--models", type=lambda t: t.split(","), default=["mf", "dcn_v2"])
    parser.add_argument("--strategies", type=lambda t: t.split(","), default=["row_wise", "table_wise", "auto"])
    parser.add_argument("--per-device", type=int, default=1024, help="examples per device")
    parser.add_argument("--rows-log2", type=int, default=24, help="MF rows per table; DCN-v2 tables get 1/16")
    parser.add_argument("--capacity-factor", type=float, default=1.5)
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of the skewed ids")
    parser.add_argument("--batches", type=int, default=20, help="simulated batches per overflow rate")
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
    records = run_children("benchmarks.weak_scaling", flags, [*args.devices, *args.planner_only])
    wall_s = time.perf_counter() - start
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "child"}
    notes = (
        f"{len(records)} configurations in {wall_s:.0f} s, one process per device count, nothing allocated; "
        f"{args.per_device} examples per device, capacity_factor {args.capacity_factor}, Zipf exponent "
        f"{args.zipf}, {args.batches} simulated batches per overflow rate. MB = 10^6 bytes received per "
        "device per normal step (jaxrec.sharding.hlo). See benchmarks/weak_scaling.py for the conventions."
    )
    write_results(
        args.out,
        records,
        machine_info(),
        title="Weak scaling of the sharded embedding engine",
        columns=COLUMNS,
        extra={"settings": settings, "wall_s": wall_s},
        notes=notes,
    )
    plot(args.out, records)
    print(f"wrote {args.out / 'results.json'} ({wall_s:.0f} s)")


if __name__ == "__main__":
    main()
