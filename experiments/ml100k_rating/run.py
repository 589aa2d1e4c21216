"""ml-100k explicit ratings, 5-fold cross-validation: jaxrec biased MF, SVD++ and the feature
two-tower (all `model.loss=mse`) against Surprise's SVD and SVD++ on the identical folds.

    python -m experiments.ml100k_rating.run --out runs/ml100k_rating

Folds: `data.split=kfold` (rating-level, seeded by `data.split_seed`), the same arrays for every
method; Surprise gets each fold's train and test ratings by their original tokens. Each jaxrec
model is tuned on fold 0 only, on a validation share carved from fold 0's training part
(`data.valid_ratio`), picking the grid point and the epoch by validation RMSE; the chosen config
is then trained on each fold's whole training part for that many epochs and scored once on the
fold's test part, as Surprise's peers are (default parameters, as in Surprise's published
table). Peers need `pip install -e ".[peers]"`; without Surprise they are skipped with a message
and the rest still runs.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from experiments.ml100k_baselines.run import compose_point, check_same_data, cli_overrides, grid_points, versions
from jaxrec.config import DataConfig, MovieLensConfig
from jaxrec.data.dataset import Dataset, load_dataset
from jaxrec.eval.metrics import rating_metrics
from jaxrec.progress import write_json_atomic

log = logging.getLogger("experiments.ml100k_rating")

PEERS_HINT = ('surprise is not importable: skipping Surprise SVD and SVD++. Install the peers with: '
              'pip install -e ".[peers]"')
VALID_RATIO = 0.1  # of fold 0's training part, for tuning only
# Bookkeeping shared by every jaxrec run: fresh runs, one checkpoint at the end, RMSE/MAE only
# (the full-ranking metrics would add ~16 s of compiles per run and say nothing about ratings).
BASE = {"model.loss": "mse", "train.select_metric": "rmse", "train.ranking_metrics": False,
        "train.progress": False, "train.resume": False, "train.checkpoint_every": 0, "train.batch_size": 256}
# Per model: fixed overrides and a small grid, picked on fold 0's validation RMSE (pilot runs on
# that split are in the README). model.bias_init None starts the global bias at the mean rating.
MODELS: dict[str, tuple[dict, dict]] = {
    "jaxrec_mf": ({"model.name": "mf", "model.init_std": 0.01, "optimizer.lr": 3e-3, "model.dim": 64,
                   "train.epochs": 25},
                  {"model.l2": [0.06, 0.1], "model.bias_init": [None, 0.0]}),
    "jaxrec_svdpp": ({"model.name": "svdpp", "model.init_std": 0.01, "optimizer.lr": 3e-3, "model.dim": 64,
                      "model.max_history": 64, "train.epochs": 12},
                     {"model.l2": [0.06, 0.08, 0.1]}),
    "jaxrec_two_tower": ({"model.name": "two_tower", "model.init_std": 0.01, "model.hidden": [128],
                          "model.dim": 64, "model.l2": 0.05, "model.dropout": 0.2, "train.epochs": 10},
                         {"optimizer.lr": [1e-3, 3e-3]}),
}

# Surprise's README, "Benchmarks" (also https://surpriselib.com and the scikit-surprise 1.1.5
# PyPI page): mean RMSE / MAE of a 5-fold cross-validation on ml-100k, default parameters, the
# same folds for all algorithms, and the total time on an Intel i5 11th-gen laptop. Produced by
# Surprise's examples/benchmark.py (SVD(random_state=0), SVDpp(random_state=0, cache_ratings=...)).
PUBLISHED = [("SVD", 0.934, 0.737, "0:00:06"), ("SVD++ (cache_ratings=False)", 0.919, 0.721, "0:01:39"),
             ("SVD++ (cache_ratings=True)", 0.919, 0.721, "0:01:22"), ("NMF", 0.963, 0.758, "0:00:06"),
             ("Slope One", 0.946, 0.743, "0:00:09"), ("k-NN", 0.98, 0.774, "0:00:08"),
             ("Centered k-NN", 0.951, 0.749, "0:00:09"), ("k-NN Baseline", 0.931, 0.733, "0:00:13"),
             ("Co-Clustering", 0.963, 0.753, "0:00:06"), ("Baseline", 0.944, 0.748, "0:00:02"),
             ("Random", 1.518, 1.219, "0:00:01")]


@dataclasses.dataclass
class CvResult:
    """One method's cross-validation: per-fold test metrics and fit seconds."""

    name: str
    params: dict[str, Any]
    folds: list[dict[str, float]]  # per fold: rmse, mae, fit_seconds
    tuning: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # jaxrec: every grid point

    def row(self) -> dict[str, Any]:
        rmse, mae = (np.array([f[m] for f in self.folds]) for m in ("rmse", "mae"))
        return {"name": self.name, "params": self.params, "num_folds": len(self.folds),
                "rmse_mean": float(rmse.mean()), "rmse_std": float(rmse.std(ddof=1)) if len(rmse) > 1 else 0.0,
                "mae_mean": float(mae.mean()), "mae_std": float(mae.std(ddof=1)) if len(mae) > 1 else 0.0,
                "fit_seconds": float(sum(f["fit_seconds"] for f in self.folds)), "folds": self.folds,
                "tuning": self.tuning}


