"""ml-100k leave-one-out: jaxrec MF against most-popular and `implicit`'s ALS and BPR.

    python -m experiments.ml100k_baselines.run --out runs/ml100k_baselines

Every method is scored through a score_fn and ranked by the SAME `evaluate_ranking` call on
the SAME split: hyper-parameters are picked on validation ndcg@10 (targets = valid, train
excluded), the reported numbers are test (targets = test, train and valid excluded), exactly
as `train_lib.RankingEvaluator` does. Peers need `pip install -e ".[peers]"`; without it they are
skipped with a message and the rest still runs.

Shape suffixes: B batch of users, N items, U users, D factors.
"""

from __future__ import annotations

import os

# implicit warns (and slows down badly) when OpenBLAS runs its own thread pool; this only
# takes effect if numpy is not imported yet, so fits also run under threadpool_limits.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import dataclasses
import itertools
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.config import Config, DataConfig, MovieLensConfig, as_override, compose_config
from jaxrec.data.dataset import Dataset, load_dataset
from jaxrec.data.types import Interactions, Split
from jaxrec.eval import evaluate_ranking, most_popular_scores
from jaxrec.eval.evaluator import ScoreFn
from jaxrec.progress import write_json_atomic

log = logging.getLogger("experiments.ml100k_baselines")

KS = (10, 20)
HIDDEN = ("train.progress", "train.resume", "train.checkpoint_every")  # bookkeeping, left out of the table
SELECT = "ndcg@10"
PEERS_HINT = 'implicit is not importable: skipping ALS and BPR. Install the peers with: pip install -e ".[peers]"'

# Peer grids: ~1 min each on 2 CPU cores (ml-100k). A pilot with BPR iterations {100, 300} picked
# 100; 300 cost 3x and helped only at lr 0.05, which lost anyway. BPR's third axis is regularization.
# A first pass (factors {32,64,128}, regularization {0.01,0.1,1}, alpha {1,10,40}; BPR lr {0.01,0.05},
# regularization {0.01,0.1}) picked grid corners, so both grids now extend below them.
ALS_GRID = {"factors": [16, 32, 64], "regularization": [0.001, 0.01, 0.1], "alpha": [0.5, 1.0, 10.0],
            "iterations": [15]}
BPR_GRID = {"factors": [32, 64, 128], "learning_rate": [0.005, 0.01], "regularization": [0.001, 0.01],
            "iterations": [100]}
# jaxrec MF: dotted Config overrides (also valid `python -m jaxrec.train` overrides). 30 epochs is
# conf/train/default.yaml's, so the winner can become the default as is; ~50 s per point.
# Fresh runs only (no resume from an earlier --out) and one checkpoint, at the end.
MF_BASE = {"train.epochs": 30, "train.eval_every": 2, "train.progress": False, "train.resume": False,
           "train.checkpoint_every": 0}
# Earlier passes: loss {bce, bpr} x lr {1e-3, 3e-3, 1e-2} (bce and 3e-3 won); l2 1e-4 changed nothing
# but l2 1e-2 raised validation ndcg@10 from 0.064 to 0.074 (README); this grid brackets it.
MF_GRID = {"model.loss": ["bce"], "optimizer.lr": [1e-3, 3e-3], "model.l2": [0.003, 0.01, 0.03]}


@dataclasses.dataclass
class MethodResult:
    name: str
    params: dict[str, Any]
    valid: dict[str, float]
    test: dict[str, float]
    fit_seconds: float
    grid_size: int = 1

    def row(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params, "valid_ndcg@10": self.valid.get(SELECT),
                "hr@10": self.test.get("hr@10"), "ndcg@10": self.test.get("ndcg@10"),
                "recall@20": self.test.get("recall@20"), "mrr": self.test.get("mrr"),
                "coverage@10": self.test.get("coverage@10"), "fit_seconds": self.fit_seconds,
                "grid_size": self.grid_size, "test_metrics": self.test, "valid_metrics": self.valid}


