"""Train state, the pure train step, evaluation, and the training loop with its outputs.

The step is one jitted pure function (state, batch) -> (state, metrics): embedding
activations from the collection, gradients of the model w.r.t. its dense parameters (optax)
and w.r.t. the activations (handed back to the collection as sparse row updates).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxrec.config import Config, scaled_lr, table_optimizer_name, to_dict
from jaxrec.data.dataset import Dataset, load_dataset
from jaxrec.data.pipeline import make_train_dataset, steps_per_epoch
from jaxrec.embedding import EmbeddingCollection, EmbeddingState
from jaxrec.errors import JaxrecError
from jaxrec.eval import evaluate_ranking, evaluate_ratings
from jaxrec.models import make_model
from jaxrec.models.losses import LOSSES
from jaxrec.progress import MetricsLog, Progress, write_json_atomic
from jaxrec.sharding import strategies
from jaxrec.sharding.mesh import make_mesh, resolve_mesh_shape
from jaxrec.sharding.planner import EmbeddingPlan, make_plan

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

    def batch_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, strategies.BATCH_SPEC)

    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())


def candidates_per_example(cfg: Config) -> int:
    return 1 if cfg.model.loss == "mse" else 1 + cfg.data.num_negatives


def make_dense_optimizer(cfg: Config) -> optax.GradientTransformation:
    make = {"adam": optax.adam, "adagrad": optax.adagrad, "sgd": optax.sgd}[cfg.optimizer.name]
    return make(scaled_lr(cfg, cfg.optimizer.lr))


def build_engine(cfg: Config, num_users: int, num_items: int, devices=None) -> Engine:
    devices = list(devices if devices is not None else jax.devices())
    shape = resolve_mesh_shape(cfg.sharding.mesh, len(devices))
    model = make_model(cfg.model, num_users, num_items)
    table_opt = table_optimizer_name(cfg.optimizer) if cfg.optimizer.sparse else "sgd"
    table_lr = scaled_lr(cfg, cfg.optimizer.table_lr if cfg.optimizer.table_lr is not None else cfg.optimizer.lr)
    specs = model.tables(table_opt, table_lr, candidates_per_example(cfg))
    plan = make_plan(specs, shape, cfg.sharding.strategy, cfg.sharding.tables, cfg.sharding.memory_budget_gb * 1e9)
    mesh = make_mesh(shape, devices)
    return Engine(cfg, model, EmbeddingCollection(plan, mesh, model.features()), make_dense_optimizer(cfg), mesh)


def _example_batch(engine: Engine, batch_size: int) -> dict[str, jax.Array]:
    c = candidates_per_example(engine.cfg)
    return {"user": jnp.zeros((batch_size, 1), jnp.int32), "item": jnp.zeros((batch_size, c), jnp.int32),
            "label": jnp.zeros((batch_size, c), jnp.float32)}


def _zero_activations(engine: Engine, batch: dict) -> dict[str, jax.Array]:
    ids = engine.model.feature_ids(batch)
    dims = {f: engine.collection.specs[t].dim for f, t in engine.collection.features.items()}
    return {f: jnp.zeros((*ids[f].shape, dims[f]), jnp.float32) for f in ids}


def init_state(engine: Engine, seed: int) -> TrainState:
    """Parameters created already placed: tables sharded by the plan, dense ones replicated."""
    rng_params, rng_tables = jax.random.split(jax.random.key(seed))
    batch = _example_batch(engine, 1)
    params = engine.model.init(rng_params, _zero_activations(engine, batch), batch)
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
            engine.tx, lambda _: replicated, state.opt_state,
            transform_non_params=lambda _: replicated,
        )
    return TrainState(step=replicated, params=jax.tree.map(lambda _: replicated, state.params),
                      opt_state=opt_state, emb=emb)


def _loss(engine: Engine, params, acts, batch):
    logits = engine.model.apply(params, acts, batch)
    loss = LOSSES[engine.cfg.model.loss](logits, batch["label"])
    if engine.cfg.model.l2:
        loss = loss + engine.cfg.model.l2 * sum(jnp.mean(jnp.sum(jnp.square(a), axis=tuple(range(1, a.ndim))))
                                                for a in acts.values())
    return loss


def make_train_step(engine: Engine):
    """The pure train step, jitted with the state donated so tables update in place."""
    model, collection, tx = engine.model, engine.collection, engine.tx

    def train_step(state: TrainState, batch: dict):
        ids = model.feature_ids(batch)
        acts = collection.lookup(state.emb, ids)
        loss, (g_params, g_acts) = jax.value_and_grad(lambda p, a: _loss(engine, p, a, batch), argnums=(0, 1))(
            state.params, acts
        )
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
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, emb=emb)
        return new_state, {"loss": loss}

    shardings = state_shardings(engine, jax.eval_shape(lambda: init_state(engine, 0)))
    return jax.jit(train_step, donate_argnums=0, out_shardings=(shardings, engine.replicated()))


class RankingEvaluator:
    """Full-ranking (and rating) evaluation of a train state; its jitted pieces compile once per run."""

    def __init__(self, engine: Engine, dataset: Dataset):
        self.engine, self.dataset = engine, dataset
        model, collection = engine.model, engine.collection
        self._item_tables = jax.jit(lambda emb: {n: collection.table(emb, n) for n in model.item_tables()})

        def score(params, emb, tables, users_b):
            acts = collection.lookup(emb, model.query_ids(users_b))
            return model.apply(params, acts, tables, method=model.score_all)

        def predict(params, emb, user_b, item_b):
            batch = {"user": user_b[:, None], "item": item_b[:, None]}
            return model.apply(params, collection.lookup(emb, model.feature_ids(batch)), batch)[:, 0]

        self._score, self._predict = jax.jit(score), jax.jit(predict)

    def score_fn(self, state: TrainState):
        """users_b -> scores_bn over every item, for evaluate_ranking."""
        tables = self._item_tables(state.emb)
        return lambda users_b: self._score(state.params, state.emb, tables, users_b)

    def __call__(self, state: TrainState, part: str) -> dict[str, float]:
        """Metrics on `valid` or `test`, excluding train items (and valid items when testing)."""
        split, cfg = self.dataset.split, self.engine.cfg
        targets = getattr(split, part)
        exclude = [split.valid] if part == "test" else []
        metrics = evaluate_ranking(self.score_fn(state), split.train, targets, exclude=exclude,
                                   ks=cfg.train.ks, batch_size=cfg.train.eval_batch_size)
        if cfg.model.loss == "mse":
            predict = lambda u, i: self._predict(state.params, state.emb, u, i)  # noqa: E731
            metrics |= evaluate_ratings(predict, targets)
        return metrics


def abstract_inputs(engine: Engine, batch_size: int):
    """ShapeDtypeStructs (with shardings) of the train step's inputs: nothing is allocated."""
    state = jax.eval_shape(lambda: init_state(engine, 0))
    shardings = state_shardings(engine, state)
    state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), state, shardings)
    batch = jax.eval_shape(lambda: _example_batch(engine, batch_size))
    batch = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=engine.batch_sharding()), batch)
    return state, batch


