"""Hydra entry point: compose the config, make it typed, run.

    python -m jaxrec.train model.dim=128 optimizer.lr=1e-3
    python -m jaxrec.train -m optimizer.lr=1e-3,1e-2 train.batch_size=256,1024
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from jaxrec.config import CONF_DIR, register_configs, simulate_cpu_devices, to_config
from jaxrec.errors import cli_errors
from jaxrec.progress import write_json_atomic

log = logging.getLogger("jaxrec.train")


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_run_info(run_dir: Path) -> None:
    import jax

    info = {"git_sha": git_sha(), "jax": jax.__version__, "python": platform.python_version(),
            "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()]}
    write_json_atomic(run_dir / "run_info.json", info)


register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
@cli_errors
def main(dict_cfg: DictConfig) -> float | None:
    """Returns the validation value of train.select_metric, the objective of Hydra sweepers."""
    cfg = to_config(dict_cfg)
    simulate_cpu_devices(cfg)
    from jaxrec import distributed, runner

    distributed.initialize(cfg.train.distributed)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if distributed.is_main():
        write_run_info(run_dir)
    results = runner.run(cfg, run_dir)
    log.info("results: %s", json.dumps(results["metrics"], sort_keys=True))
    log.info("run dir: %s", run_dir)
    return results["valid_metrics"].get(cfg.train.select_metric)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
