"""Orbax checkpoints: train state, Grain iterator and run metadata; verified resume with
fallback; restore onto any plan, mesh or device count.

A checkpoint lives in <run_dir>/checkpoints/<step>/ (Orbax's layout) with three items:
  state  step, dense params, optax state, and every embedding table and optimiser slot in its
         logical form (EmbeddingCollection.to_logical): rows in logical order, padded by a rule
         that depends on the row count alone, sharded by rows over the mesh. Each device writes
         only its own rows, and nothing is replicated on the way (sharding.layout);
  data   the Grain iterator state (the position in the data; all other randomness is a pure
         function of the seeds and the step);
  meta   the resolved config, the data fingerprint and batch size, the best evaluation so far,
         each table's shape and optimiser, and a checksum of every array of `state`.
Orbax writes each step to a temporary directory and renames it on commit, so a process killed
mid-save leaves the previous checkpoint as the latest one. On restore every array is checked
against its checksum; a checkpoint that fails to read or to verify is skipped, with one line
saying so, for the newest one that verifies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxrec.errors import JaxrecError
from jaxrec.train_lib import state_shardings

log = logging.getLogger("jaxrec.checkpoint")
logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every save step at INFO

# Config keys a resumed run may change: how long it runs, how it reports, and where tables live
# (a checkpoint restores onto any plan). Every other key changes the model, the optimiser or
# what the saved data position means, and must match.
RESUMABLE_KEYS = ("sharding.", "train.epochs", "train.max_steps", "train.eval_every", "train.eval_batch_size",
                  "train.log_every", "train.progress", "train.checkpoint_every", "train.keep_checkpoints",
                  "train.resume", "train.resume_step", "train.on_nonfinite", "train.distributed.")


class DamagedCheckpoint(Exception):
    """A checkpoint that cannot be read or does not match its checksums."""


def portable_state(engine, state) -> dict:
    """The train state with tables in logical form (plan-independent)."""
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state,
            "embeddings": engine.collection.to_logical(state.emb)}


def _table_meta(engine) -> dict:
    return {name: {"rows": spec.rows, "dim": spec.dim, "optimizer": spec.optimizer}
            for name, spec in engine.collection.specs.items()}


def _word_sums(x: jax.Array) -> jax.Array:
    """Two wrapping uint32 sums of an array's bits: of the words, and of each word times its
    position. Exact integer arithmetic, so the result does not depend on how the array is
    sharded; a flipped bit changes the first, swapped words the second."""
    width = x.dtype.itemsize * 8
    words = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{width}")).astype(jnp.uint32).reshape(-1)
    position = jnp.arange(1, words.shape[0] + 1, dtype=jnp.uint32)
    return jnp.stack([jnp.sum(words, dtype=jnp.uint32), jnp.sum(words * position, dtype=jnp.uint32)])


def checksums(tree) -> dict[str, str]:
    """Leaf path -> checksum (hex) of every array in `tree`."""
    sums = jax.device_get(jax.jit(lambda t: jax.tree.map(_word_sums, t))(tree))
    return {jax.tree_util.keystr(path): f"{int(s[0]):08x}{int(s[1]):08x}"
            for path, s in jax.tree_util.tree_leaves_with_path(sums)}


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts, except RESUMABLE_KEYS."""
    keys = []
    for key in sorted(set(saved) | set(current)):
        dotted = f"{prefix}{key}"
        if dotted.startswith(RESUMABLE_KEYS) or f"{dotted}.".startswith(RESUMABLE_KEYS):
            continue
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            keys += config_differences(old, new, f"{dotted}.")
        elif old != new:
            keys.append(f"{dotted} ({old!r} -> {new!r})")
    return keys


