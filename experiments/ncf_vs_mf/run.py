"""Rendle et al. (2020), "Neural Collaborative Filtering vs. Matrix Factorization Revisited", on
ml-100k: the three arms of conf/experiment/ncf_vs_mf/, with NeuMF's GMF tables initialised from the
MF job that validation picked, then the report.

    python -m experiments.ncf_vs_mf.run --sweep-dir runs/ncf_vs_mf [override ...]
    python -m jaxrec.report runs/ncf_vs_mf          # (run by this module too)

The only step a Hydra multirun cannot take is passing the picked MF job's dir to the neumf_init arm
(model.init_from); the grids and settings are in the arm files. Overrides apply to every arm
(e.g. data=synthetic train.epochs=1 for a smoke run).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from experiments.arms import run_arm, select, two_stage_main
from jaxrec.config import compose_config
from jaxrec.errors import cli_errors
from jaxrec.report import write_report

ARMS = "ncf_vs_mf"


def run_experiment(sweep_dir: Path, overrides: Sequence[str] = ()) -> dict:
    """MF's grid, then NeuMF from scratch and from the picked MF job; returns what write_report wrote."""
    mf_arm = [f"experiment={ARMS}/mf", *overrides]
    metric = compose_config(mf_arm).train.select_metric
    picked_dir, _ = select(run_arm(sweep_dir, mf_arm), metric)
    run_arm(sweep_dir, [f"experiment={ARMS}/neumf", *overrides])
    run_arm(sweep_dir, [f"experiment={ARMS}/neumf_init", f"model.init_from={picked_dir.resolve()}", *overrides])
    return write_report(sweep_dir, metric)


@cli_errors
def main(argv: Sequence[str] | None = None) -> None:
    two_stage_main("python -m experiments.ncf_vs_mf.run", __doc__.split("\n")[0], run_experiment, argv)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
