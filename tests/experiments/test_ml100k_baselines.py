"""The ml-100k baselines runner at toy size on synthetic data (200 users x 100 items)."""

import json
import sys

import numpy as np
import pytest

from experiments.ml100k_baselines import run
from jaxrec.errors import JaxrecError
from jaxrec.config import SyntheticConfig
from jaxrec.data.dataset import load_dataset

TOY = SyntheticConfig(num_users=200, num_items=100, num_interactions=3000, seed=0)
MF_BASE = {"train.epochs": 1, "train.batch_size": 256, "train.progress": False, "model.dim": 8}
MF_GRID = {"model.loss": ["bce"]}
ALS_GRID = {"factors": [8], "regularization": [0.1], "alpha": [1.0, 10.0], "iterations": [3]}
BPR_GRID = {"factors": [8], "learning_rate": [0.05], "iterations": [10]}
METRICS = ("hr@10", "ndcg@10", "recall@20", "mrr", "coverage@10")


@pytest.fixture(scope="module")
def toy_split():
    return load_dataset(TOY).split


def _check_row(row):
    assert 0.0 <= row["valid_ndcg@10"] <= 1.0
    assert all(0.0 <= row[m] <= 1.0 for m in METRICS)
    assert row["fit_seconds"] >= 0.0


def test_grid_points_and_overrides():
    assert run.grid_points({"a": [1, 2], "b": ["x"]}) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]
    point = {"model.name": "two_tower", "optimizer.lr": 1e-2, "model.hidden": [32, 16], "model.bias_init": None}
    cfg = run.compose_point(TOY, point | {"train.progress": False})
    assert (cfg.data, cfg.model.name, cfg.optimizer.lr, cfg.model.hidden, cfg.train.progress) == (
        TOY, "two_tower", 1e-2, [32, 16], False)
    assert run.cli_overrides(point) == ("model.name=two_tower optimizer.lr=0.01 model.hidden=[32,16] "
                                        "model.bias_init=null")
    with pytest.raises(JaxrecError, match="model.nope does not exist in MFConfig"):
        run.compose_point(TOY, {"model.nope": 1})


def test_factor_scores_are_dot_products():
    user_ud, item_nd = np.arange(6.0).reshape(3, 2), np.arange(8.0).reshape(4, 2)
    scores = np.asarray(run.factor_scores(user_ud, item_nd)(np.array([2, 0], np.int32)))
    np.testing.assert_allclose(scores, user_ud[[2, 0]] @ item_nd.T)


def test_implicit_peers_rank_with_the_same_evaluator(toy_split):
    pytest.importorskip("implicit")
    pytest.importorskip("scipy")
    peers = run.import_implicit()
    als = run.tune_implicit("implicit_als", peers["als"], ALS_GRID, toy_split, seed=0, threads=1)
    bpr = run.tune_implicit("implicit_bpr", peers["bpr"], BPR_GRID, toy_split, seed=0, threads=1)
    assert als.grid_size == 2 and als.params["alpha"] in (1.0, 10.0)
    for result in (als, bpr):
        _check_row(result.row())
    csr = run.train_csr(toy_split.train)
    assert csr.shape == (toy_split.train.num_users, toy_split.train.num_items)
    assert csr.nnz == len(toy_split.train) and set(np.unique(csr.data)) == {1.0}


def test_without_implicit_most_popular_and_mf_still_run(tmp_path, monkeypatch, capsys):
    """The path a fresh checkout takes: peers skipped with the install hint, the rest written."""
    # None in sys.modules makes `import implicit` raise ImportError.
    for name in ("implicit", "implicit.cpu", "implicit.cpu.als", "implicit.cpu.bpr"):
        monkeypatch.setitem(sys.modules, name, None)
    results = run.run_experiment(tmp_path, TOY, mf_base=MF_BASE, mf_grid=MF_GRID)
    out = capsys.readouterr().out
    assert run.PEERS_HINT in out and 'pip install -e ".[peers]"' in out
    assert results["peers_skipped"] is True
    rows = {r["name"]: r for r in results["methods"]}
    assert list(rows) == ["most_popular", "jaxrec_mf"]
    for row in rows.values():
        _check_row(row)
    assert rows["jaxrec_mf"]["params"]["model.loss"] == "bce"
    assert "model.dim=8" in results["jaxrec_mf_overrides"]
    assert json.loads((tmp_path / "results.json").read_text())["methods"][1]["name"] == "jaxrec_mf"
    table = (tmp_path / "results.md").read_text()
    assert "| jaxrec_mf |" in table and table.strip() in out
