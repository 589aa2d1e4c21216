"""How fast does `python -m jaxrec.data prepare criteo` run, in how much memory, and can the
prepared shards feed DCN-v2?

On generated files in the exact Criteo format (jaxrec/data/criteo/fake_logs.py, about 255
bytes a line, vocabularies up to --vocab values per feature), for each --lines:

- `prepare`: the command run as a child process with --workers 1 and 2 (default options:
  --min-count 1, the 7-day split; --piece-mb 64 so that even 10^6 lines make 4 pieces), timed
  from start to exit. `mb_per_s` is MB of TSV per second of wall time; `speedup` is the
  1-worker time over this row's; `cpu_s` the CPU seconds (user + system) of the command and its
  workers: equal CPU at 1 and 2 workers means no work is repeated, so on two idle cores the
  speedup is bounded by how evenly the pieces split. `peak_rss_mb` is the largest sum of
  resident memory over the command's process tree (sampled every 0.1 s with psutil);
  `largest_process_mb` the largest single process (same samples), and `vocab_mb` the bytes of
  the kept vocabularies, which every encode worker holds.
- `pipeline`: the data=criteo training pipeline (block shuffle, memory-mapped shards) read
  synchronously in a fresh child process at --batch rows a batch: examples/s over
  --pipeline-batches batches (median of 3 windows; `examples_per_cpu_sec` over the process's CPU
  time instead of wall time, the rate on a core of its own), for a whole batch (one process) and for
  half of it (one of 2 processes: rows gathered per process halve), with the child's peak
  anonymous and file-backed resident memory (file pages are the shards' page cache).
- `step` (with --step, first --lines only): DCN-v2's train step at --batch on one device via
  benchmarks.pipeline.measure, so pipeline/step says whether the input keeps up.

The machine's 2 cores are shared with other jobs while this runs: wall times and the 1 -> 2
worker speedup move with their load (recorded as loadavg).

Run:  python -m benchmarks.criteo_prepare --out runs/bench/criteo_prepare --lines 1000000,10000000 --step
Toy:  python -m benchmarks.criteo_prepare --out /tmp/criteo_prepare --lines 20000 --batch 512
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

from benchmarks.common import int_list, machine_info, write_results

COLUMNS = (
    "lines",
    "what",
    "workers",
    "rows",
    "seconds",
    "cpu_s",
    "mb_per_s",
    "speedup",
    "peak_rss_mb",
    "largest_process_mb",
    "vocab_mb",
    "examples_per_sec",
    "examples_per_cpu_sec",
    "anon_rss_mb",
    "file_rss_mb",
)


def run_prepare(logs: Path, out: Path, workers: int, piece_mb: float) -> dict:
    """Wall time and memory of one prepare, run as a child process."""
    shutil.rmtree(out, ignore_errors=True)
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    tick = time.perf_counter()
    child = psutil.Popen(
        [
            sys.executable,
            "-m",
            "jaxrec.data",
            "prepare",
            "criteo",
            str(logs),
            "--out",
            str(out),
            "--workers",
            str(workers),
            "--piece-mb",
            str(piece_mb),
        ],
        stdout=subprocess.DEVNULL,
    )
    peak = largest = 0
    while child.poll() is None:
        try:
            rss = [p.memory_info().rss for p in (child, *child.children(recursive=True))]
            peak, largest = max(peak, sum(rss)), max(largest, *rss)
        except psutil.Error:
            pass
        time.sleep(0.1)
    seconds = time.perf_counter() - tick
    if child.returncode:
        raise SystemExit(f"prepare failed with exit code {child.returncode}")
    vocab = sum(p.stat().st_size for p in (out / "vocab").glob("*.npy"))
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = sum(getattr(cpu_after, k) - getattr(cpu_before, k) for k in ("ru_utime", "ru_stime"))
    return {
        "seconds": seconds,
        "cpu_s": cpu_s,
        "mb_per_s": logs.stat().st_size / 1e6 / seconds,
        "peak_rss_mb": peak / 1e6,
        "largest_process_mb": largest / 1e6,
        "vocab_mb": vocab / 1e6,
    }


def pipeline_child(folder: str, batch: int, batches: int) -> None:
    """In a fresh process: examples/s of the CTR pipeline for a whole and a half batch; prints JSON."""
    from jaxrec.config import CriteoConfig
    from jaxrec.data.criteo.shards import load_criteo_dataset
    from jaxrec.data.ctr import make_ctr_dataset

    dataset = load_criteo_dataset(CriteoConfig(path=folder))
    result = {}
    for name, rows in (("whole", slice(0, batch)), ("half", slice(0, batch // 2))):
        loader = make_ctr_dataset(dataset, batch_size=batch, epochs=1, seed=0, rows=rows)
        loader[0]
        windows, cpu = [], []
        for w in range(3):
            tick, cpu_tick = time.perf_counter(), time.process_time()
            for k in range(batches):
                loader[(1 + w * batches + k) % len(loader)]
            windows.append(time.perf_counter() - tick)
            cpu.append(time.process_time() - cpu_tick)
        result[name] = (rows.stop - rows.start) * batches / float(np.median(windows))
        result[f"{name}_cpu"] = (rows.stop - rows.start) * batches / float(np.median(cpu))
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    kb = {key: int(status[key].split()[0]) for key in ("VmHWM", "RssAnon", "RssFile")}
    print(
        json.dumps(
            result
            | {"anon_rss_mb": kb["RssAnon"] / 1e3, "file_rss_mb": kb["RssFile"] / 1e3, "peak_rss_mb": kb["VmHWM"] / 1e3}
        )
    )


def measure_pipeline(folder: Path, batch: int, batches: int) -> dict:
    code = f"from benchmarks.criteo_prepare import pipeline_child; pipeline_child({str(folder)!r}, {batch}, {batches})"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure_step(folder: Path, batch: int) -> dict:
    from benchmarks.pipeline import measure

    args = argparse.Namespace(windows=3, window=5, warmup=2, pipeline_batches=20, num_batches=4)
    return measure("ctr", ["model=dcn_v2", "data=criteo", f"data.path={folder}", "optimizer=adam"], batch, args)


def measure_lines(num_lines: int, args: argparse.Namespace) -> list[dict]:
    from jaxrec.data.criteo.fake_logs import write_fake_logs

    logs = args.data_dir / f"criteo-{num_lines}.txt"
    if not logs.exists():
        tick = time.perf_counter()
        write_fake_logs(logs.with_suffix(".tmp"), num_lines, seed=0, vocab=args.vocab)
        logs.with_suffix(".tmp").rename(logs)
        print(
            f"generated {logs} ({logs.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - tick:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    records = []
    for workers in args.workers:
        record = {"lines": num_lines, "what": "prepare", "workers": workers, "mb": logs.stat().st_size / 1e6}
        record |= run_prepare(logs, args.data_dir / f"prepared-{num_lines}-w{workers}", workers, args.piece_mb)
        record["speedup"] = records[0]["seconds"] / record["seconds"] if records else 1.0
        records.append(record)
        print(
            f"{num_lines:>9} lines, {workers} workers: {record['seconds']:.1f} s, {record['mb_per_s']:.1f} MB/s, "
            f"peak {record['peak_rss_mb']:.0f} MB",
            file=sys.stderr,
            flush=True,
        )
    folder = args.data_dir / f"prepared-{num_lines}-w{args.workers[0]}"
    meta = json.loads((folder / "metadata.json").read_text())
    pipe = measure_pipeline(folder, args.batch, args.pipeline_batches)
    for name, rows in (("whole", args.batch), ("half", args.batch // 2)):
        records.append(
            {
                "lines": num_lines,
                "what": f"pipeline ({name} batch)",
                "rows": rows,
                "examples_per_sec": pipe[name],
                "examples_per_cpu_sec": pipe[f"{name}_cpu"],
                "anon_rss_mb": pipe["anon_rss_mb"],
                "file_rss_mb": pipe["file_rss_mb"],
                "peak_rss_mb": pipe["peak_rss_mb"],
                "vocab_sizes": meta["vocab_sizes"],
            }
        )
    print(
        f"{num_lines:>9} lines: pipeline {pipe['whole']:,.0f} ex/s (half batch {pipe['half']:,.0f})",
        file=sys.stderr,
        flush=True,
    )
    if args.step and num_lines == args.lines[0]:
        step = measure_step(folder, args.batch)
        records.append(
            {
                "lines": num_lines,
                "what": "DCN-v2 step (1 device)",
                "rows": args.batch,
                "examples_per_sec": step["step_examples_per_sec"],
                "detail": step,
            }
        )
    return records


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for results.json and results.md")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("/tmp/jaxrec-criteo-bench"),
        help="generated logs and prepared folders (kept: reruns reuse the logs)",
    )
    parser.add_argument("--lines", type=int_list, default=[1_000_000, 10_000_000], help="file sizes in lines")
    parser.add_argument("--workers", type=int_list, default=[1, 2], help="prepare --workers to compare")
    parser.add_argument("--piece-mb", type=float, default=64, help="prepare --piece-mb (pieces run in parallel)")
    parser.add_argument("--vocab", type=int, default=100_000, help="largest per-feature vocabulary of the fake logs")
    parser.add_argument("--batch", type=int, default=8192, help="rows per training batch")
    parser.add_argument("--pipeline-batches", type=int, default=50, help="batches per timed pipeline window")
    parser.add_argument("--step", action="store_true", help="also time DCN-v2's train step (first --lines)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    load_start, records = os.getloadavg(), []
    for num_lines in args.lines:
        records += measure_lines(num_lines, args)
    machine = machine_info() | {"loadavg_start": list(load_start), "loadavg_end": list(os.getloadavg())}
    write_results(
        args.out,
        records,
        machine,
        title="Criteo prepare and the data=criteo pipeline",
        columns=COLUMNS,
        notes=__doc__.split("\n\n", 1)[1].split("Run:")[0],
        extra={"args": {k: str(v) for k, v in vars(args).items()}},
    )


if __name__ == "__main__":
    main()
