"""Smoke test of the vocab-scaling benchmark at toy size, through its command line.

It runs as a subprocess from the repository root (`benchmarks` is not an installed package).
Timings are not asserted (too noisy at this size); the structural O(batch) facts are: the
sparse step updates every table-sized buffer in place and its compiled HLO holds no
table-sized op besides parameters and scatters, while the dense step does.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # ~1 min on 2 CPUs: four compilations of the train step
def test_vocab_scaling_cli_writes_results(tmp_path):
    out = tmp_path / "vocab"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.vocab_scaling",
        "--out",
        str(out),
        "--rows",
        "300,3000",
        "--users",
        "50",
        "--dim",
        "4",
        "--batch",
        "16",
        "--repeats",
        "2",
        "--warmup",
        "1",
        "--num-batches",
        "2",
        "--updates",
        "sparse/lazy_adam,dense/adam",
    ]
    subprocess.run(cmd, cwd=REPO, check=True, timeout=300)

    results = json.loads((out / "results.json").read_text())
    records = results["records"]
    assert [(r["rows"], r["update"], r["optimizer"]) for r in records] == [
        (300, "sparse", "lazy_adam"),
        (300, "dense", "adam"),
        (3000, "sparse", "lazy_adam"),
        (3000, "dense", "adam"),
    ]
    for r in records:
        assert r["step_ms_p50"] > 0 and r["step_ms_p90"] >= r["step_ms_p50"] and r["compile_s"] > 0
        assert r["dim"] == 4 and r["batch"] == 16
    sparse = [r for r in records if r["update"] == "sparse"]
    dense = [r for r in records if r["update"] == "dense"]
    assert all(r["in_place"] and r["hlo_table_ops"] == 0 and r["hlo_table_copies"] == 0 for r in sparse)
    assert sparse[0]["temp_bytes"] == sparse[1]["temp_bytes"]  # temp memory independent of rows
    assert all(r["hlo_table_ops"] > 0 for r in dense)  # the O(rows) baseline really is O(rows)

    goals = results["goals"]
    assert goals["rows_small"] == 300 and goals["rows_large"] == 3000
    assert goals["sparse_1e7_over_1e4"] is None and goals["sparse_large_over_small"] > 0
    assert goals["all_sparse_in_place"] is True
    assert {"cpu_count", "platform", "jax", "backend", "device_kind"} <= set(results["machine"])
    assert "| rows |" in (out / "results.md").read_text()
    assert (out / "step_ms_vs_rows.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
