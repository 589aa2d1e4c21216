"""Train state, the pure train step, evaluation, and the training loop with its outputs.

The step is one jitted pure function (state, batch) -> (state, metrics): embedding
activations from the collection, gradients of the model w.r.t. its dense parameters (optax)
and w.r.t. the activations (handed back to the collection as sparse row updates).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxrec.config import Config, InteractionDataConfig, in_batch_negatives, scaled_lr, table_optimizer_name
from jaxrec.data.dataset import Dataset
from jaxrec.data.types import Schema
from jaxrec.distributed import gathered
from jaxrec.embedding import EmbeddingCollection, EmbeddingState
from jaxrec.errors import JaxrecError
from jaxrec.eval import evaluate_ranking_sweeps, evaluate_ratings, evaluate_sampled_picks
from jaxrec.models import feature_ids, make_model
from jaxrec.models.losses import LOSSES
from jaxrec.sharding import strategies
from jaxrec.sharding.mesh import make_mesh, resolve_mesh_shape
from jaxrec.sharding.placement import EmbeddingPlan
from jaxrec.sharding.planner import make_plan
from jaxrec.sharding.topk import pick_sharded, sweep_sharded

log = logging.getLogger("jaxrec.train")


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any  # dense Flax parameters
    opt_state: Any  # optax state (of params; and of tables when optimizer.sparse=false)
    emb: EmbeddingState


@dataclasses.dataclass(frozen=True)
class Engine:
    """Everything fixed for a run: model, embedding collection, dense optimiser, mesh."""

    cfg: Config
    model: Any
    collection: EmbeddingCollection
    tx: optax.GradientTransformation
    mesh: Any

    @property
    def plan(self) -> EmbeddingPlan:
        return self.collection.plan

    @property
    def num_devices(self) -> int:
        return self.plan.num_devices

    @functools.cached_property
    def abstract_state(self) -> "TrainState":
        """Shapes and dtypes of the train state, traced once per engine (nothing allocated)."""
        return jax.eval_shape(lambda: init_state(self, 0))

    def batch_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, strategies.BATCH_SPEC)

    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())


def candidates_per_example(cfg: Config) -> int:
    """The positive plus sampled negatives (none for mse, in-batch negatives and CTR examples)."""
    samples = isinstance(cfg.data, InteractionDataConfig) and cfg.model.loss != "mse" and not in_batch_negatives(cfg)
    return 1 + cfg.data.num_negatives if samples else 1


def make_dense_optimizer(cfg: Config) -> optax.GradientTransformation:
    make = {"adam": optax.adam, "adagrad": optax.adagrad, "sgd": optax.sgd}[cfg.optimizer.name]
    return make(scaled_lr(cfg, cfg.optimizer.lr))


def build_engine(cfg: Config, schema: Schema, devices=None) -> Engine:
    devices = list(devices if devices is not None else jax.devices())
    shape = resolve_mesh_shape(cfg.sharding.mesh, len(devices))
    model = make_model(cfg.model, schema)
    table_opt = table_optimizer_name(cfg.optimizer) if cfg.optimizer.sparse else "sgd"
    table_lr = scaled_lr(cfg, cfg.optimizer.table_lr if cfg.optimizer.table_lr is not None else cfg.optimizer.lr)
    specs = model.tables(table_opt, table_lr, candidates_per_example(cfg))
    per_device = cfg.train.batch_size // (shape[0] * shape[1]) if isinstance(cfg.train.batch_size, int) else 1024
    plan = make_plan(
        specs,
        shape,
        cfg.sharding.strategy,
        cfg.sharding.tables,
        cfg.sharding.memory_budget_gb * 1e9,
        cfg.sharding.capacity_factor,
        max(per_device, 1),
    )
    mesh = make_mesh(shape, devices)
    collection = EmbeddingCollection(plan, mesh, model.features(), model.bags())
    return Engine(cfg, model, collection, make_dense_optimizer(cfg), mesh)


def _example_batch(engine: Engine, batch_size: int) -> dict[str, jax.Array]:
    return engine.model.example_batch(batch_size, candidates_per_example(engine.cfg))


def _zero_activations(engine: Engine, batch: dict) -> dict[str, jax.Array]:
    """Rows as looked up (bags unpooled): what the step differentiates with respect to."""
    ids = feature_ids(engine.model, batch)
    dims = {f: engine.collection.specs[t].dim for f, t in engine.collection.features.items()}
    return {f: jnp.zeros((*ids[f].shape, dims[f]), jnp.float32) for f in ids}


def init_state(engine: Engine, seed: int) -> TrainState:
    """Parameters created already placed: tables sharded by the plan, dense ones replicated."""
    rng_params, rng_tables = jax.random.split(jax.random.key(seed))
    batch = _example_batch(engine, 1)
    rows = _zero_activations(engine, batch)
    params = engine.model.init(rng_params, engine.collection.pool(rows, feature_ids(engine.model, batch)), batch)
    emb = engine.collection.init(rng_tables)
    trainable = params if engine.cfg.optimizer.sparse else {"params": params, "tables": emb.tables}
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=engine.tx.init(trainable), emb=emb)
    return jax.device_put(state, state_shardings(engine, state))


def state_shardings(engine: Engine, state: TrainState) -> TrainState:
    emb = engine.collection.shardings()
    replicated = engine.replicated()
    opt_state = jax.tree.map(lambda _: replicated, state.opt_state)
    if not engine.cfg.optimizer.sparse:
        opt_state = optax.tree_utils.tree_map_params(
            engine.tx,
            lambda _: replicated,
            state.opt_state,
            transform_non_params=lambda _: replicated,
        )
    return TrainState(
        step=replicated, params=jax.tree.map(lambda _: replicated, state.params), opt_state=opt_state, emb=emb
    )


def _loss(engine: Engine, params, rows, batch, ids, rng):
    """The model's loss on looked-up rows (bags pooled here, so each id gets its gradient)."""
    acts = engine.collection.pool(rows, ids)
    logits = engine.model.apply(params, acts, batch, train=True, rngs={"dropout": rng})
    loss = LOSSES[engine.cfg.model.loss](logits, batch["label"], batch.get("weight"))
    if engine.cfg.model.l2:
        loss = loss + engine.cfg.model.l2 * sum(
            jnp.mean(jnp.sum(jnp.square(a), axis=tuple(range(1, a.ndim)))) for a in rows.values()
        )
    return loss


