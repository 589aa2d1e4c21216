"""Simulate an 8-device mesh on the CPU; must run before jax is imported anywhere.

The suite also shares one persistent XLA compilation cache per run between the xdist workers
and every subprocess a test starts (they inherit the environment): identical programs (a
resumed run and its uninterrupted twin, the processes of a group, one config in several tests)
compile once. The controller makes the directory before the workers start and removes it at the
end."""

import os
import shutil
import tempfile

from jaxrec.config import SIMULATED_COLLECTIVE_TIMEOUT  # imports no jax: XLA_FLAGS is still unread

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8", SIMULATED_COLLECTIVE_TIMEOUT]
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE = tempfile.mkdtemp(prefix="jaxrec-test-xla-cache-")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
else:
    _OWN_CACHE = None

import copy  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def _one_step(cfg, schema, batch):
    """(loss, logical tables, dense params) after one train step of `batch` under cfg's plan."""
    import jax

    from jaxrec.train_lib import build_engine, init_state, make_train_step

    engine = build_engine(cfg, schema)
    state = init_state(engine, seed=0)
    state, out = make_train_step(engine)(state, jax.device_put(batch, engine.batch_sharding()))
    tables = {name: np.asarray(engine.collection.table(state.emb, name)) for name in engine.collection.specs}
    return float(out["loss"]), tables, jax.device_get(state.params)


@pytest.fixture
def assert_sharded_step_matches():
    """check(cfg, schema, batch): one step under row_wise and under auto on 8 devices (mesh 2x4,
    so both axes are exercised) equals the single-device step to 1e-5."""
    import jax

    def check(cfg, schema, batch, strategies=("row_wise", "auto")):
        reference = copy.deepcopy(cfg)
        reference.sharding.strategy, reference.sharding.mesh.data, reference.sharding.mesh.model = "none", 1, 1
        ref_loss, ref_tables, ref_params = _one_step(reference, schema, batch)
        for strategy in strategies:
            sharded = copy.deepcopy(cfg)
            sharded.sharding.strategy, sharded.sharding.mesh.data, sharded.sharding.mesh.model = strategy, 2, 4
            sharded.sharding.memory_budget_gb = 1e-5  # small: `auto` must split the large tables
            loss, tables, params = _one_step(sharded, schema, batch)
            np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, err_msg=strategy)
            for name, ref in ref_tables.items():
                np.testing.assert_allclose(tables[name], ref, rtol=1e-5, atol=1e-6, err_msg=f"{strategy} {name}")
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), params, ref_params)

    return check


@pytest.fixture
def pair_batches():
    """batches(cfg, dataset, engine, count): the first `count` training batches of the pair
    pipeline, as a run with cfg would draw them."""
    from jaxrec.data.pipeline import make_train_dataset
    from jaxrec.train_lib import candidates_per_example

    def batches(cfg, dataset, engine, count):
        loader, _ = make_train_dataset(
            engine.model,
            dataset,
            num_negatives=candidates_per_example(cfg) - 1,
            loss=cfg.model.loss,
            batch_size=cfg.train.batch_size,
            epochs=20,
            seed=0,
        )
        return [loader[i] for i in range(count)]

    return batches


@pytest.fixture(scope="session")
def train_sequence_batch():
    """train(cfg, dataset, steps, batch_size, num_negatives): the first sequence batch trained
    `steps` times -> (engine, batch, item table and dense params after the first step, loss of
    every step); what the SASRec and BERT4Rec tests compare across strategies."""
    import jax

    from jaxrec.data.sequences import make_sequence_dataset
    from jaxrec.train_lib import build_engine, init_state, make_train_step

    def train(cfg, dataset, steps: int, batch_size: int, num_negatives: int):
        engine = build_engine(cfg, dataset.schema)
        batch = make_sequence_dataset(
            engine.model, dataset, batch_size=batch_size, epochs=1, num_negatives=num_negatives, seed=0
        )[0]
        step, state, losses = make_train_step(engine), init_state(engine, 0), []
        for i in range(steps):
            state, out = step(state, jax.device_put(batch, engine.batch_sharding()))
            losses.append(float(out["loss"]))
            if i == 0:  # copied out: the next step donates the state
                first = np.asarray(engine.collection.table(state.emb, "item")), jax.device_get(state.params)
        return engine, batch, *first, np.array(losses)

    return train


def pytest_sessionfinish(session):
    if _OWN_CACHE is not None and not hasattr(session.config, "workerinput"):  # the controller made it
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)
