"""The serving benchmark's index phases: the bundle's index as served, the recall/latency sweep,
the --compare variants side by side, and the index-only --big catalogues."""

from __future__ import annotations

import gc
import itertools
import time
from pathlib import Path

import numpy as np

from benchmarks.common import plot_lines, time_calls
from benchmarks.serving_common import K, percentiles, seen_lists
from jaxrec.serving import ann
from jaxrec.serving.recommender import Recommender

BIG_COLUMNS = (
    "items",
    "index",
    "params",
    "build_s",
    "peak_rss_gb",
    "rss_after_gb",
    "recall@10",
    "search_p50_ms",
    "search_p99_ms",
)


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
    search_param = ann.SEARCH_PARAM[bundle.index.kind]
    return {
        "index": bundle.index.name,
        "index_params": dict(bundle.index.params),
        "index_search": f"{search_param}={bundle.index.params[search_param]}",
        "index_build_s": bundle.index.details["build_seconds"],
        "index_b1_p50_ms": b1["p50"],
        "index_b1_p99_ms": b1["p99"],
        "index_batch_qps": qps,
        "index_x_jax_qps": qps / jax_batch_qps,
        "index_recall@10": index_recall(bundle.index, bundle, users[: args.recall_queries]),
        "index_export_recall@10": bundle.index.details["recall@10"],  # on the tuning run's held-out users
        "index_auto": bundle.index.details.get("auto"),  # each kind auto built: tuned setting, recall, q/s
        "index_refills": bundle.index.refills,
        "index_exact_fallbacks": bundle.index.exact_fallbacks,
    }


def sweep_index(index: ann.AnnIndex, bundle, args) -> list[dict]:
    """Recall@10 and single-query latency (raw search plus exclusion) at each sweep setting."""
    users = np.random.default_rng(args.seed + 3).integers(0, bundle.num_users, args.recall_queries)
    queries_ue, excludes = bundle.users_ue[users], seen_lists(bundle, users)
    name, points = ann.SEARCH_PARAM[index.kind], []
    exact = [ann.exact_search(bundle.items_ne, q, e, K) for q, e in zip(queries_ue, excludes)]
    for value in args.sweep.get(index.kind, []):
        index.params[name] = value
        index.apply_search_params()
        cursor = itertools.count()

        def one():
            row = next(cursor) % len(users)
            index.search(queries_ue[row : row + 1], excludes[row : row + 1], K)

        times = percentiles(time_calls(one, warmup=2, repeats=args.repeats, max_seconds=args.phase_seconds))
        points.append(
            {
                "items": bundle.num_items,
                "index": index.name,
                name: value,
                "p50_ms": times["p50"],
                "p99_ms": times["p99"],
                "recall@10": ann.recall_at_k(index, queries_ue, excludes, K, exact),
            }
        )
    return points


def rss_gb() -> tuple[float, float]:
    """(peak, current) resident memory of this process in GB."""
    import resource

    status = Path("/proc/self/status").read_text()
    current = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, current / 1e6


def big_rows(num_items: int, args) -> list[dict]:
    """An index over `num_items` vectors built chunk by chunk, never holding them twice. pq keeps the
    float32 vectors too (its re-rank reads them, as a served bundle holds them); the others do not."""
    rng, chunk = np.random.default_rng(args.seed), 1_000_000
    queries_qe = args.catalogue.users(np.random.default_rng(args.seed + 4), args.big_queries)
    params = ann.resolve_params(args.big_index, num_items, args.big_params, args.dim)
    gc.collect()
    items_ne = np.empty((num_items, args.dim if args.big_index == "pq" else 0), np.float32)
    first = args.catalogue.items(rng, min(chunk, num_items))
    tick = time.perf_counter()
    wanted = ann.training_items(args.big_index, params)
    train_ne = first[:wanted] if wanted else None
    index = ann.empty_index(args.big_index, params, args.dim, train_ne)
    build_s = time.perf_counter() - tick
    best_scores = np.full((args.big_queries, K), -np.inf, np.float32)
    best_ids = np.zeros((args.big_queries, K), np.int64)
    start, block = 0, first
    while block is not None:
        tick = time.perf_counter()
        index.add(block)
        build_s += time.perf_counter() - tick
        if items_ne.shape[1]:  # pq: its re-rank reads the vectors
            items_ne[start : start + len(block)] = block
        scores_qc = queries_qe @ block.T  # the exact top K, merged chunk by chunk
        top_qk = np.argpartition(-scores_qc, K, axis=1)[:, :K]
        merged_s = np.concatenate([best_scores, np.take_along_axis(scores_qc, top_qk, 1)], 1)
        merged_i = np.concatenate([best_ids, top_qk + start], 1)
        order = np.argsort(-merged_s, axis=1)[:, :K]
        best_scores, best_ids = np.take_along_axis(merged_s, order, 1), np.take_along_axis(merged_i, order, 1)
        start += len(block)
        block = args.catalogue.items(rng, min(chunk, num_items - start)) if start < num_items else None
    peak, current = rss_gb()
    rows, name = [], ann.SEARCH_PARAM[args.big_index]
    wrapped, no_excludes = ann.AnnIndex(args.big_index, params, index, items_ne), [np.zeros(0, np.int32)]
    for value in args.big_sweep:
        params[name] = value
        wrapped.apply_search_params()
        ids_qk = [ids for ids, _ in wrapped.search(queries_qe, no_excludes * args.big_queries, K)]
        recall = np.mean([len(np.intersect1d(a, b)) / K for a, b in zip(ids_qk, best_ids)])
        cursor = itertools.count()

        def one():
            row = next(cursor) % args.big_queries
            wrapped.search(queries_qe[row : row + 1], no_excludes, K)

        times = percentiles(time_calls(one, warmup=2, repeats=args.repeats, max_seconds=args.phase_seconds))
        rows.append(
            {
                "items": num_items,
                "index": f"{ann.LIBRARY}-{args.big_index}",
                "params": dict(params),
                "build_s": build_s,
                "peak_rss_gb": peak,
                "rss_after_gb": current,
                "recall@10": float(recall),
                "search_p50_ms": times["p50"],
                "search_p99_ms": times["p99"],
            }
        )
    return rows