def finite_checks(engine: Engine, loss, g_params, g_acts) -> dict[str, jax.Array]:
    """One flag per place a non-finite value can come from: the loss, each table, each dense layer."""
    checks = {"loss": jnp.isfinite(loss)}
    for feature, grad in g_acts.items():
        table = engine.collection.features[feature]
        checks[f"table {table}"] = checks.get(f"table {table}", True) & jnp.all(jnp.isfinite(grad))
    for path, grad in jax.tree_util.tree_leaves_with_path(g_params):
        checks[f"layer {jax.tree_util.keystr(path)}"] = jnp.all(jnp.isfinite(grad))
    return checks


def finite_names(engine: Engine) -> list[str]:
    """Names of the flags train_step returns under "finite", in order."""
    template = engine.abstract_state.params
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), template)
    acts = _zero_activations(engine, _example_batch(engine, 1))
    return list(finite_checks(engine, jnp.zeros(()), zeros, acts))


def make_train_step(engine: Engine):
    """The pure train step, jitted with the state donated so tables update in place.

    A step whose loss or gradients are not finite changes nothing but the step counter; it
    reports which table or layer went non-finite (train_lib's caller stops or skips)."""
    model, collection, tx = engine.model, engine.collection, engine.tx

    def apply_gradients(state: TrainState, g_params, g_acts, ids) -> TrainState:
        if engine.cfg.optimizer.sparse:
            updates, opt_state = tx.update(g_params, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            emb = collection.apply_gradients(state.emb, ids, g_acts, state.step)
        else:
            grads = {"params": g_params, "tables": collection.dense_gradients(state.emb, ids, g_acts)}
            trainable = {"params": state.params, "tables": state.emb.tables}
            updates, opt_state = tx.update(grads, state.opt_state, trainable)
            trainable = optax.apply_updates(trainable, updates)
            params, emb = trainable["params"], state.emb.replace(tables=trainable["tables"])
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state, emb=emb)

    dropout_key = jax.random.key(engine.cfg.train.seed + 1)

    def train_step(state: TrainState, batch: dict):
        ids = feature_ids(model, batch)
        rows, overflowed = collection.lookup(state.emb, ids, with_overflow=True)
        rng = jax.random.fold_in(dropout_key, state.step)
        loss_fn = lambda p, r: _loss(engine, p, r, batch, ids, rng)  # noqa: E731
        loss, (g_params, g_acts) = jax.value_and_grad(loss_fn, argnums=(0, 1))(state.params, rows)
        checks = finite_checks(engine, loss, g_params, g_acts)
        finite = jnp.stack(list(checks.values()))
        new_state = jax.lax.cond(
            jnp.all(finite), apply_gradients, lambda s, *_: s.replace(step=s.step + 1), state, g_params, g_acts, ids
        )
        return new_state, {"loss": loss, "finite": finite, "sharding/overflow": overflowed}

    shardings = state_shardings(engine, engine.abstract_state)
    return jax.jit(train_step, donate_argnums=0, out_shardings=(shardings, engine.replicated()))


