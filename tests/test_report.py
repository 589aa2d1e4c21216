"""jaxrec.report on a hand-built multirun dir (3 finished jobs, 1 failed) and on a real tiny sweep."""

import csv
import json
import os
import subprocess
import sys

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from jaxrec.config import CONF_DIR, register_configs, to_config
from jaxrec.errors import JaxrecError
from jaxrec.report import main, write_report

FINISHED = {"0": (64, 1e-3, 0.10), "1": (64, 1e-2, 0.30), "2": (128, 1e-3, 0.20)}


def _job(root, name, overrides, results=None):
    hydra_dir = root / name / ".hydra"
    hydra_dir.mkdir(parents=True)
    (hydra_dir / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if results is not None:
        (root / name / "results.json").write_text(json.dumps(results))


def _results(batch, lr, ndcg):
    return {"metrics": {"ndcg@10": ndcg, "hr@10": 2 * ndcg}, "valid_metrics": {"ndcg@10": ndcg + 0.01},
            "train": {"batch_size": batch, "wall_s": 1.5, "examples_per_sec_per_device": 100.0 * batch},
            "config": {"optimizer": {"lr": lr}}}


@pytest.fixture
def fake_multirun(tmp_path):
    root = tmp_path / "multirun"
    for name, (batch, lr, ndcg) in FINISHED.items():
        _job(root, name, [f"train.batch_size={batch}", f"optimizer.lr={lr}", "data=synthetic"],
             _results(batch, lr, ndcg))
    _job(root, "3", ["train.batch_size=128", "optimizer.lr=0.01", "data=synthetic"])
    return root


def test_report_lists_every_job_and_marks_the_best(fake_multirun, tmp_path):
    out = tmp_path / "report"
    main([str(fake_multirun), "--out", str(out)])
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["job"] for r in rows] == ["1", "2", "0", "3"]
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "failed_or_unfinished"]
    assert rows[0]["train.batch_size"] == "64" and float(rows[0]["optimizer.lr"]) == 1e-2
    assert float(rows[0]["ndcg@10"]) == 0.30 and float(rows[0]["valid_ndcg@10"]) == pytest.approx(0.31)
    assert float(rows[0]["examples_per_sec_per_device"]) == 6400.0 and rows[3]["ndcg@10"] == ""
    assert "data=synthetic" not in rows[0] and "data" not in rows[0]  # constant overrides are not columns
    md = (out / "summary.md").read_text()
    assert "**1 (best)**" in md and md.count("(best)") == 1
    failed = md.split("## Failed or unfinished")[1]
    assert "job 3: train.batch_size=128 optimizer.lr=0.01 data=synthetic" in failed
    for png in ("metric_vs_lr.png", "throughput_vs_batch.png", "heatmap_batch_lr.png"):
        assert (out / png).stat().st_size > 1000


def test_report_errors_are_jaxrec_errors(tmp_path, fake_multirun):
    with pytest.raises(JaxrecError, match="does not exist"):
        write_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(JaxrecError, match="no jobs"):
        write_report(tmp_path / "empty")
    with pytest.raises(JaxrecError, match="available: hr@10, ndcg@10"):
        write_report(fake_multirun, metric="auc")


def test_report_cli_error_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "jaxrec.report", str(tmp_path / "nope")], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "does not exist" in out.stderr and "Traceback" not in out.stderr


def test_tiny_sweep_end_to_end_then_report(tmp_path):
    sweep = tmp_path / "sweep"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    args = ["-m", "data=synthetic", "data.num_users=100", "data.num_items=50", "data.num_interactions=2000",
            "train.epochs=1", "train.batch_size=64,128", "train.progress=false", "model.dim=8",
            f"hydra.sweep.dir={sweep}"]
    out = subprocess.run([sys.executable, "-m", "jaxrec.train", *args], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    written = write_report(sweep)
    assert written["jobs"] == 2 and written["failed"] == 0
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert sorted(r["train.batch_size"] for r in rows) == ["128", "64"]
    assert all(0.0 <= float(r["ndcg@10"]) <= 1.0 for r in rows)
    assert (sweep / "throughput_vs_batch.png").exists() and not (sweep / "heatmap_batch_lr.png").exists()
    assert "heatmap_batch_lr.png skipped" in (sweep / "summary.md").read_text()



def _compose(overrides):
    """(hydra's sweeper node, the typed run config) of a composed config."""
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    with open_dict(cfg):
        del cfg["hydra"]
    return sweeper, to_config(cfg)


def test_sweep_experiment_composes_with_its_grid():
    sweeper, cfg = _compose(["experiment=sweep_bs_lr", "optimizer.lr_scaling=sqrt"])
    assert sweeper.params["train.batch_size"] == "256,1024,4096,16384"
    assert len(str(sweeper.params["optimizer.lr"]).split(",")) == 4
    assert cfg.data.name == "ml100k" and cfg.model.name == "mf"
    assert cfg.optimizer.lr_scaling == "sqrt" and cfg.optimizer.base_batch_size == 256


def test_optuna_experiment_composes_when_the_plugin_is_installed():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweeper, cfg = _compose(["experiment=optuna_lr_wd"])
    assert sweeper.direction == "maximize" and set(sweeper.params) == {"optimizer.lr", "model.l2"}
    assert cfg.data.name == "ml100k"
