"""Evaluate a saved checkpoint without training.

    python -m jaxrec.evaluate <run_dir> [--step N] [--part test|valid]

Uses the config saved in the checkpoint; with sharding.num_devices-style simulation off, it runs
on the devices present, whatever plan the run was trained with (checkpoints are plan-independent).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jaxrec.errors import cli_errors


def evaluate_checkpoint(run_dir: Path, step: int | None = None, part: str = "test") -> dict:
    from jaxrec.restore import restore_run
    from jaxrec.train_lib import make_evaluator

    _, dataset, engine, state, step = restore_run(run_dir, step)
    return {"step": step, "part": part, "metrics": make_evaluator(engine, dataset)(state, part)}


@cli_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--part", choices=("test", "valid"), default="test")
    args = parser.parse_args(argv)
    print(json.dumps(evaluate_checkpoint(args.run_dir, args.step, args.part), indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