def ranking_fns(engine: Engine, num_items: int, k: int):
    """(acts, sweep, pick, predict): the evaluator's pure functions, unjitted (the planner
    compiles `sweep` on abstract inputs). Item inputs and activations arrive split over every
    device; queries, params and id lists are replicated."""
    model, collection, mesh = engine.model, engine.collection, engine.mesh

    def acts(emb, inputs):
        ids = feature_ids(model, inputs)
        return collection.pool(collection.lookup(emb, ids), ids)

    def score_block(query, item_block):
        params, query_acts, query_inputs = query
        return model.apply(params, query_acts, query_inputs, *item_block, method=model.score_all)

    def sweep(params, emb, item_acts, items, query, exclude_bx, targets_bt):
        return sweep_sharded(
            mesh,
            score_block,
            num_items,
            k,
            (params, acts(emb, query), query),
            (item_acts, items),
            exclude_bx,
            targets_bt,
        )

    def pick(params, emb, item_acts, items, query, items_bm):
        return pick_sharded(mesh, score_block, (params, acts(emb, query), query), (item_acts, items), items_bm)

    def predict(params, emb, batch):
        return model.apply(params, acts(emb, batch), batch)[:, 0]

    return acts, sweep, pick, predict


class RankingEvaluator:
    """Full-ranking (and rating) evaluation of a train state; its jitted pieces compile once per run.

    Queries and items go through the same collection lookups as training. The item inputs are
    padded (with repeats of the last item) to a multiple of the device count and their
    activations stay split over the mesh: each device scores its own block of the catalogue for a
    chunk of users, and only per-target counts and top-K ids come back (sharding/topk.py). Users
    go in chunks of eval_chunk_users (a multiple of the device count, capped by the memory
    budget)."""

    def __init__(self, engine: Engine, dataset: Dataset):
        self.engine, self.dataset = engine, dataset
        model = engine.model
        num_items, k = dataset.num_items, max(engine.cfg.train.ks)
        pad = -num_items % engine.num_devices
        self._items_host = {
            name: np.pad(v, [(0, pad)] + [(0, 0)] * (v.ndim - 1), mode="edge")
            for name, v in model.item_inputs(dataset).items()
        }
        self._items = jax.device_put(self._items_host, engine.batch_sharding())
        self._user_inputs: dict[str, dict] = {}
        self.chunk = eval_chunk_users(engine, num_items + pad)

        acts, sweep, pick, predict = ranking_fns(engine, num_items, k)
        self._item_acts, self._sweep, self._pick = jax.jit(acts), jax.jit(sweep), jax.jit(pick)
        self._predict = jax.jit(predict)

    @property
    def has_valid(self) -> bool:
        return len(self.dataset.split.valid) > 0

    def user_inputs(self, part: str) -> dict[str, np.ndarray]:
        if part not in self._user_inputs:
            self._user_inputs[part] = self.engine.model.user_inputs(self.dataset, part)
        return self._user_inputs[part]

    def _query(self, part: str, users_b) -> dict[str, np.ndarray]:
        users = self.user_inputs(part)
        return {name: values[np.asarray(users_b)] for name, values in users.items()}

    def sweep_fn(self, state: TrainState, part: str):
        """(users_b, exclude_bx, targets_bt) -> Sweep, for evaluate_ranking_sweeps (replicated,
        so in a multi-process run every process holds it)."""
        item_acts = self._item_acts(state.emb, self._items)

        def sweep(users_b, exclude_bx, targets_bt):
            out = self._sweep(
                state.params, state.emb, item_acts, self._items, self._query(part, users_b), exclude_bx, targets_bt
            )
            return jax.tree.map(gathered, out)

        return sweep

    def pick_fn(self, state: TrainState, part: str):
        """(users_b, items_bm) -> scores_bm, for evaluate_sampled_picks."""
        item_acts = self._item_acts(state.emb, self._items)
        return lambda users_b, items_bm: gathered(
            self._pick(state.params, state.emb, item_acts, self._items, self._query(part, users_b), items_bm)
        )

    def predict_fn(self, state: TrainState, part: str):
        """(users_b, items_b) -> predicted ratings, for evaluate_ratings."""
        users = self.user_inputs(part)

        def predict(users_b, items_b):
            users_b, items_b = np.asarray(users_b), np.asarray(items_b)[:, None]
            batch = {name: values[users_b] for name, values in users.items()} | {
                name: values[items_b] for name, values in self._items_host.items()
            }
            return gathered(self._predict(state.params, state.emb, batch))

        return predict

    def __call__(self, state: TrainState, part: str) -> dict[str, float]:
        """Metrics on `valid` or `test`, excluding train items (and valid items when testing)."""
        split, cfg = self.dataset.split, self.engine.cfg
        targets = getattr(split, part)
        if not cfg.train.ranking_metrics:  # a rating run: skips the ranking's compiles (~8 s per part on 2 cores)
            return evaluate_ratings(self.predict_fn(state, part), targets)
        exclude = [split.valid] if part == "test" else []
        sweep_fn = self.sweep_fn(state, part)
        metrics = evaluate_ranking_sweeps(
            sweep_fn, split.train, targets, exclude=exclude, ks=cfg.train.ks, batch_size=self.chunk
        )
        cold_u = np.bincount(split.train.user, minlength=split.train.num_users) <= cfg.data.cold_max_train
        if cold_u[targets.user].any():  # the cold-start slice, when the data has one
            cold = evaluate_ranking_sweeps(
                sweep_fn,
                split.train,
                targets.subset(np.flatnonzero(cold_u[targets.user])),
                exclude=exclude,
                ks=cfg.train.ks,
                batch_size=self.chunk,
            )
            metrics |= {f"cold/{name}": value for name, value in cold.items()}
        if cfg.train.sampled_negatives:  # NCF's protocol, next to full ranking (Krichene & Rendle, 2020)
            sampled = evaluate_sampled_picks(
                self.pick_fn(state, part),
                split.train,
                targets,
                exclude=exclude,
                ks=cfg.train.ks,
                num_negatives=cfg.train.sampled_negatives,
                seed=cfg.train.data_seed,
                batch_size=self.chunk,
            )
            metrics |= {f"sampled/{name}": value for name, value in sampled.items()}
        if cfg.model.loss == "mse":
            metrics |= evaluate_ratings(self.predict_fn(state, part), targets)
        return metrics


