"""Does any path that touches the whole state hold more than a device's share of it?

    python -m benchmarks.state_paths --out runs/state_paths [--devices 8,64] [--eval-items 2000000]

Two questions, each answered in a child process (its own simulated device count):
  plan   the README's 1.04e9-parameter MF model, row_wise, on each device count: XLA's
         per-device bytes of the train step, initialisation, checkpoint save, restore (same
         layout), restore onto another layout (reshard) and one evaluation chunk, from
         `jaxrec.plan` (compiled on abstract inputs, nothing allocated); the ratio of each to the
         step's. Goal: init, save, restore and eval at most 1.1x the step.
  eval   full-ranking evaluation of an MF model over a synthetic catalogue of --eval-items items
         and 1,000 users on 8 simulated devices: the whole process's peak resident memory
         against the item table's bytes. Goal: below 2x the item table + 1 GB.
Writes results.json and results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import int_list, machine_info, write_results

PATHS = ("init", "checkpoint", "restore", "reshard", "eval")
MF_1E9 = [
    "data=synthetic",
    "data.num_users=12000000",
    "data.num_items=4000000",
    "model.dim=64",
    "train.batch_size=65536",
    "sharding=row_wise",
]

EVAL_CHILD = """
import json, resource, sys, time
import jax
from jaxrec.config import compose_config, validate
from jaxrec.data.dataset import load_dataset
from jaxrec.train_lib import RankingEvaluator, build_engine, init_state
cfg = compose_config(["data=synthetic"])
cfg.data.num_users, cfg.data.num_items = 1000, int(sys.argv[1])
cfg.data.num_interactions, cfg.model.dim = 20000, 64
cfg.sharding.strategy, cfg.sharding.mesh.data, cfg.sharding.mesh.model = "row_wise", 1, 8
cfg = validate(cfg)
dataset = load_dataset(cfg.data)
engine = build_engine(cfg, dataset.schema)
state = init_state(engine, 0)
tick = time.perf_counter()
metrics = RankingEvaluator(engine, dataset)(state, "test")
print(json.dumps({"seconds": time.perf_counter() - tick, "hr@10": metrics["hr@10"],
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def _env(devices: int) -> dict:
    return os.environ | {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}


def plan_record(devices: int) -> dict:
    with tempfile.TemporaryDirectory() as run_dir:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "jaxrec.plan",
                *MF_1E9,
                f"sharding.num_devices={devices}",
                f"hydra.run.dir={run_dir}",
            ],
            check=True,
            capture_output=True,
            env=_env(devices),
        )
        plan = json.loads((Path(run_dir) / "plan.json").read_text())
    step = max(plan["xla_bytes_per_device"])
    record = {"question": "plan", "devices": devices, "step_MB": step / 1e6}
    for path in PATHS:
        value = plan.get(f"xla_{path}_bytes_per_device")
        record[f"{path}_MB"] = max(value) / 1e6 if value else None
        record[f"{path}_x_step"] = max(value) / step if value else None
    return record


def eval_record(num_items: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", EVAL_CHILD, str(num_items)], check=True, capture_output=True, text=True, env=_env(8)
    )
    child = json.loads(out.stdout.strip().splitlines()[-1])
    table = num_items * 64 * 4
    return {
        "question": "eval",
        "devices": 8,
        "items": num_items,
        "users": 1000,
        "item_table_MB": table / 1e6,
        "peak_rss_MB": child["peak_rss_bytes"] / 1e6,
        "goal_MB": (2 * table + 1e9) / 1e6,
        "seconds": child["seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--devices", type=int_list, default=[8, 64])
    parser.add_argument("--eval-items", type=int, default=2_000_000)
    args = parser.parse_args()
    records = [plan_record(n) for n in args.devices]
    records.append(eval_record(args.eval_items))
    for record in records:
        print(json.dumps(record), flush=True)
    columns = [
        "question",
        "devices",
        "step_MB",
        *(f"{p}_x_step" for p in PATHS),
        "items",
        "item_table_MB",
        "peak_rss_MB",
        "goal_MB",
        "seconds",
    ]
    write_results(args.out, records, machine_info(), title="Whole-state paths: bytes per device", columns=columns)


if __name__ == "__main__":
    main()