def fold_data(data_cfg: DataConfig, fold: int, valid_ratio: float) -> DataConfig:
    cfg = copy.deepcopy(data_cfg)
    cfg.split, cfg.fold, cfg.valid_ratio = "kfold", fold, valid_ratio
    return cfg


def _run_jaxrec(data_cfg: DataConfig, overrides: dict, run_dir: Path, dataset: Dataset | None = None) -> dict:
    from jaxrec import runner

    cfg = compose_point(data_cfg, overrides)
    results = runner.run(cfg, run_dir)
    if dataset is not None:
        check_same_data(results, dataset)
    return results


def tune_jaxrec(name: str, data_cfg: DataConfig, fixed: dict, grid: dict, run_dir: Path) -> tuple[dict, list]:
    """Every grid point on fold 0 (with its validation share): (best overrides incl. the best
    epoch as train.epochs, one row per point)."""
    tuning, best = [], None
    for index, point in enumerate(grid_points(grid)):
        results = _run_jaxrec(fold_data(data_cfg, 0, VALID_RATIO), BASE | fixed | point, run_dir / f"tune_{index:02d}")
        valid = results["valid_metrics"]
        tuning.append({"params": point, "valid_rmse": valid["rmse"], "valid_mae": valid["mae"],
                       "best_epoch": results["best_epoch"], "fit_seconds": results["train"]["wall_s"]})
        log.info("%s %s valid rmse=%.4f (epoch %s, fit %.1fs)", name, cli_overrides(point), valid["rmse"],
                 results["best_epoch"], results["train"]["wall_s"])
        if best is None or valid["rmse"] < best[1]:
            best = (fixed | point | {"train.epochs": max(int(round(results["best_epoch"])), 1)}, valid["rmse"])
    return best[0], tuning


def cross_validate_jaxrec(name: str, datasets: list[Dataset], data_cfg: DataConfig, overrides: dict,
                          run_dir: Path, tuning: list) -> CvResult:
    """The chosen config on each fold's whole training part, scored once on its test part."""
    folds = []
    for fold, dataset in enumerate(datasets):
        results = _run_jaxrec(fold_data(data_cfg, fold, 0.0), BASE | overrides | {"train.eval_every": 0},
                              run_dir / f"fold_{fold}", dataset)
        test = results["metrics"]
        folds.append({"rmse": test["rmse"], "mae": test["mae"], "fit_seconds": results["train"]["wall_s"]})
        log.info("%s fold %d test rmse=%.4f mae=%.4f (fit %.1fs)", name, fold, test["rmse"], test["mae"],
                 results["train"]["wall_s"])
    return CvResult(name, dict(overrides), folds, tuning)


def import_surprise():
    """The `surprise` module, or None (with the install hint printed) if it is missing."""
    try:
        import surprise
    except ImportError:
        print(PEERS_HINT, flush=True)
        return None
    return surprise


