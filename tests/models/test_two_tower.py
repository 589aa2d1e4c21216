"""Feature two-tower: shapes, in-batch softmax with log-Q, learning, sharding, config."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.config import Config, compose_config, validate
from jaxrec.data.dataset import load_dataset
from jaxrec.errors import JaxrecError
from jaxrec.models import feature_ids
from jaxrec.train_lib import build_engine, init_state, make_train_step


def _config(**model) -> Config:
    cfg = compose_config(["data=synthetic", "model=two_tower"])
    cfg.data.num_users, cfg.data.num_items, cfg.data.num_interactions = 120, 60, 3000
    cfg.model.dim, cfg.model.hidden = 8, [16]
    for key, value in model.items():
        setattr(cfg.model, key, value)
    cfg.optimizer.lr = 0.03
    cfg.train.batch_size = 64
    return validate(cfg)


@pytest.fixture(scope="module")
def dataset():
    return load_dataset(_config().data)


def test_towers_read_every_side_feature_and_pool_genres(dataset, pair_batches):
    engine = build_engine(_config(), dataset.schema)
    assert set(engine.collection.specs) == {
        "user",
        "item",
        "user_age",
        "user_gender",
        "user_occupation",
        "user_zip_prefix",
        "item_genres",
        "item_year",
    }
    assert engine.collection.bags == {"item_genres": "mean"}
    batch = pair_batches(_config(), dataset, engine, 1)[0]
    assert batch["item_genres"].shape == (64, 5, dataset.schema.item_fields["genres"].width)
    assert batch["user_occupation"].shape == (64, 1)
    assert (batch["item_genres"] == -1).any(), "genre bags are padded with -1"


def test_scores_shapes_and_score_all_agrees_with_candidates(dataset, pair_batches):
    cfg = _config()
    engine = build_engine(cfg, dataset.schema)
    state = init_state(engine, 0)
    batch = pair_batches(cfg, dataset, engine, 1)[0]
    collection, model = engine.collection, engine.model

    def acts(inputs):
        ids = feature_ids(model, inputs)
        return collection.pool(collection.lookup(state.emb, ids), ids)

    logits = model.apply(state.params, acts(batch), batch)
    assert logits.shape == (64, 5)
    items = {k: v for k, v in model.item_inputs(dataset).items()}
    items = {k: np.pad(v, [(0, -len(v) % 8)] + [(0, 0)] * (v.ndim - 1), mode="edge") for k, v in items.items()}
    query = {k: v for k, v in batch.items() if k.startswith("user")}
    full = model.apply(state.params, acts(query), query, acts(items), items, method=model.score_all)
    picked = np.take_along_axis(np.asarray(full), batch["item"], axis=1)
    np.testing.assert_allclose(picked, logits, rtol=1e-5, atol=1e-6)


def test_in_batch_softmax_puts_the_positive_first_with_log_q_and_masks_repeats():
    from jaxrec.models.two_tower import TwoTower

    model = TwoTower(
        num_users=3, num_items=4, user_fields=(), item_fields=(), dim=2, hidden=(), negatives="in_batch", use_bias=False
    )
    # hidden=() makes each tower one Dense(dim) layer; identity weights make the towers transparent
    params = {
        "params": {
            "user_tower": {"Dense_0": {"kernel": jnp.eye(2), "bias": jnp.zeros(2)}},
            "item_tower": {"Dense_0": {"kernel": jnp.eye(2), "bias": jnp.zeros(2)}},
        }
    }
    acts = {
        "user": jnp.array([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 1.0]]]),
        "item": jnp.array([[[2.0, 0.0]], [[0.0, 3.0]], [[2.0, 0.0]]]),
    }
    batch = {"item": jnp.array([[7], [8], [7]]), "item_log_q": jnp.log(jnp.array([[0.5], [0.25], [0.5]]))}
    logits = model.apply(params, acts, batch)
    log_q = np.log([0.5, 0.25, 0.5])
    dots = np.array([[2, 0, 2], [0, 3, 0], [2, 3, 2]], np.float32) - log_q[None, :]
    dots[0, 2] = dots[2, 0] = -1e9  # item 7 is the positive of rows 0 and 2: not a negative of either
    expected = np.stack([np.roll(dots[b], -b) for b in range(3)])
    np.testing.assert_allclose(logits, expected, rtol=1e-6)


def test_in_batch_needs_softmax():
    with pytest.raises(JaxrecError, match="model.negatives=in_batch needs model.loss=softmax"):
        _config(negatives="in_batch", loss="bce")


@pytest.mark.parametrize("negatives,loss", [("sampled", "bce"), ("in_batch", "softmax")])
def test_loss_decreases(dataset, negatives, loss, pair_batches):
    cfg = _config(negatives=negatives, loss=loss)
    engine = build_engine(cfg, dataset.schema)
    state, step = init_state(engine, 0), make_train_step(engine)
    losses = []
    for batch in pair_batches(cfg, dataset, engine, 40):
        state, out = step(state, jax.device_put(batch, engine.batch_sharding()))
        losses.append(float(out["loss"]))
    if loss == "softmax":  # the in-batch softmax starts near log(batch): below it, the towers rank
        assert np.mean(losses[-5:]) < min(np.log(cfg.train.batch_size), np.mean(losses[:5]) - 0.1), losses
    else:
        assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


def test_sharded_step_matches_single_device(dataset, assert_sharded_step_matches, pair_batches):
    """In-batch softmax: the in-batch logits span the whole sharded batch. (Sampled negatives
    score like MF, which tests/sharding/test_equivalence.py covers.)"""
    cfg = _config(negatives="in_batch", loss="softmax")
    # Under a softmax the item tower's output bias shifts a whole row of logits: its gradient is
    # zero up to rounding, which Adam would blow up to +-lr. SGD keeps rounding at rounding size.
    cfg.optimizer.name = "sgd"
    engine = build_engine(cfg, dataset.schema)
    assert_sharded_step_matches(cfg, dataset.schema, pair_batches(cfg, dataset, engine, 1)[0])
