"""Does the sparse train step cost O(batch) as the item table grows, and what does dense cost?

On one device (sharding strategy none) it times the MF train step with the item table at each
row count, for the sparse row optimisers (lazy_adam, rowwise_adagrad: only touched rows and
their slots move) and for the dense baseline (optimizer.sparse=false: a table-shaped gradient
and optax adam over every row). For each row count the configurations run one after another in
the same process, so their ratios are measured side by side; each is freed before the next.

The user table stays at --users rows (10^4) so that only the item vocabulary varies: the user
and item tables share one stacked array (same dim and optimiser), and growing both would double
memory (the dense 10^7 case would need ~13 GB) without answering a different question.

In-place check, three ways: the device buffer pointer of every table-sized state array (tables,
slots, dense Adam moments) before and after one step (`in_place`); the compiled step's temporary
memory (`temp_bytes`, which must not grow with rows); and the table-sized instructions of the
compiled HLO's entry computation other than parameters and scatters (`hlo_table_ops`, with
`hlo_table_copies` counting `copy`), which must be 0 for an O(batch) step.

Run:  python -m benchmarks.vocab_scaling --out runs/bench/vocab_scaling
Legend: V rows of the stacked table (users + items), B batch, C candidates per example.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import re
import sys
import time
from pathlib import Path

import jax
import numpy as np

from benchmarks.common import machine_info, plot_lines, summarize, time_calls, write_results
from jaxrec.config import Config, compose_config
from jaxrec.data.types import Schema
from jaxrec.train_lib import build_engine, candidates_per_example, init_state, make_train_step

UPDATES = {  # label -> (optimizer.sparse, table optimiser)
    "sparse/lazy_adam": (True, "lazy_adam"),
    "sparse/rowwise_adagrad": (True, "rowwise_adagrad"),
    "dense/adam": (False, "adam"),
}
SPARSE_GOAL, DENSE_GOAL = "sparse/lazy_adam", "dense/adam"
MAX_SPARSE_GROWTH = 2.0  # target: sparse step at the largest size within 2x of the smallest
MIN_DENSE_OVER_SPARSE = 10.0  # target: sparse >= 10x faster than dense Adam at the largest size
COLUMNS = (
    "rows",
    "dim",
    "batch",
    "update",
    "optimizer",
    "step_ms_p50",
    "step_ms_p90",
    "n_steps",
    "compile_s",
    "in_place",
    "temp_bytes",
    "table_bytes",
    "hlo_table_ops",
    "hlo_table_copies",
    "over_smallest",
    "dense_over_this",
)
_INSTR = re.compile(r"^\s*(?:ROOT )?%(\S+) = \w+\[(\d+)(?:,\d+)*\]\{[^}]*\} ([\w-]+)\((.*)$")


def make_config(dim: int, update: str) -> Config:
    sparse, optimizer = UPDATES[update]
    cfg = compose_config([])
    cfg.model.dim = dim
    cfg.optimizer.name = "adam"
    cfg.optimizer.sparse = sparse
    cfg.optimizer.table_optimizer = optimizer if sparse else None
    cfg.sharding.strategy = "none"
    return cfg


def make_batches(
    rng: np.random.Generator, num_users: int, num_items: int, batch: int, candidates: int, count: int
) -> list[dict[str, np.ndarray]]:
    """Uniform random users and items (the least cache-friendly ids); label 1 on candidate 0."""
    label_bc = np.zeros((batch, candidates), np.float32)
    label_bc[:, 0] = 1.0
    return [
        {
            "user": rng.integers(0, num_users, (batch, 1), dtype=np.int32),
            "item": rng.integers(0, num_items, (batch, candidates), dtype=np.int32),
            "label": label_bc,
        }
        for _ in range(count)
    ]


def table_sized(state, group_rows: int) -> list[jax.Array]:
    """State arrays with one row per stacked-table row: tables, slots, dense optimiser moments."""
    return [x for x in jax.tree.leaves(state) if x.ndim >= 1 and x.shape[0] == group_rows]


def hlo_table_ops(hlo_text: str, group_rows: int) -> dict[str, int]:
    """Table-sized instructions of every computation (the update runs inside a `conditional`
    branch), by opcode, other than parameters, tuple plumbing and the in-place scatters
    (`wrapped_scatter` fusions): each one is O(rows) work per step."""
    counts: dict[str, int] = {}
    for line in hlo_text.splitlines():
        match = _INSTR.match(line)
        if not match or int(match.group(2)) != group_rows:
            continue
        name, opcode, rest = match.group(1), match.group(3), match.group(4)
        if opcode in ("parameter", "bitcast", "get-tuple-element", "tuple", "scatter"):
            continue
        if opcode == "fusion" and ("scatter" in name or "calls=%wrapped_scatter" in rest):
            continue
        counts[opcode] = counts.get(opcode, 0) + 1
    return counts


def measure(rows: int, update: str, args: argparse.Namespace) -> dict:
    """Build, compile and time one configuration; everything it allocates is freed on return."""
    cfg = make_config(args.dim, update)
    engine = build_engine(cfg, Schema(args.users, rows), devices=jax.devices()[:1])
    group_rows = args.users + rows
    state = init_state(engine, seed=0)
    step = make_train_step(engine)
    rng = np.random.default_rng(args.seed)
    host = make_batches(rng, args.users, rows, args.batch, candidates_per_example(cfg), args.num_batches)
    batches = [jax.device_put(b, engine.batch_sharding()) for b in host]
    jax.block_until_ready((state, batches))

    tick = time.perf_counter()
    compiled = step.lower(state, batches[0]).compile()
    compile_s = time.perf_counter() - tick
    memory = compiled.memory_analysis()
    ops = hlo_table_ops(compiled.as_text(), group_rows)

    before = [x.unsafe_buffer_pointer() for x in table_sized(state, group_rows)]
    state, _ = compiled(state, batches[0])
    jax.block_until_ready(state)
    after = [x.unsafe_buffer_pointer() for x in table_sized(state, group_rows)]

    holder, cycle = {"state": state, "step": compiled}, itertools.cycle(batches)
    del state

    def call():
        holder["state"], _ = holder["step"](holder["state"], next(cycle))
        jax.block_until_ready(holder["state"])

    times = summarize(time_calls(call, warmup=args.warmup, repeats=args.repeats, max_seconds=args.max_seconds))
    table_bytes = sum(x.nbytes for x in table_sized(holder["state"], group_rows))
    sparse, optimizer = UPDATES[update]
    record = {
        "rows": rows,
        "users": args.users,
        "dim": args.dim,
        "batch": args.batch,
        "update": "sparse" if sparse else "dense",
        "optimizer": optimizer,
        "label": update,
        "step_ms_p50": times["p50"],
        "step_ms_p90": times["p90"],
        "step_ms_min": times["min"],
        "n_steps": times["n"],
        "compile_s": compile_s,
        "in_place": bool(before) and before == after,
        "in_place_buffers": f"{sum(a == b for a, b in zip(before, after))}/{len(before)}",
        "temp_bytes": int(memory.temp_size_in_bytes) if memory else None,
        "alias_bytes": int(memory.alias_size_in_bytes) if memory else None,
        "table_bytes": int(table_bytes),
        "hlo_table_ops": sum(ops.values()),
        "hlo_table_ops_by_opcode": ops,
        "hlo_table_copies": ops.get("copy", 0),
        "unique_items_per_batch": float(np.mean([np.unique(b["item"]).size for b in host])),
    }
    holder.clear()  # the state and the executable, before the caches are cleared
    del compiled, step, engine, batches
    gc.collect()
    jax.clear_caches()
    return record


def add_ratios(records: list[dict]) -> None:
    """over_smallest: p50 / p50 of the same update at the smallest rows; dense_over_this: dense
    p50 / this p50 at the same rows (the speed-up of a sparse update over dense Adam)."""
    smallest = min(r["rows"] for r in records)
    base = {r["label"]: r["step_ms_p50"] for r in records if r["rows"] == smallest}
    dense = {r["rows"]: r["step_ms_p50"] for r in records if r["label"] == DENSE_GOAL}
    for r in records:
        r["over_smallest"] = r["step_ms_p50"] / base[r["label"]] if r["label"] in base else None
        sparse_with_dense = r["rows"] in dense and r["update"] == "sparse"
        r["dense_over_this"] = dense[r["rows"]] / r["step_ms_p50"] if sparse_with_dense else None


def compute_goals(records: list[dict]) -> dict:
    small, large = min(r["rows"] for r in records), max(r["rows"] for r in records)
    p50 = {(r["label"], r["rows"]): r["step_ms_p50"] for r in records}

    def ratio(a, b):
        return p50[a] / p50[b] if a in p50 and b in p50 else None

    growth = ratio((SPARSE_GOAL, large), (SPARSE_GOAL, small))
    speedup = ratio((DENSE_GOAL, large), (SPARSE_GOAL, large))
    standard = (small, large) == (10**4, 10**7)
    return {
        "rows_small": small,
        "rows_large": large,
        "sparse_1e7_over_1e4": growth if standard else None,
        "dense_over_sparse_at_1e7": speedup if large == 10**7 else None,
        "sparse_large_over_small": growth,
        "dense_over_sparse_at_large": speedup,
        "rowwise_adagrad_large_over_small": ratio(("sparse/rowwise_adagrad", large), ("sparse/rowwise_adagrad", small)),
        "dense_over_rowwise_adagrad_at_large": ratio((DENSE_GOAL, large), ("sparse/rowwise_adagrad", large)),
        "targets": {
            "sparse_large_over_small_at_most": MAX_SPARSE_GROWTH,
            "dense_over_sparse_at_least": MIN_DENSE_OVER_SPARSE,
        },
        "met": {
            "sparse_growth": growth is not None and growth <= MAX_SPARSE_GROWTH,
            "dense_over_sparse": speedup is not None and speedup >= MIN_DENSE_OVER_SPARSE,
        },
        "all_sparse_in_place": all(r["in_place"] for r in records if r["update"] == "sparse"),
    }


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def notes(goals: dict, args: argparse.Namespace) -> str:
    return "\n".join(
        [
            f"Sparse ({SPARSE_GOAL}) step at {goals['rows_large']:.0e} rows / at {goals['rows_small']:.0e} rows: "
            f"{_fmt(goals['sparse_large_over_small'])} (target <= {MAX_SPARSE_GROWTH}; "
            f"met: {goals['met']['sparse_growth']}).",
            "",
            f"Dense Adam / sparse {SPARSE_GOAL} at {goals['rows_large']:.0e} rows: "
            f"{_fmt(goals['dense_over_sparse_at_large'])} (target >= {MIN_DENSE_OVER_SPARSE}; "
            f"met: {goals['met']['dense_over_sparse']}).",
            "",
            f"rowwise_adagrad: large/small {_fmt(goals['rowwise_adagrad_large_over_small'])}, "
            f"dense/rowwise at large {_fmt(goals['dense_over_rowwise_adagrad_at_large'])}. "
            f"All sparse updates in place: {goals['all_sparse_in_place']}.",
            "",
            f"Step times are medians of up to {args.repeats} steps after {args.warmup} warm-up steps "
            f"(at most ~{args.max_seconds:.0f} s of timing per configuration); rows = item table rows, user table "
            f"{args.users} rows; {args.num_batches} distinct random batches cycled.",
        ]
    )


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for results.json, results.md, PNG")
    parser.add_argument("--rows", default="1e4,1e5,1e6,1e7", help="comma-separated item table row counts")
    parser.add_argument("--users", type=int, default=10_000, help="user table rows (fixed)")
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=30, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compilation")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="stop timing a config after this (>= 3 steps)")
    parser.add_argument("--num-batches", type=int, default=8, help="distinct random batches, cycled")
    parser.add_argument("--updates", default=",".join(UPDATES), help=f"comma-separated subset of {list(UPDATES)}")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.rows = [int(float(x)) for x in args.rows.split(",")]
    args.updates = args.updates.split(",")
    unknown = set(args.updates) - set(UPDATES)
    if unknown:
        parser.error(f"--updates: unknown {sorted(unknown)}; choose from {list(UPDATES)}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    records = []
    for rows in args.rows:
        for update in args.updates:
            record = measure(rows, update, args)
            _progress(
                f"rows={rows:<9d} {update:<23s} p50 {record['step_ms_p50']:9.2f} ms  "
                f"p90 {record['step_ms_p90']:9.2f} ms  compile {record['compile_s']:5.1f} s  "
                f"in_place={record['in_place']} temp={record['temp_bytes']} "
                f"hlo_ops={record['hlo_table_ops_by_opcode']}"
            )
            records.append(record)
    add_ratios(records)
    goals = compute_goals(records)
    write_results(
        args.out,
        records,
        machine_info(),
        title="Vocabulary scaling: train step time vs item table rows",
        columns=COLUMNS,
        extra={"goals": goals, "args": {k: v for k, v in vars(args).items() if k != "out"}},
        notes=notes(goals, args),
    )
    series = {
        u: ([r["rows"] for r in records if r["label"] == u], [r["step_ms_p50"] for r in records if r["label"] == u])
        for u in args.updates
    }
    plot_lines(
        args.out / "step_ms_vs_rows.png",
        series,
        xlabel="item table rows",
        ylabel="train step ms (median)",
        title=f"MF train step, dim {args.dim}, batch {args.batch}, one {jax.default_backend()} device",
        logx=True,
        logy=True,
    )
    _progress(f"goals: {goals}")
    return {"records": records, "goals": goals}


if __name__ == "__main__":
    main(sys.argv[1:])
