"""Orbax checkpoints: train state, Grain iterator and run metadata; verified resume with
fallback; restore onto any plan, mesh or device count.

A checkpoint lives in <run_dir>/checkpoints/<step>/ (Orbax's layout) with three items:
  state  step, dense params, optax state, and the embedding state exactly as the plan lays it
         out (the stacked group arrays and their optimiser slots, sharded as in training). Each
         device writes only the rows it holds and nothing is copied on device: a save costs no
         device memory beyond the state itself;
  data   the Grain iterator state (the position in the data; all other randomness is a pure
         function of the seeds and the step);
  meta   the resolved config, the data fingerprints (content and counts) and batch size, the
         best evaluation so far, each table's shape and optimiser, the plan's layout (mesh,
         groups, placements), a checksum of every array of `state`, and the sha256 of the meta
         itself (its canonical JSON without that field).
Restoring under the same layout reads straight into place. Under any other plan, strategy, mesh
or device count, the saved group arrays are read split by rows over the new mesh and relaid
through each table's logical [rows, dim] form (sharding.layout) into the new plan: resharding
is a transient of about two copies of the state, paid only when the layout changes. Checkpoints
written before this (tables in logical form, `layout` absent from meta) restore the same way.
Orbax writes each step to a temporary directory and renames it on commit, so a process killed
mid-save leaves the previous checkpoint as the latest one.

On restore everything restored is verified: the meta against its sha256, every array against its
checksum, the state's step against the step directory's number, and the data position against
that step (the train pipelines yield one element per step and the loop takes one per step, in
every process, so the iterator's next_index is the step). A checkpoint that fails to read or to
verify is skipped, with one line saying so, for the newest one that verifies (in a multi-process
run every process takes the same decision). Metas written before the meta checksum (they have
array checksums but no `data_content`) restore with their arrays verified; a meta that has
`layout` but no array checksums, or `data_content` but no meta checksum, is damaged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from orbax.checkpoint.checkpoint_manager import StepAlreadyExistsError

from jaxrec import distributed
from jaxrec.embedding import EmbeddingState
from jaxrec.errors import JaxrecError
from jaxrec.sharding.checksum import checksum_fn
from jaxrec.sharding.layout import logical_spec, to_logical
from jaxrec.sharding.placement import EmbeddingPlan, GroupLayout, TablePlacement
from jaxrec.train_lib import state_shardings

log = logging.getLogger("jaxrec.checkpoint")
logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every save step at INFO

# Config keys a resumed run may change: how long it runs, how it reports, and where tables live
# (a checkpoint restores onto any plan). Every other key changes the model, the optimiser or
# what the saved data position means, and must match.
RESUMABLE_KEYS = (
    "sharding.",
    "train.epochs",
    "train.max_steps",
    "train.eval_every",
    "train.eval_batch_size",
    "train.log_every",
    "train.progress",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.async_checkpoint",
    "train.resume",
    "train.resume_step",
    "train.on_nonfinite",
    "train.distributed.",
)


# Bytes Orbax moves between device and host at once (its default, 96 GB, lets a save or restore
# stage a whole state in host memory next to the device copy; measured on a 1.36 GB state with 8
# CPU devices: save peak 4.63 -> see README).
TRANSFER_GB = 1


META_CHECKSUM = "meta_sha256"  # the meta's own checksum field


class DamagedCheckpoint(Exception):
    """A checkpoint that cannot be read or does not match its checksums."""


def canonical_json(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def meta_checksum(meta: dict) -> str:
    """sha256 of the meta's canonical JSON without its own checksum field."""
    return hashlib.sha256(canonical_json({k: v for k, v in meta.items() if k != META_CHECKSUM})).hexdigest()


def verify_meta(meta: dict) -> None:
    """Raises DamagedCheckpoint unless the meta is what was written (see the module docstring for
    the metas written before each checksum)."""
    if not isinstance(meta, dict) or "tables" not in meta:
        raise DamagedCheckpoint("metadata has no tables")
    if "layout" in meta and "checksums" not in meta:
        raise DamagedCheckpoint("metadata lacks its array checksums")
    if META_CHECKSUM in meta:
        if meta[META_CHECKSUM] != meta_checksum(meta):
            raise DamagedCheckpoint("metadata does not match its checksum")
    elif "data_content" in meta:
        raise DamagedCheckpoint("metadata lacks its checksum")


