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
  index      the bundle rewritten with a FAISS index (--index, default settings) and served from
             it (`Recommender` as the server uses it: over-fetch, exact exclusion): batch 1 p50/p99,
             queries/s at --batch, recall@10 against exact (seen items excluded), build time; and
             index_x_jax_qps = its batch throughput over jax exact's, both from this run;
  sweep      recall@10 and batch-1 p50 of the index at each --sweep setting (hnsw ef_search, and
             ivf nprobe with --sweep-ivf), plotted as recall_vs_latency.png, one line per index;
  http       `python -m jaxrec.serve` in a subprocess on 127.0.0.1, called by a bare asyncio
             HTTP/1.1 keep-alive client in this process (see post_loop): single requests one
             after another, then --concurrency clients at once; p50/p99 latency and requests/s;
             once exact (--exact) and once from the index (http_index_*). Each phase is bounded
             by --requests and --seconds. Server and client share this machine's cores (the load
             average before and after is recorded).
  --big      catalogue sizes built as an index only (no bundle, no exact server): vectors drawn in
             chunks of 10^6 and added chunk by chunk, exact top 10 of --big-queries queries kept
             chunk by chunk; build time, peak and resident memory, recall@10 and raw FAISS search
             latency at each --big-sweep setting.

Run:  python -m benchmarks.serving --out runs/bench/serving     # 10^3, 10^5, 10^6 items
      python -m benchmarks.serving --out runs/bench/serving_ann --sizes 1e6 --sweep-ivf --big 1e7 \
          --big-index ivf --big-params nlist=4096 --big-sweep 16,64,256,1024   # README's ANN run, ~30 min
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine_info, plot_lines, time_calls, write_results
from jaxrec.export import parse_index_params
from jaxrec.serving import ann, retrieval
from jaxrec.serving.bundle import load_bundle, write_bundle
from jaxrec.serving.recommender import Recommender

K = 10
COLUMNS = ("items", "jax_b1_p50_ms", "jax_b1_p99_ms", "numpy_b1_p50_ms", "numpy_b1_p99_ms", "jax_batch_qps",
           "numpy_batch_qps", "approx_b1_p50_ms", "approx_batch_qps", "approx_recall@10", "http_single_p50_ms",
           "http_single_p99_ms", "http_single_rps", "http_concurrent_p50_ms", "http_concurrent_p99_ms",
           "http_concurrent_rps", "http_mean_batch", "index_build_s", "index_b1_p50_ms", "index_b1_p99_ms",
           "index_batch_qps", "index_x_jax_qps", "index_recall@10", "http_index_single_p50_ms",
           "http_index_single_p99_ms", "http_index_concurrent_p50_ms", "http_index_concurrent_rps",
           "http_index_mean_batch")
BIG_COLUMNS = ("items", "index", "params", "build_s", "peak_rss_gb", "rss_after_gb", "recall@10", "search_p50_ms",
               "search_p99_ms")
SWEEP_PARAM = {"hnsw": "ef_search", "ivf": "nprobe"}


def percentiles(times_ms) -> dict[str, float]:
    values = np.asarray(times_ms, np.float64)
    return {"p50": float(np.median(values)), "p99": float(np.percentile(values, 99)), "n": int(values.size)}


def random_items(rng, num_items: int, dim: int) -> np.ndarray:
    return (rng.standard_normal((num_items, dim), np.float32) / np.sqrt(dim)).astype(np.float32)