def dense_bytes(engine: Engine) -> int:
    """Dense parameters and their optimiser state (replicated on every device)."""
    state = jax.eval_shape(lambda: init_state(engine, 0))
    leaves = jax.tree.leaves((state.params, state.opt_state if engine.cfg.optimizer.sparse else ()))
    return sum(leaf.size * leaf.dtype.itemsize for leaf in leaves)


def compiled_step_bytes(engine: Engine, batch_size: int) -> int:
    """XLA's per-device memory for the train step: argument + output - alias + temp bytes."""
    stats = make_train_step(engine).lower(*abstract_inputs(engine, batch_size)).compile().memory_analysis()
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
               + stats.temp_size_in_bytes)


def resolve_batch_size(engine: Engine, max_batch: int = 1 << 20) -> int:
    """The configured batch, or the largest power of two that fits (`auto`); fails before any
    allocation if the plan does not fit the memory budget."""
    from jaxrec.sharding.memory import check_fits, estimate_memory, largest_batch_that_fits

    cfg, plan = engine.cfg, engine.plan
    budget, dense = cfg.sharding.memory_budget_gb * 1e9, dense_bytes(engine)
    if cfg.train.batch_size == "auto":
        batch_size = largest_batch_that_fits(plan, budget, dense, max_batch)
        log.info("train.batch_size=auto chose %d (memory budget %.3g GB per device)", batch_size,
                 cfg.sharding.memory_budget_gb)
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


@dataclasses.dataclass
class _Best:
    epoch: int = -1
    valid: dict = dataclasses.field(default_factory=dict)
    test: dict = dataclasses.field(default_factory=dict)


def _evaluate_epoch(evaluate: RankingEvaluator, state, epoch, best: _Best, metrics_log: MetricsLog) -> None:
    """Validation metrics; when they improve, test metrics of this epoch become the reported ones."""
    select = evaluate.engine.cfg.train.select_metric
    start = time.perf_counter()
    valid = evaluate(state, "valid") if len(evaluate.dataset.split.valid) else {}
    improved = not best.valid or valid.get(select, -np.inf) > best.valid.get(select, -np.inf)
    if improved:
        best.epoch, best.valid = epoch, valid
        best.test = evaluate(state, "test")
    record = {"step": int(state.step), "epoch": epoch, "eval/seconds": time.perf_counter() - start}
    record |= {f"eval/valid/{k}": v for k, v in valid.items()}
    metrics_log.write(record)
    log.info("epoch %d valid %s=%.4f%s", epoch, select, valid.get(select, float("nan")),
             " (best)" if improved else "")


