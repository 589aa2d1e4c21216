"""How fast does a bundle answer top-10 requests, in process and over HTTP, as the catalogue grows?

For each catalogue size it writes a synthetic float32 bundle (random item and user vectors,
--dim wide, --seen random known items per user), then measures, one after another in this run:
  jax        in-process `Recommender.recommend` (jitted q @ items.T, exclusion, top_k): batch 1
             latency p50/p99, and queries/s at batch --batch;
  numpy      the brute-force baseline on the same queries: items @ q, seen items set to -inf,
             np.argpartition, then a sort of the K: batch 1 latency, and queries/s at --batch;
  approx     the binned approximate top-K (recall target --approx-recall): batch 1 latency,
             queries/s at --batch, and its recall@10 against the exact top 10 over
             --recall-queries users;
  index      the bundle rewritten with a FAISS index built as jaxrec.export builds it (--index,
             default auto; the search setting tuned to --index-recall on 1000 fresh users of the
             catalogue, never the bundle's) and served from it (`Recommender` as the server uses it:
             over-fetch, exact exclusion): batch 1 p50/p99, queries/s at --batch, recall@10 against
             exact (seen items excluded) on the bundle's users, build time; and index_x_jax_qps = its
             batch throughput over jax exact's, both from this run;
  sweep      recall@10 and batch-1 p50 of the index at each --sweep setting (hnsw ef_search, ivf
             nprobe, pq rerank), and of each --sweep-also kind, plotted as recall_vs_latency.png;
  compare    each --compare variant (an index kind and build settings, e.g. hnsw vs hnsw_l2 at equal
             m / ef_construction) built on the same vectors and searched for the same users at each
             --compare-sweep value: recall@10 against exact (seen items excluded), batch-1 p50/p99,
             queries/s at --batch against jax exact's from this run, build seconds; table in ann.md,
             plot compare_recall_vs_latency.png;
  http       `python -m jaxrec.serve` in a subprocess on 127.0.0.1, called by a bare asyncio
             HTTP/1.1 keep-alive client in this process (see post_loop): single requests one
             after another, then --concurrency clients at once; p50/p99 latency and requests/s;
             once exact (--exact) and once from the index (http_index_*). Each phase is bounded
             by --requests and --seconds. Server and client share this machine's cores (the load
             average before and after is recorded).
  --big      catalogue sizes built as an index only (no bundle, no exact server): vectors drawn in
             chunks of 10^6 and added chunk by chunk, exact top 10 of --big-queries queries kept
             chunk by chunk; build time, peak and resident memory, recall@10 and one-query latency
             of the index searched as served (no seen items) at each --big-sweep setting. pq keeps
             the float32 vectors for its re-rank (a served bundle holds them anyway).

Run:  python -m benchmarks.serving --out runs/bench/serving     # 10^3, 10^5, 10^6 items
      python -m benchmarks.serving --out runs/bench/serving_ann --sizes 1e6 --sweep-also ivf --big 1e7 \
          --big-index ivf --big-params nlist=4096 --big-sweep 16,64,256,1024   # README's ANN run, ~30 min
      nice -n 10 python -m benchmarks.serving --out runs/bench/serving_mips --sizes 1e5 --no-http --index none \
          --compare 'hnsw;hnsw_l2' --compare-sweep 64,128,256,512,1024   # IP graph vs the L2 reduction
The index and HTTP phases live in benchmarks/serving_index.py and benchmarks/serving_http.py.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine_info, plot_lines, time_calls, write_results
from benchmarks.serving_common import Catalogue, K, log, percentiles
from benchmarks.serving_http import over_http
from benchmarks.serving_index import (
    ann_markdown,
    big_rows,
    compare_markdown,
    compare_variants,
    index_in_process,
    parse_variants,
    plot_recall_vs_latency,
    sweep_index,
)
from jaxrec.export import parse_index_params
from jaxrec.serving import ann, retrieval
from jaxrec.serving.bundle import load_bundle, seen_csr, write_bundle
from jaxrec.serving.exporter import build_item_index
from jaxrec.serving.recommender import Recommender

COLUMNS = (
    "items",
    "jax_b1_p50_ms",
    "jax_b1_p99_ms",
    "numpy_b1_p50_ms",
    "numpy_b1_p99_ms",
    "jax_batch_qps",
    "numpy_batch_qps",
    "approx_b1_p50_ms",
    "approx_batch_qps",
    "approx_recall@10",
    "http_single_p50_ms",
    "http_single_p99_ms",
    "http_single_rps",
    "http_concurrent_p50_ms",
    "http_concurrent_p99_ms",
    "http_concurrent_rps",
    "http_mean_batch",
    "index_search",
    "index_build_s",
    "index_b1_p50_ms",
    "index_b1_p99_ms",
    "index_batch_qps",
    "index_x_jax_qps",
    "index_recall@10",
    "http_index_single_p50_ms",
    "http_index_single_p99_ms",
    "http_index_concurrent_p50_ms",
    "http_index_concurrent_rps",
    "http_index_mean_batch",
)


def make_bundle(path: Path, num_items: int, args, index: ann.AnnIndex | None = None) -> None:
    """--users users and `num_items` items drawn from --catalogue, --seen random seen items a user."""
    rng = np.random.default_rng(args.seed)
    items_ne = args.catalogue.items(rng, num_items)
    users_ue = args.catalogue.users(rng, args.users)
    seen = rng.integers(0, num_items, (args.users, args.seen))
    indptr = np.arange(0, args.users * args.seen + 1, args.seen, dtype=np.int64)
    write_bundle(
        path,
        manifest={"model": "synthetic", "dataset": {"name": f"{args.catalogue.spec}-{num_items}"}},
        items_ne=items_ne,
        users_ue=users_ue,
        user_tokens=[f"u{i}" for i in range(args.users)],
        item_tokens=[f"i{i}" for i in range(num_items)],
        seen=(indptr, np.sort(seen, axis=1).ravel()),
        index=index,
    )


def numpy_top_k(items_ne: np.ndarray, query_be: np.ndarray, seen_bx: np.ndarray, k: int) -> np.ndarray:
    scores_bn = query_be @ items_ne.T
    np.put_along_axis(scores_bn, seen_bx, -np.inf, axis=1)
    part_bk = np.argpartition(-scores_bn, k, axis=1)[:, :k]
    order_bk = np.argsort(-np.take_along_axis(scores_bn, part_bk, axis=1), axis=1)
    return np.take_along_axis(part_bk, order_bk, axis=1)


def in_process(bundle, args) -> dict:
    """jax vs numpy latency (batch 1) and throughput (batch --batch), and the approximate top-K."""
    rec, rng = Recommender(bundle), np.random.default_rng(args.seed + 1)
    users = rng.integers(0, bundle.num_users, 4096)
    queries = [rec.user_query(f"u{u}", K) for u in users]
    seen_ux = bundle.seen_items.reshape(bundle.num_users, -1)
    cursor = itertools.count()  # each timed call takes the next slice of users

    def jax_call(size):
        start = next(cursor) * size % (len(queries) - size)
        return lambda: rec.recommend(queries[start : start + size])

    def numpy_call(size):
        start = next(cursor) * size % (len(users) - size)
        u = users[start : start + size]
        return lambda: numpy_top_k(bundle.items_ne, bundle.users_ue[u], seen_ux[u], K)

    timing = dict(warmup=2, repeats=args.repeats, max_seconds=args.phase_seconds)
    out = {}
    for name, make in (("jax", jax_call), ("numpy", numpy_call)):
        b1 = percentiles(time_calls(lambda: make(1)(), **timing))
        batch = percentiles(time_calls(lambda: make(args.batch)(), **timing))
        out |= {
            f"{name}_b1_p50_ms": b1["p50"],
            f"{name}_b1_p99_ms": b1["p99"],
            f"{name}_batch_qps": args.batch / batch["p50"] * 1e3,
        }
    approx = Recommender(bundle, approx_recall=args.approx_recall)
    out["approx_b1_p50_ms"] = percentiles(time_calls(lambda: approx.recommend(queries[:1]), **timing))["p50"]
    batch = percentiles(time_calls(lambda: approx.recommend(queries[: args.batch]), **timing))
    out["approx_batch_qps"] = args.batch / batch["p50"] * 1e3
    sample = queries[: args.recall_queries]
    exact_ids = [r.ids for r in rec.recommend(sample)]
    approx_ids = [r.ids for r in approx.recommend(sample)]
    out["approx_recall@10"] = retrieval.recall_at_k(np.stack(approx_ids), np.stack(exact_ids))
    out["numpy_agrees"] = bool(
        np.array_equal(
            np.stack(exact_ids[:8]),
            numpy_top_k(bundle.items_ne, np.stack([q.vector_e for q in sample[:8]]), seen_ux[users[:8]], K),
        )
    )
    return out


def tuned_index(items_ne: np.ndarray, args) -> ann.AnnIndex:
    """The index as export builds it (search setting tuned to --index-recall, recall measured on
    other queries), tuned on 1000 fresh users of the catalogue: never the bundle's users, on which
    the index phases measure recall."""
    rng = np.random.default_rng(args.seed + 5)
    queries_ue = args.catalogue.users(rng, 1000)
    seen_ux = rng.integers(0, len(items_ne), (1000, args.seen))
    seen = seen_csr(np.repeat(np.arange(1000), args.seen), seen_ux.ravel(), 1000)
    return build_item_index(
        items_ne, queries_ue, seen, args.index, args.index_params, args.seed, target_recall=args.index_recall
    )


def measure(num_items: int, args) -> tuple[dict, list[dict], list[dict]]:
    """The size's record, its sweep points and its --compare rows."""
    with tempfile.TemporaryDirectory() as tmp:
        path, indexed = Path(tmp) / "bundle", Path(tmp) / "indexed"
        tick = time.perf_counter()
        make_bundle(path, num_items, args)
        bundle = load_bundle(path)
        record = {"items": num_items, "dim": args.dim, "k": K, "setup_s": time.perf_counter() - tick}
        record |= in_process(bundle, args)
        sweep = []
        if args.index != "none":
            make_bundle(indexed, num_items, args, tuned_index(bundle.items_ne, args))
            del bundle
            gc.collect()
            bundle = load_bundle(indexed)
            record |= index_in_process(bundle, args, record["jax_batch_qps"])
            sweep = sweep_index(bundle.index, bundle, args)
            for kind in args.sweep_also:
                if kind != bundle.index.kind:
                    sweep += sweep_index(ann.build_index(bundle.items_ne, kind), bundle, args)
        compared = compare_variants(bundle, args, record["jax_batch_qps"]) if args.compare else []
        del bundle
        gc.collect()
        if not args.no_http:
            record |= over_http(path, args.users, args)
            if args.index != "none":
                record |= {
                    k.replace("http_", "http_index_", 1): v
                    for k, v in over_http(indexed, args.users, args, exact=False).items()
                }
    return record, sweep, compared