class Checkpointer:
    def __init__(self, directory: Path, every: int, keep: int, async_save: bool = True):
        self.every = every
        self.directory = directory.absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "data", "meta"))
        self.good_step: int | None = None  # newest checkpoint known to be intact (verified or written here)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def save(self, engine, state, iterator, meta: dict) -> None:
        """Starts an (asynchronous) save of `state`; committed() tells when it is on disk."""
        portable = jax.jit(lambda s: portable_state(engine, s))(state)
        step = int(state.step)
        meta = meta | {"tables": _table_meta(engine), "checksums": checksums(portable)}
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(portable),
            data=grain.checkpoint.CheckpointSave(iterator),
            meta=ocp.args.JsonSave(meta),
        ), force=True)
        self._pending = step

    def wait(self) -> int | None:
        """Blocks until pending saves are committed; returns the newest committed step."""
        self.manager.wait_until_finished()
        if getattr(self, "_pending", None) is not None and self._pending in self.manager.all_steps():
            self.good_step = self._pending
        return self.manager.latest_step()

    def read_meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, engine, iterator, step: int | None = None, expected: dict | None = None):
        """(state laid out by `engine`'s plan, meta, step) from the newest checkpoint that
        verifies, or from `step` alone when given; `iterator` is moved to the saved position.

        expected: {"config": ..., "batch_size": ..., "data_fingerprint": ...} of the current run;
        a checkpoint that differs in anything but RESUMABLE_KEYS is refused in one line."""
        steps = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
        if step is not None and step not in self.manager.all_steps():
            raise JaxrecError(f"train.resume_step={step}: no such checkpoint in {self.directory} "
                              f"(steps: {self.all_steps() or 'none'})")
        for candidate in steps:
            where = self.directory / str(candidate)
            try:
                state, meta = self._restore_verified(engine, iterator, candidate, expected)
            except DamagedCheckpoint as err:
                if step is not None:
                    raise JaxrecError(f"checkpoint {where} is damaged ({err}); choose another train.resume_step "
                                      f"(steps: {self.all_steps()})") from None
                log.warning("checkpoint %s is damaged (%s); trying the previous one (it is kept in %s)", where, err,
                            self._set_aside(candidate))
                continue
            self.good_step = candidate
            newer = [s for s in self.all_steps() if s > candidate]
            if step is not None and newer:  # an explicit older step: its later history is replaced
                log.warning("train.resume_step=%d: later checkpoints %s moved to %s", step, newer,
                            [str(self._set_aside(s, "checkpoints-superseded")) for s in newer][0].rsplit("/", 1)[0])
            if candidate != steps[0]:
                log.warning("resumed from step %d, the newest checkpoint that verifies", candidate)
            log.info("restored checkpoint step %d from %s", candidate, self.directory)
            return state, meta, candidate
        raise JaxrecError(f"no checkpoint in {self.directory} verifies (steps tried: {steps}); "
                          "start afresh with train.resume=false in a new hydra.run.dir")

    def _set_aside(self, step: int, folder: str = "checkpoints-damaged") -> Path:
        """Moves a step out of the manager's sight, so that training can write that step again,
        and keeps it (in <run_dir>/<folder>/) for inspection."""
        target = self.directory.parent / folder / str(step)
        if jax.process_index() == 0:
            target.parent.mkdir(exist_ok=True)
            shutil.rmtree(target, ignore_errors=True)
            (self.directory / str(step)).rename(target)
        self.manager.reload()
        return target

    def _restore_verified(self, engine, iterator, step: int, expected: dict | None):
        try:
            meta = self.read_meta(step)
            saved_tables = meta["tables"]
        except Exception as err:  # any way metadata can be unreadable: empty, truncated, not JSON
            raise DamagedCheckpoint(f"metadata unreadable: {_reason(err)}") from None
        where = self.directory / str(step)
        if expected is not None:
            check_same_run(meta, expected, where)
        check_compatible(saved_tables, _table_meta(engine), where)
        try:
            abstract = self._abstract_portable(engine, step)
            items = {"state": ocp.args.StandardRestore(abstract)}
            if iterator is not None:
                items["data"] = grain.checkpoint.CheckpointRestore(iterator)
            portable = self.manager.restore(step, args=ocp.args.Composite(**items))["state"]
        except Exception as err:
            raise DamagedCheckpoint(_reason(err)) from None
        if "checksums" in meta:  # checkpoints written before checksums restore unverified
            actual = checksums(portable)
            bad = sorted(k for k, v in meta["checksums"].items() if actual.get(k) != v)
            if bad:
                raise DamagedCheckpoint(f"checksum mismatch in {', '.join(bad[:3])}"
                                        f"{' and more' if len(bad) > 3 else ''}")
        emb = jax.jit(engine.collection.from_logical, out_shardings=engine.collection.shardings())(
            portable["embeddings"])
        template = engine.abstract_state
        dense = jax.device_put({"params": portable["params"], "opt_state": portable["opt_state"]},
                               NamedSharding(engine.mesh, P()))
        state = template.replace(step=jax.device_put(portable["step"], NamedSharding(engine.mesh, P())),
                                 params=dense["params"], opt_state=dense["opt_state"], emb=emb)
        return jax.device_put(state, state_shardings(engine, state)), meta

    def _abstract_portable(self, engine, step: int):
        """The restore target: the current model's tree, with each table at the row count the
        checkpoint holds (checkpoints written before padding hold exactly `rows`)."""
        abstract = jax.eval_shape(lambda s: portable_state(engine, s), engine.abstract_state)
        saved = ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / "state")["embeddings"]
        shapes = jax.tree.map(lambda leaf: tuple(leaf.shape), saved, is_leaf=lambda x: hasattr(x, "shape"))
        embeddings = jax.tree.map(lambda leaf, shape, sharding: jax.ShapeDtypeStruct(shape, leaf.dtype,
                                                                                     sharding=sharding),
                                  abstract["embeddings"], shapes, engine.collection.logical_shardings(shapes),
                                  is_leaf=lambda x: isinstance(x, tuple))
        replicated = NamedSharding(engine.mesh, P())
        dense = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=replicated),
                             {k: v for k, v in abstract.items() if k != "embeddings"})
        return dense | {"embeddings": embeddings}

    def close(self) -> None:
        self.wait()
        self.manager.close()


def _reason(err: Exception) -> str:
    """The first line of an error, shortened: what the one-line warning shows."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"{type(err).__name__}: {text[:200]}"


def check_same_run(meta: dict, expected: dict, where: Path) -> None:
    """Refuses a resume whose config, batch size or data differ from the saved run's."""
    changed = config_differences(meta.get("config", {}), expected["config"])
    if meta.get("batch_size") not in (None, expected["batch_size"]):
        changed.append(f"resolved batch size ({meta['batch_size']} -> {expected['batch_size']})")
    if meta.get("data_fingerprint") not in (None, expected["data_fingerprint"]):
        changed.append("the data set (its fingerprint differs)")
    if changed:
        raise JaxrecError(f"checkpoint {where} was written by a different run: {'; '.join(changed)}. "
                          "Resume with the saved settings, or start afresh with train.resume=false in a new "
                          "hydra.run.dir")


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


def data_fingerprint(dataset) -> str:
    """A short hash of the data set's summary (counts, sizes): what a saved position refers to."""
    return hashlib.sha256(json.dumps(dataset.summary(), sort_keys=True, default=str).encode()).hexdigest()[:16]

