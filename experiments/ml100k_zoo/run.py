"""ml-100k leave-one-out: MF, the feature two-tower and NeuMF, each tuned on validation, plus a
cold-start study in which 30% of users keep only their first 5 training interactions.

    python -m experiments.ml100k_zoo.run --out runs/ml100k_zoo

Same split, same evaluator and same selection rule as experiments/ml100k_baselines (best epoch
and best grid point on validation ndcg@10; test metrics reported). NeuMF is tried from scratch
and with its GMF tables initialised from the tuned MF run (He et al., 2017 pre-train them).
The sequence models have their own experiment (experiments/sasrec_ml100k).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

from experiments.ml100k_baselines.run import KS, MF_BASE, SELECT, cli_overrides, tune_jaxrec, versions
from jaxrec.config import DataConfig, MovieLensConfig
from jaxrec.data.dataset import load_dataset
from jaxrec.progress import write_json_atomic

log = logging.getLogger("experiments.ml100k_zoo")

MF = [{"model.name": "mf", "model.loss": "bce", "optimizer.lr": 3e-3, "model.l2": 0.01}]  # ml100k_baselines' pick
# Small sweeps (2 points each; ~4-8 min per run on 2 cores): the loss/negatives axis for the
# two-tower, the initialisation for NeuMF; lr 3e-3 and l2 0.01 are MF's tuned values.
TWO_TOWER = [{"model.name": "two_tower", "model.negatives": negatives, "model.loss": loss, "optimizer.lr": 3e-3,
              "model.hidden": [128], "model.l2": 0.01}
             for negatives, loss in (("sampled", "bce"), ("in_batch", "softmax"))]
NEUMF = [{"model.name": "neumf", "model.dim": 64, "model.hidden": [64, 32, 16], "optimizer.lr": 1e-3,
          "model.l2": 0.01}]
COLD = {"data.cold_users": 0.3, "data.cold_max_train": 5}
COLUMNS = ("hr@10", "ndcg@10", "mrr")



def _table(rows: list[tuple[str, str, dict, dict]], cold: bool) -> str:
    keys = [f"cold/{c}" for c in COLUMNS] if cold else list(COLUMNS)
    head = "| model | best config | valid ndcg@10 | " + " | ".join(f"test {k}" for k in keys) + " | fit s |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for name, config, result, valid in rows:
        cells = [f"{result['metrics'].get(k, float('nan')):.4f}" for k in keys]
        lines.append(f"| {name} | {config} | {valid[SELECT]:.4f} | " + " | ".join(cells)
                     + f" | {result['train_seconds']:.0f} |")
    return "\n".join(lines)


def _tune(name, data_cfg, dataset, points, out_dir):
    method = tune_jaxrec(name, data_cfg, MF_BASE, points, dataset, out_dir / f"{name}_runs")
    config = cli_overrides({k: v for k, v in method.params.items() if k not in MF_BASE and k != "best_epoch"})
    return method, config


def run_experiment(out_dir: Path, data_cfg: DataConfig) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    dataset = load_dataset(data_cfg)
    rows, cold_rows = [], []
    mf, mf_config = _tune("mf", data_cfg, dataset, MF, out_dir)
    mf_run = out_dir / "mf_runs" / "mf_00"
    tower, tower_config = _tune("two_tower", data_cfg, dataset, TWO_TOWER, out_dir)
    neumf_points = [point | {"model.init_from": init} for point in NEUMF for init in (None, str(mf_run))]
    neumf, neumf_config = _tune("neumf", data_cfg, dataset, neumf_points, out_dir)
    for name, method, config in (("mf", mf, mf_config), ("two_tower", tower, tower_config),
                                 ("neumf", neumf, neumf_config)):
        rows.append((name, config, {"metrics": method.test, "train_seconds": method.fit_seconds}, method.valid))
    cold_cfg = dataclasses.replace(data_cfg, cold_users=COLD["data.cold_users"],
                                   cold_max_train=COLD["data.cold_max_train"])
    cold_data = load_dataset(cold_cfg)
    for name, method in (("mf", mf), ("two_tower", tower)):
        point = {k: v for k, v in method.params.items() if k.startswith(("model.", "optimizer."))}
        cold, config = _tune(f"cold_{name}", cold_cfg, cold_data, [point], out_dir)
        cold_rows.append((name, config, {"metrics": cold.test, "train_seconds": cold.fit_seconds}, cold.valid))
    table, cold_table = _table(rows, cold=False), _table(cold_rows, cold=True)
    results = {"dataset": dataset.name, "ks": list(KS), "select_metric": f"valid {SELECT}",
               "methods": [{"name": n, "config": c, "test": r["metrics"], "valid": v} for n, c, r, v in rows],
               "cold": {"setting": COLD, "methods": [{"name": n, "config": c, "test": r["metrics"], "valid": v}
                                                     for n, c, r, v in cold_rows]},
               "wall_seconds": time.perf_counter() - start, "versions": versions()}
    write_json_atomic(out_dir / "results.json", results)
    text = f"{table}\n\nCold start ({cli_overrides(COLD)}; cold/ = test users with <= 5 training interactions):\n\n{cold_table}\n"
    (out_dir / "results.md").write_text(text, encoding="utf-8")
    print(text)
    print(f"total {results['wall_seconds']:.0f}s")
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/ml100k_zoo"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run_experiment(args.out, MovieLensConfig())


if __name__ == "__main__":
    main()