def _train_record(step: int, epoch: int, loss: float, examples: int, seconds: float, devices: int) -> dict:
    rate = examples / max(seconds, 1e-9)
    return {"step": step, "epoch": epoch, "train/loss": loss, "perf/examples_per_sec": rate,
            "perf/examples_per_sec_per_device": rate / devices}


def _eval_due(cfg: Config, step: int, per_epoch: int, total: int) -> bool:
    epoch_end = step % per_epoch == 0
    return step == total or (epoch_end and cfg.train.eval_every > 0 and (step // per_epoch) % cfg.train.eval_every == 0)


def run(cfg: Config, run_dir: Path) -> dict:
    """Train, evaluate every `eval_every` epochs, and write metrics.jsonl and results.json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(cfg.data)
    engine = build_engine(cfg, dataset.num_users, dataset.num_items)
    batch_size = resolve_batch_size(engine, max_batch=len(dataset.split.train))
    per_epoch = steps_per_epoch(len(dataset.split.train), batch_size)
    if per_epoch == 0:
        raise JaxrecError(f"train.batch_size={batch_size} exceeds the {len(dataset.split.train)} training "
                          "interactions; lower it")
    loader = make_train_dataset(dataset.split.train, dataset.num_items, batch_size=batch_size,
                                epochs=cfg.train.epochs, num_negatives=cfg.data.num_negatives,
                                loss=cfg.model.loss, seed=cfg.train.data_seed)
    total = min(len(loader), cfg.train.max_steps or len(loader))
    state = init_state(engine, cfg.train.seed)
    step_fn, evaluate = make_train_step(engine), RankingEvaluator(engine, dataset)
    batch_sharding = engine.batch_sharding()
    metrics_log, progress, best = MetricsLog(run_dir / "metrics.jsonl"), Progress(total, cfg.train.progress), _Best()
    losses, window_start, compile_s, eval_s, loop_start = [], time.perf_counter(), 0.0, 0.0, time.perf_counter()
    for step, batch in zip(range(1, total + 1), loader.to_iter_dataset()):
        state, out = step_fn(state, jax.device_put(batch, batch_sharding))
        losses.append(out["loss"])
        if step == 1:
            jax.block_until_ready(state)
            compile_s = time.perf_counter() - loop_start
            window_start = time.perf_counter()
        if step % cfg.train.log_every == 0 or step == total:
            mean_loss = float(np.mean(jax.device_get(losses)))
            seconds = time.perf_counter() - window_start
            metrics_log.write(_train_record(step, step / per_epoch, mean_loss, len(losses) * batch_size, seconds,
                                            engine.num_devices))
            progress.update(step, loss=mean_loss)
            losses, window_start = [], time.perf_counter()
        if _eval_due(cfg, step, per_epoch, total):
            tick = time.perf_counter()
            _evaluate_epoch(evaluate, state, step / per_epoch, best, metrics_log)
            eval_s += time.perf_counter() - tick
            window_start += time.perf_counter() - tick
        progress.update(step)
    metrics_log.close()
    train_s = time.perf_counter() - loop_start - eval_s
    results = make_results(cfg, engine, dataset, best, steps=total, batch_size=batch_size,
                           train_seconds=train_s, compile_seconds=compile_s)
    write_json_atomic(run_dir / "results.json", results)
    return results


def make_results(cfg, engine, dataset, best: _Best, *, steps, batch_size, train_seconds, compile_seconds) -> dict:
    """train.wall_s includes compilation; examples_per_sec excludes the first (compiling) step."""
    rate = max(steps - 1, 0) * batch_size / max(train_seconds - compile_seconds, 1e-9)
    return {
        "dataset": dataset.name,
        "model": cfg.model.name,
        "loss": cfg.model.loss,
        "num_devices": engine.num_devices,
        "metrics": best.test,
        "valid_metrics": best.valid,
        "best_epoch": best.epoch,
        "train": {
            "epochs": cfg.train.epochs,
            "steps": steps,
            "batch_size": batch_size,
            "batch_size_auto": cfg.train.batch_size == "auto",
            "wall_s": train_seconds,
            "compile_s": compile_seconds,
            "examples_per_sec": rate,
            "examples_per_sec_per_device": rate / engine.num_devices,
        },
        "data": {"num_users": dataset.num_users, "num_items": dataset.num_items,
                 "num_interactions": len(dataset.interactions), "drop_counts": dataset.drop_counts},
        "sharding": sharding_summary(engine),
        "config": to_dict(cfg),
    }


def sharding_summary(engine: Engine) -> dict:
    from jaxrec.sharding.memory import table_bytes_per_device

    plan = engine.plan
    return {
        "strategy": engine.cfg.sharding.strategy,
        "mesh": {"data": plan.mesh_shape[0], "model": plan.mesh_shape[1]},
        "tables": {name: {"strategy": place.strategy, "bytes_per_device": table_bytes_per_device(plan, name)}
                   for name, place in plan.placements.items()},
    }
