"""Per-batch metric functions against hand-computed values.

Shared case (ks = (1, 3), 6 items), ranks worked out in the comments:
  user 0: scores .9 .8 .7 .6 .5 .4, item 0 excluded, target item 3.
          Allowed items above 0.6: items 1, 2 -> rank 3 (rank 4 if item 0 were not excluded).
  user 1: scores .1 .6 .3 .5 .2 .4, item 1 excluded, targets items 3, 4.
          Allowed order: 3 (.5), 5 (.4), 2 (.3), 4 (.2), 0 (.1) -> ranks 1 and 4.
  user 2: constant scores, nothing excluded, target item 2 -> pessimistic rank 6 (5 tied others).
"""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.eval import rank_metrics, rating_metrics, target_ranks, top_k_items

SCORES_BN = jnp.array(
    [
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
        [0.1, 0.6, 0.3, 0.5, 0.2, 0.4],
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
    ]
)
EXCLUDE_BN = jnp.array(
    [
        [True, False, False, False, False, False],
        [False, True, False, False, False, False],
        [False] * 6,
    ]
)
TARGETS_BT = jnp.array([[3, -1], [3, 4], [2, -1]], jnp.int32)


def test_target_ranks_hand_computed():
    ranks_bt = target_ranks(SCORES_BN, EXCLUDE_BN, TARGETS_BT)
    np.testing.assert_array_equal(ranks_bt, [[3, 0], [1, 4], [6, 0]])


def test_excluded_top_item_does_not_count():
    # Without the exclusion, user 0's item 0 (score .9) pushes the target to rank 4.
    ranks_bt = target_ranks(SCORES_BN, jnp.zeros_like(EXCLUDE_BN), TARGETS_BT)
    np.testing.assert_array_equal(ranks_bt[0], [4, 0])


def test_rank_metrics_hand_computed():
    m = {k: np.asarray(v) for k, v in rank_metrics(SCORES_BN, EXCLUDE_BN, TARGETS_BT, (1, 3)).items()}
    expected = {
        "hr@1": [0, 1, 0],
        "hr@3": [1, 1, 0],
        # user 1 @1: DCG 1, IDCG 1. @3: DCG 1 (rank 4 misses), IDCG 1 + 1/log2(3) = 1.63093.
        "ndcg@1": [0, 1, 0],
        "ndcg@3": [0.5, 1 / 1.6309298, 0],  # user 0: 1/log2(3 + 1) = 0.5
        "recall@1": [0, 0.5, 0],
        "recall@3": [1, 0.5, 0],
        "precision@1": [0, 1, 0],
        "precision@3": [1 / 3, 1 / 3, 0],
        "mrr": [1 / 3, 1, 1 / 6],
        # user 0: negatives 1, 2, 4, 5; target beats 4, 5 -> 2/4.
        # user 1: negatives 0, 2, 5; item 3 beats all 3, item 4 beats item 0 -> 4/6.
        # user 2: 5 ties at 1/2 each -> 2.5/5.
        "auc": [0.5, 4 / 6, 0.5],
    }
    assert set(m) == set(expected)
    for name, want in expected.items():
        np.testing.assert_allclose(m[name], want, rtol=1e-5, atol=1e-7, err_msg=name)


def test_tied_targets_get_distinct_ranks():
    scores_bn = jnp.array([[1.0, 1.0, 0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]])
    targets_bt = jnp.array([[0, 1], [0, 1]], jnp.int32)
    exclude_bn = jnp.zeros((2, 6), bool)
    # Row 0: both targets tie only with each other -> ranks 1, 2 (slot order), NDCG 1, AUC 1.
    # Row 1: item 2 ties with both and goes first -> ranks 2, 3.
    #   NDCG@3 = (1/log2 3 + 1/log2 4) / (1 + 1/log2 3) = 1.13093 / 1.63093 = 0.693426.
    #   AUC: each target beats items 3..5 and ties item 2 -> 3.5 of 4, twice -> 7/8.
    np.testing.assert_array_equal(target_ranks(scores_bn, exclude_bn, targets_bt), [[1, 2], [2, 3]])
    m = rank_metrics(scores_bn, exclude_bn, targets_bt, (3,))
    np.testing.assert_allclose(m["ndcg@3"], [1.0, 0.693426], rtol=1e-5)
    np.testing.assert_allclose(m["auc"], [1.0, 0.875], rtol=1e-6)


def test_excluded_target_is_dropped_and_row_without_targets_is_zero():
    scores_bn = jnp.array([[0.5, 0.4, 0.3], [0.5, 0.4, 0.3]])
    exclude_bn = jnp.array([[True, False, False], [False, False, False]])
    targets_bt = jnp.array([[0, 2], [-1, -1]], jnp.int32)
    # Row 0: target 0 is excluded, so only item 2 counts: rank 2 among items 1, 2 -> recall@1 0.
    m = rank_metrics(scores_bn, exclude_bn, targets_bt, (1, 2))
    np.testing.assert_array_equal(target_ranks(scores_bn, exclude_bn, targets_bt), [[0, 2], [0, 0]])
    np.testing.assert_allclose(m["recall@2"], [1.0, 0.0])
    np.testing.assert_allclose(m["mrr"], [0.5, 0.0])
    np.testing.assert_allclose(m["auc"], [0.0, 0.5])


def test_ranks_match_brute_force_with_many_ties():
    rng = np.random.default_rng(0)
    scores_bn = rng.integers(0, 4, (16, 30)).astype(np.float32)
    exclude_bn = rng.random((16, 30)) < 0.3
    targets_bt = np.stack([rng.permutation(30)[:5] for _ in range(16)]).astype(np.int32)
    targets_bt[:, 4] = -1
    got_bt = np.asarray(target_ranks(scores_bn, exclude_bn, targets_bt))
    for b in range(16):
        allowed = ~exclude_bn[b]
        tgts = [t for t in targets_bt[b] if t >= 0 and allowed[t]]
        for slot, t in enumerate(targets_bt[b]):
            if t < 0 or not allowed[t]:
                assert got_bt[b, slot] == 0
                continue
            s = scores_bn[b]
            others = [j for j in range(30) if allowed[j] and j not in tgts]
            earlier = [u for u in tgts if list(targets_bt[b]).index(u) < slot]
            want = 1 + sum(s[j] > s[t] for j in range(30) if allowed[j])
            want += sum(s[j] == s[t] for j in others) + sum(s[u] == s[t] for u in earlier)
            assert got_bt[b, slot] == want


def test_top_k_items_skips_excluded_and_breaks_ties_by_id():
    ids_bk = top_k_items(SCORES_BN, EXCLUDE_BN, 3)
    np.testing.assert_array_equal(ids_bk, [[1, 2, 3], [3, 5, 2], [0, 1, 2]])
    # Only two allowed items: the third slot is -1, not an excluded item.
    short = top_k_items(jnp.array([[3.0, 2.0, 1.0]]), jnp.array([[False, True, False]]), 3)
    np.testing.assert_array_equal(short, [[0, 2, -1]])


def test_rating_metrics_hand_computed():
    # errors 0, -1, -2, 0: MAE = 3/4, RMSE = sqrt(5/4) = 1.118034.
    m = rating_metrics(jnp.array([1.0, 2.0, 3.0, 4.0]), jnp.array([1.0, 3.0, 5.0, 4.0]))
    assert float(m["mae"]) == pytest.approx(0.75)
    assert float(m["rmse"]) == pytest.approx(1.118034, rel=1e-6)
