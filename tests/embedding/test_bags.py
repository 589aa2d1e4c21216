"""Embedding bags: -1 padding reads zeros and is never updated; mean and sqrtn pooling by hand; sharded."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.embedding import EmbeddingCollection
from jaxrec.embedding.specs import TableSpec
from jaxrec.sharding.mesh import make_mesh
from jaxrec.sharding.planner import make_plan

IDS = np.array([[[0, 2, -1]], [[1, -1, -1]], [[3, 3, 1]], [[-1, -1, -1]]] * 2, np.int32)  # [B=8, 1, S=3]


def _collection(strategy: str, mesh: tuple[int, int], combiner: str = "mean"):
    plan = make_plan([TableSpec("genre", 5, 2, "sgd", 1.0, 1.0)], mesh, strategy, {}, 1e9)
    return EmbeddingCollection(plan, make_mesh(mesh), {"genres": "genre"}, {"genres": combiner})


@pytest.mark.parametrize("strategy,mesh", [("row_wise", (2, 4)), ("column_wise", (1, 2))])
def test_mean_bag_and_its_sparse_update(strategy, mesh):
    collection = _collection(strategy, mesh)
    state = collection.init(jax.random.key(0))
    table = np.asarray(collection.table(state, "genre"))
    ids = {"genres": jnp.asarray(IDS)}
    rows = collection.lookup(state, ids)
    np.testing.assert_array_equal(rows["genres"][0, 0, 2], 0.0)  # padding reads a zero row
    pooled = collection.pool(rows, ids)["genres"]
    np.testing.assert_allclose(pooled[0, 0], (table[0] + table[2]) / 2, rtol=1e-6)
    np.testing.assert_allclose(pooled[2, 0], (2 * table[3] + table[1]) / 3, rtol=1e-6)
    np.testing.assert_array_equal(pooled[3, 0], 0.0)  # an empty bag pools to zero, not NaN

    # d(sum of pooled)/d(rows): each real id of a bag gets 1 / (bag size); padding gets its
    # share too, but a -1 id updates nothing
    grads = jax.grad(lambda r: jnp.sum(collection.pool(r, ids)["genres"]))(rows)
    new = collection.apply_gradients(state, ids, grads, jnp.zeros((), jnp.int32))
    step = table - np.asarray(collection.table(new, "genre"))  # sgd, lr 1: the summed gradient
    expected = np.zeros(5)
    for bag in IDS[:, 0]:
        real = bag[bag >= 0]
        for i in real:
            expected[i] += 1 / len(real)
    np.testing.assert_allclose(step, np.repeat(expected[:, None], 2, axis=1), rtol=1e-5)
    assert expected[4] == 0 and np.all(step[4] == 0)  # id 4 never occurs: untouched


def test_sqrtn_bag_by_hand():
    """sum / sqrt(real ids): pooling is plain jnp on looked-up rows, the same under every strategy
    (the lookups and sparse updates of bags are the mean test's; SVD++'s sharded step covers sqrtn)."""
    collection = _collection("none", (1, 1), "sqrtn")
    ids = {"genres": jnp.asarray(IDS[:4])}
    rows = {
        "genres": jnp.where(ids["genres"][..., None] >= 0, jnp.arange(1.0, 25.0).reshape(4, 1, 3, 2), 0.0)
    }  # padding reads zero rows
    pooled = np.asarray(collection.pool(rows, ids)["genres"])[:, 0]
    np.testing.assert_allclose(pooled[0], ([1, 2] + np.array([3, 4])) / np.sqrt(2), rtol=1e-6)
    np.testing.assert_allclose(pooled[1], [7, 8], rtol=1e-6)  # one id: its own row
    np.testing.assert_allclose(pooled[2], (np.array([13, 14]) + [15, 16] + [17, 18]) / np.sqrt(3), rtol=1e-6)
    np.testing.assert_array_equal(pooled[3], 0.0)  # an empty bag pools to zero, not NaN
    grads = jax.grad(lambda r: jnp.sum(collection.pool(r, ids)["genres"]))(rows)["genres"]
    np.testing.assert_allclose(
        grads[:3, 0, :, 0], [[2**-0.5, 2**-0.5, 2**-0.5], [1, 1, 1], [3**-0.5] * 3], rtol=1e-6
    )  # every slot of a bag, padding too (a -1 id updates nothing)