def eval_chunk_users(engine: Engine, padded_items: int) -> int:
    """Users per evaluation chunk: train.eval_batch_size rounded up to a multiple of the device
    count (the query lookups split a chunk over every device), lowered while one chunk's
    [users, items per device] float32 scores would take more than an eighth of the memory budget."""
    devices, budget = engine.num_devices, engine.cfg.sharding.memory_budget_gb * 1e9
    requested = -(-engine.cfg.train.eval_batch_size // devices) * devices
    per_user = padded_items // devices * 4 * EVAL_TEMPORARIES_PER_SCORE
    fits = int(budget / 8 // max(per_user, 1)) // devices * devices
    return max(devices, min(requested, fits))


EVAL_TEMPORARIES_PER_SCORE = 4  # a score, its masked copy, the exclusion mask, one comparison temporary


def make_evaluator(engine: Engine, dataset):
    """evaluator(state, part) -> metrics: full ranking, or logloss and AUC for CTR models."""
    if engine.model.batches == "ctr":
        from jaxrec.eval.ctr import CtrEvaluator

        return CtrEvaluator(engine, dataset)
    return RankingEvaluator(engine, dataset)


def abstract_inputs(engine: Engine, batch_size: int):
    """ShapeDtypeStructs (with shardings) of the train step's inputs: nothing is allocated."""
    state = engine.abstract_state
    shardings = state_shardings(engine, state)
    state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), state, shardings)
    batch = jax.eval_shape(lambda: _example_batch(engine, batch_size))
    batch = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=engine.batch_sharding()), batch)
    return state, batch


