"""Sparse row optimisers against optax on the dense gradient and against hand computation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrec.embedding import EmbeddingCollection, TableSpec
from jaxrec.embedding.optimizers import ROW_OPTIMIZERS
from jaxrec.sharding.mesh import make_mesh
from jaxrec.sharding.planner import make_plan

ROWS, DIM, LR = 40, 3, 0.1


def _collection(optimizer: str, strategy="none", mesh=(1, 1)):
    plan = make_plan([TableSpec("t", ROWS, DIM, optimizer, LR)], mesh, strategy)
    return EmbeddingCollection(plan, make_mesh(mesh), {"f": "t"})


def _ids_and_grads(step: int):
    rng = np.random.default_rng(step)
    ids = rng.integers(0, ROWS, (8, 2)).astype(np.int32)
    ids[0, :] = 4  # a row touched three times in one batch
    ids[1, 0] = 4
    return ids, rng.normal(size=(8, 2, DIM)).astype(np.float32)


def _dense_grad(ids, grads):
    """The table-shaped gradient optax would see: duplicate ids summed."""
    return jnp.zeros((ROWS, DIM)).at[ids.reshape(-1)].add(grads.reshape(-1, DIM))


def _run_sparse(optimizer: str, steps: int, strategy="none", mesh=(1, 1)):
    col = _collection(optimizer, strategy, mesh)
    state = col.init(jax.random.key(0))
    initial = np.asarray(col.table(state, "t"))
    update = jax.jit(lambda s, ids, g, i: col.apply_gradients(s, {"f": ids}, {"f": g}, i))
    for step in range(steps):
        ids, grads = _ids_and_grads(step)
        state = update(state, jnp.asarray(ids), jnp.asarray(grads), jnp.int32(step))
    return initial, np.asarray(col.table(state, "t"))


def _run_optax(tx, initial, steps: int):
    params = jnp.asarray(initial)
    opt_state = tx.init(params)
    for step in range(steps):
        updates, opt_state = tx.update(_dense_grad(*_ids_and_grads(step)), opt_state, params)
        params = optax.apply_updates(params, updates)
    return np.asarray(params)


@pytest.mark.parametrize("name,tx", [("sgd", optax.sgd(LR)), ("adagrad", optax.adagrad(LR))])
def test_sgd_and_adagrad_equal_optax_on_the_dense_gradient(name, tx):
    initial, sparse = _run_sparse(name, steps=5)
    np.testing.assert_allclose(sparse, _run_optax(tx, initial, steps=5), rtol=1e-5, atol=1e-6)


def test_lazy_adam_equals_adam_on_the_first_step_and_leaves_untouched_rows():
    initial, sparse = _run_sparse("lazy_adam", steps=1)
    np.testing.assert_allclose(sparse, _run_optax(optax.adam(LR), initial, steps=1), rtol=1e-5, atol=1e-6)
    _, after_two = _run_sparse("lazy_adam", steps=2)
    touched = np.union1d(_ids_and_grads(0)[0], _ids_and_grads(1)[0])
    untouched = np.setdiff1d(np.arange(ROWS), touched)
    assert len(untouched) > 0
    np.testing.assert_array_equal(after_two[untouched], initial[untouched])


def test_rowwise_adagrad_by_hand():
    initial, sparse = _run_sparse("rowwise_adagrad", steps=1)
    ids, grads = _ids_and_grads(0)
    g = np.asarray(_dense_grad(ids, grads))
    acc = 0.1 + np.mean(g**2, axis=1, keepdims=True)  # one accumulator per row
    expected = initial - LR * g / np.sqrt(acc + 1e-7)
    touched = np.unique(ids)
    np.testing.assert_allclose(sparse[touched], expected[touched], rtol=1e-5)
    untouched = np.setdiff1d(np.arange(ROWS), touched)
    np.testing.assert_array_equal(sparse[untouched], initial[untouched])


@pytest.mark.parametrize("optimizer", sorted(ROW_OPTIMIZERS))
def test_column_wise_row_statistics_match_single_device(optimizer):
    """Column-wise tables see only part of each row; row-wise Adagrad must still use the full row."""
    _, reference = _run_sparse(optimizer, steps=3)
    _, sharded = _run_sparse(optimizer, steps=3, strategy="column_wise", mesh=(2, 4))
    np.testing.assert_allclose(sharded, reference, rtol=1e-5, atol=1e-6)
