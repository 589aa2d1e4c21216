"""NeuMF: shapes, full ranking equals candidate scoring, learning, sharding, MF warm start."""

import jax
import numpy as np
import pytest

from jaxrec.config import Config, compose_config, validate
from jaxrec.data.dataset import load_dataset
from jaxrec.models import feature_ids
from jaxrec.restore import restore_run, warm_start
from jaxrec.runner import run
from jaxrec.train_lib import build_engine, init_state, make_train_step


def _config(name="neumf") -> Config:
    cfg = compose_config(["data=synthetic", f"model={name}"])
    cfg.data.num_users, cfg.data.num_items, cfg.data.num_interactions = 120, 60, 3000
    cfg.model.dim, cfg.model.hidden = 8, [16, 8]
    cfg.optimizer.lr = 0.03
    cfg.train.batch_size, cfg.train.progress = 64, False
    return validate(cfg)


@pytest.fixture(scope="module")
def dataset():
    return load_dataset(_config().data)


def test_candidate_scores_match_full_ranking(dataset, pair_batches):
    cfg = _config()
    engine = build_engine(cfg, dataset.schema)
    state, model, collection = init_state(engine, 0), engine.model, engine.collection
    batch = pair_batches(cfg, dataset, engine, 1)[0]

    def acts(inputs):
        return collection.lookup(state.emb, feature_ids(model, inputs))

    logits = model.apply(state.params, acts(batch), batch)
    assert logits.shape == (64, 5)
    items = {"item": np.arange(64, dtype=np.int32) % dataset.num_items}  # 64: divisible by the 8 devices
    full = model.apply(state.params, acts({"user": batch["user"]}), {}, acts(items), items, method=model.score_all)
    assert full.shape == (64, 64)
    np.testing.assert_allclose(
        np.take_along_axis(np.asarray(full), batch["item"], axis=1), logits, rtol=1e-5, atol=1e-6
    )


def test_loss_decreases_and_sharded_step_matches(dataset, assert_sharded_step_matches, pair_batches):
    cfg = _config()
    engine = build_engine(cfg, dataset.schema)
    state, step = init_state(engine, 0), make_train_step(engine)
    batches = pair_batches(cfg, dataset, engine, 40)
    losses = []
    for batch in batches:
        state, out = step(state, jax.device_put(batch, engine.batch_sharding()))
        losses.append(float(out["loss"]))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    assert_sharded_step_matches(cfg, dataset.schema, batches[0])


def test_gmf_tables_start_from_a_trained_mf_run(tmp_path, dataset):
    mf = _config("mf")
    mf.train.epochs, mf.train.eval_every = 1, 0
    run(mf, tmp_path / "mf")
    _, _, mf_engine, mf_state, _ = restore_run(tmp_path / "mf", one_device=True)
    cfg = _config()
    cfg.model.init_from = str(tmp_path / "mf")
    engine = build_engine(cfg, dataset.schema)
    state = warm_start(engine, init_state(engine, 0), cfg.model.init_from)
    for table, source in (("user_gmf", "user"), ("item_gmf", "item")):
        np.testing.assert_array_equal(
            engine.collection.table(state.emb, table), mf_engine.collection.table(mf_state.emb, source)
        )
    fresh = init_state(engine, 0)
    np.testing.assert_array_equal(
        engine.collection.table(state.emb, "user_mlp"), engine.collection.table(fresh.emb, "user_mlp")
    )