def dense_bytes(engine: Engine) -> int:
    """Dense parameters and their optimiser state (replicated on every device)."""
    state = engine.abstract_state
    leaves = jax.tree.leaves((state.params, state.opt_state if engine.cfg.optimizer.sparse else ()))
    return sum(leaf.size * leaf.dtype.itemsize for leaf in leaves)


def dense_param_bytes(engine: Engine) -> int:
    """The dense parameters alone: the size of the gradient all-reduced every step."""
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(engine.abstract_state.params))


def compile_step(engine: Engine, batch_size: int):
    """The train step compiled on abstract inputs (nothing allocated), for its memory and HLO."""
    return make_train_step(engine).lower(*abstract_inputs(engine, batch_size)).compile()


def compiled_step_bytes(engine: Engine, batch_size: int, compiled=None) -> int:
    """XLA's per-device memory for the train step: argument + output - alias + temp bytes."""
    stats = (compiled or compile_step(engine, batch_size)).memory_analysis()
    return int(
        stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes + stats.temp_size_in_bytes
    )


def resolve_batch_size(engine: Engine, max_batch: int = 1 << 20) -> int:
    """The configured batch, or the largest power of two that fits (`auto`); fails before any
    allocation if the plan does not fit the memory budget."""
    from jaxrec.sharding.memory import check_fits, estimate_memory, largest_batch_that_fits

    cfg, plan = engine.cfg, engine.plan
    budget, dense = cfg.sharding.memory_budget_gb * 1e9, dense_bytes(engine)
    if cfg.train.batch_size == "auto":
        batch_size = largest_batch_that_fits(plan, budget, dense, max_batch)
        log.info(
            "train.batch_size=auto chose %d (memory budget %.3g GB per device)",
            batch_size,
            cfg.sharding.memory_budget_gb,
        )
    else:
        batch_size = int(cfg.train.batch_size)
    check_batch_size(batch_size, plan.num_devices, plan.mesh_shape)
    check_fits(plan, estimate_memory(plan, batch_size, dense), budget)
    return batch_size


def check_batch_size(batch_size: int, num_devices: int, mesh_shape) -> None:
    if batch_size % num_devices:
        raise JaxrecError(
            f"train.batch_size={batch_size} does not divide across the mesh's {num_devices} devices "
            f"(data x model = {mesh_shape[0]}x{mesh_shape[1]}; every device takes an equal slice); "
            f"use a multiple of {num_devices}"
        )


def check_before_data(cfg: Config, num_devices: int | None = None) -> None:
    """Every shape the run needs, checked against the mesh before any data loads: the train batch
    splits evenly over the mesh's devices (evaluation rounds its chunks up to a multiple of the
    device count, so it cannot fail); where the config alone gives the data's size (synthetic, MovieLens without
    filters), the batch and the metric cutoffs also fit the data."""
    from jaxrec.data.dataset import data_schema

    shape = resolve_mesh_shape(cfg.sharding.mesh, len(jax.devices()) if num_devices is None else num_devices)
    devices = shape[0] * shape[1]
    if isinstance(cfg.train.batch_size, int):
        check_batch_size(cfg.train.batch_size, devices, shape)
    if cfg.data.name == "synthetic" and isinstance(cfg.train.batch_size, int):
        check_split_fits_batch(cfg.train.batch_size, cfg.data.num_interactions, "data.num_interactions")
    check_generated_data_fits_memory(cfg.data)
    try:
        schema = data_schema(cfg.data)
    except JaxrecError:  # a file's size is known once it is read: check_data_fits then
        return
    if not schema.example_fields:  # CTR data is scored per example, not ranked
        check_catalogue(cfg, schema.num_items)


