"""A checkpoint saved under row_wise on 8 devices restores on 4, 2 and 1 devices and under other
strategies with identical evaluation; incompatible checkpoints and non-finite values fail clearly."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxrec.checkpoint import Checkpointer
from jaxrec.config import Config, compose_config, validate
from jaxrec.data.dataset import load_dataset
from jaxrec.data.types import Schema
from jaxrec.errors import JaxrecError
from jaxrec.evaluate import evaluate_checkpoint
from jaxrec.runner import run
from jaxrec.train_lib import RankingEvaluator, build_engine, finite_checks, finite_names, init_state


def _config(strategy="row_wise", mesh=(1, 8)) -> Config:
    cfg = compose_config(["data=synthetic"])
    cfg.data.num_users, cfg.data.num_items, cfg.data.num_interactions = 150, 70, 4000
    cfg.model.dim = 6
    cfg.sharding.strategy = strategy
    cfg.sharding.mesh.data, cfg.sharding.mesh.model = mesh
    cfg.train.epochs, cfg.train.batch_size, cfg.train.progress, cfg.train.eval_every = 2, 64, False, 0
    return validate(cfg)


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("row_wise_8")
    run(_config(), run_dir)
    return run_dir


def _restore(run_dir, cfg, devices):
    dataset = load_dataset(cfg.data)
    engine = build_engine(cfg, dataset.schema, devices=devices)
    ckpt = Checkpointer(run_dir / "checkpoints", every=0, keep=10, async_save=False)
    state, _, _ = ckpt.restore(engine, None)
    ckpt.close()
    return dataset, engine, state


def _restored_metrics(run_dir, cfg, devices):
    dataset, engine, state = _restore(run_dir, cfg, devices)
    return RankingEvaluator(engine, dataset)(state, "test")


def _logical(engine, state):
    """Every table and optimiser slot in logical order, the dense params and optax state, on the host."""
    emb = jax.device_get(engine.collection.to_logical(state.emb))
    return {
        "emb": emb,
        "params": jax.device_get(state.params),
        "opt_state": jax.device_get(state.opt_state),
        "step": int(state.step),
    }


def test_restore_across_plans_and_device_counts_is_exact_for_tables_slots_and_optimiser_state(saved_run):
    """8 -> 4 -> 2 -> 1 devices and other strategies: the restored state, slots included, equals
    the state as saved, bit for bit."""
    reference = _logical(*_restore(saved_run, _config(), jax.devices())[1:])
    for strategy, mesh in [
        ("row_wise", (1, 4)),
        ("row_wise", (1, 2)),
        ("none", (1, 1)),
        ("table_wise", (2, 4)),
        ("column_wise", (1, 8)),
        ("auto", (4, 2)),
    ]:
        _, engine, state = _restore(saved_run, _config(strategy, mesh), jax.devices()[: mesh[0] * mesh[1]])
        jax.tree.map(
            lambda a, b: np.testing.assert_array_equal(a, b, err_msg=f"{strategy} {mesh}"),
            _logical(engine, state),
            reference,
        )


@pytest.mark.parametrize(
    "strategy,mesh",
    [
        ("row_wise", (1, 4)),
        ("row_wise", (1, 2)),
        ("none", (1, 1)),
        ("table_wise", (2, 4)),
        ("column_wise", (1, 8)),
        ("data_parallel", (4, 1)),
    ],
)
def test_restore_onto_other_meshes_and_strategies_gives_identical_metrics(saved_run, strategy, mesh):
    saved = json.loads((saved_run / "results.json").read_text())["metrics"]
    devices = jax.devices()[: mesh[0] * mesh[1]]
    restored = _restored_metrics(saved_run, _config(strategy, mesh), devices)
    for key, value in saved.items():
        np.testing.assert_allclose(restored[key], value, rtol=1e-6, err_msg=key)


def test_evaluate_cli_reproduces_the_final_metrics(saved_run):
    result = evaluate_checkpoint(saved_run)
    saved = json.loads((saved_run / "results.json").read_text())["metrics"]
    assert result["step"] == json.loads((saved_run / "results.json").read_text())["train"]["steps"]
    for key, value in saved.items():
        np.testing.assert_allclose(result["metrics"][key], value, rtol=1e-6, err_msg=key)


def test_incompatible_checkpoint_names_the_table_and_shapes(saved_run):
    cfg = _config()
    cfg.model.dim = 12
    dataset = load_dataset(cfg.data)
    engine = build_engine(cfg, dataset.schema)
    ckpt = Checkpointer(saved_run / "checkpoints", every=0, keep=10, async_save=False)
    with pytest.raises(JaxrecError, match=r"table 'item' is 70 x 6 there but 70 x 12 in the current config"):
        ckpt.restore(engine, None)
    ckpt.close()


def test_evaluate_cli_on_a_dir_without_checkpoints_is_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "jaxrec.evaluate", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2 and "has no checkpoints/ directory" in out.stderr
    assert "Traceback" not in out.stderr


def _exploding(on_nonfinite: str) -> Config:
    cfg = _config("none", (1, 1))
    cfg.optimizer.name, cfg.optimizer.lr = "sgd", 1e30  # rows overflow after one step
    cfg.train.on_nonfinite, cfg.train.checkpoint_every = on_nonfinite, 10
    return cfg


def test_nonfinite_stops_naming_the_step(tmp_path):
    with pytest.raises(JaxrecError, match=r"non-finite value at step 2 in loss.*no verified checkpoint exists yet"):
        run(_exploding("stop"), tmp_path)
    assert not (tmp_path / "results.json").exists()


def test_finite_checks_name_the_offending_table_and_layer():
    cfg = _config("none", (1, 1))
    engine = build_engine(cfg, Schema(10, 5))
    params = jax.tree.map(np.zeros_like, jax.device_get(init_state(engine, 0).params))
    params["params"]["global_bias"] = np.float32(np.nan)
    acts = {f: np.zeros((2, 1, 1 if "bias" in f else 6), np.float32) for f in engine.collection.features}
    acts["item"] = np.full((2, 1, 6), np.inf, np.float32)
    checks = {name: bool(ok) for name, ok in finite_checks(engine, np.float32(1.0), params, acts).items()}
    assert [name for name, ok in checks.items() if not ok] == ["table item", "layer ['params']['global_bias']"]
    assert list(checks) == finite_names(engine)


def test_nonfinite_skip_counts_skipped_batches(tmp_path):
    run(_exploding("skip"), tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    skipped = sum(r.get("train/skipped_nonfinite", 0) for r in records)
    steps = json.loads((tmp_path / "results.json").read_text())["train"]["steps"]
    assert skipped == steps - 1  # every step after the first overflowing update


def test_init_save_and_restore_hold_no_replicated_table():
    """XLA's compiled memory of the whole-state paths, on abstract inputs, for an item table that
    dwarfs the rest of the state (2^21 x 64, row_wise on 8 devices): each stays within
    1.1x the state's own bytes per device, far below one whole table (which a replicating save
    would hold on every device)."""
    from jaxrec import footprint

    cfg = _config("row_wise", (1, 8))
    cfg.model.dim = 64
    engine = build_engine(cfg, Schema(8, 1 << 21))
    table_bytes = (1 << 21) * 64 * 4
    state = footprint.restore_bytes(engine)  # the state's bytes per device: restore reads in place
    assert state < table_bytes / 2
    for name, value in (("init", footprint.init_bytes(engine)), ("save", footprint.save_bytes(engine))):
        assert value <= 1.1 * state, (name, value, state)
