"""Smoke test of the sharding benchmark at toy size, through its command line (a subprocess:
the device count is fixed when jax starts). Timings are not asserted; the communication is:
row-wise on two devices receives exactly the ids and rows its kernels exchange, the same program
split over two processes moves the same bytes, and collectives over one device (an axis of
size 1) count nothing."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ISSUE_FIELDS = {
    "strategy",
    "num_devices",
    "rows",
    "dim",
    "batch",
    "examples_per_sec",
    "examples_per_sec_per_device",
    "step_ms_p50",
    "step_ms_p90",
    "bytes_per_device",
    "comm_bytes_per_step",
    "embedding_gbps",
    "roofline_gbps",
    "compile_s",
}


def test_sharding_cli_writes_results(tmp_path):
    out = tmp_path / "sharding"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.sharding",
        "--out",
        str(out),
        "--strategies",
        "row_wise",
        "--devices",
        "2",
        "--processes",
        "1,2",
        "--rows",
        "200",
        "--num-sparse",
        "4",
        "--dim",
        "4",
        "--cross-layers",
        "1",
        "--batch",
        "32",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--num-batches",
        "2",
    ]
    subprocess.run(cmd, cwd=REPO, check=True, timeout=600)

    results = json.loads((out / "results.json").read_text())
    r, two = results["records"]
    assert (r["processes"], two["processes"], two["num_devices"]) == (1, 2, 2)
    assert two["comm_bytes_by_op"] == r["comm_bytes_by_op"] and two["plan"] == r["plan"]
    assert two["step_ms_p50"] > 0 and (out / "processes_2" / "launch" / "process_1.log").exists()
    assert ISSUE_FIELDS <= set(r) and r["plan"] == "row_wise x4" and (r["rows"], r["dim"], r["batch"]) == (200, 4, 32)
    assert r["step_ms_p90"] >= r["step_ms_p50"] > 0 and r["bytes_per_device"] > 0 and r["compile_s"] > 0
    assert r["examples_per_sec"] == 32 / (r["step_ms_p50"] / 1e3) == 2 * r["examples_per_sec_per_device"]
    assert 0 < r["embedding_gbps"] < r["roofline_gbps"]
    # Per device: 16 examples x 4 features = 64 ids, buckets of C = 1.5 x 64 / 2 = 48 per owner;
    # each all-to-all receives half its [2, 48] buffer: keys (192 B) and rows of 4 floats (768 B)
    # in the lookup, keys and gradients again in the update. The rest is all-reduces (dense
    # gradients, the exchange's round agreement).
    assert r["comm_bytes_by_op"]["all-to-all"] == 2 * (192 + 768)
    assert r["comm_bytes_by_op"]["all-gather"] == r["comm_bytes_by_op"]["reduce-scatter"] == 0
    assert r["comm_bytes_by_op"]["all-reduce"] > 0
    assert r["comm_bytes_per_step"] == 2 * sum(r["comm_bytes_by_op"].values())
    assert set(results["roofline_gbps"]) == {"2", "2x2proc"} and "cpu_count" in results["machine"]
    assert "| row_wise | 2 | 1 | 200 |" in (out / "results.md").read_text()
    for name in ("examples_per_sec_per_device_rows200.png", "bytes_per_device_rows200.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
