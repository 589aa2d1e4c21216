"""Plan a run without loading data or allocating tables: where every table lives and what
each device holds, checked against XLA's compiled memory analysis of the real train step.
The tables are the model's own specs on the data's schema, so they are the ones training
creates; a model with side-feature tables (two_tower) has them sized from the side tables.

    python -m jaxrec.plan sharding=auto sharding.num_devices=64 data=synthetic \\
        data.num_users=12000000 data.num_items=4000000 model.dim=64 train.batch_size=auto
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from jaxrec.config import (
    CONF_DIR,
    Config,
    accept_table_overrides,
    check_command_line,
    check_run_dir_entries,
    register_configs,
    simulate_cpu_devices,
    to_config,
)
from jaxrec.errors import cli_errors
from jaxrec.progress import quiet_backend_probe, write_json_atomic

log = logging.getLogger("jaxrec.plan")


def _row(cells, widths) -> str:
    return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))


STATE_PATHS = (
    ("init", "xla_init_bytes_per_device"),
    ("checkpoint save", "xla_checkpoint_bytes_per_device"),
    ("restore", "xla_restore_bytes_per_device"),
    ("eval chunk", "xla_eval_bytes_per_device"),
    ("reshard (restore onto another layout)", "xla_reshard_bytes_per_device"),
)


def format_plan(plan_json: dict) -> str:
    """A readable per-table table: strategy, devices and bytes on the fullest device."""
    header = ("table", "rows", "dim", "strategy", "devices", "max MB/device")
    rows = [header]
    for name, t in plan_json["tables"].items():
        used = [b for b in t["bytes_per_device"] if b]
        rows.append((name, f"{t['rows']:,}", t["dim"], t["strategy"], len(used), f"{max(used) / 1e6:,.1f}"))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    mem = plan_json["memory_per_device"]
    lines = [_row(r, widths) for r in rows]
    lines += [
        "",
        f"mesh data x model = {plan_json['mesh']['data']}x{plan_json['mesh']['model']}, "
        f"global batch {plan_json['batch_size']}",
        f"per device (fullest): params {max(mem['params']) / 1e6:,.1f} MB, optimiser slots "
        f"{max(mem['slots']) / 1e6:,.1f} MB, buffers {max(mem['buffers']) / 1e6:,.1f} MB, activations "
        f"{max(mem['activations']) / 1e6:,.1f} MB, dense {mem['dense'] / 1e6:,.3f} MB",
        f"peak per device: planner {max(plan_json['peak_bytes_per_device']) / 1e6:,.1f} MB, "
        f"XLA {max(plan_json['xla_bytes_per_device']) / 1e6:,.1f} MB",
        "whole-state paths per device (XLA): "
        + ", ".join(f"{name} {max(plan_json[key]) / 1e6:,.1f} MB" for name, key in STATE_PATHS if plan_json.get(key)),
        f"received per device per step: planner {plan_json['comm_bytes_received_per_device'] / 1e6:,.2f} MB, XLA "
        f"{(plan_json['xla_comm_bytes_received_per_device'] or 0) / 1e6:,.2f} MB (train_step.hlo.txt)",
    ]
    return "\n".join(lines)


def make_plan_json(cfg: Config, with_xla: bool = True, hlo_path: Path | None = None) -> dict:
    """hlo_path: where to write the compiled train step's HLO text (with_xla only)."""
    from jaxrec import footprint
    from jaxrec.data.dataset import data_schema
    from jaxrec.models import reads_side_features
    from jaxrec.sharding.hlo import received_bytes_per_device
    from jaxrec.sharding.memory import check_fits, estimate_memory, largest_batch_that_fits, table_bytes_per_device
    from jaxrec.train_lib import (
        build_engine,
        check_batch_size,
        compile_step,
        compiled_step_bytes,
        dense_bytes,
        dense_param_bytes,
    )

    schema = data_schema(cfg.data, side_features=reads_side_features(cfg.model))
    engine = build_engine(cfg, schema)  # the tables training creates: the model's own specs
    plan, budget, dense = engine.plan, cfg.sharding.memory_budget_gb * 1e9, dense_bytes(engine)
    auto = cfg.train.batch_size == "auto"
    batch = largest_batch_that_fits(plan, budget, dense) if auto else int(cfg.train.batch_size)
    check_batch_size(batch, plan.num_devices, plan.mesh_shape)
    estimate = estimate_memory(plan, batch, dense, dense_param_bytes=dense_param_bytes(engine))
    check_fits(plan, estimate, budget)
    compiled = compile_step(engine, batch) if with_xla else None
    xla = compiled_step_bytes(engine, batch, compiled) if with_xla else None
    if compiled is not None and hlo_path is not None:
        hlo_path.write_text(compiled.as_text())
    paths = footprint.state_path_bytes(engine, schema.num_users, schema.num_items) if with_xla else {}
    footprint.check_state_paths_fit(paths, budget)
    return {
        "mesh": {"data": plan.mesh_shape[0], "model": plan.mesh_shape[1]},
        "batch_size": batch,
        "batch_size_auto": auto,
        "memory_budget_bytes": budget,
        "tables": {
            name: {
                "strategy": place.strategy,
                "rows": plan.specs[name].rows,
                "dim": plan.specs[name].dim,
                "group": place.group,
                "bytes_per_device": table_bytes_per_device(plan, name),
                "step_cost_by_strategy": plan.candidate_costs.get(name),
            }
            for name, place in plan.placements.items()
        },
        "memory_per_device": {
            "params": estimate.params,
            "slots": estimate.slots,
            "buffers": estimate.buffers,
            "activations": estimate.activations,
            "dense": estimate.dense,
        },
        "peak_bytes_per_device": estimate.peak,
        "comm_bytes_per_step": estimate.comm_bytes_per_step,
        "comm_bytes_received_per_device": estimate.comm_bytes_received_per_device,
        "xla_comm_bytes_received_per_device": received_bytes_per_device(compiled.as_text()) if with_xla else None,
        "xla_bytes_per_device": [xla] * plan.num_devices if with_xla else None,
    } | {name: [value] * plan.num_devices if value is not None else None for name, value in paths.items()}


register_configs()
quiet_backend_probe()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
@cli_errors
def plan_job(dict_cfg: DictConfig) -> None:
    cfg = to_config(dict_cfg)
    simulate_cpu_devices(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    check_run_dir_entries(run_dir, ("plan.json", "train_step.hlo.txt"), ())
    plan_json = make_plan_json(cfg, hlo_path=run_dir / "train_step.hlo.txt")
    write_json_atomic(run_dir / "plan.json", plan_json)
    print(format_plan(plan_json))
    print(f"wrote {run_dir / 'plan.json'}")


def main() -> None:
    """The command line (python -m jaxrec.plan and the jaxrec-plan script): the README's override
    spellings and the config checked in one line before Hydra starts, as jaxrec.train does."""
    accept_table_overrides()
    cli_errors(check_command_line)(sys.argv[1:])
    plan_job()


if __name__ == "__main__":
    main()
