"""jaxrec.report on a hand-built multirun dir (3 finished jobs, 1 failed, 1 unfinished) and on a
real tiny sweep whose first job fails."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import open_dict

from jaxrec.config import CONF_DIR, compose_conf, compose_config, config_from_dict, to_config
from jaxrec.errors import JaxrecError
from jaxrec.report import main, write_report

# job: (batch, lr, valid ndcg@10, test ndcg@10); the best by test (job 1) is not the best by validation (job 2)
FINISHED = {"0": (64, 1e-3, 0.11, 0.10), "1": (64, 1e-2, 0.20, 0.30), "2": (128, 1e-3, 0.25, 0.20)}


def _job(root, name, overrides, results=None, failure=None):
    hydra_dir = root / name / ".hydra"
    hydra_dir.mkdir(parents=True)
    (hydra_dir / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if results is not None:
        (root / name / "results.json").write_text(json.dumps(results))
    if failure is not None:
        (root / name / "failure.json").write_text(json.dumps(failure))


def _results(batch, lr, valid, test):
    return {
        "metrics": {"ndcg@10": test, "hr@10": 2 * test},
        "valid_metrics": {"ndcg@10": valid, "hr@10": 2 * valid},
        "train": {"batch_size": batch, "wall_s": 1.5, "examples_per_sec_per_device": 100.0 * batch},
        "config": {"optimizer": {"lr": lr}},
        "lr_scaling": {"rule": "sqrt", "lr": lr, "effective_lr": lr * (batch / 64) ** 0.5},
    }


@pytest.fixture
def fake_multirun(tmp_path):
    root = tmp_path / "multirun"
    for name, (batch, lr, valid, test) in FINISHED.items():
        _job(
            root,
            name,
            [f"train.batch_size={batch}", f"optimizer.lr={lr}", "data=synthetic"],
            _results(batch, lr, valid, test),
        )
    _job(
        root,
        "3",
        ["train.batch_size=128", "optimizer.lr=1e30", "data=synthetic"],
        failure={"error": "JaxrecError", "reason": "non-finite value at step 2 in loss"},
    )
    _job(root, "4", ["train.batch_size=128", "optimizer.lr=0.01", "data=synthetic"])
    return root


def test_report_selects_by_validation_and_shows_test_only_for_the_selected_job(fake_multirun, tmp_path):
    out = tmp_path / "report"
    main([str(fake_multirun), "--out", str(out)])
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["job"] for r in rows] == ["2", "1", "0", "3", "4"]
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "failed", "unfinished"]
    assert [r["selected"] for r in rows] == ["yes", "", "", "", ""]
    assert rows[0]["train.batch_size"] == "128" and float(rows[0]["optimizer.lr"]) == 1e-3
    assert float(rows[0]["valid_ndcg@10"]) == 0.25 and float(rows[0]["test_ndcg@10"]) == 0.20
    assert float(rows[0]["effective_lr"]) == pytest.approx(1e-3 * 2**0.5)
    assert all(r["test_ndcg@10"] == "" and r["test_hr@10"] == "" for r in rows[1:])
    assert float(rows[0]["examples_per_sec_per_device"]) == 12800.0 and rows[3]["valid_ndcg@10"] == ""
    assert rows[3]["reason"] == "JaxrecError: non-finite value at step 2 in loss" and rows[4]["reason"] == ""
    assert "data=synthetic" not in rows[0] and "data" not in rows[0]  # constant overrides are not columns
    md = (out / "summary.md").read_text()
    assert "**2 (selected)**" in md and md.count("(selected)") == 1 and "ranked by validation ndcg@10" in md
    assert "test ndcg@10 0.2000" in md and "0.3000" not in md  # job 1's better test value stays hidden
    assert "python -m jaxrec.train train.batch_size=128 optimizer.lr=0.001 data=synthetic" in md
    failed = md.split("## Failed or unfinished")[1]
    assert "- job 3 failed (JaxrecError: non-finite value at step 2 in loss): train.batch_size=128" in failed
    assert "- job 4 unfinished (no results.json): train.batch_size=128 optimizer.lr=0.01 data=synthetic" in failed
    for png in ("metric_vs_lr.png", "throughput_vs_batch.png", "heatmap_batch_lr.png"):
        assert (out / png).stat().st_size > 1000


def test_lower_is_better_metrics_select_the_smallest(tmp_path):
    root = tmp_path / "multirun"
    for name, rmse in (("0", 0.95), ("1", 0.90), ("2", 0.99)):
        _job(
            root,
            name,
            [f"model.dim={8 * (int(name) + 1)}"],
            {"metrics": {"rmse": rmse}, "valid_metrics": {"rmse": rmse}, "train": {}, "config": {}},
        )
    written = write_report(root, metric="rmse")
    assert written["selected"] == "1"
    assert "lower is better" in written["md"].read_text()


def test_arms_get_one_row_each_selected_by_validation_or_averaged_over_folds(tmp_path):
    root = tmp_path / "multirun"
    for job, (lr, valid, test) in enumerate([(1e-3, 0.10, 0.30), (3e-3, 0.20, 0.25)]):  # test would pick job 0
        _job(root, f"exp/mf/{job}", ["experiment=exp/mf", f"optimizer.lr={lr}"], _results(64, lr, valid, test))
    for fold, rmse in enumerate([0.90, 0.94]):  # cross-validation folds: no validation metric
        _job(
            root,
            f"exp/peer/{fold}",
            [f"data.fold={fold}", "experiment=exp/peer"],
            {"entry": "experiments.peers", "metrics": {"ndcg@10": rmse}, "valid_metrics": {}, "train": {"wall_s": 2.0}},
        )
    md = write_report(root)["md"].read_text()
    rows = [line for line in md.split("## Per arm")[1].splitlines() if line.startswith("| exp/")]
    assert rows[0].startswith("| exp/mf | 2/2 | exp/mf/1 | 0.2000 | 0.2500 | 0.5000 |")
    assert rows[0].endswith("| 1.5 | `python -m jaxrec.train experiment=exp/mf optimizer.lr=0.003` |")
    assert rows[1].startswith("| exp/peer | 2/2 | mean of all | - | 0.9200 ± 0.0283 | - |")
    assert "| 4.0 | `2 jobs, e.g. python -m experiments.peers experiment=exp/peer data.fold=0` |" in rows[1]


def test_report_errors_are_jaxrec_errors(tmp_path, fake_multirun):
    with pytest.raises(JaxrecError, match="does not exist"):
        write_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(JaxrecError, match="no jobs"):
        write_report(tmp_path / "empty")
    with pytest.raises(JaxrecError, match="available: hr@10, ndcg@10"):
        write_report(fake_multirun, metric="auc")
    _job(tmp_path / "no_valid", "0", ["model.dim=8"], {"metrics": {"ndcg@10": 0.1}, "valid_metrics": {}})
    with pytest.raises(JaxrecError, match="no finished job has validation metrics"):
        write_report(tmp_path / "no_valid")


def test_report_cli_error_is_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "jaxrec.report", str(tmp_path / "nope")], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2 and "does not exist" in out.stderr and "Traceback" not in out.stderr


def test_an_experiment_sweep_goes_on_past_a_failing_job_and_each_row_reruns_its_job(tmp_path):
    """`-m experiment=<experiment>/<arm>`: jobs in <sweep>/<experiment>/<arm>/<i>, the arm's grid
    (ncf_vs_mf/mf sweeps optimizer.lr) replaced from the command line, a failing job recorded, and
    the report's command for a row composes exactly the config that job ran."""
    sweep, arm = tmp_path / "sweep", "ncf_vs_mf/mf"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    args = [
        "-m",
        f"experiment={arm}",
        "data=synthetic",
        "data.num_users=100",
        "data.num_items=200",
        "data.num_interactions=2000",
        "train.epochs=1",
        "train.batch_size=64",
        "optimizer.lr=1e30,1e-3",
        "model.dim=8",
        f"hydra.sweep.dir={sweep}",
    ]
    out = subprocess.run(
        [sys.executable, "-m", "jaxrec.train", *args], capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == 1, out.stderr[-3000:]  # the sweep went on, then says a job failed
    assert out.stderr.strip().splitlines()[-1].startswith("jaxrec: error: 1 of 2 sweep jobs failed (jobs 0; ")
    failure = json.loads((sweep / arm / "0" / "failure.json").read_text())
    assert failure["error"] == "JaxrecError" and "non-finite value at step" in failure["reason"]
    assert "optimizer.lr=1e+30" in failure["overrides"]
    results = json.loads((sweep / arm / "1" / "results.json").read_text())
    assert "sampled/ndcg@10" in results["metrics"]  # the arm's own setting (train.sampled_negatives=100)
    assert "Unable to initialize backend" not in out.stdout + out.stderr  # JAX's TPU probe line is hidden
    written = write_report(sweep)
    assert written["jobs"] == 2 and written["failed"] == 1 and written["selected"] == f"{arm}/1"
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [(r["job"], r["status"]) for r in rows] == [(f"{arm}/1", "ok"), (f"{arm}/0", "failed")]
    assert 0.0 <= float(rows[0]["valid_ndcg@10"]) <= 1.0 and 0.0 <= float(rows[0]["test_ndcg@10"]) <= 1.0
    assert "non-finite value at step" in rows[1]["reason"]
    command = rows[0]["command"].split()
    assert command[:4] == ["python", "-m", "jaxrec.train", f"experiment={arm}"] and "optimizer.lr=0.001" in command
    assert compose_config(command[3:]) == config_from_dict(results["config"])
    assert rows[1]["command"].startswith(f"python -m jaxrec.train experiment={arm} optimizer.lr=1e+30 ")
    summary = (sweep / "summary.md").read_text()
    assert "metric_vs_lr.png skipped" in summary and f"`{rows[0]['command']}`" in summary


def _compose(overrides):
    """(hydra's sweeper node, the typed run config) of a composed config."""
    cfg = compose_conf(overrides, with_hydra=True)
    sweeper = cfg.hydra.sweeper
    with open_dict(cfg):
        del cfg["hydra"]
    return sweeper, to_config(cfg)


def test_sweep_experiment_composes_with_its_grid():
    sweeper, cfg = _compose(["sweep=bs_lr", "optimizer.lr_scaling=sqrt"])
    assert sweeper.params["train.batch_size"] == "256,1024,4096,16384"
    assert len(str(sweeper.params["optimizer.lr"]).split(",")) == 4
    assert cfg.data.name == "ml100k" and cfg.model.name == "mf"
    assert cfg.optimizer.lr_scaling == "sqrt" and cfg.optimizer.base_batch_size == 256
    readme = (Path(CONF_DIR).parent / "experiments" / "sweep_bs_lr" / "README.md").read_text()
    assert f"the full grid, {cfg.train.epochs} epochs" in readme  # the README's claim follows the config


def test_optuna_experiment_composes_when_the_plugin_is_installed():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweeper, cfg = _compose(["sweep=optuna_lr_wd"])
    assert sweeper.direction == "maximize" and set(sweeper.params) == {"optimizer.lr", "model.l2"}
    assert cfg.data.name == "ml100k"