def _saved_tree(state) -> dict:
    """What a checkpoint's `state` item holds: the train state as laid out."""
    return {
        "step": state.step,
        "params": state.params,
        "opt_state": state.opt_state,
        "emb": {"tables": state.emb.tables, "slots": state.emb.slots},
    }


def reshard(engine, old_plan, saved_emb: dict):
    """Embedding arrays laid out by `old_plan` -> the current plan's EmbeddingState, through
    each table's logical form. Two jitted relayouts (XLA partitions each into all-to-alls): in
    one program, XLA:CPU wrote zeros into a column-wise group's second table (measured)."""
    collection = engine.collection

    def to_logical_form(saved_emb):
        logical = {"tables": {}, "slots": {}}
        for name, spec in collection.specs.items():
            group = old_plan.placements[name].group
            logical["tables"][name] = to_logical(old_plan, engine.mesh, name, saved_emb["tables"][group], spec.dim)
            logical["slots"][name] = {
                slot: to_logical(old_plan, engine.mesh, name, saved_emb["slots"][group][slot], width)
                for slot, width in collection.slot_widths(name).items()
            }
        return logical

    logical = jax.jit(to_logical_form)(saved_emb)
    return jax.jit(collection.from_logical, out_shardings=collection.shardings())(logical)


def layout_meta(plan) -> dict:
    """What fixes where every row of the saved arrays lives: enough to relay them under any plan."""
    groups = {
        name: {
            "kind": g.kind,
            "dim": g.dim,
            "padded_dim": g.padded_dim,
            "block_rows": g.block_rows,
            "optimizer": g.optimizer,
            "tables": list(g.tables),
            "dtype": g.dtype,
        }
        for name, g in plan.groups.items()
    }
    placements = {name: dataclasses.asdict(p) for name, p in plan.placements.items()}
    return {"mesh": list(plan.mesh_shape), "groups": groups, "placements": placements}


def saved_plan(layout: dict, current: EmbeddingPlan) -> EmbeddingPlan:
    """The plan a checkpoint was written under (the tables themselves are the current ones:
    check_compatible has compared them)."""
    groups = {
        name: GroupLayout(
            name,
            g["kind"],
            g["dim"],
            g["padded_dim"],
            g["block_rows"],
            g["optimizer"],
            0.0,
            tuple(g["tables"]),
            g["dtype"],
        )
        for name, g in layout["groups"].items()
    }
    placements = {name: TablePlacement(**p) for name, p in layout["placements"].items()}
    return EmbeddingPlan(tuple(layout["mesh"]), current.specs, placements, groups)


def _table_meta(engine) -> dict:
    return {
        name: {"rows": spec.rows, "dim": spec.dim, "optimizer": spec.optimizer}
        for name, spec in engine.collection.specs.items()
    }


