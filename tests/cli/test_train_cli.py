"""The command line end to end: a tiny synthetic run, config composition, and clear errors."""

import json
import os
import subprocess
import sys

import pytest

from jaxrec.config import compose_config
from jaxrec.errors import JaxrecError

TINY = [
    "data=synthetic",
    "data.num_users=120",
    "data.num_items=60",
    "data.num_interactions=3000",
    "train.epochs=2",
    "train.batch_size=64",
    "train.progress=false",
    "model.dim=8",
]


def _run(module: str, args: list[str], **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | env
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300, env=environ
    )


def test_cli_writes_a_valid_results_json(tmp_path):
    out = _run("jaxrec.train", TINY + ["sharding=row_wise", "sharding.num_devices=4", f"hydra.run.dir={tmp_path}"])
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["dataset"] == "synthetic" and results["model"] == "mf" and results["loss"] == "bce"
    assert results["num_devices"] == 4
    for key in ("hr@10", "ndcg@10", "recall@20", "precision@10", "mrr", "coverage@10"):
        assert 0.0 <= results["metrics"][key] <= 1.0
    train = results["train"]
    assert train["epochs"] == 2 and train["steps"] > 0 and train["wall_s"] > 0
    assert train["examples_per_sec_per_device"] == pytest.approx(train["examples_per_sec"] / 4)
    assert results["sharding"]["strategy"] == "row_wise"
    assert results["sharding"]["mesh"] == {"data": 1, "model": 4}
    assert set(results["sharding"]["tables"]) == {"user", "item", "user_bias", "item_bias"}
    assert results["config"]["model"]["dim"] == 8
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in r for r in records) and any("eval/valid/ndcg@10" in r for r in records)
    assert (tmp_path / "run_info.json").exists()


@pytest.mark.parametrize(
    "group,listed", [("data", "ml100k"), ("sharding", "row_wise"), ("model", "mf"), ("optimizer", "adagrad")]
)
def test_unknown_group_option_lists_the_choices(tmp_path, group, listed):
    out = _run("jaxrec.train", [f"{group}=nope", f"hydra.run.dir={tmp_path}"])
    assert out.returncode != 0
    assert f"Could not find '{group}/nope'" in out.stderr and listed in out.stderr
    assert "Traceback" not in out.stderr


def test_missing_data_file_is_one_line_and_debug_shows_the_traceback(tmp_path):
    args = ["data=csv", f"data.path={tmp_path}/missing.csv", f"hydra.run.dir={tmp_path}/run"]
    out = _run("jaxrec.train", args)
    assert out.returncode == 2 and "missing.csv" in out.stderr and "Traceback" not in out.stderr
    assert len([line for line in out.stderr.splitlines() if line.startswith("jaxrec: error:")]) == 1
    debug = _run("jaxrec.train", args, JAXREC_DEBUG="1")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_unknown_key_is_named(tmp_path):
    out = _run("jaxrec.train", ["model.dimm=3", f"hydra.run.dir={tmp_path}"])
    assert out.returncode != 0 and "dimm" in out.stderr


def test_bad_batch_for_the_mesh_is_one_line_without_traceback(tmp_path):
    out = _run(
        "jaxrec.train",
        TINY + ["sharding=row_wise", "sharding.num_devices=8", "train.batch_size=60", f"hydra.run.dir={tmp_path}"],
    )
    assert out.returncode == 2
    assert "train.batch_size=60 does not divide across the mesh's 8 devices" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "results.json").exists()


def test_invalid_values_name_the_key_and_choices():
    with pytest.raises(JaxrecError, match=r"model.loss='hinge' is not valid; expected one of bce, bpr, mse, softmax"):
        compose_config(["model.loss=hinge"])
    with pytest.raises(JaxrecError, match=r"data.path is required when data=csv"):
        compose_config(["data=csv"])
