"""Baselines that are not jaxrec models, run on an experiment arm's data and written as jobs that
`python -m jaxrec.report` reads next to the jaxrec ones (experiments/arms.py has the layout).

    python -m experiments.peers experiment=ml100k_baselines/implicit_als --sweep-dir runs/ml100k_baselines
    python -m experiments.peers experiment=ml100k_baselines/implicit_als peer.factors=32   # some points
    python -m jaxrec.report runs/ml100k_baselines

The arm file (conf/experiment/<experiment>/<peer arm>.yaml) sets the data like any experiment and
holds the peer's grid in hydra.sweeper.params: `peer.name` picks the peer, the other `peer.*` keys are
its constructor's arguments. Ranking peers (most-popular, implicit's ALS and BPR) are scored by
jaxrec's evaluator on the same split: validation with train items excluded, test with train and
validation items excluded, as `train_lib.RankingEvaluator` does. Rating peers (Surprise's SVD and
SVD++) are fitted on a fold's training part and scored by `rating_metrics` on its test part.
Peers need `pip install -e ".[peers]"`; a missing one is skipped with the install hint.

Shape suffixes: B batch of users, N items, U users, D factors.
"""

from __future__ import annotations

import os

# implicit warns (and slows down badly) when OpenBLAS runs its own thread pool; this only takes
# effect if numpy is not imported yet, so fits also run under threadpool_limits.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experiments.arms import arm_name, grid, write_job_overrides
from jaxrec.config import compose_config, to_dict
from jaxrec.data.dataset import Dataset, load_dataset
from jaxrec.data.types import Interactions, Split
from jaxrec.errors import JaxrecError, cli_errors
from jaxrec.eval import evaluate_ranking, most_popular_scores
from jaxrec.eval.evaluator import ScoreFn
from jaxrec.eval.metrics import rating_metrics
from jaxrec.progress import quiet_backend_probe, write_json_atomic

log = logging.getLogger("experiments.peers")

KS = (10, 20)
HINT = '{module} is not importable: skipping {peer}. Install the peers with: pip install -e ".[peers]"'
RANKING_PEERS = ("most_popular", "implicit_als", "implicit_bpr")
RATING_PEERS = ("surprise_svd", "surprise_svdpp")


def evaluate_part(
    score_fn: ScoreFn, split: Split, part: str, ks: Sequence[int] = KS, batch_size: int = 256
) -> dict[str, float]:
    """The protocol of train_lib.RankingEvaluator: valid excludes train; test excludes train and valid."""
    exclude = [split.valid] if part == "test" else []
    return evaluate_ranking(score_fn, split.train, getattr(split, part), exclude=exclude, ks=ks, batch_size=batch_size)


def factor_scores(user_factors_ud: np.ndarray, item_factors_nd: np.ndarray) -> ScoreFn:
    """score_fn(users_b) -> user_factors[users_b] @ item_factors.T, float32 [B, N]."""
    users_ud = jnp.asarray(user_factors_ud, jnp.float32)
    items_nd = jnp.asarray(item_factors_nd, jnp.float32)
    return jax.jit(lambda users_b: users_ud[users_b] @ items_nd.T)


def train_csr(train: Interactions):
    """users x items CSR of ones (duplicates collapse to one), what implicit's fit expects."""
    import scipy.sparse

    ones = np.ones(len(train), np.float32)
    matrix = scipy.sparse.csr_matrix((ones, (train.user, train.item)), shape=(train.num_users, train.num_items))
    matrix.data[:] = 1.0
    return matrix


def import_implicit():
    """The `implicit.cpu` model classes, or None (with the install hint printed) if missing."""
    try:
        import implicit  # noqa: F401
        from implicit.cpu.als import AlternatingLeastSquares
        from implicit.cpu.bpr import BayesianPersonalizedRanking
    except ImportError:
        print(HINT.format(module="implicit", peer="ALS and BPR"), flush=True)
        return None
    return {"als": AlternatingLeastSquares, "bpr": BayesianPersonalizedRanking}


def import_surprise():
    """The `surprise` module, or None (with the install hint printed) if it is missing."""
    try:
        import surprise
    except ImportError:
        print(HINT.format(module="surprise", peer="Surprise SVD and SVD++"), flush=True)
        return None
    return surprise