def notes(args, load_before, load_after) -> str:
    return (
        f"Latencies in ms (p50/p99), throughput in queries or requests per second; K = {K}, dim {args.dim}, "
        f"{args.seen} excluded items per user. In-process phases time up to {args.repeats} calls or "
        f"~{args.phase_seconds:.0f} s each; *_batch_qps at batch {args.batch}. HTTP: up to {args.requests} single "
        f"requests and {args.requests * 4} requests from {args.concurrency} concurrent clients, each phase at most "
        f"{args.seconds:.0f} s; server --max-batch {args.max_batch} --max-wait-ms {args.max_wait_ms}; "
        f"http_mean_batch = mean requests per retrieval under concurrent load. Client and server share the "
        f"machine's {os.cpu_count()} CPUs; 1-minute load average {load_before[0]:.1f} before the run and "
        f"{load_after[0]:.1f} after it."
    )


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for results.json, results.md, PNG")
    parser.add_argument("--sizes", default="1e3,1e5,1e6", help="comma-separated catalogue sizes")
    parser.add_argument("--dim", type=int, default=None, help="vector width (default 64, or the trained bundle's)")
    parser.add_argument(
        "--catalogue",
        default="iid",
        metavar="iid|trained:BUNDLE_DIR",
        help="where the vectors come from (see benchmarks.serving_common.Catalogue)",
    )
    parser.add_argument(
        "--index-recall",
        type=float,
        default=ann.TARGET_RECALL,
        help="recall@10 the index's search setting is tuned to, as jaxrec.export --index-recall",
    )
    parser.add_argument("--users", type=int, default=1000, help="known users in each bundle")
    parser.add_argument("--seen", type=int, default=20, help="excluded (seen) items per user")
    parser.add_argument("--batch", type=int, default=16, help="batch of the in-process throughput phase")
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per in-process phase")
    parser.add_argument("--phase-seconds", type=float, default=3.0, help="time cap of each in-process phase")
    parser.add_argument("--approx-recall", type=float, default=0.95)
    parser.add_argument("--recall-queries", type=int, default=256)
    parser.add_argument("--requests", type=int, default=300, help="single requests (x4 under concurrency)")
    parser.add_argument("--seconds", type=float, default=8.0, help="time cap of each HTTP phase")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=1.0)
    parser.add_argument("--startup-seconds", type=float, default=180.0)
    parser.add_argument("--no-http", action="store_true", help="in-process phases only")
    parser.add_argument(
        "--index",
        default="auto",
        choices=("none", "auto", *ann.KINDS),
        help="index of the index phases, built and tuned as jaxrec.export builds it (auto: the faster of hnsw, pq)",
    )
    parser.add_argument(
        "--index-param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting of --index (default: the export defaults)",
    )
    parser.add_argument(
        "--sweep",
        default="hnsw:64,128,256,512,1024;hnsw_l2:64,128,256,512,1024;ivf:16,64,256,1024;pq:64,128,256,512,1024",
        help="search settings per index kind for the recall/latency plot (ef_search, nprobe, rerank)",
    )
    parser.add_argument(
        "--sweep-also",
        default="",
        metavar="KIND,...",
        help="also build these index kinds (default settings) and sweep them, e.g. ivf,pq",
    )
    parser.add_argument(
        "--compare",
        default="",
        metavar="KIND[:NAME=INT,...];...",
        help="index variants built side by side on the same vectors, e.g. 'hnsw;hnsw_l2'",
    )
    parser.add_argument(
        "--compare-sweep",
        default="64,128,256,512",
        help="ef_search (or nprobe) values each --compare variant is searched with",
    )
    parser.add_argument("--big", default="", help="comma-separated sizes built as an index only, e.g. 1e7")
    parser.add_argument("--big-index", default="ivf", choices=("hnsw", "ivf", "pq"))  # added chunk by chunk
    parser.add_argument("--big-params", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--big-sweep", default="16,64,256", help="ef_search or nprobe values at the --big sizes")
    parser.add_argument("--big-queries", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        args.catalogue = Catalogue(args.catalogue, args.dim)
    except (ValueError, OSError) as err:
        parser.error(str(err))
    args.dim = args.catalogue.dim
    args.sizes = [int(float(x)) for x in args.sizes.split(",")]
    args.big = [int(float(x)) for x in args.big.split(",") if x]
    args.index_params, args.big_params = parse_index_params(args.index_param), parse_index_params(args.big_params)
    args.sweep = {
        kind: [int(v) for v in values.split(",")]
        for kind, values in (part.split(":") for part in args.sweep.split(";"))
    }
    args.big_sweep = [int(v) for v in args.big_sweep.split(",")]
    args.sweep_also = [kind for kind in args.sweep_also.split(",") if kind]
    if set(args.sweep_also) - set(ann.KINDS):
        parser.error(f"--sweep-also {args.sweep_also}: expected kinds among {', '.join(ann.KINDS)}")
    args.compare, args.compare_sweep = parse_variants(args.compare), [int(v) for v in args.compare_sweep.split(",")]
    if min(args.sizes) <= K + args.seen:
        parser.error(f"--sizes must exceed k + --seen = {K + args.seen}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    records, sweep, compared, big = [], [], [], []
    load_before = os.getloadavg()  # other work on the machine skews every number
    for num_items in args.sizes:
        record, points, rows = measure(num_items, args)
        log(record)
        records.append(record)
        sweep, compared = sweep + points, compared + rows
    for num_items in args.big:
        big += big_rows(num_items, args)
        log(big[-1])
    load_after = os.getloadavg()
    extra = {
        "args": {k: str(v) for k, v in vars(args).items() if k != "out"},
        "sweep": sweep,
        "compare": compared,
        "big": big,
        "load_average_before": load_before,
        "load_average_after": load_after,
    }
    write_results(
        args.out,
        records,
        machine_info(),
        title="Serving: top-10 latency and throughput vs catalogue size",
        columns=COLUMNS,
        extra=extra,
        notes=notes(args, load_before, load_after),
    )
    sizes = [r["items"] for r in records]
    series = {
        "jax batch 1": (sizes, [r["jax_b1_p50_ms"] for r in records]),
        "numpy batch 1": (sizes, [r["numpy_b1_p50_ms"] for r in records]),
    }
    if not args.no_http:
        series |= {
            "http single": (sizes, [r["http_single_p50_ms"] for r in records]),
            f"http {args.concurrency} clients": (sizes, [r["http_concurrent_p50_ms"] for r in records]),
        }
    plot_lines(
        args.out / "latency_vs_items.png",
        series,
        xlabel="catalogue items",
        ylabel="p50 latency, ms",
        title=f"top-{K} latency, dim {args.dim}",
        logx=True,
        logy=True,
    )
    plot_recall_vs_latency(args.out / "recall_vs_latency.png", sweep, "p50_ms", args.dim)
    plot_recall_vs_latency(args.out / "compare_recall_vs_latency.png", compared, "b1_p50_ms", args.dim)
    markdown = ann_markdown(sweep, big) + ("\n" + compare_markdown(compared) if compared else "")
    (args.out / "ann.md").write_text(markdown, encoding="utf-8")
    return {"records": records, "sweep": sweep, "compare": compared, "big": big}


if __name__ == "__main__":
    main(sys.argv[1:])
