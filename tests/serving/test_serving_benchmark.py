"""Smoke test of the serving benchmark at toy size, through its command line (servers included).

Timings are not asserted (too noisy at this size); the structure is, the jax top-K must agree
with the numpy baseline, and the index (exact at this size) must find every exact result."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serving benchmark needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("uvicorn", reason="the serving benchmark needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("httpx", reason="the serving benchmark needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("faiss", reason="the serving benchmark needs the ann extra: pip install -e '.[ann]'")

REPO = Path(__file__).resolve().parents[2]


def test_serving_benchmark_cli_writes_results(tmp_path):
    out = tmp_path / "serving"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.serving",
        "--out",
        str(out),
        "--sizes",
        "500",
        "--dim",
        "8",
        "--users",
        "50",
        "--seen",
        "5",
        "--repeats",
        "5",
        "--phase-seconds",
        "0.5",
        "--recall-queries",
        "32",
        "--requests",
        "20",
        "--seconds",
        "2",
        "--concurrency",
        "4",
        "--max-batch",
        "4",
        "--sweep",
        "hnsw:16,64;ivf:2,12",
        "--index",
        "hnsw",  # auto would keep whichever of hnsw and pq this run timed faster
        "--sweep-also",
        "ivf",
        "--big",
        "3000",
        "--big-params",
        "nlist=8",
        "--big-sweep",
        "8",
        "--big-queries",
        "8",
        "--compare",
        "hnsw;hnsw_l2:m=16",
        "--compare-sweep",
        "500",
    ]
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
        assert r["index"] == "faiss-hnsw" and r["index_recall@10"] == 1.0 and r["index_batch_qps"] > 0
        assert r["index_search"] == "ef_search=64" and r["index_export_recall@10"] >= 0.9  # tuned: the ladder's first
        assert r["http_index_single_n"] == 20 and r["http_index_failures"] == 0
    sweep = results["sweep"]
    assert [(p["index"], p.get("ef_search", p.get("nprobe"))) for p in sweep] == [
        ("faiss-hnsw", 16),
        ("faiss-hnsw", 64),
        ("faiss-ivf", 2),
        ("faiss-ivf", 12),
    ]
    assert sweep[-1]["recall@10"] == 1.0  # nprobe = nlist (12 lists at 500 items) scans them all
    compared = results["compare"]  # ef_search 500 at 500 items: both variants find every exact result
    assert [(r["index"], r["params"]["m"], r["recall@10"]) for r in compared] == [
        ("faiss-hnsw", 32, 1.0),
        ("faiss-hnsw_l2", 16, 1.0),
    ]
    assert all(r["batch_qps"] > 0 and r["b1_p50_ms"] <= r["b1_p99_ms"] for r in compared)
    (big,) = results["big"]
    assert big["items"] == 3000 and big["recall@10"] == 1.0 and big["build_s"] > 0 and big["peak_rss_gb"] > 0
    assert (out / "recall_vs_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"cpu_count", "jax", "backend"} <= set(results["machine"])
    assert "| items |" in (out / "results.md").read_text()
    assert (out / "latency_vs_items.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_trained_catalogue_draws_vectors_with_the_bundles_mean_and_covariance(tmp_path):
    import numpy as np

    from benchmarks.serving_common import Catalogue
    from jaxrec.serving.bundle import write_bundle

    rng = np.random.default_rng(0)
    mixing_ee = np.diag([3.0, 1.0, 0.3, 0.1]) @ rng.standard_normal((4, 4))
    items_ne = (rng.standard_normal((4_000, 4)) @ mixing_ee + [1.0, -2.0, 0.0, 0.5]).astype(np.float32)
    users_ue = rng.standard_normal((300, 4)).astype(np.float32) * 2
    write_bundle(
        tmp_path / "b",
        manifest={"model": "synthetic", "dataset": {"name": "t"}},
        items_ne=items_ne,
        users_ue=users_ue,
        user_tokens=[str(u) for u in range(300)],
        item_tokens=[str(i) for i in range(4_000)],
        seen=(np.zeros(301, np.int64), np.zeros(0, np.int32)),
    )
    catalogue = Catalogue(f"trained:{tmp_path / 'b'}", None)
    drawn_ne = catalogue.items(np.random.default_rng(1), 200_000)
    assert catalogue.dim == 4 and drawn_ne.dtype == np.float32
    np.testing.assert_allclose(drawn_ne.mean(0), items_ne.mean(0), atol=0.05)
    np.testing.assert_allclose(np.cov(drawn_ne, rowvar=False), np.cov(items_ne, rowvar=False), rtol=0.03, atol=0.02)
    np.testing.assert_allclose(
        np.cov(catalogue.users(np.random.default_rng(2), 100_000), rowvar=False),
        np.cov(users_ue, rowvar=False),
        rtol=0.05,
        atol=0.05,
    )
    iid = Catalogue("iid", None)
    assert iid.dim == 64 and iid.items(np.random.default_rng(3), 100_000).std() == pytest.approx(64**-0.5, rel=0.01)
    with pytest.raises(ValueError, match="are 4 wide"):
        Catalogue(f"trained:{tmp_path / 'b'}", 64)
