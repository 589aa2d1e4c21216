"""Evaluation with the catalogue split over the mesh (sharding/topk.py) equals the host path
that ranks a full [users, items] score matrix, for every metric: on a synthetic catalogue full of
ties and exclusions (scores are small integers, so both paths compute them exactly), and on
ml-100k through the real RankingEvaluator."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding

from jaxrec.config import Config, compose_config, validate
from jaxrec.data.dataset import load_dataset
from jaxrec.data.types import Interactions
from jaxrec.eval import evaluate_ranking, evaluate_ranking_sweeps, evaluate_sampled, evaluate_sampled_picks
from jaxrec.models import feature_ids
from jaxrec.sharding.mesh import make_mesh
from jaxrec.sharding.strategies import BATCH_SPEC
from jaxrec.sharding.topk import pick_sharded, sweep_sharded
from jaxrec.train_lib import RankingEvaluator, build_engine, init_state

USERS, ITEMS, KS = 40, 37, (1, 5, 10)  # 37 items: the 8 blocks end in padding


def _interactions(rng, count, users, items):
    pairs = np.unique(np.stack([rng.integers(0, users, count), rng.integers(0, items, count)], 1), axis=0)
    return Interactions(
        pairs[:, 0].astype(np.int32),
        pairs[:, 1].astype(np.int32),
        np.ones(len(pairs), np.float32),
        np.zeros(len(pairs), np.int64),
        np.arange(users).astype(str),
        np.arange(items).astype(str),
    )


@pytest.fixture(scope="module")
def tied_catalogue():
    rng = np.random.default_rng(0)
    query_ue = rng.integers(-1, 2, (USERS, 3)).astype(np.float32)  # dot products in -3..3: many ties
    items_ne = rng.integers(-1, 2, (ITEMS, 3)).astype(np.float32)
    train, valid, test = (_interactions(rng, n, USERS, ITEMS) for n in (300, 60, 120))
    return query_ue, items_ne, train, valid, test


def test_sharded_sweep_equals_the_full_score_matrix_with_ties_and_exclusions(tied_catalogue):
    query_ue, items_ne, train, valid, test = tied_catalogue
    mesh = make_mesh((2, 4), jax.devices())
    items_pad = jax.device_put(np.pad(items_ne, ((0, 3), (0, 0)), mode="edge"), NamedSharding(mesh, BATCH_SPEC))
    score_block = lambda query_be, items_re: query_be @ items_re.T  # noqa: E731
    sweep = jax.jit(lambda q, ex, tg: sweep_sharded(mesh, score_block, ITEMS, max(KS), q, items_pad, ex, tg))

    def sweep_fn(users_b, exclude_bx, targets_bt):
        return sweep(query_ue[np.asarray(users_b)], exclude_bx, targets_bt)

    def score_fn(users_b):
        return jnp.asarray(query_ue[np.asarray(users_b)] @ items_ne.T)

    for batch_size in (8, 16):
        expected = evaluate_ranking(score_fn, train, test, exclude=[valid], ks=KS, batch_size=batch_size)
        actual = evaluate_ranking_sweeps(sweep_fn, train, test, exclude=[valid], ks=KS, batch_size=batch_size)
        assert actual == pytest.approx(expected, rel=1e-6, abs=0), batch_size
    pick = jax.jit(lambda q, ids: pick_sharded(mesh, score_block, q, items_pad, ids))
    expected = evaluate_sampled(score_fn, train, test, exclude=[valid], ks=KS, num_negatives=20, batch_size=8)
    actual = evaluate_sampled_picks(
        lambda users_b, ids: pick(query_ue[np.asarray(users_b)], ids),
        train,
        test,
        exclude=[valid],
        ks=KS,
        num_negatives=20,
        batch_size=8,
    )
    assert actual == pytest.approx(expected, rel=1e-6, abs=0)


def _ml100k(strategy: str, mesh) -> Config:
    cfg = compose_config([])
    cfg.model.dim, cfg.train.ks, cfg.train.sampled_negatives = 16, [5, 10, 20], 50
    cfg.sharding.strategy, (cfg.sharding.mesh.data, cfg.sharding.mesh.model) = strategy, mesh
    return validate(cfg)


def test_ranking_evaluator_on_8_devices_equals_the_host_path_on_ml100k():
    sharded_cfg = _ml100k("row_wise", (2, 4))
    dataset = load_dataset(sharded_cfg.data)
    engine = build_engine(sharded_cfg, dataset.schema)
    actual = RankingEvaluator(engine, dataset)(init_state(engine, 0), "test")

    host = build_engine(_ml100k("none", (1, 1)), dataset.schema, devices=jax.devices()[:1])
    state, model = init_state(host, 0), host.model  # the same tables: initial values do not depend on the plan
    users, items = model.user_inputs(dataset, "test"), model.item_inputs(dataset)

    def acts(inputs):
        ids = feature_ids(model, inputs)
        return host.collection.pool(host.collection.lookup(state.emb, ids), ids)

    item_acts = acts(items)
    score_all = jax.jit(
        lambda query: model.apply(state.params, acts(query), query, item_acts, items, method=model.score_all)
    )

    def score_fn(users_b):
        return score_all({name: values[np.asarray(users_b)] for name, values in users.items()})

    split, ks = dataset.split, sharded_cfg.train.ks
    expected = evaluate_ranking(score_fn, split.train, split.test, exclude=[split.valid], ks=ks)
    sampled = evaluate_sampled(
        score_fn,
        split.train,
        split.test,
        exclude=[split.valid],
        ks=ks,
        num_negatives=50,
        seed=sharded_cfg.train.data_seed,
    )
    expected |= {f"sampled/{name}": value for name, value in sampled.items()}
    assert set(actual) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(actual[name], value, rtol=1e-5, err_msg=name)


def test_evaluation_on_a_mesh_that_does_not_divide_the_eval_batch():
    """3 devices and train.eval_batch_size=256: chunks round up to 258 users, and the metrics
    equal one device's (the run that crashed after an epoch in issue 15)."""
    metrics, chunks = {}, {}
    for strategy, mesh in (("row_wise", (1, 3)), ("none", (1, 1))):
        cfg = compose_config(["data=synthetic"])
        cfg.data.num_users, cfg.data.num_items, cfg.data.num_interactions = 300, 40, 4000
        cfg.model.dim, cfg.sharding.strategy, (cfg.sharding.mesh.data, cfg.sharding.mesh.model) = 8, strategy, mesh
        cfg = validate(cfg)
        dataset = load_dataset(cfg.data)
        engine = build_engine(cfg, dataset.schema, devices=jax.devices()[: mesh[1]])
        evaluator = RankingEvaluator(engine, dataset)
        metrics[strategy], chunks[strategy] = evaluator(init_state(engine, 0), "valid"), evaluator.chunk
    assert chunks == {"row_wise": 258, "none": 256}
    assert metrics["row_wise"].keys() == metrics["none"].keys()
    for name, value in metrics["none"].items():
        np.testing.assert_allclose(metrics["row_wise"][name], value, rtol=1e-5, err_msg=name)
