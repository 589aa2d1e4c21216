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
    accept_table_overrides,
    check_command_line,
    register_configs,
    simulate_cpu_devices,
    to_config,
)
from jaxrec.errors import cli_errors
from jaxrec.progress import FAILURE_FILE, quiet_backend_probe, stop_live_bar, write_json_atomic

log = logging.getLogger("jaxrec.train")


def keep_sweeping(job):
    """In a multirun, a failing job writes its reason to failure.json in its dir and returns None
    (the Optuna sweeper records that as a failed trial; NaN would crash it), so the other jobs
    still run. Ctrl-C and SIGTERM still stop the sweep; JAXREC_DEBUG=1 re-raises."""

    @functools.wraps(job)
    def wrapped(dict_cfg: DictConfig):
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode != RunMode.MULTIRUN or os.environ.get("JAXREC_DEBUG") == "1":
            return job(dict_cfg)
        try:
            return job(dict_cfg)
        except Exception as err:
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


register_configs()
quiet_backend_probe()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
@cli_errors
@keep_sweeping
def main(dict_cfg: DictConfig) -> float | None:
    """Returns the validation value of train.select_metric, the objective of Hydra sweepers."""
    cfg = to_config(dict_cfg)
    simulate_cpu_devices(cfg)
    from jaxrec import distributed, runner

    distributed.initialize(cfg.train.distributed)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    results = runner.run(cfg, run_dir)
    log.info("results: %s", json.dumps(results["metrics"], sort_keys=True))
    log.info("run dir: %s", run_dir)
    return results["valid_metrics"].get(cfg.train.select_metric)


if __name__ == "__main__":
    accept_table_overrides()
    cli_errors(check_command_line)(sys.argv[1:])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
