"""Smoke tests of benchmarks.peers at toy size, in-process (main(argv)), so that a missing peer
can be simulated by making its import fail. Timings are not asserted (too noisy); the schema,
finite positive rates, and the PyTorch port's equivalence are: it starts from jaxrec's
parameters and trains on the same batches, so its logits and metrics must match jaxrec's."""

import json
import math
import sys

import pytest

from benchmarks import peers

FIELDS = {
    "task",
    "system",
    "example",
    "threads",
    "examples_per_sec",
    "compile_s",
    "train_s",
    "ratio",
    "verdict",
    "test_metrics",
    "config",
}


def _records(out):
    results = json.loads((out / "results.json").read_text())
    assert {"cpu_count", "loadavg_start", "loadavg_end", "jax"} <= set(results["machine"])
    assert results["wall_s"] > 0 and "| task | system |" in (out / "results.md").read_text()
    for r in results["records"]:
        assert FIELDS <= set(r), r["system"]
        assert math.isfinite(r["examples_per_sec"]) and r["examples_per_sec"] > 0 and r["train_s"] > 0
        assert r["compile_s"] >= 0 and r["threads"] >= 1 and r["ratio"] > 0
    return results["records"]


@pytest.mark.slow  # 27 s on 2 quiet CPUs, ~55 s at load 10: two jaxrec models compiled, torch imported
def test_peers_toy_trains_jaxrec_and_every_peer_side_by_side(tmp_path):
    pytest.importorskip("implicit")
    pytest.importorskip("torch")
    peers.main(["--out", str(tmp_path), "--toy"])
    records = {r["system"]: r for r in _records(tmp_path)}
    assert list(records) == ["jaxrec MF-BPR", "implicit BPR", "implicit ALS", "jaxrec DCN-v2", "PyTorch DCN-v2"]
    for name in ("jaxrec MF-BPR", "implicit BPR", "implicit ALS"):
        r = records[name]
        assert r["epochs"] == 3 and 0 <= r["hr@10"] <= 1 and 0 <= r["ndcg@10"] <= r["hr@10"] and r["epoch_s_p50"] > 0
    jaxrec, torch_row = records["jaxrec DCN-v2"], records["PyTorch DCN-v2"]
    assert jaxrec["steps"] == torch_row["steps"] == 9 and jaxrec["batch"] == torch_row["batch"] == 64
    assert torch_row["initial_logit_max_abs_diff"] < 1e-4  # the port computes jaxrec's function
    assert abs(jaxrec["logloss"] - torch_row["logloss"]) < 1e-3 and abs(jaxrec["auc"] - torch_row["auc"]) < 1e-2
    for r in records.values():
        if not r["system"].startswith("jaxrec"):
            assert r["verdict"].startswith("matches") or r["verdict"].startswith("slower by")


@pytest.mark.slow  # 20 s alone at load 5 (3 s after the test above: compiles cached): jaxrec still runs
def test_missing_peers_are_skipped_with_one_message_each(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "implicit", None)  # `import implicit` now raises ImportError
    monkeypatch.setitem(sys.modules, "torch", None)
    peers.main(["--out", str(tmp_path), "--toy"])
    printed = capsys.readouterr().out
    assert printed.count("implicit is not importable") == 1 and printed.count("torch is not importable") == 1
    records = _records(tmp_path)
    assert [r["system"] for r in records] == ["jaxrec MF-BPR", "jaxrec DCN-v2"]
    assert all(r["verdict"] == "-" for r in records)


def test_verdicts_compare_each_peer_with_jaxrec_on_its_task():
    rows = [
        {"task": "a", "system": "jaxrec x", "examples_per_sec": 100.0},
        {"task": "a", "system": "peer fast", "examples_per_sec": 400.0},
        {"task": "a", "system": "peer close", "examples_per_sec": 102.0},
        {"task": "b", "system": "jaxrec y", "examples_per_sec": 50.0},
        {"task": "b", "system": "peer slow", "examples_per_sec": 10.0},
    ]
    peers.add_verdicts(rows)
    assert [r["ratio"] for r in rows] == [1.0, 0.25, 100 / 102, 1.0, 5.0]
    assert [r["verdict"] for r in rows] == ["-", "slower by 4x", "matches (within 5%)", "-", "matches (5x faster)"]
