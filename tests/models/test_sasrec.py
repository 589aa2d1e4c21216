"""SASRec: shapes, masks (padding and the future never reach a score), a falling loss, one
sharded step equal to the unsharded step, the Hydra config, and an end-to-end run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.config import Config, compose_config, register_configs, validate
from jaxrec.data.dataset import load_dataset
from jaxrec.errors import JaxrecError
from jaxrec.models.sasrec import SASRec
from jaxrec.runner import run
from jaxrec.train_lib import build_engine

B, L, K, D, N = 16, 10, 3, 8, 40


def _config(strategy="none", mesh=(1, 1)) -> Config:
    cfg = compose_config(["data=synthetic", "model=sasrec"])
    cfg.data.num_users, cfg.data.num_items, cfg.data.num_interactions = 60, N, 1500
    cfg.data.num_negatives = K
    cfg.model.loss, cfg.model.l2 = "softmax", 0.0
    cfg.model.dim, cfg.model.max_len, cfg.model.num_layers, cfg.model.num_heads = D, L, 1, 2
    cfg.model.dropout = 0.0
    # Dense Adagrad: the attention key bias has an identically zero gradient (softmax ignores a
    # shift shared by all keys), and Adam would blow its float noise up to +-lr steps.
    cfg.optimizer.name, cfg.optimizer.table_optimizer, cfg.optimizer.lr = "adagrad", "lazy_adam", 0.01
    cfg.sharding.strategy = strategy
    cfg.sharding.mesh.data, cfg.sharding.mesh.model = mesh
    if strategy == "auto":
        cfg.sharding.memory_budget_gb = 2e-6  # tiny, so `auto` must split the item table
    cfg.train.batch_size, cfg.train.progress, cfg.train.checkpoint_every = B, False, 0
    return validate(cfg)


@pytest.fixture(scope="module")
def dataset():
    return load_dataset(_config().data)


@pytest.fixture(scope="module")
def model_and_params():
    model = SASRec(num_items=N, dim=D, max_len=L, num_layers=2, num_heads=2)
    acts, batch = _random_inputs(np.random.default_rng(0))
    return model, model.init(jax.random.key(0), acts, batch)


def _random_inputs(rng, pad=4):
    """Activations and a batch whose first `pad` positions of every row are padding."""
    history = rng.integers(0, N, (2, L)).astype(np.int32)
    history[:, :pad] = -1
    batch = {
        "history": jnp.asarray(history),
        "item": jnp.asarray(np.where(history >= 0, 1, -1).astype(np.int32)),
        "negative": jnp.asarray(rng.integers(0, N, (2, K)).astype(np.int32)),
    }
    acts = {
        "history": jnp.asarray(rng.normal(size=(2, L, D)) * (history >= 0)[..., None], jnp.float32),
        "item": jnp.asarray(rng.normal(size=(2, L, D)), jnp.float32),
        "negative": jnp.asarray(rng.normal(size=(2, K, D)), jnp.float32),
    }
    return acts, batch


def test_output_shapes(model_and_params):
    model, params = model_and_params
    acts, batch = _random_inputs(np.random.default_rng(1))
    assert model.apply(params, acts, batch).shape == (2, L, 1 + K)
    items = {"item": jnp.ones((N, D))}
    assert model.apply(params, acts, batch, method=model.query_vectors).shape == (2, D)
    scores = model.apply(params, acts, batch, items, {}, method=model.score_all)
    assert scores.shape == (2, N)
    logits = model.apply(params, acts | {"item": jnp.ones((2, L, D))}, batch)
    np.testing.assert_allclose(scores[:, 0], logits[:, -1, 0], rtol=1e-5)  # the last state scores all items


def test_padding_and_the_future_never_reach_a_score(model_and_params):
    model, params = model_and_params
    acts, batch = _random_inputs(np.random.default_rng(2), pad=4)
    logits = np.asarray(model.apply(params, acts, batch))
    padded = acts | {"history": acts["history"].at[:, :4].set(5.0)}  # garbage rows at the padding
    np.testing.assert_array_equal(np.asarray(model.apply(params, padded, batch))[:, 4:], logits[:, 4:])
    future = acts | {"history": acts["history"].at[:, 7].set(jnp.linspace(-1.0, 1.0, D))}  # change position 7
    changed = np.asarray(model.apply(params, future, batch))
    np.testing.assert_array_equal(changed[:, :7], logits[:, :7])  # earlier positions: identical
    assert (logits[:, :4] == 0).all()  # padded positions score nothing
    assert np.abs(changed[:, 7:] - logits[:, 7:]).min() > 1e-4  # position 7 and later see it


def test_a_negative_equal_to_the_target_is_masked(model_and_params):
    model, params = model_and_params
    acts, batch = _random_inputs(np.random.default_rng(3))
    batch = batch | {"negative": batch["negative"].at[:, 1].set(1)}  # every target is item 1
    logits = np.asarray(model.apply(params, acts, batch))
    assert (logits[:, 4:, 2] == -1e9).all() and (np.abs(logits[:, 4:, [1, 3]]) < 1e3).all()  # real positions


@pytest.fixture(scope="module")
def reference(dataset, train_sequence_batch):
    return train_sequence_batch(_config(), dataset, steps=40, batch_size=B, num_negatives=K)


def test_the_loss_falls_on_a_repeated_batch(reference):
    losses = reference[-1]
    assert abs(losses[0] - np.log(1 + K)) < 0.2  # softmax over 1 + 3 candidates starts near log 4
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("strategy,mesh", [("row_wise", (1, 8)), ("auto", (2, 4))])
def test_one_sharded_step_equals_the_unsharded_step(reference, dataset, train_sequence_batch, strategy, mesh):
    _, batch, ref_table, ref_params, ref_losses = reference
    assert (batch["history"] == -1).any() and (batch["history"] >= 0).all(axis=1).any()  # padded and full rows
    engine, _, table, params, losses = train_sequence_batch(
        _config(strategy, mesh), dataset, steps=1, batch_size=B, num_negatives=K
    )
    assert engine.plan.placements["item"].strategy == "row_wise"
    np.testing.assert_allclose(losses[0], ref_losses[0], rtol=1e-5)
    np.testing.assert_allclose(table, ref_table, rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), params, ref_params)


def test_config_composes_with_hydra():
    register_configs()
    cfg = compose_config(["model=sasrec", "model.max_len=20"])
    assert (cfg.model.name, cfg.model.loss, cfg.model.max_len, cfg.model.num_layers) == ("sasrec", "softmax", 20, 2)
    assert cfg.data.num_negatives == 100  # set by the model file (# @package _global_)
    engine = build_engine(cfg, load_dataset(_config().data).schema)
    assert isinstance(engine.model, SASRec) and engine.model.max_len == 20 and engine.model.dropout == cfg.model.dropout
    assert engine.collection.specs["item"].rows == N and engine.collection.specs["item"].ids_per_example == 2 * 20 + 100


def test_bad_configs_fail_clearly(dataset):
    for key, value, message in [("loss", "mse", "no ratings to fit"), ("num_heads", 3, "multiple of model.num_heads")]:
        cfg = _config()
        setattr(cfg.model, key, value)
        with pytest.raises(JaxrecError, match=message):
            build_engine(cfg, dataset.schema)


def test_run_end_to_end(tmp_path):
    cfg = _config()
    cfg.train.epochs, cfg.train.eval_every, cfg.train.log_every = 2, 0, 1
    results = run(cfg, tmp_path)
    assert json.loads((tmp_path / "results.json").read_text())["model"] == "sasrec"
    assert results["train"]["steps"] == 2 * (60 // B)
    assert all(np.isfinite(v) for v in results["metrics"].values()) and 0 < results["metrics"]["hr@10"] <= 1