def fit_implicit(model_cls, params: dict, user_items) -> tuple[np.ndarray, np.ndarray]:
    """(user_factors [U, D], item_factors [N, D]); BPR's extra bias column is already inside."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):  # also silences implicit's check in __init__
        model = model_cls(**params)
        model.fit(user_items, show_progress=False)
    return np.asarray(model.user_factors), np.asarray(model.item_factors)


def ranking_peer(name: str, params: dict, dataset: Dataset, ks: Sequence[int], implicit) -> dict:
    """Fit one ranking peer: its validation and test metrics and fit seconds."""
    split = dataset.split
    start = time.perf_counter()
    if name == "most_popular":
        score_fn = most_popular_scores(split.train)
    else:
        model_cls = implicit[name.removeprefix("implicit_")]
        score_fn = factor_scores(*fit_implicit(model_cls, params, train_csr(split.train)))
    seconds = time.perf_counter() - start
    return {
        "valid_metrics": evaluate_part(score_fn, split, "valid", ks),
        "metrics": evaluate_part(score_fn, split, "test", ks),
        "train": {"wall_s": seconds},
    }


def surprise_fold(surprise, dataset: Dataset):
    """(trainset, testset) of one fold for Surprise: the fold's train (+ valid, empty at
    data.valid_ratio=0) and test ratings, each user and item under its original token."""
    import pandas as pd

    def raw(part):
        return list(
            zip(part.user_tokens[part.user], part.item_tokens[part.item], part.rating.astype(float), [None] * len(part))
        )

    train = dataset.split.train
    frame = pd.DataFrame(
        {
            "user": train.user_tokens[train.user],
            "item": train.item_tokens[train.item],
            "rating": train.rating.astype(float),
        }
    )
    scale = (float(dataset.interactions.rating.min()), float(dataset.interactions.rating.max()))
    data = surprise.Dataset.load_from_df(frame, surprise.Reader(rating_scale=scale))
    trainset = data.construct_trainset(raw(train) + raw(dataset.split.valid))
    return trainset, data.construct_testset(raw(dataset.split.test))


def rating_peer(name: str, params: dict, dataset: Dataset, surprise) -> dict:
    """Fit on the fold's training part, predict its test part (Surprise clips to the rating scale,
    as its published numbers do); RMSE/MAE by jaxrec's own rating_metrics."""
    make_algo = {"surprise_svd": surprise.SVD, "surprise_svdpp": surprise.SVDpp}[name]
    trainset, testset = surprise_fold(surprise, dataset)
    algo = make_algo(**params)
    start = time.perf_counter()
    algo.fit(trainset)
    seconds = time.perf_counter() - start
    predictions = algo.test(testset)
    pred, true = np.array([p.est for p in predictions]), np.array([p.r_ui for p in predictions])
    return {
        "valid_metrics": {},
        "metrics": {k: float(v) for k, v in rating_metrics(pred, true).items()},
        "train": {"wall_s": seconds},
    }


def split_peer_overrides(job: list[str]) -> tuple[str, dict[str, Any], list[str]]:
    """(peer name, its arguments, the jaxrec config's overrides) of one job's overrides."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params, rest = {}, []
    for override in OverridesParser.create().parse_overrides(job):
        key = override.key_or_group
        if key.startswith("peer."):
            params[key.removeprefix("peer.")] = override.value()
        else:
            rest.append(override.input_line)
    name = params.pop("name", None)
    if name not in RANKING_PEERS + RATING_PEERS:
        raise JaxrecError(
            f"peer.name={name!r}: expected one of {', '.join(RANKING_PEERS + RATING_PEERS)} "
            "(set in the arm's hydra.sweeper.params)"
        )
    return name, params, rest


def run_peer_arm(sweep_dir: Path, overrides: list[str]) -> list[tuple[Path, dict]]:
    """Every point of a peer arm's grid: a job dir with .hydra/overrides.yaml and results.json, in
    jaxrec.runner's format ("entry" names the module that reruns it). [] if the peer is missing."""
    jobs, modules = [], {}
    for index, job in enumerate(grid(overrides)):
        name, params, rest = split_peer_overrides(job)
        kind = "implicit" if name.startswith("implicit") else "surprise" if name in RATING_PEERS else None
        if kind and kind not in modules:
            modules[kind] = import_implicit() if kind == "implicit" else import_surprise()
        if kind and modules[kind] is None:
            return jobs
        cfg = compose_config(rest)
        dataset = load_dataset(cfg.data)
        if name in RATING_PEERS:
            results = rating_peer(name, params, dataset, modules[kind])
        else:
            results = ranking_peer(name, params, dataset, cfg.train.ks, modules.get(kind))
        job_dir = Path(sweep_dir) / arm_name(job) / str(index)
        write_job_overrides(job_dir, job)
        results |= {
            "entry": "experiments.peers",
            "peer": {"name": name, "params": params},
            "data": dataset.summary(),
            "config": {"data": to_dict(cfg)["data"]},
        }
        write_json_atomic(job_dir / "results.json", results)
        log.info(
            "%s %s: valid %s, test %s (fit %.1fs)",
            name,
            params,
            _short(results["valid_metrics"]),
            _short(results["metrics"]),
            results["train"]["wall_s"],
        )
        jobs.append((job_dir, results))
    return jobs


def _short(metrics: dict) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k in ("ndcg@10", "hr@10", "rmse", "mae")) or "-"


@cli_errors
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.peers", description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="+", help="experiment=<experiment>/<peer arm> and any overrides")
    parser.add_argument(
        "--sweep-dir",
        type=Path,
        default=Path("multirun") / time.strftime("%Y-%m-%d/%H-%M-%S"),
        help="where the job dirs go (default: multirun/<date>/<time>, as Hydra's)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    quiet_backend_probe()
    jobs = run_peer_arm(args.sweep_dir, args.overrides)
    print(f"{len(jobs)} jobs in {args.sweep_dir}; table: python -m jaxrec.report {args.sweep_dir}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
