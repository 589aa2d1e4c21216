"""Smoke test of benchmarks.pipeline at toy size, in-process. Rates are not compared (noisy);
they must be finite and positive and the ratios consistent with them. The sequence pipeline is
left out here: SASRec's compilation alone took 12-27 s on 2 busy CPUs (run it with
`python -m benchmarks.pipeline --out DIR --toy --pipelines sequences`)."""

import json
import math

import pytest

from benchmarks import pipeline

RATES = (
    "pipeline_examples_per_sec",
    "pipeline_sync_examples_per_sec",
    "step_examples_per_sec",
    "loop_examples_per_sec",
)


def test_window_seconds_times_windows_after_the_warmup():
    calls = []
    seconds = pipeline.window_seconds(calls.append, warmup=3, windows=4, window=2)
    assert calls == [3, 2, 2, 2, 2] and len(seconds) == 4 and all(s >= 0 for s in seconds)


@pytest.mark.slow  # 10 s on 2 quiet CPUs, ~40 s at load 10: MF and DCN-v2 steps compiled
def test_pipeline_toy_writes_rates_for_pipeline_step_and_loop(tmp_path):
    pipeline.main(["--out", str(tmp_path), "--toy", "--pipelines", "pairs,ctr"])
    results = json.loads((tmp_path / "results.json").read_text())
    records = results["records"]
    assert [(r["pipeline"], r["model"], r["batch"]) for r in records] == [("pairs", "mf", 128), ("ctr", "dcn_v2", 64)]
    for r in records:
        assert all(math.isfinite(r[k]) and r[k] > 0 for k in RATES), r
        assert r["ratio"] == pytest.approx(r["pipeline_examples_per_sec"] / r["step_examples_per_sec"])
        assert r["loop_over_step"] == pytest.approx(r["loop_examples_per_sec"] / r["step_examples_per_sec"])
        assert r["compile_s"] > 0 and r["window_s"]["step"]["n"] == 2
    assert {"loadavg_start", "loadavg_end", "cpu_count"} <= set(results["machine"])
    assert "| pipeline | model | batch |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "pipeline_over_step.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
