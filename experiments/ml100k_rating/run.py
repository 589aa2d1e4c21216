"""ml-100k explicit ratings, 5-fold cross-validation: jaxrec biased MF, SVD++ and the feature
two-tower (all `model.loss=mse`) against Surprise's SVD and SVD++ on the identical folds.

    python -m experiments.ml100k_rating.run --sweep-dir runs/ml100k_rating [override ...]
    python -m jaxrec.report runs/ml100k_rating --metric rmse      # (run by this module too)

Two stages per jaxrec arm (conf/experiment/ml100k_rating/<arm>.yaml holds its grid and settings):
1. tuning: the arm's grid on fold 0, on a validation share of its training part; the point and
   the epoch are picked by validation RMSE (jobs <arm>/<i>);
2. cross-validation: the picked point on each fold's whole training part for the picked number
   of epochs, scored once on the fold's test part (jobs <arm>_cv/<fold>).
The Surprise arms run through experiments/peers.py on the same folds, at their defaults. The
report's per-arm table gives each _cv and Surprise arm's mean ± std over the folds.
Overrides apply to every arm (e.g. data=synthetic data.num_folds=2 for a smoke run).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from experiments.arms import read_job_overrides, run_arm, select, two_stage_main
from experiments.peers import run_peer_arm
from jaxrec.config import compose_config
from jaxrec.errors import cli_errors
from jaxrec.report import write_report

EXPERIMENT = "ml100k_rating"
JAXREC_ARMS = ("mf", "svdpp", "two_tower")
PEER_ARMS = ("surprise_svd", "surprise_svdpp")
# Stage 2's protocol (not tuned): the fold's whole training part, no validation epochs.
CV_STAGE = ("data.valid_ratio=0", "train.eval_every=0")


def cross_validate(sweep_dir: Path, arm: str, overrides: Sequence[str]) -> list[tuple[Path, dict]]:
    """Tune the arm on fold 0, then run its pick on every fold: the cross-validation jobs."""
    arm_overrides = [f"experiment={EXPERIMENT}/{arm}", *overrides]
    metric = compose_config(arm_overrides).train.select_metric  # rmse: lowest wins
    picked_dir, picked = select(run_arm(sweep_dir, arm_overrides), metric)
    chosen = read_job_overrides(picked_dir)
    folds = ",".join(str(fold) for fold in range(compose_config(chosen).data.num_folds))
    epochs = max(round(picked["best_epoch"]), 1)
    return run_arm(
        sweep_dir, [*chosen, *CV_STAGE, f"train.epochs={epochs}", f"data.fold={folds}"], subdir=f"{EXPERIMENT}/{arm}_cv"
    )


def compare(rows: dict[str, list[float]]) -> str:
    """One line: the best jaxrec arm's mean test RMSE against Surprise SVD++'s on the same folds
    (rows: arm -> per-fold RMSE, fold order)."""
    jaxrec = {arm: rmse for arm, rmse in rows.items() if not arm.startswith("surprise")}
    best = min(jaxrec, key=lambda arm: np.mean(jaxrec[arm]))
    line = f"best jaxrec: {best} RMSE {np.mean(jaxrec[best]):.4f} over {len(jaxrec[best])} folds"
    svdpp = rows.get("surprise_svdpp")
    if not svdpp:
        return line + " (Surprise skipped)"
    verb = "beats" if np.mean(jaxrec[best]) < np.mean(svdpp) else "does not beat"
    line += f"; it {verb} Surprise SVD++ ({np.mean(svdpp):.4f} over its {len(svdpp)} folds)"
    diff = np.array(jaxrec[best][: len(svdpp)]) - np.array(svdpp[: len(jaxrec[best])])  # paired over shared folds
    spread = f" ± {diff.std(ddof=1):.4f}" if len(diff) > 1 else ""
    return line + (
        f"; per fold, jaxrec minus Surprise SVD++ = {diff.mean():+.4f}{spread}, "
        f"lower on {int((diff < 0).sum())} of {len(diff)} folds"
    )


def run_experiment(
    sweep_dir: Path, overrides: Sequence[str] = (), arms: Sequence[str] = JAXREC_ARMS, peers: Sequence[str] = PEER_ARMS
) -> dict:
    """Every arm, then the report (by RMSE) with the verdict appended; returns what write_report wrote."""
    rows = {}
    for peer in peers:
        jobs = run_peer_arm(sweep_dir, [f"experiment={EXPERIMENT}/{peer}", *overrides])
        if jobs:
            rows[peer] = [results["metrics"]["rmse"] for _, results in jobs]
    for arm in arms:
        rows[arm] = [results["metrics"]["rmse"] for _, results in cross_validate(sweep_dir, arm, overrides)]
    written = write_report(sweep_dir, "rmse")
    verdict = compare(rows)
    written["md"].write_text(written["md"].read_text() + f"\n## Verdict\n\n{verdict}\n")
    return written | {"verdict": verdict, "rmse": rows}


@cli_errors
def main(argv: Sequence[str] | None = None) -> None:
    two_stage_main("python -m experiments.ml100k_rating.run", __doc__.split("\n")[0], run_experiment, argv)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
