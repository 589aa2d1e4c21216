"""A trained run back from its run dir: config, data, engine and state of a checkpoint, and warm
starts of a new model's tables from one.

The library half of `python -m jaxrec.evaluate`, shared with training (model.init_from) and the
serving exporter; it sits above checkpoint.py and train_lib.py, which never import it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import numpy as np

from jaxrec.checkpoint import Checkpointer, DamagedCheckpoint
from jaxrec.config import config_from_dict
from jaxrec.data.dataset import load_dataset
from jaxrec.errors import JaxrecError
from jaxrec.train_lib import Engine, TrainState, build_engine

log = logging.getLogger("jaxrec.train")


def restore_run(run_dir: Path, step: int | None = None, one_device: bool = False):
    """(cfg, dataset, engine, state, step) of a run dir's checkpoint (default: the latest),
    laid out on the devices present (or on one device, unsharded)."""
    ckpt_dir = Path(run_dir).absolute() / "checkpoints"
    if not ckpt_dir.is_dir():
        raise JaxrecError(f"{run_dir} has no checkpoints/ directory (is it a jaxrec run dir?)")
    ckpt = Checkpointer(ckpt_dir, every=0, keep=1_000_000, async_save=False)
    try:
        saved = ckpt.all_steps()
        if not saved:
            raise JaxrecError(f"{ckpt_dir} holds no finished checkpoint")
        if step is not None and step not in saved:
            raise JaxrecError(f"{ckpt_dir} has no checkpoint of step {step}; it has steps {', '.join(map(str, saved))}")
        cfg = config_from_dict(_verified_meta(ckpt, step, saved)["config"])
        cfg.sharding.num_devices = None
        if one_device:
            cfg.sharding.strategy, cfg.sharding.tables = "none", {}
            cfg.sharding.mesh.data = cfg.sharding.mesh.model = 1
        dataset = load_dataset(cfg.data)
        engine = build_engine(cfg, dataset.schema, devices=jax.devices()[:1] if one_device else None)
        state, _, step = ckpt.restore(engine, None, step, step_flag="--step", read_only=True)
    finally:
        ckpt.close()
    return cfg, dataset, engine, state, step


def _verified_meta(ckpt, step: int | None, saved: list[int]) -> dict:
    """The metadata of `step`, or else of the newest checkpoint whose metadata verifies (restore
    then verifies the rest, and says which checkpoint it falls back from)."""
    for candidate in [step] if step is not None else saved[::-1]:
        try:
            return ckpt.read_meta(candidate)
        except DamagedCheckpoint as err:
            if step is not None:
                raise JaxrecError(
                    f"checkpoint {ckpt.directory / str(step)} is damaged ({err}); choose another --step "
                    f"(steps: {', '.join(map(str, saved))})"
                ) from None
    raise JaxrecError(f"no checkpoint in {ckpt.directory} has metadata that verifies (steps {saved})")


def warm_start(engine: Engine, state: TrainState, run_dir: str) -> TrainState:
    """Tables named by the model's pretrained_tables() copied from a trained run's checkpoint
    (model.init_from); their optimiser slots start fresh."""
    if not hasattr(engine.model, "pretrained_tables"):
        raise JaxrecError(f"config key model.init_from: model={engine.cfg.model.name} has no pretrained tables")
    _, _, source, source_state, step = restore_run(Path(run_dir), one_device=True)
    logical = jax.device_get(engine.collection.to_logical(state.emb))
    for table, source_table in engine.model.pretrained_tables().items():
        if source_table not in source.collection.specs:
            raise JaxrecError(
                f"model.init_from={run_dir}: that run has no table '{source_table}' "
                f"(tables: {sorted(source.collection.specs)})"
            )
        values = np.asarray(source.collection.table(source_state.emb, source_table))
        target = logical["tables"][table]  # padded to layout.padded_rows
        shape = (engine.collection.specs[table].rows, target.shape[1])
        if values.shape != shape:
            raise JaxrecError(
                f"model.init_from={run_dir}: table '{source_table}' is {values.shape} there but "
                f"'{table}' is {shape} here (model.dim or data differ)"
            )
        logical["tables"][table] = np.concatenate([values, target[len(values) :]]).astype(target.dtype)
    log.info("initialised %s from %s (step %d)", ", ".join(engine.model.pretrained_tables()), run_dir, step)
    emb = jax.jit(engine.collection.from_logical, out_shardings=engine.collection.shardings())(logical)
    return state.replace(emb=emb)
