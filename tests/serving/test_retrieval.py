"""Top-K retrieval against a numpy argsort reference: exact, excluded ids, sharded over 8
simulated devices, and the approximate top-K's recall."""

import jax
import numpy as np
import pytest

from jaxrec.serving import retrieval

N, E, B = 1003, 8, 6  # N is not a multiple of 8: the sharded matrix needs padding rows


def _reference(query_be, items_ne, exclude, k):
    """Best-first ids and scores by a stable argsort; excluded ids removed."""
    scores_bn = query_be.astype(np.float64) @ items_ne.T.astype(np.float64)
    ids, scores = [], []
    for row, ex in zip(scores_bn, exclude):
        row = row.copy()
        row[list(ex)] = -np.inf
        order = np.argsort(-row, kind="stable")[:k]
        ids.append(order)
        scores.append(row[order])
    return np.array(ids), np.array(scores)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    items_ne = rng.standard_normal((N, E)).astype(np.float32)
    query_be = rng.standard_normal((B, E)).astype(np.float32)
    exclude = [rng.choice(N, size=n, replace=False) for n in (0, 1, 5, 40, 3, 17)]
    exclude_bx = np.full((B, 64), N, np.int32)  # padding = N
    for row, ex in enumerate(exclude):
        exclude_bx[row, : len(ex)] = ex
    return items_ne, query_be, exclude, exclude_bx


@pytest.mark.parametrize("k", [1, 10, 130])
def test_exact_top_k_matches_numpy_argsort(data, k):
    items_ne, query_be, exclude, exclude_bx = data
    scores_bk, ids_bk = retrieval.exact_top_k(query_be, items_ne, exclude_bx, k=k)
    ref_ids, ref_scores = _reference(query_be, items_ne, exclude, k)
    np.testing.assert_array_equal(np.asarray(ids_bk), ref_ids)
    np.testing.assert_allclose(np.asarray(scores_bk), ref_scores, rtol=1e-5, atol=1e-5)


def test_excluded_ids_never_come_back_and_leftover_slots_are_minus_inf():
    items_ne = np.eye(5, dtype=np.float32)
    query_be = np.ones((2, 5), np.float32)
    exclude_bx = np.array([[0, 1, 2, 5], [4, 5, 5, 5]], np.int32)  # 5 = padding
    scores_bk, ids_bk = jax.device_get(retrieval.exact_top_k(query_be, items_ne, exclude_bx, k=4))
    assert set(ids_bk[0, :2]) == {3, 4} and np.all(np.isneginf(scores_bk[0, 2:]))  # only 2 items allowed
    assert set(ids_bk[1]) == {0, 1, 2, 3} and np.all(scores_bk[1] == 1.0)


@pytest.mark.parametrize("k", [10, 200])  # 200 > 126 rows per shard: each shard returns all its rows
def test_sharded_top_k_over_8_devices_equals_unsharded(data, k):
    items_ne, query_be, _, exclude_bx = data
    assert len(jax.devices()) >= 8, "tests/conftest.py simulates 8 CPU devices"
    sharded = retrieval.ShardedTopK(items_ne, num_shards=8)
    assert len(sharded.items_ne.sharding.device_set) == 8
    assert sharded.items_ne.addressable_shards[0].data.shape == (126, E)
    scores_bk, ids_bk = sharded(query_be, exclude_bx, k)
    ref_scores, ref_ids = retrieval.exact_top_k(query_be, items_ne, exclude_bx, k=k)
    np.testing.assert_array_equal(np.asarray(ids_bk), np.asarray(ref_ids))
    np.testing.assert_allclose(np.asarray(scores_bk), np.asarray(ref_scores), rtol=1e-6)
    assert np.asarray(ids_bk).max() < N  # padding rows never win


def test_approx_top_k_recall_and_scores():
    rng = np.random.default_rng(1)
    items_ne = rng.standard_normal((20_000, 16)).astype(np.float32)
    query_be = rng.standard_normal((64, 16)).astype(np.float32)
    exclude_bx = np.full((64, 16), 20_000, np.int32)
    exact_scores, exact_ids = retrieval.exact_top_k(query_be, items_ne, exclude_bx, k=10)
    recalls = {}
    for target in (0.8, 0.95):
        bins = retrieval.bins_for_recall(10, target, 20_000)
        scores_bk, ids_bk = jax.device_get(retrieval.approx_top_k(query_be, items_ne, exclude_bx, k=10, bins=bins))
        recalls[target] = retrieval.recall_at_k(ids_bk, exact_ids)
        np.testing.assert_allclose(
            scores_bk, np.take_along_axis(query_be @ items_ne.T, ids_bk, axis=1), rtol=1e-4, atol=1e-4
        )  # the scores are those of the returned ids
        assert np.all(np.diff(scores_bk, axis=1) <= 0)
    assert retrieval.bins_for_recall(10, 0.95, 20_000) == 90
    assert recalls[0.8] >= 0.7 and recalls[0.95] >= 0.9 and recalls[0.95] >= recalls[0.8]
    assert retrieval.recall_at_k(np.asarray(exact_ids), exact_ids) == 1.0


def test_approx_top_k_respects_exclusion():
    items_ne = np.eye(64, dtype=np.float32)
    query_be = np.arange(64, dtype=np.float32)[None, :]  # item i scores i
    exclude_bx = np.array([[63, 62, 64]], np.int32)
    _, ids_bk = retrieval.approx_top_k(query_be, items_ne, exclude_bx, k=3, bins=64)
    np.testing.assert_array_equal(np.asarray(ids_bk)[0], [61, 60, 59])