def checksums(tree) -> dict[str, str]:
    """Leaf path -> checksum (hex) of every array in `tree`, one array at a time (so the
    temporaries are those of the largest array, not of the whole state)."""
    sums = jax.device_get(jax.tree.map(lambda leaf: checksum_fn(leaf)(leaf), tree))
    return {
        jax.tree_util.keystr(path): f"{int(s[0]):08x}{int(s[1]):08x}"
        for path, s in jax.tree_util.tree_leaves_with_path(sums)
    }


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts, except RESUMABLE_KEYS. A key only
    one side has is another option's (whose name is compared) or predates the per-option schemas
    (a checkpoint written before them carried every option's keys): not a difference."""
    keys = []
    for key in sorted(set(saved) & set(current)):
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
    def __init__(self, directory: Path, every: int, keep: int, async_save: bool | None = None):
        self.every = every
        self.directory = directory.absolute()
        if async_save is None:  # a background save copies the state to host RAM, which CPU devices already are
            async_save = jax.devices()[0].platform != "cpu"
        self.async_save = async_save
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
        state_handler = ocp.StandardCheckpointHandler(save_concurrent_gb=TRANSFER_GB, restore_concurrent_gb=TRANSFER_GB)
        handlers = {
            "state": state_handler,
            "data": grain.checkpoint.CheckpointHandler(),
            "meta": ocp.JsonCheckpointHandler(),
        }
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        self.good_step: int | None = None  # newest checkpoint known to be intact (verified or written here)
        self._pending: int | None = None  # step of the save in flight, until wait() sees it committed

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def save(self, engine, state, iterator, meta: dict) -> None:
        """Starts an (asynchronous) save of `state` as laid out; wait() tells when it is on disk."""
        saved = _saved_tree(state)
        step = int(state.step)
        meta = meta | {"tables": _table_meta(engine), "layout": layout_meta(engine.plan), "checksums": checksums(saved)}
        meta = json.loads(canonical_json(meta))  # as it will read back (tuples as lists)
        meta[META_CHECKSUM] = meta_checksum(meta)
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(saved),
                    data=grain.checkpoint.CheckpointSave(iterator),
                    meta=ocp.args.JsonSave(meta),
                ),
                force=True,
            )
        except StepAlreadyExistsError:
            raise JaxrecError(
                f"{self.directory / str(step)} already exists, but this run did not write it; move it "
                "away (it is not a checkpoint of this run's history) and resume"
            ) from None
        self._pending = step

    def wait(self) -> int | None:
        """Blocks until pending saves are committed; returns the newest committed step."""
        self.manager.wait_until_finished()
        if self._pending is not None and self._pending in self.manager.all_steps():
            self.good_step = self._pending
        return self.manager.latest_step()

    def read_meta(self, step: int) -> dict:
        """The meta of a checkpoint, verified against its checksum (DamagedCheckpoint otherwise)."""
        try:
            meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as err:  # any way metadata can be unreadable: empty, truncated, not JSON
            raise DamagedCheckpoint(f"metadata unreadable: {_reason(err)}") from None
        verify_meta(meta)
        return meta

    def set_aside_strays(self, move: bool = True) -> None:
        """Plain files named like a step are not checkpoints (Orbax ignores them, then replaces
        one when it saves that step): said in one line each, and moved to checkpoints-damaged/
        when `move` (a read-only command leaves them)."""
        if not self.directory.is_dir():
            return
        for path in sorted(p for p in self.directory.iterdir() if p.name.isdigit() and not p.is_dir()):
            if move:
                log.warning("%s is a file, not a checkpoint; moved to %s", path, self._set_aside(int(path.name)))
            else:
                log.warning("%s is a file, not a checkpoint; ignored", path)

    def restore(
        self,
        engine,
        iterator,
        step: int | None = None,
        expected: dict | None = None,
        *,
        step_flag: str = "train.resume_step",
        read_only: bool = False,
    ):
        """(state laid out by `engine`'s plan, meta, step) from the newest checkpoint that
        verifies, or from `step` alone when given; `iterator` is moved to the saved position.

        expected: {"config", "batch_size", "data_content", "data_fingerprint"} of the current run;
        a checkpoint that differs in anything but RESUMABLE_KEYS is refused in one line.
        step_flag: how the caller's user picks a step (named in messages). read_only: damaged
        or superseded checkpoints stay where they are (evaluate, export)."""
        self.set_aside_strays(move=not read_only)
        steps = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
        if step is not None and step not in self.manager.all_steps():
            raise JaxrecError(
                f"{step_flag}={step}: no such checkpoint in {self.directory} (steps: {self.all_steps() or 'none'})"
            )
        for candidate in steps:
            where = self.directory / str(candidate)
            try:
                state, meta = self._restore_verified(engine, iterator, candidate, expected)
            except DamagedCheckpoint as err:
                if step is not None:
                    raise JaxrecError(
                        f"checkpoint {where} is damaged ({err}); choose another {step_flag} (steps: {self.all_steps()})"
                    ) from None
                if read_only:
                    log.warning("checkpoint %s is damaged (%s); trying the previous one", where, err)
                else:
                    log.warning(
                        "checkpoint %s is damaged (%s); trying the previous one (it is kept in %s)",
                        where,
                        err,
                        self._set_aside(candidate),
                    )
                continue
            self.good_step = candidate
            newer = [s for s in self.all_steps() if s > candidate]
            if step is not None and newer and not read_only:  # an explicit older step: its later history is replaced
                log.warning(
                    "train.resume_step=%d: later checkpoints %s moved to %s",
                    step,
                    newer,
                    [str(self._set_aside(s, "checkpoints-superseded")) for s in newer][0].rsplit("/", 1)[0],
                )
            if candidate != steps[0]:
                verb = "using" if read_only else "resumed from"
                log.warning("%s step %d, the newest checkpoint that verifies", verb, candidate)
            log.info("restored checkpoint step %d from %s", candidate, self.directory)
            return state, meta, candidate
        raise JaxrecError(
            f"no checkpoint in {self.directory} verifies (steps tried: {steps}); "
            "start afresh with train.resume=false in a new hydra.run.dir"
        )

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
        meta = self.read_meta(step)
        where = self.directory / str(step)
        if expected is not None:
            check_same_run(meta, expected, where)
        check_compatible(meta["tables"], _table_meta(engine), where)
        _check_manifests(self.directory / str(step) / "state")
        layout = meta.get("layout")
        same = layout == layout_meta(engine.plan)
        problem = None
        try:
            target = self._abstract_saved(engine, step, layout, same)
            items = {"state": ocp.args.StandardRestore(target)}
            if iterator is not None:
                items["data"] = grain.checkpoint.CheckpointRestore(iterator)
            with _stderr_held() as held:
                try:
                    saved = self.manager.restore(step, args=ocp.args.Composite(**items))["state"]
                except Exception:
                    held.drop()
                    raise
            saved_step = int(jax.device_get(saved["step"]))
            problem = f"its state is step {saved_step}, not {step}" if saved_step != step else None
            problem = problem or _position_problem(iterator, step)
        except Exception as err:
            problem = _reason(err)
        if distributed.any_process(problem is not None):  # the data item is per process: decide together
            raise DamagedCheckpoint(problem or "another process could not restore its part")
        if "checksums" in meta:  # checkpoints written before checksums restore unverified
            actual = checksums(saved)
            bad = sorted(k for k, v in meta["checksums"].items() if actual.get(k) != v)
            if bad:
                raise DamagedCheckpoint(
                    f"checksum mismatch in {', '.join(bad[:3])}{' and more' if len(bad) > 3 else ''}"
                )
        if same:
            emb = EmbeddingState(**saved["emb"])
        elif layout is None:  # written in logical form (before the plan layout was saved)
            emb = jax.jit(engine.collection.from_logical, out_shardings=engine.collection.shardings())(
                saved["embeddings"]
            )
        else:
            emb = reshard(engine, saved_plan(layout, engine.plan), saved["emb"])
        replicated = NamedSharding(engine.mesh, P())
        state = engine.abstract_state.replace(
            step=jax.device_put(saved["step"], replicated),
            emb=emb,
            params=jax.device_put(saved["params"], replicated),
            opt_state=jax.device_put(saved["opt_state"], replicated),
        )
        return jax.device_put(state, state_shardings(engine, state)), meta

    def _abstract_saved(self, engine, step: int, layout: dict | None, same: bool):
        """The restore target. Same layout: the current state's shapes and shardings. Otherwise
        each embedding array at its saved shape, split by rows over the current mesh where its
        row count divides (checkpoints written in logical form: the logical arrays)."""
        abstract = {
            "step": engine.abstract_state.step,
            "params": engine.abstract_state.params,
            "opt_state": engine.abstract_state.opt_state,
        }
        replicated = NamedSharding(engine.mesh, P())
        dense = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=replicated), abstract)
        if same:
            emb = jax.tree.map(
                lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                engine.abstract_state.emb,
                engine.collection.shardings(),
            )
            return dense | {"emb": {"tables": emb.tables, "slots": emb.slots}}
        key = "emb" if layout is not None else "embeddings"
        saved = ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / "state")[key]
        rows_split = lambda leaf: jax.ShapeDtypeStruct(  # noqa: E731
            tuple(leaf.shape), leaf.dtype, sharding=NamedSharding(engine.mesh, logical_spec(engine.mesh, leaf.shape[0]))
        )
        return dense | {key: jax.tree.map(rows_split, saved, is_leaf=lambda x: hasattr(x, "shape"))}

    def close(self) -> None:
        self.wait()
        self.manager.close()