def grid_points(grid: dict[str, Sequence]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def evaluate_part(score_fn: ScoreFn, split: Split, part: str, batch_size: int = 256) -> dict[str, float]:
    """The protocol of train_lib.RankingEvaluator: valid excludes train; test excludes train and valid."""
    exclude = [split.valid] if part == "test" else []
    return evaluate_ranking(score_fn, split.train, getattr(split, part), exclude=exclude, ks=KS,
                            batch_size=batch_size)


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
        print(PEERS_HINT, flush=True)
        return None
    return {"als": AlternatingLeastSquares, "bpr": BayesianPersonalizedRanking}


def fit_implicit(model_cls, params: dict, user_items, seed: int, threads: int) -> tuple[np.ndarray, np.ndarray]:
    """(user_factors [U, D], item_factors [N, D]); BPR's extra bias column is already inside."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):  # also silences implicit's check in __init__
        model = model_cls(**params, random_state=seed, num_threads=threads)
        model.fit(user_items, show_progress=False)
    return np.asarray(model.user_factors), np.asarray(model.item_factors)


def tune_implicit(name: str, model_cls, grid: dict, split: Split, seed: int, threads: int) -> MethodResult:
    """Fit every grid point, keep the best on validation, report its test metrics and fit time."""
    user_items = train_csr(split.train)
    best = None
    for params in grid_points(grid):
        start = time.perf_counter()
        factors = fit_implicit(model_cls, params, user_items, seed, threads)
        seconds = time.perf_counter() - start
        valid = evaluate_part(factor_scores(*factors), split, "valid")
        log.info("%s %s valid %s=%.4f (fit %.1fs)", name, params, SELECT, valid[SELECT], seconds)
        if best is None or valid[SELECT] > best[1][SELECT]:
            best = (params, valid, factors, seconds)
    params, valid, factors, seconds = best
    test = evaluate_part(factor_scores(*factors), split, "test")
    return MethodResult(name, params, valid, test, seconds, len(grid_points(grid)))


def run_most_popular(split: Split) -> MethodResult:
    start = time.perf_counter()
    score_fn = most_popular_scores(split.train)
    seconds = time.perf_counter() - start
    return MethodResult("most_popular", {}, evaluate_part(score_fn, split, "valid"),
                        evaluate_part(score_fn, split, "test"), seconds)


def compose_point(data_cfg: DataConfig, overrides: dict[str, Any]) -> Config:
    """One grid point's config, composed from conf/ as `python -m jaxrec.train <overrides>` would
    (model.name picks the model option)."""
    args = [f"data={data_cfg.name}"] + [as_override(f"data.{key}", value)
                                        for key, value in dataclasses.asdict(data_cfg).items() if key != "name"]
    args += [f"model={overrides['model.name']}"] if "model.name" in overrides else []
    return compose_config(args + [as_override(key, value) for key, value in overrides.items() if key != "model.name"])


def cli_overrides(overrides: dict[str, Any]) -> str:
    return " ".join(as_override(key, value) for key, value in overrides.items())


def tune_jaxrec(name: str, data_cfg: DataConfig, base: dict, points: list[dict], dataset: Dataset,
                run_dir: Path) -> MethodResult:
    """runner.run per point (best epoch on validation inside); best point on validation."""
    from jaxrec import runner

    best = None
    for index, point in enumerate(points):
        cfg = compose_point(data_cfg, base | point)
        results = runner.run(cfg, run_dir / f"{name}_{index:02d}")
        check_same_data(results, dataset)
        valid = results["valid_metrics"]
        log.info("%s %s valid %s=%.4f (best epoch %s, fit %.1fs)", name, cli_overrides(point), SELECT,
                 valid[SELECT], results["best_epoch"], results["train"]["wall_s"])
        if best is None or valid[SELECT] > best[1]["valid_metrics"][SELECT]:
            best = (point, results)
    point, results = best
    params = {**base, **point, "best_epoch": results["best_epoch"]}
    return MethodResult(name, params, results["valid_metrics"], results["metrics"],
                        results["train"]["wall_s"], len(points))


def check_same_data(results: dict, dataset: Dataset) -> None:
    """runner.run loads the data itself; make sure it saw the split the peers saw."""
    seen = (results["data"]["num_users"], results["data"]["num_items"], results["data"]["num_interactions"])
    expected = (dataset.num_users, dataset.num_items, len(dataset.interactions))
    if seen != expected:
        raise RuntimeError(f"runner.run saw data {seen}, the baselines saw {expected}")


def format_table(rows: list[dict]) -> str:
    head = "| method | best params | valid ndcg@10 | hr@10 | ndcg@10 | recall@20 | mrr | coverage@10 | fit s |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items() if k not in HIDDEN) or "-"
        cells = [r["name"], params, r["valid_ndcg@10"], r["hr@10"], r["ndcg@10"], r["recall@20"], r["mrr"],
                 r["coverage@10"]]
        lines.append("| " + " | ".join(_cell(c) for c in cells)
                     + f" | {r['fit_seconds']:.1f} |")
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else f"{value:.4f}"


def run_experiment(out_dir: Path, data_cfg: DataConfig, *, als_grid=ALS_GRID, bpr_grid=BPR_GRID,
                   mf_base=MF_BASE, mf_grid=MF_GRID, seed: int = 0, threads: int = 0) -> dict:
    """Load the split once, run every method, write results.json and results.md, return the results."""
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    dataset = load_dataset(data_cfg)
    split = dataset.split
    methods = [run_most_popular(split)]
    peers = import_implicit()
    if peers is not None:
        methods.append(tune_implicit("implicit_als", peers["als"], als_grid, split, seed, threads))
        methods.append(tune_implicit("implicit_bpr", peers["bpr"], bpr_grid, split, seed, threads))
    mf = tune_jaxrec("jaxrec_mf", data_cfg, mf_base, grid_points(mf_grid), dataset, out_dir / "mf_runs")
    methods.append(mf)
    rows = [m.row() for m in methods]
    table = format_table(rows)
    results = {
        "dataset": dataset.name, "split": data_cfg.split, "ks": list(KS), "select_metric": f"valid {SELECT}",
        "data": {"num_users": dataset.num_users, "num_items": dataset.num_items,
                 "train": len(split.train), "valid": len(split.valid), "test": len(split.test)},
        "peers_skipped": peers is None,
        "jaxrec_mf_overrides": cli_overrides({k: v for k, v in mf.params.items() if k != "best_epoch"}),
        "methods": rows, "wall_seconds": time.perf_counter() - start,
        "versions": versions(),
    }
    write_json_atomic(out_dir / "results.json", results)
    (out_dir / "results.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    print(f"\njaxrec MF winner: {results['jaxrec_mf_overrides']}  (total {results['wall_seconds']:.0f}s)")
    return results


def versions() -> dict[str, str]:
    out = {"jax": jax.__version__, "numpy": np.__version__}
    try:
        import implicit

        out["implicit"] = implicit.__version__
    except ImportError:
        pass
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for results.json and results.md")
    parser.add_argument("--threads", type=int, default=0, help="implicit fit threads (0: all cores)")
    parser.add_argument("--seed", type=int, default=0, help="implicit random_state")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run_experiment(args.out, MovieLensConfig(), seed=args.seed, threads=args.threads)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    raise SystemExit(main())