def surprise_fold(surprise, dataset: Dataset):
    """(trainset, testset) of one fold for Surprise: the fold's train (+ valid, empty here) and
    test ratings, each user and item under its original token."""
    inter = dataset.interactions
    scale = (float(inter.rating.min()), float(inter.rating.max()))
    data = surprise.Dataset.load_from_df(_ratings_frame(dataset.split.train), surprise.Reader(rating_scale=scale))

    def raw(part):
        return list(zip(part.user_tokens[part.user], part.item_tokens[part.item], part.rating.astype(float),
                        [None] * len(part)))

    train = raw(dataset.split.train) + raw(dataset.split.valid)
    return data.construct_trainset(train), data.construct_testset(raw(dataset.split.test))


def _ratings_frame(part):
    import pandas as pd

    return pd.DataFrame({"user": part.user_tokens[part.user], "item": part.item_tokens[part.item],
                         "rating": part.rating.astype(float)})


def run_surprise(name: str, make_algo: Callable, params: dict, datasets: list[Dataset], surprise) -> CvResult:
    """Fit on each fold's training part, predict its test part (Surprise clips to the rating
    scale, as its published numbers do); RMSE/MAE by jaxrec's own rating_metrics."""
    folds = []
    for fold, dataset in enumerate(datasets):
        trainset, testset = surprise_fold(surprise, dataset)
        algo = make_algo(**params)
        start = time.perf_counter()
        algo.fit(trainset)
        seconds = time.perf_counter() - start
        predictions = algo.test(testset)
        pred, true = np.array([p.est for p in predictions]), np.array([p.r_ui for p in predictions])
        metrics = {k: float(v) for k, v in rating_metrics(pred, true).items()}
        folds.append(metrics | {"fit_seconds": seconds})
        log.info("%s fold %d test rmse=%.4f mae=%.4f (fit %.1fs)", name, fold, metrics["rmse"], metrics["mae"], seconds)
    return CvResult(name, params, folds)


def peer_methods(surprise, seed: int) -> dict[str, tuple[Callable, dict]]:
    """Surprise's SVD and SVD++ with the defaults of its published table (examples/benchmark.py)."""
    return {"surprise_svd": (surprise.SVD, {"random_state": seed}),
            "surprise_svdpp": (surprise.SVDpp, {"random_state": seed, "cache_ratings": False})}


def fold_fingerprint(dataset: Dataset) -> str:
    """md5 of the fold's test (user, item) ids: shows that every method saw the same folds."""
    test = dataset.split.test
    return hashlib.md5(np.stack([test.user, test.item]).astype(np.int32).tobytes()).hexdigest()[:12]


def compare(rows: list[dict]) -> str:
    """One line: the best jaxrec model's mean RMSE against Surprise SVD++'s on the same folds."""
    best = min((r for r in rows if r["name"].startswith("jaxrec")), key=lambda r: r["rmse_mean"])
    line = f"best jaxrec: {best['name']} RMSE {best['rmse_mean']:.4f} over {best['num_folds']} folds"
    svdpp = next((r for r in rows if r["name"] == "surprise_svdpp"), None)
    if svdpp is None:
        return line + " (Surprise skipped)"
    verb = "beats" if best["rmse_mean"] < svdpp["rmse_mean"] else "does not beat"
    line += f"; it {verb} Surprise SVD++ ({svdpp['rmse_mean']:.4f} over its {svdpp['num_folds']} folds)"
    if "folds" not in best:
        return line
    # paired over the folds both ran (the peers may run fewer: --peers-folds)
    diff = np.array([b["rmse"] - s["rmse"] for b, s in zip(best["folds"], svdpp["folds"])])
    spread = f" ± {diff.std(ddof=1):.4f}" if len(diff) > 1 else ""
    return line + (f"; per fold, jaxrec minus Surprise SVD++ = {diff.mean():+.4f}{spread}, "
                   f"lower on {int((diff < 0).sum())} of {len(diff)} folds")


