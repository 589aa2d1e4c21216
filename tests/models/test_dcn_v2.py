"""DCN-v2: the cross layer by hand, shapes, sharded == unsharded, configs, and a full run that learns."""

import copy
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.config import (
    Config,
    compose_config,
    config_from_dict,
    to_dict,
    validate,
)
from jaxrec.data.ctr import batch_inputs, load_ctr_dataset
from jaxrec.data.types import Schema
from jaxrec.errors import JaxrecError
from jaxrec.models.dcn_v2 import CrossNetwork, DCNv2
from jaxrec.runner import run
from jaxrec.train_lib import build_engine

VOCABS = [3, 10, 40, 50, 300, 1000]


def _config(**train) -> Config:
    cfg = compose_config(["data=criteo_synthetic", "model=dcn_v2"])
    cfg.data.num_examples, cfg.data.num_sparse, cfg.data.vocab_sizes = 3000, len(VOCABS), VOCABS
    cfg.model.dim, cfg.model.bottom_mlp, cfg.model.hidden = 4, [8, 4], [8]
    cfg.model.cross_layers, cfg.model.init_std = 2, 0.05
    cfg.optimizer.lr = 0.01
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return validate(cfg)


@pytest.fixture(scope="module")
def dataset():
    return load_ctr_dataset(_config().data)


def test_cross_layer_by_hand():
    """x1 = x0 * (W x0 + b) + x0 with x0 = [1, 2], W = [[1, 0], [1, 2]] (x @ kernel, kernel = W^T)."""
    params = {"params": {"Dense_0": {"kernel": jnp.array([[1.0, 1.0], [0.0, 2.0]]), "bias": jnp.array([0.5, -1.0])}}}
    x1 = CrossNetwork(1).apply(params, jnp.array([[1.0, 2.0]]))
    # W x0 + b = [1 + 0.5, 1 + 4 - 1] = [1.5, 4]; x0 * that + x0 = [1.5 + 1, 8 + 2]
    np.testing.assert_allclose(x1, [[2.5, 10.0]])


def test_tables_and_logit_shapes(dataset):
    model = DCNv2.from_config(_config().model, dataset.schema)
    specs = model.tables("lazy_adam", 0.01, candidates=5)
    assert [(s.name, s.rows, s.dim, s.ids_per_example) for s in specs] == [
        (f"cat_{j}", v, 4, 1) for j, v in enumerate(VOCABS)
    ]
    batch = batch_inputs(dataset.train, np.arange(7))
    acts = {f"cat_{j}": jnp.ones((7, 1, 4)) for j in range(len(VOCABS))}
    params = jax.eval_shape(model.init, jax.random.key(0), acts, batch)["params"]
    assert jax.eval_shape(model.apply, {"params": params}, acts, batch).shape == (7, 1)
    # bottom MLP 13 -> 8 -> 4; cross over D = 4 + 6 * 4 = 28; top 28 -> 8 -> 1
    kernels = {name: [layer["kernel"].shape for layer in block.values()] for name, block in params.items()}
    assert kernels == {"MLP_0": [(13, 8), (8, 4)], "CrossNetwork_0": [(28, 28), (28, 28)], "MLP_1": [(28, 8), (8, 1)]}


def test_needs_ctr_data():
    with pytest.raises(JaxrecError, match="model.name=dcn_v2 needs a CTR data set"):
        DCNv2.from_config(_config().model, Schema(10, 10))


def _batches(dataset, batch_size, steps):
    order = np.random.default_rng(0).permutation(len(dataset.train))
    return [batch_inputs(dataset.train, order[i * batch_size : (i + 1) * batch_size]) for i in range(steps)]


def test_sharded_step_matches_single_device(assert_sharded_step_matches):
    """One step under row_wise and auto on 8 devices; four equal medium tables make `auto` (mesh
    2 x 4, budget 10 kB) replicate two, split the large one and pack the four, one per device."""
    cfg = _config()
    cfg.data.vocab_sizes, cfg.data.num_sparse = [3, 10, 40, 40, 40, 40, 1000], 7
    dataset = load_ctr_dataset(cfg.data)
    auto = copy.deepcopy(cfg)
    auto.sharding.strategy, auto.sharding.mesh.data, auto.sharding.mesh.model = "auto", 2, 4
    auto.sharding.memory_budget_gb = 1e-5  # as the fixture sets it
    chosen = [p.strategy for p in build_engine(auto, dataset.schema).plan.placements.values()]
    assert chosen == ["data_parallel"] * 2 + ["table_wise"] * 4 + ["row_wise"]
    assert_sharded_step_matches(cfg, dataset.schema, _batches(dataset, 64, 1)[0])


def test_configs_compose_and_round_trip():
    cfg = compose_config(["experiment=dcn_v2_criteo"])
    assert (cfg.model.name, cfg.data.name, cfg.train.select_metric) == ("dcn_v2", "criteo_synthetic", "auc")
    assert (cfg.data.num_dense, cfg.data.num_sparse, cfg.model.cross_layers) == (13, 26, 3)
    assert config_from_dict(to_dict(cfg)) == cfg  # what results.json and checkpoints hold restores it
    plain = compose_config(["model=dcn_v2", "data=criteo_synthetic", "data.vocab_sizes=[5,6]", "data.num_sparse=2"])
    assert plain.data.vocab_sizes == [5, 6] and plain.model.bottom_mlp == [64, 16]


def test_run_learns_writes_auc_and_selects_the_best_epoch_by_auc(tmp_path, dataset):
    cfg = _config(
        epochs=4,
        batch_size=256,
        eval_batch_size=512,
        select_metric="auc",
        progress=False,
        checkpoint_every=0,
        log_every=9,
    )  # 9 steps per epoch
    cfg.optimizer.lr = 0.03  # overfits after epoch 2, so the best epoch is not the last
    results = run(cfg, tmp_path)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["metrics"] == results["metrics"] and set(results["metrics"]) == {"auc", "logloss", "accuracy"}
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    # measured: mean train loss per epoch 0.640, 0.580, 0.545, 0.492
    assert len(losses) == 4 and losses[0] > 0.62 and losses[-1] < 0.51 and losses == sorted(losses, reverse=True)
    valid_auc = {r["epoch"]: r["eval/valid/auc"] for r in records if "eval/valid/auc" in r}
    assert sorted(valid_auc) == [1.0, 2.0, 3.0, 4.0]
    # measured valid auc 0.665, 0.694, 0.684, 0.673
    assert results["best_epoch"] == max(valid_auc, key=valid_auc.get) == 2.0
    assert results["valid_metrics"]["auc"] == valid_auc[2.0]
    # measured test auc 0.66, logloss 0.595; the best constant prediction costs 0.647 (oracle auc 0.80)
    rate = dataset.train_label.mean()
    constant = -(rate * np.log(rate) + (1 - rate) * np.log(1 - rate))
    assert results["metrics"]["auc"] > 0.63 and results["metrics"]["logloss"] < constant - 0.03
    assert results["data"]["num_test"] == 300 and results["data"]["vocab_sizes"] == VOCABS
    assert results["data"]["oracle_test_auc"] > results["metrics"]["auc"]  # the true logits: the ceiling