def make_bundle(path: Path, num_items: int, args, index: ann.AnnIndex | None = None) -> None:
    """Random unit-variance scores: items ~ N(0, 1/dim) and users ~ N(0, 1) per coordinate."""
    rng = np.random.default_rng(args.seed)
    items_ne = random_items(rng, num_items, args.dim)
    users_ue = rng.standard_normal((args.users, args.dim), np.float32)
    seen = rng.integers(0, num_items, (args.users, args.seen))
    indptr = np.arange(0, args.users * args.seen + 1, args.seen, dtype=np.int64)
    write_bundle(path, manifest={"model": "synthetic", "dataset": {"name": f"random-{num_items}"}}, items_ne=items_ne,
                 users_ue=users_ue, user_tokens=[f"u{i}" for i in range(args.users)],
                 item_tokens=[f"i{i}" for i in range(num_items)], seen=(indptr, np.sort(seen, axis=1).ravel()),
                 index=index)


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
        out |= {f"{name}_b1_p50_ms": b1["p50"], f"{name}_b1_p99_ms": b1["p99"],
                f"{name}_batch_qps": args.batch / batch["p50"] * 1e3}
    approx = Recommender(bundle, approx_recall=args.approx_recall)
    out["approx_b1_p50_ms"] = percentiles(time_calls(lambda: approx.recommend(queries[:1]), **timing))["p50"]
    batch = percentiles(time_calls(lambda: approx.recommend(queries[: args.batch]), **timing))
    out["approx_batch_qps"] = args.batch / batch["p50"] * 1e3
    sample = queries[: args.recall_queries]
    exact_ids = [r.ids for r in rec.recommend(sample)]
    approx_ids = [r.ids for r in approx.recommend(sample)]
    out["approx_recall@10"] = retrieval.recall_at_k(np.stack(approx_ids), np.stack(exact_ids))
    out["numpy_agrees"] = bool(np.array_equal(np.stack(exact_ids[:8]), numpy_top_k(
        bundle.items_ne, np.stack([q.vector_e for q in sample[:8]]), seen_ux[users[:8]], K)))
    return out


def seen_lists(bundle, users) -> list[np.ndarray]:
    return [bundle.seen(int(u)) for u in users]


def index_recall(index: ann.AnnIndex, bundle, users) -> float:
    return ann.recall_at_k(index, bundle.users_ue[users], seen_lists(bundle, users), K)


def index_in_process(bundle, args, jax_batch_qps: float) -> dict:
    """The bundle's index served by `Recommender` (as the server does): latency, throughput, recall."""
    rec, users = Recommender(bundle), np.random.default_rng(args.seed + 1).integers(0, bundle.num_users, 4096)
    queries = [rec.user_query(f"u{u}", K) for u in users]
    timing = dict(warmup=2, repeats=args.repeats, max_seconds=args.phase_seconds)
    cursor = itertools.count()

    def call(size):
        start = next(cursor) * size % (len(queries) - size)
        return lambda: rec.recommend(queries[start : start + size])

    b1 = percentiles(time_calls(lambda: call(1)(), **timing))
    batch = percentiles(time_calls(lambda: call(args.batch)(), **timing))
    qps = args.batch / batch["p50"] * 1e3
    return {"index": bundle.index.name, "index_params": dict(bundle.index.params),
            "index_build_s": bundle.index.details["build_seconds"], "index_b1_p50_ms": b1["p50"],
            "index_b1_p99_ms": b1["p99"], "index_batch_qps": qps, "index_x_jax_qps": qps / jax_batch_qps,
            "index_recall@10": index_recall(bundle.index, bundle, users[: args.recall_queries]),
            "index_refills": bundle.index.refills, "index_exact_fallbacks": bundle.index.exact_fallbacks}


def sweep_index(index: ann.AnnIndex, bundle, args) -> list[dict]:
    """Recall@10 and single-query latency (raw search plus exclusion) at each sweep setting."""
    users = np.random.default_rng(args.seed + 3).integers(0, bundle.num_users, args.recall_queries)
    queries_ue, excludes = bundle.users_ue[users], seen_lists(bundle, users)
    name, points = SWEEP_PARAM[index.kind], []
    exact = [ann.exact_search(bundle.items_ne, q, e, K) for q, e in zip(queries_ue, excludes)]
    for value in args.sweep[index.kind]:
        index.params[name] = value
        index.apply_search_params()
        cursor = itertools.count()

        def one():
            row = next(cursor) % len(users)
            index.search(queries_ue[row : row + 1], excludes[row : row + 1], K)

        times = percentiles(time_calls(one, warmup=2, repeats=args.repeats, max_seconds=args.phase_seconds))
        points.append({"items": bundle.num_items, "index": index.name, name: value, "p50_ms": times["p50"],
                       "p99_ms": times["p99"], "recall@10": ann.recall_at_k(index, queries_ue, excludes, K, exact)})
    return points


def rss_gb() -> tuple[float, float]:
    """(peak, current) resident memory of this process in GB."""
    import resource

    status = Path("/proc/self/status").read_text()
    current = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, current / 1e6


