"""Experiment arms run from Python, laid out as `python -m jaxrec.train -m` lays out a multirun, so
one `python -m jaxrec.report <sweep dir>` reads both.

An arm is a file conf/experiment/<experiment>/<arm>.yaml, selected as `experiment=<experiment>/<arm>`;
its grid is its `hydra.sweeper.params`. Job i of the arm lives in <sweep dir>/<experiment>/<arm>/<i>/
(the arm files' hydra.sweep.subdir) and holds `.hydra/overrides.yaml`, the overrides that rerun it
alone, and `results.json`. The two-stage experiments (ml100k_rating, ncf_vs_mf) and the peer runner
(experiments/peers.py) use this; everything else is a plain Hydra multirun.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import yaml

from jaxrec.config import compose_conf, compose_config
from jaxrec.progress import quiet_backend_probe


def sweep_params(overrides: list[str]) -> dict[str, str]:
    """The composed config's hydra.sweeper.params (an arm's grid), {} if it has none."""
    cfg = compose_conf(overrides, with_hydra=True)
    return {str(k): str(v) for k, v in (cfg.hydra.sweeper.get("params") or {}).items()}


def grid(overrides: list[str], params: dict[str, str] | None = None) -> list[list[str]]:
    """Every job's overrides: the arm's grid with `overrides` after it, an override of a swept key
    replacing that axis (a sweep such as data.fold=0,1 adds one): Hydra's basic sweeper's rule.
    `params` is the arm's grid when the caller already read it."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    if params is None:  # the grid depends on the chosen options only (experiment=, data=, ...)
        choices = [
            o.input_line
            for o in parser.parse_overrides(list(overrides))
            if not o.is_sweep_override() and "." not in o.key_or_group
        ]
        params = sweep_params(choices)
    parsed = parser.parse_overrides([f"{k}={v}" for k, v in params.items()] + list(overrides))
    return BasicSweeper.split_arguments(parsed, None)[0]


def arm_name(overrides: list[str]) -> str:
    """The experiment=<experiment>/<arm> choice among the overrides."""
    choices = [o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")]
    if not choices:
        raise ValueError(f"no experiment=<experiment>/<arm> among the overrides {overrides}")
    return choices[-1]


def write_job_overrides(job_dir: Path, overrides: list[str]) -> None:
    """`.hydra/overrides.yaml`, as Hydra writes it: what jaxrec.report reads and prints to rerun the job."""
    (job_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))


def run_arm(sweep_dir: Path, overrides: list[str], subdir: str | None = None) -> list[tuple[Path, dict]]:
    """Every job of the arm through jaxrec.runner.run, one after another in this process (so the
    data set loads once): [(job dir, results)]. `subdir` replaces the arm's name in the job dirs
    (a second stage of the same arm)."""
    from jaxrec import runner

    jobs = []
    for index, job in enumerate(grid(overrides)):
        job_dir = Path(sweep_dir) / (subdir or arm_name(job)) / str(index)
        write_job_overrides(job_dir, job)
        jobs.append((job_dir, runner.run(compose_config(job), job_dir)))
    return jobs


def read_job_overrides(job_dir: Path) -> list[str]:
    return yaml.safe_load((Path(job_dir) / ".hydra" / "overrides.yaml").read_text())


def select(jobs: list[tuple[Path, dict]], metric: str) -> tuple[Path, dict]:
    """The job with the best VALIDATION value of `metric` (rmse, mae, logloss: lowest)."""
    from jaxrec.runner import LOWER_IS_BETTER

    sign = 1.0 if metric in LOWER_IS_BETTER else -1.0

    def key(job):
        value = job[1].get("valid_metrics", {}).get(metric)
        return sign * value if isinstance(value, (int, float)) and math.isfinite(value) else math.inf

    best = min(jobs, key=key)
    if key(best) == math.inf:
        raise ValueError(f"no job has a finite validation {metric}")
    return best


def two_stage_main(
    prog: str,
    description: str,
    run_experiment: Callable[[Path, Sequence[str]], dict],
    argv: Sequence[str] | None = None,
) -> None:
    """The command line of a two-stage experiment: overrides for every arm and --sweep-dir; runs it
    and prints the report it wrote."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("overrides", nargs="*", help="overrides applied to every arm")
    parser.add_argument("--sweep-dir", type=Path, default=Path("multirun") / time.strftime("%Y-%m-%d/%H-%M-%S"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    quiet_backend_probe()
    written = run_experiment(args.sweep_dir, args.overrides)
    print(written["md"].read_text())
