"""The ml-100k rating runner at toy size on synthetic data (200 users x 100 items, 2 folds)."""

import json
import sys

import numpy as np
import pytest

from experiments.ml100k_rating import run
from jaxrec.config import SyntheticConfig
from jaxrec.data.dataset import load_dataset

TOY = SyntheticConfig(num_users=200, num_items=100, num_interactions=3000, seed=0)
MF = {"jaxrec_mf": ({"model.name": "mf", "model.dim": 8, "train.epochs": 2, "optimizer.lr": 0.01},
                    {"model.l2": [0.01, 0.1]})}


def _check_row(row, folds):
    assert row["num_folds"] == len(row["folds"]) == folds
    assert 0.0 < row["mae_mean"] <= row["rmse_mean"] < 3.0 and row["rmse_std"] >= 0.0
    assert row["fit_seconds"] >= 0.0


def test_surprise_fits_exactly_the_fold_s_ratings():
    surprise = pytest.importorskip("surprise")
    dataset = load_dataset(run.fold_data(TOY, 1, 0.0))
    trainset, testset = run.surprise_fold(surprise, dataset)
    split = dataset.split
    assert trainset.n_ratings == len(split.train) and len(testset) == len(split.test)
    expected = set(zip(split.test.user_tokens[split.test.user], split.test.item_tokens[split.test.item]))
    assert {(u, i) for u, i, _ in testset} == expected
    for name, (make_algo, params) in run.peer_methods(surprise, seed=0).items():
        result = run.run_surprise(name, make_algo, params | {"n_epochs": 2}, [dataset], surprise)
        _check_row(result.row(), 1)


def test_without_surprise_jaxrec_is_tuned_on_fold_0_then_cross_validated(tmp_path, monkeypatch, capsys):
    """The path a fresh checkout takes: peers skipped with the install hint, the rest written."""
    monkeypatch.setitem(sys.modules, "surprise", None)  # None in sys.modules makes the import raise ImportError
    results = run.run_experiment(tmp_path, TOY, models=MF, num_folds=2)
    out = capsys.readouterr().out
    assert run.PEERS_HINT in out and 'pip install -e ".[peers]"' in out
    assert results["peers_skipped"] is True and results["verdict"].endswith("(Surprise skipped)")
    (mf,) = results["methods"]
    _check_row(mf, 2)
    assert [t["params"]["model.l2"] for t in mf["tuning"]] == [0.01, 0.1]
    best = min(mf["tuning"], key=lambda t: t["valid_rmse"])  # picked on fold 0's validation RMSE
    assert mf["params"]["model.l2"] == best["params"]["model.l2"]
    assert mf["params"]["train.epochs"] == int(best["best_epoch"])
    folds = results["folds"]  # two disjoint test folds of one data set
    assert folds[0]["test_md5"] != folds[1]["test_md5"]
    assert folds[0]["train"] + folds[0]["test"] == folds[1]["train"] + folds[1]["test"]
    assert "| jaxrec_mf |" in out and "| SVD++ (cache_ratings=False) | 0.919 | 0.721 |" in out
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["num_folds"] == 2 and (tmp_path / "results.md").read_text().strip() in out


def test_compare_names_the_winner_honestly():
    def row(name, rmse, folds=5):
        return {"name": name, "rmse_mean": rmse, "num_folds": folds}

    rows = [row("surprise_svdpp", 0.918), row("jaxrec_mf", 0.925), row("jaxrec_svdpp", 0.910)]
    assert run.compare(rows) == ("best jaxrec: jaxrec_svdpp RMSE 0.9100 over 5 folds; it beats Surprise SVD++ "
                                 "(0.9180 over its 5 folds)")
    folds = {"surprise_svdpp": [0.92, 0.89], "jaxrec_mf": [0.91, 0.91, 0.94]}  # the peers ran 2 folds of 3
    rows = [row(name, float(np.mean(rmse)), len(rmse)) | {"folds": [{"rmse": r} for r in rmse]}
            for name, rmse in folds.items()]
    assert run.compare(rows) == ("best jaxrec: jaxrec_mf RMSE 0.9200 over 3 folds; it does not beat Surprise "
                                 "SVD++ (0.9050 over its 2 folds); per fold, jaxrec minus Surprise SVD++ = "
                                 "+0.0050 ± 0.0212, lower on 1 of 2 folds")