def big_rows(num_items: int, args) -> list[dict]:
    """An index over `num_items` random vectors built chunk by chunk, never holding them twice."""
    rng, chunk = np.random.default_rng(args.seed), 1_000_000
    queries_qe = np.random.default_rng(args.seed + 4).standard_normal((args.big_queries, args.dim)).astype(np.float32)
    params = ann.resolve_params(args.big_index, num_items, args.big_params)
    gc.collect()
    first = random_items(rng, min(chunk, num_items), args.dim)
    tick = time.perf_counter()
    train_ne = first[: params["nlist"] * 64] if "nlist" in params else None
    index = ann.empty_index(args.big_index, params, args.dim, train_ne)
    build_s = time.perf_counter() - tick
    best_scores = np.full((args.big_queries, K), -np.inf, np.float32)
    best_ids = np.zeros((args.big_queries, K), np.int64)
    start, block = 0, first
    while block is not None:
        tick = time.perf_counter()
        index.add(block)
        build_s += time.perf_counter() - tick
        scores_qc = queries_qe @ block.T  # the exact top K, merged chunk by chunk
        top_qk = np.argpartition(-scores_qc, K, axis=1)[:, :K]
        merged_s = np.concatenate([best_scores, np.take_along_axis(scores_qc, top_qk, 1)], 1)
        merged_i = np.concatenate([best_ids, top_qk + start], 1)
        order = np.argsort(-merged_s, axis=1)[:, :K]
        best_scores, best_ids = np.take_along_axis(merged_s, order, 1), np.take_along_axis(merged_i, order, 1)
        start += len(block)
        block = random_items(rng, min(chunk, num_items - start), args.dim) if start < num_items else None
    peak, current = rss_gb()
    rows, name = [], SWEEP_PARAM[args.big_index]
    for value in args.big_sweep:
        params[name] = value
        wrapped = ann.AnnIndex(args.big_index, params, index, np.zeros((num_items, 0), np.float32))
        wrapped.apply_search_params()
        _, ids_qk = index.search(queries_qe, K)
        recall = np.mean([len(np.intersect1d(a, b)) / K for a, b in zip(ids_qk, best_ids)])
        cursor = itertools.count()
        times = percentiles(time_calls(lambda: index.search(queries_qe[next(cursor) % args.big_queries][None], K + 20),
                                       warmup=2, repeats=args.repeats, max_seconds=args.phase_seconds))
        rows.append({"items": num_items, "index": f"{ann.LIBRARY}-{args.big_index}", "params": dict(params),
                     "build_s": build_s, "peak_rss_gb": peak, "rss_after_gb": current, "recall@10": float(recall),
                     "search_p50_ms": times["p50"], "search_p99_ms": times["p99"]})
    return rows


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(bundle_dir: Path, port: int, args, exact: bool = True) -> subprocess.Popen:
    import httpx

    cmd = [sys.executable, "-m", "jaxrec.serve", str(bundle_dir), "--host", "127.0.0.1", "--port", str(port),
           "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)] + (["--exact"] if exact else [])
    server = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + args.startup_seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode}: {server.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.kill()
    raise RuntimeError(f"server did not answer /health within {args.startup_seconds} s")


async def post_loop(port: int, payloads: list[bytes], state: dict, latencies: list, deadline: float) -> None:
    """One keep-alive connection sending its next request as soon as the previous answer came.

    A bare asyncio HTTP/1.1 client: httpx's own per-request CPU cost capped this 2-core machine at
    ~140 requests/s whatever the server did, which would have measured the client."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while state["sent"] < state["max"] and time.perf_counter() < deadline:
            body = payloads[state["sent"] % len(payloads)]
            state["sent"] += 1
            tick = time.perf_counter()
            writer.write(b"POST /recommend HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            latencies.append((time.perf_counter() - tick) * 1e3)
            state["failures"] += head.split(b" ", 2)[1] != b"200"
    finally:
        writer.close()


async def load(port: int, payloads: list[bytes], concurrency: int, max_requests: int, max_seconds: float) -> dict:
    """`concurrency` clients at once, until `max_requests` were sent or `max_seconds` passed."""
    await post_loop(port, payloads[:1], {"sent": 0, "max": 1, "failures": 0}, [], time.perf_counter() + 60)
    state, latencies = {"sent": 0, "max": max_requests, "failures": 0}, []
    start = time.perf_counter()
    await asyncio.gather(*(post_loop(port, payloads, state, latencies, start + max_seconds)
                           for _ in range(concurrency)))
    wall = time.perf_counter() - start
    return percentiles(latencies) | {"rps": len(latencies) / wall, "failures": state["failures"]}


def over_http(bundle_dir: Path, num_users: int, args, exact: bool = True) -> dict:
    import httpx

    port = free_port()
    server = start_server(bundle_dir, port, args, exact)
    try:
        rng = np.random.default_rng(args.seed + 2)
        payloads = [json.dumps({"user_id": f"u{u}", "k": K}).encode() for u in rng.integers(0, num_users, 1024)]
        single = asyncio.run(load(port, payloads, 1, args.requests, args.seconds))
        before = httpx.get(f"http://127.0.0.1:{port}/health").json()
        concurrent = asyncio.run(load(port, payloads, args.concurrency, args.requests * 4, args.seconds))
        after = httpx.get(f"http://127.0.0.1:{port}/health").json()
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {"http_single_p50_ms": single["p50"], "http_single_p99_ms": single["p99"], "http_single_rps": single["rps"],
            "http_single_n": single["n"], "http_concurrent_p50_ms": concurrent["p50"],
            "http_concurrent_p99_ms": concurrent["p99"], "http_concurrent_rps": concurrent["rps"],
            "http_concurrent_n": concurrent["n"], "http_failures": single["failures"] + concurrent["failures"],
            "http_mean_batch": (after["batched_requests"] - before["batched_requests"])
            / max(after["batches"] - before["batches"], 1)}


def measure(num_items: int, args) -> tuple[dict, list[dict]]:
    """The size's record, and its sweep points."""
    with tempfile.TemporaryDirectory() as tmp:
        path, indexed = Path(tmp) / "bundle", Path(tmp) / "indexed"
        tick = time.perf_counter()
        make_bundle(path, num_items, args)
        bundle = load_bundle(path)
        record = {"items": num_items, "dim": args.dim, "k": K, "setup_s": time.perf_counter() - tick}
        record |= in_process(bundle, args)
        sweep = []
        if args.index != "none":
            make_bundle(indexed, num_items, args, ann.build_index(bundle.items_ne, args.index, args.index_params))
            del bundle
            gc.collect()
            bundle = load_bundle(indexed)
            record |= index_in_process(bundle, args, record["jax_batch_qps"])
            sweep = sweep_index(bundle.index, bundle, args)
            if args.sweep_ivf and args.index != "ivf":
                sweep += sweep_index(ann.build_index(bundle.items_ne, "ivf"), bundle, args)
        del bundle
        gc.collect()
        if not args.no_http:
            record |= over_http(path, args.users, args)
            if args.index != "none":
                record |= {k.replace("http_", "http_index_", 1): v
                           for k, v in over_http(indexed, args.users, args, exact=False).items()}
    return record, sweep


def notes(args, load_before, load_after) -> str:
    return (f"Latencies in ms (p50/p99), throughput in queries or requests per second; K = {K}, dim {args.dim}, "
            f"{args.seen} excluded items per user. In-process phases time up to {args.repeats} calls or "
            f"~{args.phase_seconds:.0f} s each; *_batch_qps at batch {args.batch}. HTTP: up to {args.requests} single "
            f"requests and {args.requests * 4} requests from {args.concurrency} concurrent clients, each phase at most "
            f"{args.seconds:.0f} s; server --max-batch {args.max_batch} --max-wait-ms {args.max_wait_ms}; "
            f"http_mean_batch = mean requests per retrieval under concurrent load. Client and server share the "
            f"machine's {os.cpu_count()} CPUs; 1-minute load average {load_before[0]:.1f} before the run and "
            f"{load_after[0]:.1f} after it.")


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for results.json, results.md, PNG")
    parser.add_argument("--sizes", default="1e3,1e5,1e6", help="comma-separated catalogue sizes")
    parser.add_argument("--dim", type=int, default=64)
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
    parser.add_argument("--index", default="hnsw", choices=("none", *ann.KINDS),
                        help="index served in the index phases")
    parser.add_argument("--index-param", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting of --index (default: the export defaults)")
    parser.add_argument("--sweep", default="hnsw:64,128,256,512,1024;ivf:16,64,256,1024",
                        help="search settings per index kind for the recall/latency plot (ef_search, nprobe)")
    parser.add_argument("--sweep-ivf", action="store_true", help="also build an ivf index and sweep its nprobe")
    parser.add_argument("--big", default="", help="comma-separated sizes built as an index only, e.g. 1e7")
    parser.add_argument("--big-index", default="ivf", choices=ann.KINDS)
    parser.add_argument("--big-params", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--big-sweep", default="16,64,256", help="ef_search or nprobe values at the --big sizes")
    parser.add_argument("--big-queries", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.sizes = [int(float(x)) for x in args.sizes.split(",")]
    args.big = [int(float(x)) for x in args.big.split(",") if x]
    args.index_params, args.big_params = parse_index_params(args.index_param), parse_index_params(args.big_params)
    args.sweep = {kind: [int(v) for v in values.split(",")]
                  for kind, values in (part.split(":") for part in args.sweep.split(";"))}
    args.big_sweep = [int(v) for v in args.big_sweep.split(",")]
    if min(args.sizes) <= K + args.seen:
        parser.error(f"--sizes must exceed k + --seen = {K + args.seen}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    records, sweep, big, load_before = [], [], [], os.getloadavg()  # other work on the machine skews every number
    for num_items in args.sizes:
        record, points = measure(num_items, args)
        log(record)
        records.append(record)
        sweep += points
    for num_items in args.big:
        big += big_rows(num_items, args)
        log(big[-1])
    load_after = os.getloadavg()
    extra = {"args": {k: str(v) for k, v in vars(args).items() if k != "out"}, "sweep": sweep, "big": big,
             "load_average_before": load_before, "load_average_after": load_after}
    write_results(args.out, records, machine_info(), title="Serving: top-10 latency and throughput vs catalogue size",
                  columns=COLUMNS, extra=extra, notes=notes(args, load_before, load_after))
    sizes = [r["items"] for r in records]
    series = {"jax batch 1": (sizes, [r["jax_b1_p50_ms"] for r in records]),
              "numpy batch 1": (sizes, [r["numpy_b1_p50_ms"] for r in records])}
    if not args.no_http:
        series |= {"http single": (sizes, [r["http_single_p50_ms"] for r in records]),
                   f"http {args.concurrency} clients": (sizes, [r["http_concurrent_p50_ms"] for r in records])}
    plot_lines(args.out / "latency_vs_items.png", series, xlabel="catalogue items", ylabel="p50 latency, ms",
               title=f"top-{K} latency, dim {args.dim}", logx=True, logy=True)
    if sweep:
        largest = max(p["items"] for p in sweep)
        lines = {}
        for p in (p for p in sweep if p["items"] == largest):
            lines.setdefault(p["index"], ([], []))
            lines[p["index"]][0].append(p["p50_ms"])
            lines[p["index"]][1].append(p["recall@10"])
        plot_lines(args.out / "recall_vs_latency.png", lines, xlabel="batch-1 p50 latency, ms", ylabel="recall@10",
                   title=f"{largest:,} items, dim {args.dim}: each point one ef_search / nprobe", logx=True)
    (args.out / "ann.md").write_text(ann_markdown(sweep, big), encoding="utf-8")
    return {"records": records, "sweep": sweep, "big": big}


def log(record: dict) -> None:
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()),
          file=sys.stderr, flush=True)


def ann_markdown(sweep: list[dict], big: list[dict]) -> str:
    """The sweep and the index-only rows as markdown tables."""
    lines = ["| items | index | setting | recall@10 | p50 ms | p99 ms |", "|---:|---|---|---:|---:|---:|"]
    for p in sweep:
        name = SWEEP_PARAM[p["index"].split("-")[1]]
        lines.append(f"| {p['items']:,} | {p['index']} | {name}={p[name]} | {p['recall@10']:.3f} | "
                     f"{p['p50_ms']:.3f} | {p['p99_ms']:.3f} |")
    lines += ["", "| " + " | ".join(BIG_COLUMNS) + " |", "|" + "---|" * len(BIG_COLUMNS)]
    for r in big:
        lines.append("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else f"{r[c]:,}" if isinstance(
            r[c], int) else str(r[c]) for c in BIG_COLUMNS) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(sys.argv[1:])