def _from_failed_orbax_read(exc: BaseException | None) -> bool:
    frames = traceback.extract_tb(exc.__traceback__) if exc is not None else []
    return any("orbax" in frame.filename for frame in frames)


def _orbax_read_left_unretrieved(record: logging.LogRecord) -> bool:
    """False for asyncio's "Task exception was never retrieved" about an Orbax array read: the
    siblings of a read that failed on a damaged checkpoint, reported whenever the garbage
    collector gets to them (the failure itself was reported in one line)."""
    exc = record.exc_info[1] if record.exc_info else None
    context = getattr(record, "context", None) or (record.args if isinstance(record.args, dict) else {})
    exc = exc or (context.get("exception") if isinstance(context, dict) else None)
    return not (record.getMessage().startswith("Task exception was never retrieved") and _from_failed_orbax_read(exc))


def _drop_orbax_reads_left_unfinished(hook):
    """Wraps sys.unraisablehook: the same siblings, when still suspended at interpreter exit, are
    finalised with "Exception ignored in: <coroutine object _read_array_index_and_device_put>";
    those go to the debug log, everything else to the previous hook."""

    def unraisable(info):
        if _from_failed_orbax_read(info.exc_value):
            log.debug("an Orbax read of a damaged checkpoint finished after its restore failed: %s", info.exc_value)
        else:
            hook(info)

    return unraisable


