"""XLA's per-device bytes of every path that touches the whole state, compiled on abstract
inputs (nothing allocated): initialisation, the checkpoint save relayout, the restore relayout
and one evaluation chunk, next to the train step's. `jaxrec.plan` writes them into plan.json and
`check_fits` holds each to the memory budget: a run that fits its step but not its first
checkpoint or evaluation fails before it starts, not hours in.

Each figure is counted like the step's: argument + output - aliased + temporary bytes.
"""

from __future__ import annotations

import logging
import math
import types

import jax
import jax.numpy as jnp

from jaxrec.checkpoint import checksum_fn
from jaxrec.errors import JaxrecError
from jaxrec.train_lib import Engine, eval_chunk_users, ranking_fns, state_shardings

log = logging.getLogger("jaxrec.plan")

EVAL_PLAN_TARGETS = 1  # target slots per user planned for (leave-one-out)
EVAL_PLAN_EXCLUDED = 256  # excluded (seen) items per user planned for


def compiled_bytes(compiled) -> int:
    stats = compiled.memory_analysis()
    return int(
        stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes + stats.temp_size_in_bytes
    )


def _sharded(tree, shardings):
    return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), tree, shardings)


def _abstract_state(engine: Engine):
    return _sharded(engine.abstract_state, state_shardings(engine, engine.abstract_state))


def init_bytes(engine: Engine) -> int:
    """The embedding state drawn already sharded (dense parameters are small and replicated)."""
    key = jax.eval_shape(lambda: jax.random.key(0))
    return compiled_bytes(engine.collection.jitted_init().lower(key).compile())


def save_bytes(engine: Engine) -> int:
    """A save writes the state as laid out; on device it only computes the checksums, one array
    at a time: the state plus the largest array's checksum temporaries."""
    state = _abstract_state(engine)
    temps = [
        checksum_fn(leaf).lower(leaf).compile().memory_analysis().temp_size_in_bytes for leaf in jax.tree.leaves(state)
    ]
    return restore_bytes(engine) + int(max(temps))


def restore_bytes(engine: Engine) -> int:
    """A restore under the same layout reads every array straight into place: the state itself."""
    leaves = jax.tree.leaves(_abstract_state(engine))
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in leaves)


def reshard_bytes(engine: Engine) -> int:
    """A restore under another layout: the saved arrays split by rows over this mesh, relaid
    through the logical form into this plan (paid only when the layout changes)."""
    collection = engine.collection
    logical = jax.eval_shape(collection.to_logical, engine.abstract_state.emb)
    shapes = jax.tree.map(lambda x: tuple(x.shape), logical)
    logical = _sharded(logical, collection.logical_shardings(shapes))
    fn = jax.jit(collection.from_logical, out_shardings=collection.shardings())
    return compiled_bytes(fn.lower(logical).compile())


def eval_chunk_bytes(engine: Engine, num_users: int, num_items: int) -> int | None:
    """Item activations plus one chunk of the full-ranking sweep; None for CTR models and for
    models whose query or item inputs need the data set itself (features, sequences)."""
    model = engine.model
    if model.batches == "ctr":
        return None
    stand_in = types.SimpleNamespace(num_users=2, num_items=2)
    try:
        item_example, user_example = model.item_inputs(stand_in), model.user_inputs(stand_in, "test")
    except AttributeError as err:
        log.info("eval bytes not planned for model=%s: its inputs need the data set (%s)", engine.cfg.model.name, err)
        return None
    devices = engine.num_devices
    items_pad = -(-num_items // devices) * devices
    chunk = eval_chunk_users(engine, items_pad)
    batch, replicated = engine.batch_sharding(), engine.replicated()
    items = {
        n: jax.ShapeDtypeStruct((items_pad, *v.shape[1:]), v.dtype, sharding=batch) for n, v in item_example.items()
    }
    query = {
        n: jax.ShapeDtypeStruct((chunk, *v.shape[1:]), v.dtype, sharding=replicated) for n, v in user_example.items()
    }
    exclude = jax.ShapeDtypeStruct((chunk, EVAL_PLAN_EXCLUDED), jnp.int32, sharding=replicated)
    targets = jax.ShapeDtypeStruct((chunk, EVAL_PLAN_TARGETS), jnp.int32, sharding=replicated)
    acts, sweep, _, _ = ranking_fns(engine, num_items, max(engine.cfg.train.ks))

    def chunk_fn(params, emb, items, query, exclude, targets):
        return sweep(params, emb, acts(emb, items), items, query, exclude, targets)

    state = _abstract_state(engine)
    return compiled_bytes(jax.jit(chunk_fn).lower(state.params, state.emb, items, query, exclude, targets).compile())


def state_path_bytes(engine: Engine, num_users: int, num_items: int) -> dict[str, int | None]:
    """plan.json's xla_*_bytes_per_device figures (one value: every device runs the same program).
    The reshard figure is reported, not held to the budget: it is paid only when a checkpoint
    moves to another layout."""
    return {
        "xla_init_bytes_per_device": init_bytes(engine),
        "xla_checkpoint_bytes_per_device": save_bytes(engine),
        "xla_restore_bytes_per_device": restore_bytes(engine),
        "xla_reshard_bytes_per_device": reshard_bytes(engine),
        "xla_eval_bytes_per_device": eval_chunk_bytes(engine, num_users, num_items),
    }


def check_state_paths_fit(paths: dict[str, int | None], budget_bytes: float) -> None:
    """Each whole-state path must fit the per-device budget, like the step."""
    for name, value in paths.items():
        if value is not None and value > budget_bytes and name != "xla_reshard_bytes_per_device":
            what = name.removeprefix("xla_").removesuffix("_bytes_per_device")
            raise JaxrecError(
                f"the {what} path needs {value / 1e9:.3g} GB per device (XLA), above "
                f"sharding.memory_budget_gb={budget_bytes / 1e9:.3g}; use more devices or a "
                "sharded strategy for the large tables"
            )
