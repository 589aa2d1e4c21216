"""Cold start through exported encoders: a sequence model's encoder over a history, and the
feature two-tower's user tower over side features, both run from the bundle alone (jax.export)
and equal to the model's own query vectors."""

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from jaxrec.config import compose_config, validate
from jaxrec.data.dataset import read_raw
from jaxrec.data.sequences import eval_histories
from jaxrec.models import feature_ids
from jaxrec.restore import restore_run
from jaxrec.runner import run
from jaxrec.serving import exporter
from jaxrec.serving.bundle import load_bundle
from jaxrec.serving.encoders import ExportedEncoder
from jaxrec.serving.recommender import Recommender, RequestError


def _train(tmp_path_factory, model: str, **model_overrides):
    cfg = compose_config(["data=synthetic", f"model={model}"])
    cfg.data.num_users, cfg.data.num_items, cfg.data.num_interactions = 60, 40, 1500
    cfg.model.dim = 8
    for key, value in model_overrides.items():
        setattr(cfg.model, key, value)
    cfg.train.epochs, cfg.train.batch_size, cfg.train.progress, cfg.train.eval_every = 1, 32, False, 0
    run_dir = tmp_path_factory.mktemp(model)
    run(validate(cfg), run_dir)
    return run_dir


def test_sequence_encoder_reproduces_the_model_queries(tmp_path_factory):
    """BERT4Rec: its query appends a mask token to the history, so the exported encoder must run
    the model's own history_inputs (SASRec's is the identity; evaluation covers it)."""
    run = exporter.load_run(_train(tmp_path_factory, "bert4rec", max_len=6, num_heads=2))
    bundle = load_bundle(exporter.export_run(run, tmp_path_factory.mktemp("bundle") / "bert4rec"))
    encoder = bundle.encoder
    assert isinstance(encoder, ExportedEncoder) and encoder.history_len == run.cfg.model.max_len - 1
    assert (
        bundle.manifest["encoder"]["platforms"] == ["cpu", "cuda"]
        and "sequence encoder" in bundle.manifest["cold_start"]
    )
    # every known user's test query is the encoder over its train + valid items
    np.testing.assert_allclose(exporter.cold_start_queries(run), run.queries_ue, atol=1e-5)

    histories = eval_histories(run.dataset, "test", encoder.history_len)
    user = int(np.argmax((histories >= 0).sum(axis=1) < encoder.history_len))  # a history shorter than the window
    items = histories[user][histories[user] >= 0]
    recommender = Recommender(bundle)
    query = recommender.history_query([bundle.item_tokens[i] for i in items], k=5)
    np.testing.assert_allclose(query.vector_e, bundle.users_ue[user], atol=1e-5)
    assert set(query.exclude) == set(items)
    with pytest.raises(RequestError, match="cannot encode user 'features'; send a known 'user_id' or a 'history'"):
        recommender.features_query({"age": 30}, k=5)


def test_feature_two_tower_encodes_a_new_user_from_side_features(tmp_path_factory):
    run_dir = _train(tmp_path_factory, "two_tower", hidden=[8])
    exported = exporter.load_run(run_dir)
    bundle = load_bundle(exporter.export_run(exported, tmp_path_factory.mktemp("bundle") / "tt"))
    encoder = bundle.encoder
    assert set(encoder.feature_coders) == {"user_age", "user_gender", "user_occupation", "user_zip_prefix"}

    # reference: the model's own query with the user id unknown (-1 reads a zero row)
    cfg, dataset, engine, state, _ = restore_run(run_dir, None, one_device=True)
    columns = dataset.user_features.columns
    query = {"user": np.full((dataset.num_users, 1), -1, np.int32)} | {
        f"user_{name}": columns[name][:, None] for name in ("age", "gender", "occupation", "zip_prefix")
    }
    ids = feature_ids(engine.model, query)
    acts = engine.collection.pool(engine.collection.lookup(state.emb, ids), ids)
    expected = np.asarray(engine.model.apply(state.params, acts, query, method=engine.model.query_vectors))
    np.testing.assert_allclose(exporter.cold_start_queries(exported), expected, atol=1e-5)

    # a request's raw features go through the stored coders to the same vector
    users = read_raw(cfg.data).users
    token = dataset.interactions.user_tokens[3]
    raw = users.loc[str(token)].to_dict()
    recommender = Recommender(bundle)
    np.testing.assert_allclose(recommender.features_query(raw, k=5).vector_e, expected[3], atol=1e-5)
    partial = recommender.features_query({"age": int(raw["age"])}, k=5).vector_e  # the rest unknown (id 0)
    assert not np.allclose(partial, expected[3])
    with pytest.raises(RequestError, match=r"unknown feature\(s\) \['salary'\]"):
        recommender.features_query({"salary": 3}, k=5)
    with pytest.raises(RequestError, match="feature occupation='astronaut' was never seen in training"):
        recommender.features_query({"occupation": "astronaut"}, k=5)
    with pytest.raises(RequestError, match="cannot encode a 'history'"):
        recommender.history_query([bundle.item_tokens[0]], k=5)
    assert pd.notna(raw["age"]) and jnp.isfinite(partial).all()
