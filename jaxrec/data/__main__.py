"""Data command line.

python -m jaxrec.data fetch ml-100k [--data-dir DIR]
    prints the folder that holds the data set, so scripts can use `$(python -m jaxrec.data fetch ...)`
python -m jaxrec.data prepare criteo FILE_OR_DIR... --out DIR [--min-count N | --hash-buckets N] [--workers K]
    Criteo click logs (.txt or .gz) to memory-mapped shards and metadata.json (jaxrec/data/criteo/prepare.py)
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from pathlib import Path

from jaxrec.data.fetch import DATASETS, default_data_dir, fetch
from jaxrec.errors import JaxrecError, cli_errors


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jaxrec.data")
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_cmd = commands.add_parser("fetch", help="download a MovieLens data set into the cache")
    fetch_cmd.add_argument("name", help=f"one of {', '.join(DATASETS)}")
    fetch_cmd.add_argument("--data-dir", type=Path, default=None,
                           help=f"cache folder (default: {default_data_dir()})")  # fmt: skip
    _add_prepare(commands)
    return parser


def _add_prepare(commands) -> None:
    from jaxrec.data.criteo.prepare import STAGES

    prep = commands.add_parser("prepare", help="Criteo click logs to memory-mapped shards for data=criteo")
    prep.add_argument("dataset", choices=["criteo"])
    prep.add_argument("inputs", nargs="+", help="train.txt, day_N files (.gz too), or folders holding them")
    prep.add_argument("--out", type=Path, required=True, help="output folder (rerun with it to resume)")
    vocab = prep.add_mutually_exclusive_group()
    vocab.add_argument(
        "--min-count",
        type=int,
        default=None,
        help="keep categories seen >= N times in train; rarer and missing share id 0 (default 1)",
    )
    vocab.add_argument("--hash-buckets", type=int, default=None, help="id = 1 + value mod (N - 1); missing 0")
    prep.add_argument(
        "--split",
        choices=["days", "random"],
        default="days",
        help="days: last day halved into test then valid (DLRM, MLPerf); random: by --seed",
    )
    prep.add_argument("--seed", type=int, default=0, help="--split random: seed of the line hash")
    prep.add_argument("--valid-ratio", type=float, default=0.1, help="--split random: share of valid lines")
    prep.add_argument("--test-ratio", type=float, default=0.1, help="--split random: share of test lines")
    prep.add_argument(
        "--on-bad-line",
        choices=["error", "skip"],
        default="error",
        help="a malformed line stops with file:line (error) or is counted and skipped",
    )
    prep.add_argument("--workers", type=int, default=1, help="processes working on pieces at once")
    prep.add_argument("--piece-mb", type=float, default=256, help="MiB of text per piece (one shard per split)")
    prep.add_argument("--stage", choices=STAGES, default="all", help="one pass only (job arrays); all: the rest")
    prep.add_argument(
        "--task-index",
        type=int,
        default=int(os.environ.get("SLURM_ARRAY_TASK_ID", 0)),
        help="with --num-tasks: run every num-tasks-th task from this one (default $SLURM_ARRAY_TASK_ID)",
    )
    prep.add_argument(
        "--num-tasks",
        type=int,
        default=int(os.environ.get("SLURM_ARRAY_TASK_COUNT", 1)),
        help="tasks sharing the pass (default $SLURM_ARRAY_TASK_COUNT or 1)",
    )


MIN_PIECE_MB = 0.01  # smaller pieces only add per-piece overhead (a piece is one shard per split)
MAX_HASH_BUCKETS = 2**31  # ids are int32


def _prepare_options(args) -> dict:
    """Every prepare argument checked before any work starts (one line each), as the options dict
    that plan.json and metadata.json record."""
    if args.hash_buckets is not None and not 2 <= args.hash_buckets <= MAX_HASH_BUCKETS:
        raise JaxrecError(
            f"--hash-buckets {args.hash_buckets}: need 2 .. {MAX_HASH_BUCKETS} (id 0 is missing; ids are int32)"
        )
    if args.min_count is not None and args.min_count < 1:
        raise JaxrecError(f"--min-count {args.min_count}: need at least 1 (1 keeps every value seen in train)")
    if not (math.isfinite(args.piece_mb) and args.piece_mb >= MIN_PIECE_MB):
        raise JaxrecError(f"--piece-mb {args.piece_mb}: must be a finite number of MiB >= {MIN_PIECE_MB}")
    if args.workers < 1:
        raise JaxrecError(f"--workers {args.workers}: must be at least 1")
    if not 0 <= args.seed < 2**63:
        raise JaxrecError(f"--seed {args.seed}: must be in 0 .. 2**63 - 1")
    if args.split == "random" and not (
        0 <= args.valid_ratio and 0 <= args.test_ratio and args.valid_ratio + args.test_ratio < 1
    ):
        raise JaxrecError(
            f"--valid-ratio {args.valid_ratio} --test-ratio {args.test_ratio}: need shares >= 0 "
            "that leave some train lines"
        )
    if not 0 <= args.task_index < args.num_tasks:
        raise JaxrecError(f"--task-index {args.task_index} is not in 0 .. --num-tasks - 1 ({args.num_tasks - 1})")
    random = args.split == "random"
    return {
        "min_count": None if args.hash_buckets is not None else (1 if args.min_count is None else args.min_count),
        "hash_buckets": args.hash_buckets,
        "split": args.split,
        "seed": args.seed if random else None,
        "valid_ratio": args.valid_ratio if random else None,
        "test_ratio": args.test_ratio if random else None,
        "on_bad_line": args.on_bad_line,
        "piece_mb": args.piece_mb,
    }


def _prepare(args) -> None:
    from jaxrec.data.criteo.prepare import prepare

    options = _prepare_options(args)
    metadata = prepare(
        args.inputs,
        args.out,
        options,
        workers=args.workers,
        stage=args.stage,
        task_index=args.task_index,
        num_tasks=args.num_tasks,
    )
    print(args.out / "metadata.json" if metadata else f"{args.stage}: done")


@cli_errors
def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "prepare":
        _prepare(args)
    else:
        print(fetch(args.name, args.data_dir))


if __name__ == "__main__":
    main()
