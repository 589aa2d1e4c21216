"""The ml100k_rating experiment at toy size on synthetic data (200 users x 100 items, 2 folds):
tuning on fold 0, cross-validation of the pick, the per-arm report."""

import json
import sys

import numpy as np
import pytest

from experiments import peers
from experiments.ml100k_rating import run
from jaxrec.config import compose_config
from jaxrec.data.dataset import load_dataset

TOY = [
    "data=synthetic",
    "data.num_users=200",
    "data.num_items=100",
    "data.num_interactions=3000",
    "data.num_folds=2",
    "model.dim=8",
    "train.epochs=2",
    "model.bias_init=null",
]  # mf's grid: l2 {0.06, 0.1}


def test_surprise_fits_exactly_the_fold_s_ratings(tmp_path):
    surprise = pytest.importorskip("surprise")
    data = [
        "data=synthetic",
        "data.num_users=200",
        "data.num_items=100",
        "data.num_interactions=3000",
        "data.num_folds=2",
    ]
    dataset = load_dataset(compose_config(["experiment=ml100k_rating/surprise_svd", *data, "data.fold=1"]).data)
    trainset, testset = peers.surprise_fold(surprise, dataset)
    split = dataset.split
    assert trainset.n_ratings == len(split.train) and len(testset) == len(split.test)
    expected = set(zip(split.test.user_tokens[split.test.user], split.test.item_tokens[split.test.item]))
    assert {(u, i) for u, i, _ in testset} == expected
    for arm in run.PEER_ARMS:
        jobs = peers.run_peer_arm(tmp_path, [f"experiment=ml100k_rating/{arm}", *data, "peer.n_epochs=2"])
        assert len(jobs) == 2 and all(0.0 < r["metrics"]["mae"] <= r["metrics"]["rmse"] < 3.0 for _, r in jobs)


def test_without_surprise_jaxrec_is_tuned_on_fold_0_then_cross_validated(tmp_path, monkeypatch, capsys):
    """The path a fresh checkout takes: peers skipped with the install hint, the rest written."""
    monkeypatch.setitem(sys.modules, "surprise", None)  # None in sys.modules makes the import raise ImportError
    written = run.run_experiment(tmp_path, TOY, arms=("mf",))
    assert "surprise is not importable" in capsys.readouterr().out
    assert written["verdict"].endswith("(Surprise skipped)")
    tuning = [json.loads((tmp_path / "ml100k_rating" / "mf" / str(i) / "results.json").read_text()) for i in (0, 1)]
    assert [t["config"]["model"]["l2"] for t in tuning] == [0.06, 0.1]
    assert all(t["config"]["data"]["fold"] == 0 and t["config"]["data"]["valid_ratio"] == 0.1 for t in tuning)
    best = min(tuning, key=lambda t: t["valid_metrics"]["rmse"])  # picked on fold 0's validation RMSE
    folds = [json.loads((tmp_path / "ml100k_rating" / "mf_cv" / str(k) / "results.json").read_text()) for k in (0, 1)]
    for fold, results in enumerate(folds):
        data, model, train = (results["config"][key] for key in ("data", "model", "train"))
        assert (data["fold"], data["valid_ratio"], train["eval_every"]) == (fold, 0.0, 0)
        assert model["l2"] == best["config"]["model"]["l2"] and train["epochs"] == round(best["best_epoch"])
    rmse = [results["metrics"]["rmse"] for results in folds]
    assert written["rmse"] == {"mf": rmse} and rmse[0] != rmse[1]  # two disjoint test folds
    lines = written["md"].read_text().splitlines()
    arm_row = next(line for line in lines if line.startswith("| ml100k_rating/mf_cv |"))
    assert f"| {np.mean(rmse):.4f} ± {np.std(rmse, ddof=1):.4f} |" in arm_row


def test_compare_names_the_winner_honestly():
    rows = {"surprise_svdpp": [0.918] * 5, "mf": [0.925] * 5, "svdpp": [0.910] * 5}
    assert run.compare(rows).startswith(
        "best jaxrec: svdpp RMSE 0.9100 over 5 folds; it beats Surprise SVD++ "
        "(0.9180 over its 5 folds); per fold, jaxrec minus Surprise SVD++ = -0.0080"
    )
    rows = {"surprise_svdpp": [0.92, 0.89], "mf": [0.91, 0.91, 0.94]}  # the peers ran 2 folds of 3
    assert run.compare(rows) == (
        "best jaxrec: mf RMSE 0.9200 over 3 folds; it does not beat Surprise SVD++ "
        "(0.9050 over its 2 folds); per fold, jaxrec minus Surprise SVD++ = "
        "+0.0050 ± 0.0212, lower on 1 of 2 folds"
    )
