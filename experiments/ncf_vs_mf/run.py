"""Rendle et al. (2020), "Neural Collaborative Filtering vs. Matrix Factorization Revisited", on
ml-100k: MF (dot product) against NeuMF, each tuned on validation, measured with full ranking
and with NCF's sampled protocol (the target against 100 sampled negatives).

    python -m experiments.ncf_vs_mf.run --out runs/ncf_vs_mf

Leave-one-out split, one evaluator (jaxrec.train_lib.RankingEvaluator with
train.sampled_negatives=100); grid points and best epochs are picked on validation full-ranking
ndcg@10, as every jaxrec experiment does. The table also says which model each metric ranks
first, so a disagreement between sampled and full ranking (Krichene & Rendle, 2020) shows.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from experiments.ml100k_baselines.run import MF_BASE, cli_overrides, tune_jaxrec, versions
from jaxrec.config import DataConfig, MovieLensConfig
from jaxrec.data.dataset import load_dataset
from jaxrec.progress import write_json_atomic

BASE = MF_BASE | {"train.sampled_negatives": 100}
MF = [{"model.name": "mf", "model.loss": "bce", "optimizer.lr": lr, "model.l2": 0.01} for lr in (1e-3, 3e-3)]
NEUMF = {"model.name": "neumf", "model.dim": 64, "model.hidden": [64, 32, 16], "optimizer.lr": 1e-3,
         "model.l2": 0.01}
METRICS = ("hr@10", "ndcg@10", "sampled/hr@10", "sampled/ndcg@10")


def run_experiment(out_dir: Path, data_cfg: DataConfig) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    dataset = load_dataset(data_cfg)
    mf = tune_jaxrec("mf", data_cfg, BASE, MF, dataset, out_dir / "mf_runs")
    best_mf = out_dir / "mf_runs" / f"mf_{MF.index({k: mf.params[k] for k in MF[0]}):02d}"
    neumf = tune_jaxrec("neumf", data_cfg, BASE, [NEUMF | {"model.init_from": None},
                                                  NEUMF | {"model.init_from": str(best_mf)}],
                        dataset, out_dir / "neumf_runs")
    methods = {"mf": mf, "neumf": neumf}
    lines = ["| model | best config | " + " | ".join(f"test {m}" for m in METRICS) + " | fit s |",
             "|---" * (len(METRICS) + 3) + "|"]
    for name, method in methods.items():
        config = cli_overrides({k: v for k, v in method.params.items() if k not in BASE and k != "best_epoch"})
        lines.append(f"| {name} | {config} | " + " | ".join(f"{method.test[m]:.4f}" for m in METRICS)
                     + f" | {method.fit_seconds:.0f} |")
    winners = {m: max(methods, key=lambda n: methods[n].test[m]) for m in METRICS}
    lines += ["", "Ranked first: " + ", ".join(f"{m}: {w}" for m, w in winners.items())]
    text = "\n".join(lines) + "\n"
    results = {"methods": {n: {"params": m.params, "test": m.test, "valid": m.valid, "fit_seconds": m.fit_seconds}
                           for n, m in methods.items()},
               "winners": winners, "wall_seconds": time.perf_counter() - start, "versions": versions()}
    write_json_atomic(out_dir / "results.json", results)
    (out_dir / "results.md").write_text(text, encoding="utf-8")
    print(text, f"total {results['wall_seconds']:.0f}s")
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/ncf_vs_mf"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run_experiment(args.out, MovieLensConfig())


if __name__ == "__main__":
    main()
