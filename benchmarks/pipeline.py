"""Does the input pipeline ever limit training? Grain examples/s next to the train step's.

For each of jaxrec's three training pipelines, at a couple of batch sizes, on one device:

- pairs: MF with 4 sampled negatives on ml-100k (`model=mf`, jaxrec/data/pipeline.py);
- sequences: SASRec on ml-100k (`model=sasrec`: max_len 50, 100 shared negatives a sequence,
  jaxrec/data/sequences.py);
- ctr: DCN-v2 on criteo_synthetic (`experiment=dcn_v2_criteo`, jaxrec/data/ctr.py).

Rates in examples/s (an example is one batch row: a (user, positive) pair with its negatives,
one user's sequence, one click example):

- `pipeline`: the real iterator, `make_train_dataset(...).to_iter_dataset()` with Grain's
  default read options (16 threads, 500 batches prefetched), iterated alone: each window is a
  fresh iterator over its own --pipeline-batches batches, timed from its creation to its last
  batch (start-up included; timing windows of one long-lived iterator would instead count the
  batches its threads prepared while the first one was awaited);
- `pipeline_sync`: the same batches read one by one in this thread (`loader[k]`): the CPU cost
  of a batch without Grain's threads;
- `step`: the jitted train step alone (state donated, warm), on device batches prepared in
  advance from the same pipeline and cycled;
- `loop`: both together as runner.run does: next(iterator) -> device_put -> step.

`ratio` = pipeline / step: above 1 the input can feed the step. On a CPU the two share the same
cores, so `loop_over_step` (loop / step) says what the real loop keeps. Step and loop rates are
batch x --window / the median of --windows windows of --window steps after --warmup untimed
ones; the step's first call (compilation) is `compile_s`.

Run:  python -m benchmarks.pipeline --out runs/bench/pipeline
Toy:  python -m benchmarks.pipeline --out /tmp/pipeline --toy          (seconds; tiny data and models)
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

from benchmarks.common import int_list, machine_info, plot_lines, summarize, write_results
from benchmarks.peers import init_state_jit
from jaxrec.config import compose_config
from jaxrec.data.dataset import load_dataset
from jaxrec.data.pipeline import make_train_dataset
from jaxrec.train_lib import build_engine, candidates_per_example, make_train_step

# name -> (config overrides, batch sizes, toy overrides, toy batch sizes, what an example is)
PIPELINES = {
    "pairs": (
        ["model=mf"],
        (1024, 4096),
        ["data=synthetic", "data.num_users=300", "data.num_items=200", "data.num_interactions=6000", "model.dim=8"],
        (128,),
        "(user, positive) + 4 sampled negatives",
    ),
    "sequences": (
        ["model=sasrec"],
        (128, 256),
        [
            "data=synthetic",
            "data.num_users=300",
            "data.num_items=200",
            "data.num_interactions=6000",
            "model.dim=8",
            "model.max_len=10",
            "model.num_layers=1",
            "data.num_negatives=5",
        ],
        (32,),
        "one user's sequence (max_len positions)",
    ),
    "ctr": (
        ["experiment=dcn_v2_criteo"],
        (1024, 4096),
        [
            "data.num_examples=3000",
            "data.num_sparse=4",
            "data.vocab_size=100",
            "model.dim=4",
            "model.bottom_mlp=[8,4]",
            "model.hidden=[8]",
            "model.cross_layers=1",
        ],
        (64,),
        "one click example",
    ),
}
COLUMNS = (
    "pipeline",
    "model",
    "batch",
    "pipeline_examples_per_sec",
    "pipeline_sync_examples_per_sec",
    "step_examples_per_sec",
    "loop_examples_per_sec",
    "ratio",
    "loop_over_step",
    "pipeline_ms_per_batch",
    "step_ms_p50",
    "compile_s",
)


def window_seconds(call, *, warmup: int, windows: int, window: int) -> list[float]:
    """Seconds of each of `windows` timed windows of `window` calls, after `warmup` calls;
    `call(n)` does n units of work and returns once they are done."""
    call(warmup)
    out = []
    for _ in range(windows):
        tick = time.perf_counter()
        call(window)
        out.append(time.perf_counter() - tick)
    return out


class _Steps:
    """The jitted train step on a donated state, run n times; returns once the work is done."""

    def __init__(self, engine, seed: int):
        self.state, self.step_fn = init_state_jit(engine, seed), make_train_step(engine)
        self.sharding = engine.batch_sharding()

    def run(self, batches) -> None:
        for batch in batches:
            self.state, _ = self.step_fn(self.state, batch)
        jax.block_until_ready(self.state)


def make_loader(engine, cfg, dataset, batch: int, steps: int):
    """The model's real training pipeline, with at least `steps` batches."""
    kwargs = dict(
        num_negatives=candidates_per_example(cfg) - 1, loss=cfg.model.loss, batch_size=batch, seed=cfg.train.data_seed
    )
    _, per_epoch = make_train_dataset(engine.model, dataset, epochs=1, **kwargs)
    loader, _ = make_train_dataset(engine.model, dataset, epochs=-(-steps // per_epoch), **kwargs)
    return loader


def measure(name: str, overrides: list[str], batch: int, args: argparse.Namespace) -> dict:
    cfg = compose_config(overrides + [f"train.batch_size={batch}"])
    dataset = load_dataset(cfg.data)
    engine = build_engine(cfg, dataset.schema, devices=jax.devices()[:1])
    needed = args.warmup + args.windows * args.window
    loader = make_loader(engine, cfg, dataset, batch, max(needed, args.windows * args.pipeline_batches))
    steps = _Steps(engine, cfg.train.seed)
    timing = {"windows": args.windows, "window": args.window, "warmup": args.warmup}

    # The step alone, on batches prepared in advance (read synchronously: no Grain threads running).
    device = itertools.cycle(
        [jax.device_put(loader[k], steps.sharding) for k in range(min(args.num_batches, len(loader)))]
    )
    tick = time.perf_counter()
    steps.run([next(device)])
    compile_s = time.perf_counter() - tick
    step_s = window_seconds(lambda n: steps.run(itertools.islice(device, n)), **timing)

    # The pipeline alone, each window a fresh iterator over its own --pipeline-batches batches,
    # timed from its creation to its last batch: start-up included, and no batches prepared
    # ahead of the clock (16 threads run ahead while the first batch is awaited).
    pipe_s = []
    for w in range(args.windows):
        tick = time.perf_counter()
        for _ in loader[w * args.pipeline_batches : (w + 1) * args.pipeline_batches].to_iter_dataset():
            pass
        pipe_s.append(time.perf_counter() - tick)

    index = itertools.count()
    sync_s = window_seconds(
        lambda n: [loader[next(index) % len(loader)] for _ in range(n)],
        warmup=1,
        windows=args.windows,
        window=args.pipeline_batches,
    )

    # Both, as runner.run does.
    feed = iter(loader[:needed].to_iter_dataset())
    loop_s = window_seconds(lambda n: steps.run(jax.device_put(next(feed), steps.sharding) for _ in range(n)), **timing)
    rate = {
        key: batch * n / float(np.median(s))
        for key, s, n in (
            ("pipeline", pipe_s, args.pipeline_batches),
            ("pipeline_sync", sync_s, args.pipeline_batches),
            ("step", step_s, args.window),
            ("loop", loop_s, args.window),
        )
    }
    return {
        "pipeline": name,
        "model": cfg.model.name,
        "data": cfg.data.name,
        "batch": batch,
        "example": PIPELINES[name][4],
        "config": " ".join(overrides),
        "pipeline_examples_per_sec": rate["pipeline"],
        "pipeline_sync_examples_per_sec": rate["pipeline_sync"],
        "step_examples_per_sec": rate["step"],
        "loop_examples_per_sec": rate["loop"],
        "ratio": rate["pipeline"] / rate["step"],
        "loop_over_step": rate["loop"] / rate["step"],
        "pipeline_ms_per_batch": 1e3 * float(np.median(pipe_s)) / args.pipeline_batches,
        "step_ms_p50": 1e3 * float(np.median(step_s)) / args.window,
        "compile_s": compile_s,
        "window_s": {
            "pipeline": summarize(pipe_s),
            "pipeline_sync": summarize(sync_s),
            "step": summarize(step_s),
            "loop": summarize(loop_s),
        },
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for results.json, results.md, PNG")
    parser.add_argument("--toy", action="store_true", help="tiny data and models, one batch size (a smoke test)")
    parser.add_argument("--pipelines", default=",".join(PIPELINES), help=f"comma-separated subset of {list(PIPELINES)}")
    parser.add_argument(
        "--batches", type=int_list, default=None, help="batch sizes for every pipeline (default: each its own)"
    )
    parser.add_argument("--windows", type=int, default=None, help="timed windows per rate (default 5; toy 2)")
    parser.add_argument("--window", type=int, default=None, help="batches (steps) per window (default 10; toy 2)")
    parser.add_argument(
        "--pipeline-batches",
        type=int,
        default=None,
        help="batches per pipeline window, each a fresh iterator (default 100; toy 4)",
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before the step and loop windows")
    parser.add_argument("--num-batches", type=int, default=4, help="distinct device batches cycled by the step alone")
    args = parser.parse_args(argv)
    args.pipelines = args.pipelines.split(",")
    if set(args.pipelines) - set(PIPELINES):
        unknown = sorted(set(args.pipelines) - set(PIPELINES))
        parser.error(f"--pipelines: unknown {unknown}; choose from {list(PIPELINES)}")
    args.windows = args.windows or (2 if args.toy else 5)
    args.window = args.window or (2 if args.toy else 10)
    args.pipeline_batches = args.pipeline_batches or (4 if args.toy else 100)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    start, load_start, records = time.perf_counter(), os.getloadavg(), []
    for name in args.pipelines:
        overrides, batches, toy_overrides, toy_batches, _ = PIPELINES[name]
        overrides = overrides + (toy_overrides if args.toy else [])
        for batch in args.batches or (toy_batches if args.toy else batches):
            record = measure(name, overrides, batch, args)
            gc.collect()  # the configuration's arrays and compiled step, before the next one
            jax.clear_caches()
            records.append(record)
            print(
                f"{name:>9} batch {batch:>5}: pipeline {record['pipeline_examples_per_sec']:>10,.0f} ex/s, "
                f"step {record['step_examples_per_sec']:>9,.0f}, loop {record['loop_examples_per_sec']:>9,.0f} "
                f"(pipeline/step {record['ratio']:.2f}, compile {record['compile_s']:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
    wall_s = time.perf_counter() - start
    machine = machine_info() | {"loadavg_start": list(load_start), "loadavg_end": list(os.getloadavg())}
    notes = __doc__.split("\n\n", 1)[1].split("Run:")[0] + f"\n{len(records)} configurations in {wall_s:.0f} s."
    write_results(
        args.out,
        records,
        machine,
        title="Input pipeline vs train step (examples/s, one device)",
        columns=COLUMNS,
        notes=notes,
        extra={"wall_s": wall_s, "args": {k: v for k, v in vars(args).items() if k != "out"}},
    )
    series = {
        name: (
            [r["batch"] for r in records if r["pipeline"] == name],
            [r["ratio"] for r in records if r["pipeline"] == name],
        )
        for name in args.pipelines
    }
    plot_lines(
        args.out / "pipeline_over_step.png",
        series,
        xlabel="batch",
        ylabel="pipeline / step examples/s",
        title="Can the input pipeline feed the train step? (> 1: yes)",
        logx=True,
        logy=True,
    )
    print(f"wrote {args.out / 'results.json'} ({wall_s:.0f} s)", file=sys.stderr)
    return {"records": records, "wall_s": wall_s}


if __name__ == "__main__":
    main(sys.argv[1:])
