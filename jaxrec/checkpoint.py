"""Orbax checkpoints: train state, Grain iterator and run metadata; resume; restore onto any plan.

A checkpoint lives in <run_dir>/checkpoints/<step>/ (Orbax's layout) with three items:
  state  step, dense params, optax state, and every embedding table and optimiser slot in its
         logical [rows, dim] form (EmbeddingCollection.to_logical), independent of the plan;
  data   the Grain iterator state (the position in the data; all other randomness is a pure
         function of the seeds and the step);
  meta   the resolved config, the best evaluation so far, and each table's shape and optimiser.
Orbax writes each step to a temporary directory and renames it on commit, so a process killed
mid-save leaves the previous checkpoint as the latest one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grain
import jax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxrec.errors import JaxrecError

log = logging.getLogger("jaxrec.checkpoint")
logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every save step at INFO


def _portable_state(engine, state) -> dict:
    """The train state with tables in logical form (plan-independent)."""
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state,
            "embeddings": engine.collection.to_logical(state.emb)}


def _table_meta(engine) -> dict:
    return {name: {"rows": spec.rows, "dim": spec.dim, "optimizer": spec.optimizer}
            for name, spec in engine.collection.specs.items()}


class Checkpointer:
    def __init__(self, directory: Path, every: int, keep: int, async_save: bool = True):
        self.every = every
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               create=True)
        self.manager = ocp.CheckpointManager(directory.absolute(), options=options,
                                             item_names=("state", "data", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def save(self, engine, state, iterator, meta: dict) -> None:
        portable = jax.jit(lambda s: _portable_state(engine, s),
                           out_shardings=NamedSharding(engine.mesh, P()))(state)
        step = int(state.step)
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(portable),
            data=grain.checkpoint.CheckpointSave(iterator),
            meta=ocp.args.JsonSave(meta | {"tables": _table_meta(engine)}),
        ), force=True)

    def read_meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, engine, template_state, iterator, step: int | None = None):
        """(state laid out by `engine`'s plan, meta); `iterator` is moved to the saved position."""
        step = self.latest_step() if step is None else step
        meta = self.read_meta(step)
        check_compatible(meta["tables"], _table_meta(engine), self.manager.directory / str(step))
        replicated = NamedSharding(engine.mesh, P())
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                                jax.eval_shape(lambda s: _portable_state(engine, s), template_state))
        items = {"state": ocp.args.StandardRestore(abstract), "meta": ocp.args.JsonRestore()}
        if iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(iterator)
        portable = self.manager.restore(step, args=ocp.args.Composite(**items))["state"]
        emb = jax.jit(engine.collection.from_logical, out_shardings=engine.collection.shardings())(
            portable["embeddings"])
        state = template_state.replace(step=portable["step"], params=portable["params"],
                                       opt_state=portable["opt_state"], emb=emb)
        log.info("restored checkpoint step %d from %s", step, self.manager.directory)
        return state, meta

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def check_compatible(saved: dict, current: dict, where: Path) -> None:
    """A checkpoint restores only onto the same tables (shapes and optimiser slots)."""
    for name in sorted(set(saved) | set(current)):
        if name not in current or name not in saved:
            raise JaxrecError(f"checkpoint {where} has tables {sorted(saved)}, but the current model has "
                              f"{sorted(current)}")
        old, new = saved[name], current[name]
        if (old["rows"], old["dim"]) != (new["rows"], new["dim"]):
            raise JaxrecError(f"checkpoint {where}: table '{name}' is {old['rows']} x {old['dim']} there but "
                              f"{new['rows']} x {new['dim']} in the current config (model.dim or data changed)")
        if old["optimizer"] != new["optimizer"]:
            raise JaxrecError(f"checkpoint {where}: table '{name}' was trained with {old['optimizer']} but the "
                              f"current config uses {new['optimizer']} (optimizer.table_optimizer)")
