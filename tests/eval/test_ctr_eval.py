"""CTR metrics against hand-computed values, and the evaluator against a direct computation."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.config import compose_config
from jaxrec.data.ctr import batch_inputs, load_ctr_dataset
from jaxrec.eval.ctr import CtrEvaluator
from jaxrec.eval.metrics import auc, ctr_metrics, logloss
from jaxrec.train_lib import build_engine, init_state


def test_auc_by_hand():
    # positives 0.35, 0.8 vs negatives 0.1, 0.4: pairs won 0.35>0.1, 0.8>0.1, 0.8>0.4 -> 3 / 4
    assert auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    # a positive tied with a negative counts 1/2: (0.5 + 1 + 1 + 1) / 4
    assert auc([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1]) == 0.875
    assert auc([1.0, 1.0, 1.0], [1, 0, 0]) == 0.5
    assert np.isnan(auc([0.3, 0.2], [1, 1]))


def test_auc_equals_counting_every_pair_with_ties():
    rng = np.random.default_rng(0)
    scores, labels = rng.integers(0, 5, 60).astype(float), rng.integers(0, 2, 60)
    pairs = [
        (1.0 if p > n else 0.5 if p == n else 0.0)
        for p, n in itertools.product(scores[labels == 1], scores[labels == 0])
    ]
    assert auc(scores, labels) == pytest.approx(np.mean(pairs), abs=1e-12)


def test_logloss_and_accuracy_by_hand():
    # -log sigmoid(2) = 0.126928, -log(1 - sigmoid(-1)) = 0.313262, -log sigmoid(-3) = 3.048587
    np.testing.assert_allclose(logloss([2.0, -1.0], [1, 0]), (0.126928 + 0.313262) / 2, rtol=1e-5)
    np.testing.assert_allclose(logloss([-3.0], [1]), 3.048587, rtol=1e-6)
    assert logloss([800.0], [0]) == 800.0  # from logits: no overflow, no clipping
    assert ctr_metrics(np.array([2.0, -1.0, 0.5]), np.array([1, 1, 0]))["accuracy"] == pytest.approx(1 / 3)


def test_evaluator_covers_every_example_once_on_a_mesh():
    """37 test examples in batches of 16 over 8 devices (the last one padded): the logits equal
    the model applied to every example at once on the logical tables."""
    cfg = compose_config(["data=criteo_synthetic", "model=dcn_v2"])
    cfg.data.num_examples, cfg.data.num_sparse, cfg.data.vocab_size = 370, 3, 20
    cfg.model.dim, cfg.model.bottom_mlp, cfg.model.hidden = 4, [4], [4]
    cfg.sharding.strategy, cfg.sharding.mesh.model = "row_wise", 8
    cfg.train.eval_batch_size = 13  # rounded up to 16, a multiple of the 8 devices
    dataset = load_ctr_dataset(cfg.data)
    engine = build_engine(cfg, dataset.schema)
    state = init_state(engine, seed=0)
    evaluator = CtrEvaluator(engine, dataset)
    assert evaluator.batch_size == 16 and evaluator.has_valid

    logits = evaluator.logits(state, "test")
    batch = batch_inputs(dataset.test, np.arange(37))
    acts = {name: jnp.asarray(engine.collection.table(state.emb, name))[batch[name]] for name in engine.model.inputs()}
    expected = engine.model.apply(jax.device_get(state.params), acts, batch)[:, 0]
    assert logits.shape == (37,)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
    assert evaluator(state, "test") == ctr_metrics(logits, dataset.test.label)
    assert evaluator._predict._cache_size() == 1
