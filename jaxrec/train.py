"""Hydra entry point: compose the config, make it typed, run.

python -m jaxrec.train model.dim=128 optimizer.lr=1e-3
python -m jaxrec.train -m optimizer.lr=1e-3,1e-2 train.batch_size=256,1024
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from jaxrec.config import (
    CONF_DIR,
    CTR_DATA,
    Config,
    accept_table_overrides,
    check_command_line,
    check_run_dir_entries,
    register_configs,
    simulate_cpu_devices,
    to_config,
)
from jaxrec.errors import JaxrecError, cli_errors
from jaxrec.progress import FAILURE_FILE, quiet_backend_probe, stop_live_bar, write_json_atomic

log = logging.getLogger("jaxrec.train")


# This process's multirun jobs: how many ran and which failed (job numbers), and the sweep dir.
SWEEP = {"jobs": 0, "failed": [], "dir": None}


def keep_sweeping(job):
    """In a multirun, a failing job writes its reason to failure.json in its dir and returns None
    (the Optuna sweeper records that as a failed trial; NaN would crash it), so the other jobs
    still run; the sweep then ends with a count of them (report_failed_jobs). Ctrl-C and SIGTERM
    still stop the sweep; JAXREC_DEBUG=1 re-raises."""

    @functools.wraps(job)
    def wrapped(dict_cfg: DictConfig):
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode != RunMode.MULTIRUN or os.environ.get("JAXREC_DEBUG") == "1":
            return job(dict_cfg)
        SWEEP["jobs"] += 1
        SWEEP["dir"] = str(hydra_cfg.sweep.dir)
        try:
            return job(dict_cfg)
        except Exception as err:
            SWEEP["failed"].append(hydra_cfg.job.num)
            stop_live_bar()
            job_dir = Path(hydra_cfg.runtime.output_dir)
            job_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(
                job_dir / FAILURE_FILE,
                {
                    "error": type(err).__name__,
                    "reason": str(err),
                    "overrides": list(hydra_cfg.overrides.task),
                    "traceback": traceback.format_exc(),
                },
            )
            log.error("job %s failed, the sweep goes on: %s: %s", hydra_cfg.job.num, type(err).__name__, err)
            return None

    return wrapped


def report_failed_jobs() -> None:
    """A sweep with failed jobs ends non-zero (1), with one line that counts them."""
    if SWEEP["failed"]:
        numbers = ", ".join(map(str, SWEEP["failed"][:10])) + (", ..." if len(SWEEP["failed"]) > 10 else "")
        print(
            f"jaxrec: error: {len(SWEEP['failed'])} of {SWEEP['jobs']} sweep jobs failed (jobs {numbers}; each "
            f"job dir's {FAILURE_FILE} says why; python -m jaxrec.report {SWEEP['dir']} lists them)",
            file=sys.stderr,
        )
        sys.exit(1)


def check_table_names(cfg: Config) -> None:
    """sharding.tables names checked against the model's tables before any data loads (the plan
    checks them again once it is made). An id-only model's table names follow from its config,
    so a one-user, one-item schema names them when the data's size is known only once it is read;
    tables from side features or CTR fields are left to the plan."""
    from jaxrec.data.dataset import data_schema
    from jaxrec.data.types import Schema
    from jaxrec.models import make_model, reads_side_features
    from jaxrec.sharding.planner import check_table_overrides
    from jaxrec.train_lib import candidates_per_example

    if not cfg.sharding.tables or reads_side_features(cfg.model):
        return
    try:
        schema = data_schema(cfg.data)
    except JaxrecError:
        if isinstance(cfg.data, CTR_DATA):
            return
        schema = Schema(num_users=1, num_items=1)
    try:
        names = [spec.name for spec in make_model(cfg.model, schema).tables("sgd", 1.0, candidates_per_example(cfg))]
    except Exception:  # a stand-in schema this model cannot take: the plan checks after loading
        return
    check_table_overrides(cfg.sharding.tables, names)


register_configs()
quiet_backend_probe()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
@cli_errors
@keep_sweeping
def train_job(dict_cfg: DictConfig) -> float | None:
    """One run (a multirun's job); returns the validation value of train.select_metric, the
    objective of Hydra sweepers."""
    cfg = to_config(dict_cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    check_run_dir_entries(run_dir)
    simulate_cpu_devices(cfg)
    from jaxrec import distributed, runner

    distributed.initialize(cfg.train.distributed)
    check_table_names(cfg)
    results = runner.run(cfg, run_dir)
    log.info("results: %s", json.dumps(results["metrics"], sort_keys=True))
    log.info("run dir: %s", run_dir)
    return results["valid_metrics"].get(cfg.train.select_metric)


def main() -> None:
    """The command line (python -m jaxrec.train and the jaxrec-train script): the README's
    override spellings, every job's config checked before Hydra starts, then the run or sweep."""
    accept_table_overrides()
    cli_errors(check_command_line)(sys.argv[1:])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    train_job()
    report_failed_jobs()


if __name__ == "__main__":
    main()
