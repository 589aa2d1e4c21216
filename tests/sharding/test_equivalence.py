"""Every strategy, on 1-D and 2-D meshes, trains exactly like the single-device reference."""

import jax
import numpy as np
import pytest

from jaxrec.config import Config, compose_config
from jaxrec.data.types import Schema
from jaxrec.errors import JaxrecError
from jaxrec.train_lib import build_engine, check_batch_size, init_state, make_train_step

NUM_USERS, NUM_ITEMS = 37, 53  # not divisible by 8, 4 or 2: exercises padding
BATCH, NEGATIVES, STEPS = 32, 3, 20


def _config(strategy: str, mesh: tuple[int, int], optimizer: str, table_optimizer: str | None) -> Config:
    cfg = compose_config([])
    cfg.sharding.strategy = strategy
    cfg.sharding.mesh.data, cfg.sharding.mesh.model = mesh
    cfg.sharding.memory_budget_gb = 12e-6  # tiny, so `auto` replicates, places and splits tables
    cfg.optimizer.name, cfg.optimizer.lr = optimizer, 0.05
    cfg.optimizer.table_optimizer = table_optimizer
    cfg.model.dim = 6  # not divisible by 4 or 8: exercises column padding
    cfg.data.num_negatives = NEGATIVES
    return cfg


def _batches():
    """Random batches, batches full of duplicate ids, and batches whose ids all hit one shard."""
    rng = np.random.default_rng(0)
    for step in range(STEPS):
        users = rng.integers(0, NUM_USERS, (BATCH, 1))
        items = rng.integers(0, NUM_ITEMS, (BATCH, 1 + NEGATIVES))
        kind = ("random", "duplicates", "one_shard")[step % 3]
        if kind == "duplicates":
            users[: BATCH // 2] = 5
            items[:, 1] = items[0, 0]
        elif kind == "one_shard":  # every id on row-wise shard 0 of 8 (and of 4, 2)
            users = (users // 8) * 8
            items = (items // 8) * 8
        labels = np.zeros(items.shape, np.float32)
        labels[:, 0] = 1
        yield {"user": users.astype(np.int32), "item": items.astype(np.int32), "label": labels}


def _train(cfg: Config):
    engine = build_engine(cfg, Schema(NUM_USERS, NUM_ITEMS))
    state = init_state(engine, seed=0)
    step = make_train_step(engine)
    losses, overflowed = [], []
    for batch in _batches():
        state, out = step(state, jax.device_put(batch, engine.batch_sharding()))
        losses.append(float(out["loss"]))
        overflowed.append(bool(out["sharding/overflow"]))
    tables = {name: np.asarray(engine.collection.table(state.emb, name)) for name in engine.collection.specs}
    return tables, jax.device_get(state.params), np.array(losses), step, np.array(overflowed)


CASES = [
    ("adam", None, "data_parallel", (8, 1)),
    ("adam", None, "table_wise", (1, 8)),
    ("adam", None, "table_wise", (2, 4)),
    ("adam", None, "table_row_wise", (1, 8)),
    ("adam", None, "table_row_wise", (2, 4)),
    ("adam", None, "row_wise", (1, 8)),
    ("adam", None, "row_wise", (4, 2)),
    ("adam", None, "row_wise", (8, 1)),
    ("adam", None, "column_wise", (1, 8)),
    ("adam", None, "column_wise", (2, 4)),
    ("adam", None, "auto", (1, 8)),
    ("adam", None, "auto", (2, 4)),
    ("adagrad", "rowwise_adagrad", "row_wise", (1, 8)),
    ("adagrad", "rowwise_adagrad", "row_wise", (2, 4)),
    ("adagrad", "rowwise_adagrad", "column_wise", (2, 4)),
    ("adagrad", "rowwise_adagrad", "auto", (4, 2)),
]
_REFERENCES = {}


def _reference(optimizer, table_optimizer):
    key = (optimizer, table_optimizer)
    if key not in _REFERENCES:
        _REFERENCES[key] = _train(_config("none", (1, 1), optimizer, table_optimizer))
    return _REFERENCES[key]


@pytest.mark.parametrize("optimizer,table_optimizer,strategy,mesh", CASES)
def test_strategy_matches_single_device(optimizer, table_optimizer, strategy, mesh):
    """20 steps (lazy Adam or row-wise Adagrad tables, Adam/Adagrad dense) equal `none`. Row-wise
    exchanges over 4 or 8 shards take extra rounds whenever every id lies on one shard."""
    ref_tables, ref_params, ref_losses, *_ = _reference(optimizer, table_optimizer)
    tables, params, losses, step, overflowed = _train(_config(strategy, mesh, optimizer, table_optimizer))
    if strategy == "row_wise" and mesh[1] >= 4:  # C = 1.5 x 20 keys / model: 4 or 8 keys a bucket
        assert overflowed[2::3].all(), "batches with every id on one shard must overflow the buckets"
    if mesh[1] == 1 or strategy in ("data_parallel", "column_wise"):
        assert not overflowed.any()
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for name, ref in ref_tables.items():
        np.testing.assert_allclose(tables[name], ref, rtol=1e-5, atol=1e-6, err_msg=name)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), params, ref_params)
    assert step._cache_size() == 1, "the train step compiled more than once"


def test_a_capacity_so_small_that_every_step_overflows_still_trains_exactly():
    """capacity_factor 0.01 leaves C = 2 keys per (owner, round) bucket: every step takes several
    rounds (and, on the 2 x 4 mesh, gathers each round over `data`), with unchanged results."""
    ref_tables, ref_params, ref_losses, *_ = _reference("adagrad", "rowwise_adagrad")
    cfg = _config("row_wise", (2, 4), "adagrad", "rowwise_adagrad")
    cfg.sharding.capacity_factor = 0.01
    tables, params, losses, step, overflowed = _train(cfg)
    assert overflowed.all() and step._cache_size() == 1
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for name, ref in ref_tables.items():
        np.testing.assert_allclose(tables[name], ref, rtol=1e-5, atol=1e-6, err_msg=name)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), params, ref_params)