# Bytes a generated data set holds at least, per user or item (its latent factors and side
# features), per interaction (str ids in pandas, ratings, times, then the int32 encoded arrays) and
# per CTR example (float32 dense and int32 categorical values): a floor, not an estimate of the peak.
GENERATED_BYTES = {"entity": 64, "interaction": 100, "ctr_value": 4}


def check_generated_data_fits_memory(data) -> None:
    """A generated data set larger than this machine's memory fails here, in one line, instead of
    as an allocation error from inside numpy."""
    if data.name == "synthetic":
        need = GENERATED_BYTES["entity"] * (data.num_users + data.num_items)
        need += GENERATED_BYTES["interaction"] * data.num_interactions
        keys = "data.num_users, data.num_items and data.num_interactions"
    elif data.name == "criteo_synthetic":
        need = GENERATED_BYTES["ctr_value"] * data.num_examples * (1 + data.num_dense + data.num_sparse)
        keys = "data.num_examples"
    else:
        return
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > memory:
        raise JaxrecError(
            f"config keys {keys}: generating this data set needs at least {need / 2**30:,.1f} GiB, "
            f"more than this machine's {memory / 2**30:,.1f} GiB of memory"
        )


def check_split_fits_batch(batch_size: int, examples: int, what: str) -> None:
    if examples < batch_size:
        raise JaxrecError(
            f"train.batch_size={batch_size} is larger than the training split ({what}: {examples} "
            f"examples), so an epoch would have no step; use a batch of at most {examples}"
        )


def check_catalogue(cfg: Config, num_items: int) -> None:
    """Cutoffs and sampled negatives need that many items to rank."""
    if cfg.train.ranking_metrics and max(cfg.train.ks) > num_items:
        raise JaxrecError(
            f"config key train.ks={list(cfg.train.ks)}: cutoff {max(cfg.train.ks)} exceeds the "
            f"catalogue's {num_items} items; use cutoffs of at most {num_items}"
        )
    if cfg.train.sampled_negatives >= num_items:
        raise JaxrecError(
            f"config key train.sampled_negatives={cfg.train.sampled_negatives}: the catalogue has "
            f"{num_items} items; use fewer negatives than that"
        )


def check_data_fits(engine: Engine, dataset, batch_size: int) -> None:
    """After the data loads and before anything compiles: an epoch has at least one batch, and
    evaluation has enough items to rank (cutoffs, and sampled negatives every user can draw)."""
    from jaxrec.data.pipeline import train_examples

    cfg = engine.cfg
    check_split_fits_batch(batch_size, train_examples(engine.model, dataset), "after preprocessing and the split")
    if engine.model.batches == "ctr":
        return
    check_catalogue(cfg, dataset.num_items)
    inter = dataset.interactions
    most_seen = int(np.bincount(inter.user, minlength=inter.num_users).max(initial=0))
    if cfg.train.select_metric.startswith("cold/"):
        train = dataset.split.train
        cold_u = np.bincount(train.user, minlength=train.num_users) <= cfg.data.cold_max_train
        if not cold_u[dataset.split.valid.user].any():
            raise JaxrecError(
                f"config key train.select_metric={cfg.train.select_metric!r}: no validation user has at most "
                f"data.cold_max_train={cfg.data.cold_max_train} training interactions, so there is no cold-start "
                "slice to select on (data.cold_users > 0 makes one)"
            )
    if cfg.train.sampled_negatives > dataset.num_items - most_seen:
        raise JaxrecError(
            f"config key train.sampled_negatives={cfg.train.sampled_negatives}: a user has "
            f"interacted with {most_seen} of the {dataset.num_items} items, leaving "
            f"{dataset.num_items - most_seen} to sample; use at most that many"
        )
