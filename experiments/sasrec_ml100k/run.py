"""ml-100k leave-one-out: SASRec and BERT4Rec against MF, ALS, BPR and most-popular.

    python -m experiments.sasrec_ml100k.run --out runs/sasrec_ml100k

Same split, same evaluator (full ranking, train items excluded; valid items too for test) and
the same selection rule as experiments/ml100k_baselines: each sequence model is trained by
`jaxrec.runner.run` for every point of a small grid, evaluated on validation every few epochs
(so the epoch count is swept too: the runner keeps the test metrics of the best validation
epoch), and the grid point with the best validation ndcg@10 is reported. The baselines are
rerun here at the configs that experiments/ml100k_baselines tuned (its grids are not repeated):
MF with jaxrec's tuned defaults, ALS and BPR (when `implicit` is installed) at their winning
parameters, and most-popular.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit, as in ml100k_baselines

import argparse
import logging
import time
from pathlib import Path
from typing import Sequence

from jaxrec.config import DataConfig, MovieLensConfig
from jaxrec.data.dataset import load_dataset
from jaxrec.progress import write_json_atomic
from experiments.ml100k_baselines.run import (
    MethodResult, compose_point, check_same_data, cli_overrides, format_table, grid_points, import_implicit,
    run_most_popular, tune_implicit, versions,
)

log = logging.getLogger("experiments.sasrec_ml100k")

SELECT = "ndcg@10"
# Bookkeeping shared by every jaxrec run: fresh runs, one checkpoint at the end, quiet.
BOOKKEEPING = {"train.progress": False, "train.resume": False, "train.checkpoint_every": 0}
# Winners of experiments/ml100k_baselines (its README has the grids); rerun, not re-tuned.
MF = {"model.name": "mf", "train.epochs": 30, "train.eval_every": 2, "model.loss": "bce", "optimizer.lr": 0.003,
      "model.l2": 0.01}
ALS = {"factors": [32], "regularization": [0.01], "alpha": [1.0], "iterations": [15]}
BPR = {"factors": [64], "learning_rate": [0.01], "regularization": [0.01], "iterations": [100]}
# Sequence models: batches of 128 users (7 steps an epoch on ml-100k), 50 items of history,
# sampled softmax over 100 uniform negatives per sequence, dim 64, 2 blocks of 2 heads.
SEQUENCE_BASE = {"train.batch_size": 128, "train.eval_every": 5, "data.num_negatives": 100, "model.loss": "softmax",
                 "model.l2": 0.0, "model.dim": 64, "model.max_len": 50, "model.num_layers": 2, "model.num_heads": 2}
# Pilots (one run each, latest windows, before random training windows): SASRec at lr 1e-3
# reached validation 0.069 at epoch 40 against 0.100 at 3e-3, so lr 3e-3 is kept; BERT4Rec at
# lr 3e-3, dropout 0.1 was still rising at epoch 60 (validation 0.093), so it gets 80 epochs.
SASREC = {"base": {"model.name": "sasrec", "train.epochs": 60, "optimizer.lr": 3e-3},
          "grid": {"model.dropout": [0.2, 0.5]}}
BERT4REC = {"base": {"model.name": "bert4rec", "train.epochs": 80, "optimizer.lr": 3e-3, "model.dropout": 0.1},
            "grid": {"model.mask_prob": [0.2, 0.4]}}


def run_jaxrec(name: str, data_cfg: DataConfig, base: dict, grid: dict, dataset, run_dir: Path) -> MethodResult:
    """runner.run for each grid point (best epoch on validation inside), best point on validation."""
    from jaxrec import runner

    best, points = None, grid_points(grid)
    for index, point in enumerate(points):
        cfg = compose_point(data_cfg, BOOKKEEPING | base | point)
        start = time.perf_counter()
        results = runner.run(cfg, run_dir / f"{name}_{index:02d}")
        check_same_data(results, dataset)
        valid = results["valid_metrics"]
        log.info("%s %s valid %s=%.4f test %s=%.4f (best epoch %s, run %.0fs)", name, cli_overrides(point), SELECT,
                 valid[SELECT], SELECT, results["metrics"][SELECT], results["best_epoch"],
                 time.perf_counter() - start)
        if best is None or valid[SELECT] > best[1]["valid_metrics"][SELECT]:
            best = (point, results)
    point, results = best
    params = {**base, **point, "best_epoch": results["best_epoch"]}
    return MethodResult(name, params, results["valid_metrics"], results["metrics"], results["train"]["wall_s"],
                        len(points))


def run_experiment(out_dir: Path, data_cfg: DataConfig, *, sasrec=SASREC, bert4rec=BERT4REC,
                   sequence_base=SEQUENCE_BASE, with_peers: bool = True) -> dict:
    """Load the split once, run every method, write results.json and results.md, return the results."""
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    dataset = load_dataset(data_cfg)
    split = dataset.split
    methods = [run_most_popular(split)]
    peers = import_implicit() if with_peers else None
    if peers is not None:
        methods.append(tune_implicit("implicit_als", peers["als"], ALS, split, seed=0, threads=0))
        methods.append(tune_implicit("implicit_bpr", peers["bpr"], BPR, split, seed=0, threads=0))
    methods.append(run_jaxrec("jaxrec_mf", data_cfg, MF, {}, dataset, out_dir / "runs"))
    for name, spec in (("sasrec", sasrec), ("bert4rec", bert4rec)):
        methods.append(run_jaxrec(name, data_cfg, sequence_base | spec["base"], spec["grid"], dataset,
                                  out_dir / "runs"))
    rows = [m.row() for m in methods]
    table = format_table(rows)
    results = {
        "dataset": dataset.name, "split": data_cfg.split, "select_metric": f"valid {SELECT}",
        "data": {"num_users": dataset.num_users, "num_items": dataset.num_items, "train": len(split.train),
                 "valid": len(split.valid), "test": len(split.test)},
        "grids": {"sasrec": sasrec, "bert4rec": bert4rec, "sequence_base": sequence_base},
        "methods": rows, "wall_seconds": time.perf_counter() - start, "versions": versions(),
    }
    write_json_atomic(out_dir / "results.json", results)
    (out_dir / "results.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    print(f"\ntotal {results['wall_seconds']:.0f}s")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for results.json, results.md, runs/")
    parser.add_argument("--no-peers", action="store_true", help="skip implicit's ALS and BPR")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run_experiment(args.out, MovieLensConfig(), with_peers=not args.no_peers)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    raise SystemExit(main())