def test_auto_plan_replicates_small_and_splits_large_tables():
    engine = build_engine(_config("auto", (1, 8), "adam", None), Schema(NUM_USERS, NUM_ITEMS))
    chosen = {name: p.strategy for name, p in engine.plan.placements.items()}
    assert chosen == {
        "user_bias": "data_parallel",
        "item_bias": "data_parallel",
        "user": "row_wise",
        "item": "row_wise",
    }


def test_tables_really_are_sharded():
    engine = build_engine(_config("row_wise", (1, 8), "adam", None), Schema(NUM_USERS, NUM_ITEMS))
    state = init_state(engine, seed=0)
    for array in state.emb.tables.values():
        shard_rows = {s.data.shape[0] for s in array.addressable_shards}
        assert shard_rows == {array.shape[0] // 8}


def test_batch_not_divisible_by_mesh_fails_clearly():
    with pytest.raises(JaxrecError, match=r"train.batch_size=30 does not divide across the mesh's 8 devices"):
        check_batch_size(30, 8, (2, 4))


def test_none_rejects_a_multi_device_mesh():
    cfg = _config("none", (1, 8), "adam", None)
    with pytest.raises(JaxrecError, match="'none' needs a 1x1 mesh"):
        build_engine(cfg, Schema(NUM_USERS, NUM_ITEMS))


def test_bfloat16_tables_train_sharded_like_single_device():
    """bf16 rows (float32 slots and optimiser math): row_wise on 8 devices stays within bf16
    rounding of the single-device run."""

    def bf16(strategy, mesh):
        cfg = _config(strategy, mesh, "adam", None)
        cfg.model.embedding_dtype = "bfloat16"
        return cfg

    ref_tables, _, ref_losses, *_ = _train(bf16("none", (1, 1)))
    tables, _, losses, *_ = _train(bf16("row_wise", (2, 4)))
    assert {t.dtype for t in tables.values()} == {np.dtype(jax.numpy.bfloat16)}
    np.testing.assert_allclose(losses, ref_losses, rtol=2e-2)
    for name, ref in ref_tables.items():
        np.testing.assert_allclose(
            tables[name].astype(np.float32), ref.astype(np.float32), rtol=5e-2, atol=5e-3, err_msg=name
        )
