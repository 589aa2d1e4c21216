"""SVD++: tables and shapes, the prediction against its formula by hand, padding, learning, sharding."""

import jax
import numpy as np
import pytest

from jaxrec.config import Config, compose_config, validate
from jaxrec.data.dataset import load_dataset
from jaxrec.data.sequences import user_runs
from jaxrec.errors import JaxrecError
from jaxrec.train_lib import RankingEvaluator, build_engine, init_state, make_train_step


def _config(**model) -> Config:
    cfg = compose_config(["data=synthetic", "model=svdpp"])
    cfg.data.split, cfg.data.valid_ratio = "kfold", 0.1
    cfg.data.num_users, cfg.data.num_items, cfg.data.num_interactions = 30, 20, 400
    cfg.model.loss, cfg.model.dim, cfg.model.max_history = "mse", 4, 32
    for key, value in model.items():
        setattr(cfg.model, key, value)
    cfg.optimizer.lr, cfg.train.batch_size = 0.03, 32
    cfg.train.select_metric, cfg.train.ranking_metrics = "rmse", False
    return validate(cfg)


@pytest.fixture(scope="module")
def dataset():
    return load_dataset(_config().data)


def test_tables_bag_and_histories(dataset, pair_batches):
    cfg = _config()
    engine = build_engine(cfg, dataset.schema)
    assert set(engine.collection.specs) == {"user", "item", "user_bias", "item_bias", "item_implicit"}
    assert engine.collection.bags == {"item_implicit": "sqrtn"}
    assert engine.collection.specs["item_implicit"].ids_per_example == 32
    batch = pair_batches(cfg, dataset, engine, 1)[0]
    assert batch["history"].shape == (32, 1, 32) and batch["item"].shape == (32, 1)
    split, model = dataset.split, engine.model
    train_u = np.bincount(split.train.user, minlength=dataset.num_users)
    valid_u = np.bincount(split.valid.user, minlength=dataset.num_users)
    for part, counts in (("train", train_u), ("valid", train_u), ("test", train_u + valid_u)):
        history = model.user_inputs(dataset, part)["history"]
        assert history.shape == (dataset.num_users, 1, 32)
        np.testing.assert_array_equal((history >= 0).sum(axis=(1, 2)), np.minimum(counts, 32), err_msg=part)
    assert init_state(engine, 0).params["params"]["global_bias"] == pytest.approx(np.mean(split.train.rating))
    assert init_state(build_engine(_config(bias_init=0.0), dataset.schema), 0).params["params"]["global_bias"] == 0


def _predictions(cfg, dataset):
    """(engine, state, predicted ratings [U, N] of every pair through the evaluator's path)."""
    engine = build_engine(cfg, dataset.schema)
    state = init_state(engine, 0)
    predict = RankingEvaluator(engine, dataset).predict_fn(state, "valid")
    users, items = np.divmod(np.arange(dataset.num_users * dataset.num_items), dataset.num_items)
    return engine, state, np.asarray(predict(users, items)).reshape(dataset.num_users, dataset.num_items)


def test_prediction_is_the_svdpp_formula_and_padding_changes_nothing(dataset):
    engine, state, pred = _predictions(_config(max_history=32), dataset)
    table = {name: np.asarray(engine.collection.table(state.emb, name)) for name in engine.collection.specs}
    indptr, items = user_runs([dataset.split.train], dataset.num_users)
    assert np.diff(indptr).max() < 32  # so the bag holds every training item: the whole N(u)
    expected = np.zeros_like(pred)
    mu = float(state.params["params"]["global_bias"])
    for u in range(dataset.num_users):
        n_u = items[indptr[u] : indptr[u + 1]]
        implicit = table["item_implicit"][n_u].sum(axis=0) / np.sqrt(max(len(n_u), 1))
        for i in range(dataset.num_items):
            expected[u, i] = (
                mu
                + table["user_bias"][u, 0]
                + table["item_bias"][i, 0]
                + table["item"][i] @ (table["user"][u] + implicit)
            )
    np.testing.assert_allclose(pred, expected, rtol=1e-5, atol=1e-5)
    # tables are seeded per table name, not per plan: a longer bag is only more -1 padding
    _, _, padded = _predictions(_config(max_history=45), dataset)
    np.testing.assert_allclose(padded, pred, rtol=1e-6, atol=1e-6)


def test_loss_decreases(dataset, pair_batches):
    cfg = _config()
    engine = build_engine(cfg, dataset.schema)
    state, step = init_state(engine, 0), make_train_step(engine)
    batches = pair_batches(cfg, dataset, engine, 10)
    losses = []
    for _ in range(6):
        for batch in batches:
            state, out = step(state, batch)
            losses.append(float(out["loss"]))
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])


def test_max_history_must_be_positive():
    with pytest.raises(JaxrecError, match="model.max_history=0"):
        _config(max_history=0)


def test_sharded_step_matches_single_device(dataset, pair_batches, assert_sharded_step_matches):
    """8 devices, 4 examples each: the dim-4 group (user, item, item_implicit: 70 rows) gets
    4 x 34 keys per device, so its dedup marks rows instead of sorting, on every device and in
    the reference; the bias group (50 rows, 8 keys) sorts."""
    cfg = _config()
    engine = build_engine(cfg, dataset.schema)
    batch = jax.device_get(pair_batches(cfg, dataset, engine, 1)[0])
    assert (batch["history"] == -1).any() and (batch["history"] >= 0).any()
    assert_sharded_step_matches(cfg, dataset.schema, batch)
