"""The full-ranking and rating evaluators against hand-computed values.

Main case: 4 users x 6 items, ks = (1, 3), scores as in test_metrics.py plus user 3, who has
training data but no target and must be skipped. Per-user values (users 0, 1, 2):
  ranks 3 | 1, 4 | 6 (constant scores, pessimistic);  top-3 lists {1,2,3} {3,5,2} {0,1,2}.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.data.types import Interactions
from jaxrec.errors import JaxrecError
from jaxrec.eval import evaluate_ranking, evaluate_ratings, most_popular_scores

SCORES_UN = jnp.array(
    [
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
        [0.1, 0.6, 0.3, 0.5, 0.2, 0.4],
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        # User 3 would add item 4 to every top-K list if it were (wrongly) evaluated.
        [0.0, 0.0, 0.0, 0.0, 9.0, 0.0],
    ]
)

EXPECTED = {
    "hr@1": 1 / 3,  # only user 1
    "hr@3": 2 / 3,
    "ndcg@1": 1 / 3,
    "ndcg@3": (0.5 + 1 / 1.6309298 + 0) / 3,  # 1/log2(4); DCG 1 / IDCG (1 + 1/log2 3)
    "recall@1": (0 + 0.5 + 0) / 3,
    "recall@3": (1 + 0.5 + 0) / 3,
    "precision@1": 1 / 3,
    "precision@3": (1 / 3 + 1 / 3 + 0) / 3,
    "mrr": (1 / 3 + 1 + 1 / 6) / 3,
    "auc": (2 / 4 + 4 / 6 + 0.5) / 3,
    "coverage@1": 3 / 6,  # items 1, 3, 0
    "coverage@3": 5 / 6,  # items 0, 1, 2, 3, 5
}


def make_interactions(pairs, num_users=4, num_items=6, ratings=None) -> Interactions:
    user, item = np.asarray(pairs, np.int32).reshape(-1, 2).T
    rating = np.ones(len(user), np.float32) if ratings is None else np.asarray(ratings, np.float32)
    return Interactions(
        user=user,
        item=item,
        rating=rating,
        timestamp=np.arange(len(user), dtype=np.int64),
        user_tokens=np.array([f"u{u}" for u in range(num_users)]),
        item_tokens=np.array([f"i{i}" for i in range(num_items)]),
    )


TRAIN = make_interactions([(0, 0), (1, 1), (3, 5)])
TARGETS = make_interactions([(0, 3), (1, 3), (1, 4), (2, 2)])


def counting_score_fn():
    """A jitted lookup into SCORES_UN that records how often it is traced."""
    traces = []

    @jax.jit
    def score(user_ids_b):
        traces.append(user_ids_b.shape)
        return SCORES_UN[user_ids_b]

    return score, traces


@pytest.mark.parametrize("batch_size", [1, 2, 3, 256])
def test_ranking_hand_computed_for_any_batch_size(batch_size):
    score_fn, traces = counting_score_fn()
    got = evaluate_ranking(score_fn, TRAIN, TARGETS, ks=(3, 1), batch_size=batch_size)
    assert set(got) == set(EXPECTED)
    for name, want in EXPECTED.items():
        assert got[name] == pytest.approx(want, rel=1e-5), name
    assert traces == [(batch_size,)]  # padded last batch: one compile


def test_extra_exclusion_set_removes_validation_items():
    # Excluding user 0's item 1 (score .8) lifts the target from rank 3 to rank 2.
    valid = make_interactions([(0, 1)])
    got = evaluate_ranking(counting_score_fn()[0], TRAIN, TARGETS, exclude=[valid], ks=(1, 3))
    assert got["mrr"] == pytest.approx((1 / 2 + 1 + 1 / 6) / 3, rel=1e-5)
    assert got["ndcg@3"] == pytest.approx((0.6309298 + 1 / 1.6309298) / 3, rel=1e-5)


def test_user_whose_only_target_is_excluded_is_skipped():
    # User 2's target (item 2) is excluded, leaving users 0 and 1: MRR (1/3 + 1) / 2.
    got = evaluate_ranking(counting_score_fn()[0], TRAIN, TARGETS, exclude=[make_interactions([(2, 2)])], ks=(1,))
    assert got["mrr"] == pytest.approx(2 / 3, rel=1e-5)
    assert got["hr@1"] == pytest.approx(1 / 2)


def test_most_popular_hand_computed():
    # Training counts per item: 3 2 1 1 0 0.
    train = make_interactions([(0, 0), (0, 1), (1, 0), (1, 2), (2, 0), (2, 1), (2, 3)], 3)
    targets = make_interactions([(0, 2), (1, 1), (2, 4)], 3)
    # user 0 allowed 2(1) 3(1) 4(0) 5(0): target 2 ties item 3 -> rank 2, AUC 2.5/3.
    # user 1 allowed 1(2) 3(1) 4 5: rank 1, AUC 1.
    # user 2 allowed 2(1) 4(0) 5(0): target 4 ties item 5 -> rank 3, AUC 0.5/2.
    # top-2 lists {2,3} {1,3} {2,4}; top-1 lists {2} {1} {2}.
    got = evaluate_ranking(most_popular_scores(train), train, targets, ks=(1, 2), batch_size=2)
    assert got["hr@1"] == pytest.approx(1 / 3)
    assert got["hr@2"] == pytest.approx(2 / 3)
    assert got["ndcg@2"] == pytest.approx((0.6309298 + 1 + 0) / 3, rel=1e-5)
    assert got["mrr"] == pytest.approx((1 / 2 + 1 + 1 / 3) / 3, rel=1e-5)
    assert got["auc"] == pytest.approx((2.5 / 3 + 1 + 0.25) / 3, rel=1e-5)
    assert got["coverage@1"] == pytest.approx(2 / 6)
    assert got["coverage@2"] == pytest.approx(4 / 6)


def test_constant_model_gets_no_credit():
    constant = jax.jit(lambda u: jnp.ones((u.shape[0], 6)))
    got = evaluate_ranking(constant, TRAIN, TARGETS, ks=(3,))
    assert got["hr@3"] == 0.0 and got["ndcg@3"] == 0.0
    assert got["auc"] == pytest.approx(0.5)


def test_wrong_score_shape_is_reported():
    with pytest.raises(JaxrecError, match="expected"):
        evaluate_ranking(jax.jit(lambda u: jnp.ones((u.shape[0], 5))), TRAIN, TARGETS, ks=(3,))


def test_ratings_hand_computed_with_padding():
    # Predictions user + item = 1, 2, 5 against ratings 1, 3, 5: errors 0, -1, 0.
    # MAE = 1/3, RMSE = sqrt(1/3) = 0.577350.
    inter = make_interactions([(0, 1), (1, 1), (2, 3)], ratings=[1.0, 3.0, 5.0])
    traces = []

    @jax.jit
    def predict(user_b, item_b):
        traces.append(user_b.shape)
        return (user_b + item_b).astype(jnp.float32)

    got = evaluate_ratings(predict, inter, batch_size=2)
    assert got["mae"] == pytest.approx(1 / 3, rel=1e-6)
    assert got["rmse"] == pytest.approx(0.577350, rel=1e-5)
    assert traces == [(2,)]


def test_coverage_ignores_empty_top_k_slots():
    # Item 2 is trained, so the top-3 list is [0, 1, empty]: coverage 2/3, not 3/3.
    train = make_interactions([(0, 2)], 1, 3)
    targets = make_interactions([(0, 1)], 1, 3)
    score_fn = jax.jit(lambda u: jnp.broadcast_to(jnp.array([0.5, 0.4, 0.9]), (u.shape[0], 3)))
    got = evaluate_ranking(score_fn, train, targets, ks=(3,))
    assert got["coverage@3"] == pytest.approx(2 / 3)
    assert got["mrr"] == pytest.approx(1 / 2)