def ann_markdown(sweep: list[dict], big: list[dict]) -> str:
    """The sweep and the index-only rows as markdown tables."""
    lines = ["| items | index | setting | recall@10 | p50 ms | p99 ms |", "|---:|---|---|---:|---:|---:|"]
    for p in sweep:
        name = ann.SEARCH_PARAM[p["index"].split("-", 1)[1]]
        lines.append(
            f"| {p['items']:,} | {p['index']} | {name}={p[name]} | {p['recall@10']:.3f} | "
            f"{p['p50_ms']:.3f} | {p['p99_ms']:.3f} |"
        )
    lines += ["", "| " + " | ".join(BIG_COLUMNS) + " |", "|" + "---|" * len(BIG_COLUMNS)]
    for r in big:
        lines.append(
            "| "
            + " | ".join(
                f"{r[c]:.3f}" if isinstance(r[c], float) else f"{r[c]:,}" if isinstance(r[c], int) else str(r[c])
                for c in BIG_COLUMNS
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def parse_variants(text: str) -> list[tuple[str, dict]]:
    """ "hnsw;hnsw_l2:ef_construction=128" -> [("hnsw", {}), ("hnsw_l2", {"ef_construction": 128})]."""
    variants = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        kind, _, settings = part.partition(":")
        params = {name: int(value) for name, _, value in (s.partition("=") for s in settings.split(",") if s)}
        ann.resolve_params(kind, 1_000, params)  # an unknown kind or setting fails before anything is built
        variants.append((kind, params))
    return variants


def compare_variants(bundle, args, jax_batch_qps: float) -> list[dict]:
    """Each --compare variant built on the same vectors, then at each --compare-sweep value searched
    for the same users (seen items excluded, as served): recall@10 against exact, batch-1 p50/p99,
    queries/s at batch --batch and its ratio to jax exact's from this run, build seconds."""
    users = np.random.default_rng(args.seed + 3).integers(0, bundle.num_users, max(args.recall_queries, args.batch))
    queries_ue, excludes = bundle.users_ue[users], seen_lists(bundle, users)
    exact = [ann.exact_search(bundle.items_ne, q, e, K) for q, e in zip(queries_ue, excludes)]
    timing = {"warmup": 2, "repeats": args.repeats, "max_seconds": args.phase_seconds}
    rows = []
    for kind, params in args.compare:
        index = ann.build_index(bundle.items_ne, kind, params)
        name = ann.SEARCH_PARAM[kind]
        for value in args.compare_sweep:
            index.params[name] = value
            index.apply_search_params()
            cursor = itertools.count()

            def search(size, cursor=cursor, index=index):
                start = next(cursor) * size % (len(users) - size + 1)
                index.search(queries_ue[start : start + size], excludes[start : start + size], K)

            b1 = percentiles(time_calls(lambda: search(1), **timing))
            qps = args.batch / percentiles(time_calls(lambda: search(args.batch), **timing))["p50"] * 1e3
            rows.append(
                {
                    "items": bundle.num_items,
                    "index": index.name,
                    "params": dict(index.params),
                    name: value,
                    "build_s": index.details["build_seconds"],
                    "recall@10": ann.recall_at_k(index, queries_ue, excludes, K, exact),
                    "b1_p50_ms": b1["p50"],
                    "b1_p99_ms": b1["p99"],
                    "batch_qps": qps,
                    "x_jax_qps": qps / jax_batch_qps,
                }
            )
        del index
        gc.collect()
    return rows


def compare_markdown(rows: list[dict]) -> str:
    header = (
        "| items | index | build params | search | build s | recall@10 | b1 p50 ms | b1 p99 ms | batch q/s | x jax |"
    )
    lines = [header, "|---:|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        name = ann.SEARCH_PARAM[r["index"].split("-", 1)[1]]
        build = ", ".join(f"{k} {v}" for k, v in r["params"].items() if k != name)
        lines.append(
            f"| {r['items']:,} | {r['index']} | {build} | {name} {r[name]} | {r['build_s']:.1f} | "
            f"{r['recall@10']:.3f} | {r['b1_p50_ms']:.3f} | {r['b1_p99_ms']:.3f} | {r['batch_qps']:.0f} | "
            f"{r['x_jax_qps']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def plot_recall_vs_latency(path: Path, points: list[dict], latency_key: str, dim: int) -> None:
    """Recall@10 against batch-1 p50 at the largest catalogue, one line per index (and build setting)."""
    if not points:
        return
    largest, lines = max(p["items"] for p in points), {}
    for p in (p for p in points if p["items"] == largest):
        name = ann.SEARCH_PARAM[p["index"].split("-", 1)[1]]
        build = ", ".join(f"{k} {v}" for k, v in p.get("params", {}).items() if k != name)
        line = lines.setdefault(f"{p['index']} {build}".strip(), ([], []))
        line[0].append(p[latency_key])
        line[1].append(p["recall@10"])
    plot_lines(
        path,
        lines,
        xlabel="batch-1 p50 latency, ms",
        ylabel="recall@10",
        logx=True,
        title=f"{largest:,} items, dim {dim}: each point one search setting",
    )
