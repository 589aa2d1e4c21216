"""The ml100k_baselines arms at toy size on synthetic data (200 users x 100 items): the peer runner
and a jaxrec arm write jobs into one sweep dir, and one report holds both, each row with the
command that reruns it."""

import json
import sys

import numpy as np
import pytest

from experiments import arms, peers
from jaxrec.config import compose_config, config_from_dict
from jaxrec.data.dataset import load_dataset
from jaxrec.report import write_report

TOY = ["data=synthetic", "data.num_users=200", "data.num_items=100", "data.num_interactions=3000"]
MF_TOY = ["train.epochs=1", "train.batch_size=256", "model.dim=8", "optimizer.lr=1e-2", "model.l2=0.01"]
METRICS = ("hr@10", "ndcg@10", "recall@20", "mrr", "coverage@10")


def _check_metrics(results):
    for part in ("valid_metrics", "metrics"):
        assert all(0.0 <= results[part][m] <= 1.0 for m in METRICS), part
    assert results["train"]["wall_s"] >= 0.0


def test_the_grid_is_the_arm_file_s_with_the_command_line_replacing_an_axis():
    jobs = arms.grid(["experiment=ml100k_baselines/mf", "model.l2=0.5"])
    assert jobs == [
        ["optimizer.lr=0.001", "model.l2=0.5", "experiment=ml100k_baselines/mf"],
        ["optimizer.lr=0.003", "model.l2=0.5", "experiment=ml100k_baselines/mf"],
    ]
    assert len(arms.grid(["experiment=ml100k_baselines/implicit_als"])) == 27
    folds = arms.grid(["experiment=ml100k_rating/surprise_svdpp", "data.fold=0,1"])
    assert [job[:2] for job in folds] == [
        ["data.fold=0", "peer.name=surprise_svdpp"],
        ["data.fold=1", "peer.name=surprise_svdpp"],
    ]
    assert peers.split_peer_overrides(folds[1]) == (
        "surprise_svdpp",
        {"random_state": 0, "cache_ratings": False},
        ["data.fold=1", "experiment=ml100k_rating/surprise_svdpp"],
    )


def test_factor_scores_are_dot_products():
    user_ud, item_nd = np.arange(6.0).reshape(3, 2), np.arange(8.0).reshape(4, 2)
    scores = np.asarray(peers.factor_scores(user_ud, item_nd)(np.array([2, 0], np.int32)))
    np.testing.assert_allclose(scores, user_ud[[2, 0]] @ item_nd.T)


def test_implicit_peers_rank_with_the_same_evaluator(tmp_path):
    pytest.importorskip("implicit")
    pytest.importorskip("scipy")
    als = peers.run_peer_arm(
        tmp_path,
        [
            "experiment=ml100k_baselines/implicit_als",
            *TOY,
            "peer.factors=8",
            "peer.regularization=0.1",
            "peer.alpha=1.0,10.0",
            "peer.iterations=3",
            "peer.num_threads=1",
        ],
    )
    bpr = peers.run_peer_arm(
        tmp_path,
        [
            "experiment=ml100k_baselines/implicit_bpr",
            *TOY,
            "peer.factors=8",
            "peer.learning_rate=0.05",
            "peer.regularization=0.01",
            "peer.iterations=10",
            "peer.num_threads=1",
        ],
    )
    assert [results["peer"]["params"]["alpha"] for _, results in als] == [1.0, 10.0] and len(bpr) == 1
    for _, results in als + bpr:
        _check_metrics(results)
    train = load_dataset(compose_config(TOY).data).split.train
    csr = peers.train_csr(train)
    assert csr.shape == (train.num_users, train.num_items)
    assert csr.nnz == len(train) and set(np.unique(csr.data)) == {1.0}


def test_without_implicit_most_popular_and_mf_share_one_report(tmp_path, monkeypatch, capsys):
    """The path a fresh checkout takes: implicit skipped with the install hint; most-popular and
    the jaxrec MF arm in one sweep dir, one report, and each row's command reruns its job."""
    for name in ("implicit", "implicit.cpu", "implicit.cpu.als", "implicit.cpu.bpr"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules makes the import raise ImportError
    assert peers.run_peer_arm(tmp_path, ["experiment=ml100k_baselines/implicit_als", *TOY]) == []
    assert "implicit is not importable" in capsys.readouterr().out
    ((popular_dir, popular),) = peers.run_peer_arm(tmp_path, ["experiment=ml100k_baselines/most_popular", *TOY])
    ((mf_dir, mf),) = arms.run_arm(tmp_path, ["experiment=ml100k_baselines/mf", *TOY, *MF_TOY])
    assert popular_dir == tmp_path / "ml100k_baselines" / "most_popular" / "0"
    assert mf_dir == tmp_path / "ml100k_baselines" / "mf" / "0"
    _check_metrics(popular)
    _check_metrics(mf)
    summary = write_report(tmp_path)["md"].read_text()
    arm_table = summary.split("## Per arm")[1].split("\n\n| job |")[0]
    popular_command = (
        "python -m experiments.peers experiment=ml100k_baselines/most_popular peer.name=most_popular " + " ".join(TOY)
    )
    valid, test = popular["valid_metrics"]["ndcg@10"], popular["metrics"]["ndcg@10"]
    assert (
        f"| ml100k_baselines/most_popular | 1/1 | ml100k_baselines/most_popular/0 | {valid:.4f} | {test:.4f} |"
        in arm_table
    )
    assert f"`{popular_command}`" in arm_table
    mf_command = next(line for line in arm_table.splitlines() if "| ml100k_baselines/mf |" in line).split("`")[1]
    assert mf_command.startswith("python -m jaxrec.train experiment=ml100k_baselines/mf ")
    rerun = compose_config(mf_command.split()[3:])  # the command composes the job's config exactly
    assert rerun == config_from_dict(json.loads((mf_dir / "results.json").read_text())["config"])