logging.getLogger("asyncio").addFilter(_orbax_read_left_unretrieved)
sys.unraisablehook = _drop_orbax_reads_left_unfinished(sys.unraisablehook)


class _HeldStderr:
    dropped = False

    def drop(self) -> None:
        self.dropped = True


@contextlib.contextmanager
def _stderr_held():
    """Holds what is written to file descriptor 2 during a restore. When one array fails to
    read, TensorStore's callbacks for the others find Orbax's event loop closed and print a raw
    traceback each, from C (no Python hook sees them); the caller reports the failure in one
    line and drops them (debug log). After a success the held text is written out unchanged."""
    sys.stderr.flush()
    saved = os.dup(2)
    asyncio_log, quiet = logging.getLogger("asyncio"), lambda record: False
    with tempfile.TemporaryFile(mode="w+b") as file:
        os.dup2(file.fileno(), 2)
        asyncio_log.addFilter(quiet)  # "Task exception was never retrieved" for the failed reads
        held = _HeldStderr()
        try:
            yield held
        finally:
            if held.dropped:  # the failing read's siblings finish, print and report after the error
                for _ in range(5):
                    time.sleep(0.2)
                    gc.collect()  # their never-retrieved tasks report now, while held
            asyncio_log.removeFilter(quiet)
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            file.seek(0)
            text = file.read().decode(errors="replace")
            if held.dropped:
                log.debug("dropped while a damaged checkpoint failed to read: %s", text[-2000:])
            elif text:
                sys.stderr.write(text)


def _position_problem(iterator, step: int) -> str | None:
    """What is wrong with the restored data position, or None: every train pipeline yields one
    element per step and the loop takes one per step, so a checkpoint of step N resumes at
    element N (in every process)."""
    if iterator is None:
        return None
    position = iterator.get_state().get("next_index")
    return None if position == step else f"its data position is element {position}, not {step}"


