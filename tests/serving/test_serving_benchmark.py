"""Smoke test of the serving benchmark at toy size, through its command line (server included).

Timings are not asserted (too noisy at this size); the structure is, and the jax top-K must
agree with the numpy baseline."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serving benchmark needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("uvicorn", reason="the serving benchmark needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("httpx", reason="the serving benchmark needs the serve extra: pip install -e '.[serve]'")

REPO = Path(__file__).resolve().parents[2]


def test_serving_benchmark_cli_writes_results(tmp_path):
    out = tmp_path / "serving"
    cmd = [sys.executable, "-m", "benchmarks.serving", "--out", str(out), "--sizes", "500", "--dim", "8",
           "--users", "50", "--seen", "5", "--repeats", "5", "--phase-seconds", "0.5", "--recall-queries", "32",
           "--requests", "20", "--seconds", "2", "--concurrency", "4", "--max-batch", "4"]
    subprocess.run(cmd, cwd=REPO, check=True, timeout=300)

    results = json.loads((out / "results.json").read_text())
    records = results["records"]
    assert [r["items"] for r in records] == [500]
    for r in records:
        assert r["numpy_agrees"] is True and r["http_failures"] == 0
        assert 0 < r["jax_b1_p50_ms"] <= r["jax_b1_p99_ms"] and 0 < r["numpy_b1_p50_ms"] <= r["numpy_b1_p99_ms"]
        assert r["http_single_n"] == 20 and r["http_concurrent_n"] == 80
        assert r["http_single_rps"] > 0 and r["http_concurrent_rps"] > 0 and r["http_mean_batch"] >= 1
        assert 0.5 <= r["approx_recall@10"] <= 1.0
    assert {"cpu_count", "jax", "backend"} <= set(results["machine"])
    assert "| items |" in (out / "results.md").read_text()
    assert (out / "latency_vs_items.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
