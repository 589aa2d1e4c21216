"""The NCF sampled protocol: hand-computed ranks, and negatives the user never touched."""

import jax.numpy as jnp
import numpy as np

from jaxrec.data.types import Interactions
from jaxrec.eval.evaluator import evaluate_sampled, sample_negatives


def _inter(pairs, num_users=2, num_items=6) -> Interactions:
    users, items = (np.array(col, np.int32) for col in zip(*pairs))
    return Interactions(
        users,
        items,
        np.ones(len(pairs), np.float32),
        np.arange(len(pairs)),
        np.array([f"u{u}" for u in range(num_users)]),
        np.array([f"i{i}" for i in range(num_items)]),
    )


def test_target_ranked_against_every_unseen_item_by_hand():
    scores = jnp.array([[0.0, 0.5, 0.9, 0.1, 0.2, 0.95]] * 2)
    train, targets = _inter([(0, 0)]), _inter([(0, 1)])
    # user 0 never touched items 2..5: with 4 negatives they are all drawn; 0.9 and 0.95 beat the
    # target's 0.5, so its rank is 2 (0-based)
    got = evaluate_sampled(
        lambda users_b: scores[: len(users_b)], train, targets, num_negatives=4, ks=(1, 3), batch_size=2
    )
    np.testing.assert_allclose([got["hr@1"], got["hr@3"], got["ndcg@3"], got["mrr"]], [0, 1, 0.5, 1 / 3], rtol=1e-6)


def test_negatives_are_distinct_and_never_seen():
    rng = np.random.default_rng(0)
    num_users, num_items = 50, 40
    seen = np.unique(rng.integers(0, num_users, 600).astype(np.int64) * num_items + rng.integers(0, num_items, 600))
    users = np.arange(num_users)
    negatives = sample_negatives(users, seen, num_items, 10, seed=1)
    assert negatives.shape == (num_users, 10)
    keys = users[:, None] * num_items + negatives
    assert not np.isin(keys, seen).any()
    assert all(len(set(row)) == 10 for row in negatives)
    np.testing.assert_array_equal(negatives, sample_negatives(users, seen, num_items, 10, seed=1))