def _check_manifests(state_dir: Path) -> None:
    """The OCDBT manifests a saved state needs (its root and one per process's database): with
    one missing, Orbax's concurrent reads fail one after another and TensorStore prints a raw
    traceback for each from its callbacks, so a missing manifest is reported before reading."""
    needed = [state_dir, *sorted(state_dir.glob("ocdbt.process_*"))]
    missing = [str(d.relative_to(state_dir.parent)) for d in needed if not (d / "manifest.ocdbt").is_file()]
    if missing:
        raise DamagedCheckpoint(f"manifest.ocdbt missing in {', '.join(missing)}")


def _reason(err: Exception) -> str:
    """The first line of an error, shortened: what the one-line warning shows."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"{type(err).__name__}: {text[:200]}"


def check_same_run(meta: dict, expected: dict, where: Path) -> None:
    """Refuses a resume whose config, batch size or data differ from the saved run's."""
    changed = config_differences(meta.get("config", {}), expected["config"])
    if meta.get("batch_size") not in (None, expected["batch_size"]):
        changed.append(f"resolved batch size ({meta['batch_size']} -> {expected['batch_size']})")
    if "data_content" in meta:
        if meta["data_content"] != expected["data_content"]:
            changed.append(
                f"the data's content (sha256 {meta['data_content'][:12]}... -> {expected['data_content'][:12]}...)"
            )
    elif meta.get("data_fingerprint") not in (None, expected["data_fingerprint"]):  # written before data_content
        changed.append("the data set (its counts differ)")
    if changed:
        raise JaxrecError(
            f"checkpoint {where} was written by a different run: {'; '.join(changed)}. "
            "Resume with the saved settings, or start afresh with train.resume=false in a new "
            "hydra.run.dir"
        )


def check_compatible(saved: dict, current: dict, where: Path) -> None:
    """A checkpoint restores only onto the same tables (shapes and optimiser slots)."""
    for name in sorted(set(saved) | set(current)):
        if name not in current or name not in saved:
            raise JaxrecError(
                f"checkpoint {where} has tables {sorted(saved)}, but the current model has {sorted(current)}"
            )
        old, new = saved[name], current[name]
        if (old["rows"], old["dim"]) != (new["rows"], new["dim"]):
            raise JaxrecError(
                f"checkpoint {where}: table '{name}' is {old['rows']} x {old['dim']} there but "
                f"{new['rows']} x {new['dim']} in the current config (model.dim or data changed)"
            )
        if old["optimizer"] != new["optimizer"]:
            raise JaxrecError(
                f"checkpoint {where}: table '{name}' was trained with {old['optimizer']} but the "
                f"current config uses {new['optimizer']} (optimizer.table_optimizer)"
            )


def summary_fingerprint(dataset) -> str:
    """A short hash of the data set's summary (counts, sizes): the data identity of checkpoints
    written before data_fingerprint, still compared for them."""
    return hashlib.sha256(json.dumps(dataset.summary(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def data_fingerprint(dataset) -> str:
    """sha256 of what a saved data position refers to: every encoded array of an in-memory data
    set (interactions, split, features, id tokens); for a prepared Criteo folder its
    metadata.json, which records each input's sha256 and every shard's rows (the shards
    themselves, gigabytes, are not read)."""
    digest = hashlib.sha256()
    _feed(digest, dataset)
    return digest.hexdigest()


def _feed(digest, value) -> None:
    if isinstance(value, np.ndarray):
        if value.dtype == object:  # id tokens read as Python strings
            digest.update(b"O" + canonical_json([str(x) for x in value.ravel()]))
        else:
            digest.update(f"{value.dtype.str}{value.shape}".encode())
            digest.update(np.ascontiguousarray(value).reshape(-1).view(np.uint8))
    elif dataclasses.is_dataclass(value):
        for field in dataclasses.fields(value):
            digest.update(field.name.encode())
            _feed(digest, getattr(value, field.name))
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            digest.update(str(key).encode())
            _feed(digest, value[key])
    elif hasattr(value, "metadata") and isinstance(value.metadata, dict):  # a prepared Criteo part
        digest.update(canonical_json(value.metadata))
    else:
        digest.update(repr(value).encode())