def format_table(rows: list[dict]) -> str:
    head = "| method | params | folds | RMSE (mean ± std) | MAE (mean ± std) | fit s (all folds) |"
    lines = [head, "|---|---|---:|---|---|---:|"]
    for r in rows:
        shown = {("epochs" if k == "train.epochs" else k.split(".")[-1]): v for k, v in r["params"].items()
                 if k not in BASE and k != "model.name"}
        params = ", ".join(f"{k}={v}" for k, v in shown.items()) or "-"
        lines.append(f"| {r['name']} | {params} | {r['num_folds']} | {r['rmse_mean']:.4f} ± {r['rmse_std']:.4f} | "
                     f"{r['mae_mean']:.4f} ± {r['mae_std']:.4f} | {r['fit_seconds']:.1f} |")
    return "\n".join(lines)


def format_published() -> str:
    lines = ["| Surprise, published (ml-100k, 5-fold CV, default params) | RMSE | MAE | time |", "|---|---:|---:|---|"]
    lines += [f"| {name} | {rmse:.3f} | {mae:.3f} | {t} |" for name, rmse, mae, t in PUBLISHED]
    return "\n".join(lines)


def run_experiment(out_dir: Path, data_cfg: DataConfig, *, models: dict = MODELS, num_folds: int = 5,
                   peers_folds: int | None = None, seed: int = 0) -> dict:
    """Load the folds, tune and cross-validate every jaxrec model, run the peers on the same
    folds, write results.json and results.md, and return the results."""
    out_dir.mkdir(parents=True, exist_ok=True)
    start, load_start = time.perf_counter(), os.getloadavg()
    data_cfg = dataclasses.replace(data_cfg, num_folds=num_folds, split_seed=seed)
    datasets = [load_dataset(fold_data(data_cfg, fold, 0.0)) for fold in range(num_folds)]
    methods, timings = [], {}
    surprise = import_surprise()
    if surprise is not None:
        for name, (make_algo, params) in peer_methods(surprise, seed).items():
            tick = time.perf_counter()
            methods.append(run_surprise(name, make_algo, params, datasets[:peers_folds], surprise))
            timings[name] = time.perf_counter() - tick
    for name, (fixed, grid) in models.items():
        tick = time.perf_counter()
        chosen, tuning = tune_jaxrec(name, data_cfg, fixed, grid, out_dir / name)
        methods.append(cross_validate_jaxrec(name, datasets, data_cfg, chosen, out_dir / name, tuning))
        timings[name] = time.perf_counter() - tick
    rows = [m.row() for m in methods]
    table = format_table(rows)
    verdict = compare(rows)
    results = {
        "dataset": datasets[0].name, "split": "kfold", "num_folds": num_folds, "split_seed": seed,
        "valid_ratio_for_tuning": VALID_RATIO, "select_metric": "valid rmse (fold 0)",
        "folds": [{"train": len(d.split.train), "test": len(d.split.test), "test_md5": fold_fingerprint(d)}
                  for d in datasets],
        "peers_skipped": surprise is None, "peers_folds": len(datasets[:peers_folds]) if surprise else 0,
        "methods": rows, "verdict": verdict, "published": [dict(zip(("name", "rmse", "mae", "time"), p))
                                                          for p in PUBLISHED],
        "method_seconds": timings, "wall_seconds": time.perf_counter() - start,
        "loadavg_start": load_start, "loadavg_end": os.getloadavg(), "cpu_count": os.cpu_count(),
        "versions": versions() | _surprise_version(surprise),
    }
    write_json_atomic(out_dir / "results.json", results)
    text = f"{table}\n\n{verdict}\n\n{format_published()}\n"
    (out_dir / "results.md").write_text(text, encoding="utf-8")
    print(text + f"\ntotal {results['wall_seconds']:.0f}s, load average {load_start[0]:.1f} at start, "
          f"{results['loadavg_end'][0]:.1f} at the end")
    return results


def _surprise_version(surprise) -> dict:
    return {"scikit-surprise": surprise.__version__} if surprise is not None else {}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for results.json and results.md")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds (data.num_folds)")
    parser.add_argument("--peers-folds", type=int, default=None,
                        help="run Surprise on the first N folds only (default: all; SVD++ takes ~40 s a fold)")
    parser.add_argument("--seed", type=int, default=0, help="fold assignment (data.split_seed) and Surprise seed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run_experiment(args.out, MovieLensConfig(), num_folds=args.folds, peers_folds=args.peers_folds,
                   seed=args.seed)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    raise SystemExit(main())
