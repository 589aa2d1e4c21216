"""Approximate nearest-neighbour retrieval: a FAISS index over the item vectors, built at export,
stored in the bundle, and searched by the server instead of scoring every item.

Kinds; every one returns the model's inner products q . i as scores (no cosine transform):
  hnsw     IndexHNSWFlat by inner product (faiss.METRIC_INNER_PRODUCT): a navigable graph, `m`
           links per node, `ef_construction` candidates while building, `ef_search` while
           searching (more: slower, higher recall);
  hnsw_l2  the same graph by L2 over the items augmented to one norm (Bachrach et al. 2014, the
           "XBOX" transform): item x is stored as [x, sqrt(M^2 - |x|^2)] (M the largest item
           norm), a query q searches as [q, 0], so |q - x|^2 = |q|^2 + M^2 - 2 q . x ranks items
           exactly as q . x does; the candidates are re-scored by q . x. FAISS has no built-in
           for it (an IndexPreTransform applies one linear map to items and queries alike, and
           this one differs between them). Measured worse than hnsw at every setting on random
           and on varying-norm vectors (benchmarks.serving --compare): not the default;
  ivf      IndexIVFFlat: k-means into `nlist` lists, `nprobe` nearest lists scanned per query
           (nprobe = nlist scans everything: exact);
  pq       IndexPQFastScan then an exact re-rank: every item is coded in `subspaces` 4-bit codes
           (16 bytes an item at width 64), the whole catalogue is scanned with SIMD lookup tables,
           and the best `rerank` candidates are re-scored exactly by q . i (rerank = N: exact).
           A scan instead of a graph walk: it wins where the vectors have no structure a graph can
           use (random vectors) and loses to hnsw on learned embeddings, so auto measures both.
The index stores float32 vectors: those the bundle serves, so an int8 or bfloat16 bundle's index
is built on its dequantised vectors and ranks exactly what exact retrieval would score.

Seen-item exclusion stays exact: a query fetches K + min(|exclude|, OVERFETCH) candidates (pq at
least `rerank`), drops
excluded ids, and when fewer than K remain fetches K + |exclude| (enough whatever was excluded);
a query the index still cannot fill (an IVF probe that reached too few items) is answered by
exact search over every item.

Legend: B queries, N items, e vector width, F fetched candidates, K results.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from jaxrec.errors import JaxrecError

LIBRARY = "faiss"
INSTALL = "pip install 'faiss-cpu>=1.15,<1.16' (or pip install -e '.[ann]')"
KINDS = ("hnsw", "hnsw_l2", "ivf", "pq")
INDEX_FILE = "index.faiss"
OVERFETCH = 64  # excluded ids the first fetch makes room for; longer lists refill when needed
# Build settings, measured side by side by benchmarks.serving --compare on random dim-64 vectors (no
# structure: the hardest case) at 10^6 items, m 32: ef_construction 128 reached recall@10 0.976 at
# ef_search 768 against 64's 0.933, for a 1.34x longer build; 128 / 768 beat 64 / 1024 in recall and
# speed. ivf: 4 sqrt(N) lists (None), the common rule of thumb.
DEFAULT_PARAMS = {
    "hnsw": {"m": 32, "ef_construction": 128, "ef_search": 768},
    "hnsw_l2": {"m": 32, "ef_construction": 128, "ef_search": 768},
    "ivf": {"nlist": None, "nprobe": None},
    "pq": {"subspaces": None, "rerank": 512},
}  # nprobe None: 1/16 of the lists; subspaces None: one per 2 dimensions. The search setting is the
# one export tunes (see tune_search); these values serve an index built without tuning.
SEARCH_PARAM = {"hnsw": "ef_search", "hnsw_l2": "ef_search", "ivf": "nprobe", "pq": "rerank"}
# Values export tries, smallest first: the cost of a query grows with them. They start at 64: below
# it a query saves under 0.15 ms (hnsw at 10^6 items: 0.25 ms at ef_search 32, 0.37 at 64), nothing
# next to a served request's ~4 ms, while on ml-100k ef_search 32 reached the tuning target (0.960)
# but 0.948 on the held-out users, moving HR@10 by 0.0053 (64: 0.987 and 0.0000).
LADDERS = {
    "ef_search": (64, 96, 128, 192, 256, 384, 512, 640, 768, 1024, 1536, 2048),
    "rerank": (64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 4096),
}
PQ_TRAIN_ITEMS = 65_536  # items the pq codebooks are trained on (16 centroids a subspace)
# Recall@10 export tunes the search setting to reach on its tuning queries. Above the issue's 0.95
# so that the recall measured on the other (held-out) queries stays above it too.
TARGET_RECALL = 0.96
# What --index auto builds at or above AUTO_MIN_ITEMS, each tuned, keeping the faster at batch 16:
# at 10^6 random vectors pq answered 2.7x the queries of hnsw (1,687 against 620 a second), on
# vectors shaped like trained MF embeddings hnsw 3.0x those of pq (2,524 against 855), each tuned
# to recall 0.96 (benchmarks.serving --catalogue, README).
AUTO_KINDS = ("hnsw", "pq")
# Where auto starts: jitted exact retrieval against auto's tuned index (benchmarks.serving --sizes
# 1e4,1e5, idle machine, queries/s at batch 16): at 10^4 items exact won on random and on trained-
# shaped vectors (14,140 against pq's 9,204; 11,190 against pq's 7,793), at 10^5 the index won (pq
# 4,094 against 1,879; hnsw 9,177 against 1,804). From 10^5 up the index is >= 2x exact.
AUTO_MIN_ITEMS = 100_000
# A batch is split across this many Python threads, each running a one-thread FAISS search (FAISS
# releases the GIL). Not OpenMP's threads: on 2 shared cores 2 OpenMP threads made a batch of 16
# take 40-50 ms instead of 1.2 ms (each barrier spin-waits for a descheduled peer), while 2 Python
# threads took a batch of 16 from 381 to 658 queries/s (10^6 random items, ef_search 512, idle).
SEARCH_WORKERS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # macOS
BUILD_THREADS = None  # None: OpenMP's default when faiss was first imported (every core, or OMP_NUM_THREADS)
_default_threads: list[int] = []
_search_pool: list[ThreadPoolExecutor] = []


def import_faiss(purpose: str):
    """The faiss module, or one line saying what to install."""
    try:
        faiss = importlib.import_module("faiss")
    except ImportError as err:
        raise JaxrecError(f"{purpose} needs the faiss library, which is not installed ({err}): {INSTALL}") from None
    if not _default_threads:
        _default_threads.append(faiss.omp_get_max_threads())
    return faiss


def resolve_params(kind: str, num_items: int, params: dict | None = None, dim: int | None = None) -> dict:
    """The kind's defaults overridden by `params`, with IVF's list counts (and, given the vector
    width, pq's subspaces) made concrete."""
    if kind not in KINDS:
        raise JaxrecError(f"index kind {kind!r} is not valid; expected one of {', '.join(KINDS)}")
    unknown = sorted(set(params or {}) - set(DEFAULT_PARAMS[kind]))
    if unknown:
        raise JaxrecError(f"index {kind} has no parameter(s) {unknown}; it takes {sorted(DEFAULT_PARAMS[kind])}")
    resolved = DEFAULT_PARAMS[kind] | (params or {})
    if kind == "ivf":
        nlist = resolved["nlist"] or int(4 * math.sqrt(num_items))
        resolved["nlist"] = int(min(max(nlist, 1), max(num_items // 39, 1)))  # faiss wants >= 39 points a list
        resolved["nprobe"] = int(min(resolved["nprobe"] or max(resolved["nlist"] // 16, 1), resolved["nlist"]))
    if kind == "pq" and dim is not None:
        subspaces = resolved["subspaces"] or (dim // 2 if dim % 2 == 0 else dim)
        if subspaces < 1 or dim % subspaces:
            raise JaxrecError(f"index pq: subspaces={subspaces} must divide the vector width {dim}")
        resolved["subspaces"] = int(subspaces)
    return resolved


@dataclasses.dataclass
class AnnIndex:
    """A FAISS index and the float32 item vectors it was built on (for the exact fallback)."""

    kind: str
    params: dict
    index: object  # faiss.Index
    items_ne: np.ndarray
    details: dict = dataclasses.field(default_factory=dict)  # build time, recall measured at export
    refills: int = 0  # queries fetched a second time, reported by /health
    exact_fallbacks: int = 0  # queries answered by exact search
    workers: int = SEARCH_WORKERS

    @property
    def name(self) -> str:
        return f"{LIBRARY}-{self.kind}"

    def apply_search_params(self) -> None:
        if self.kind.startswith("hnsw"):
            self.index.hnsw.efSearch = int(self.params["ef_search"])
        elif self.kind == "ivf":
            self.index.nprobe = int(self.params["nprobe"])  # pq reads rerank at each search

    def raw_search(self, query_be: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores_bf, ids_bf) best first, scores the inner products; missing results have id -1."""
        query_be, fetch = np.ascontiguousarray(query_be, np.float32), int(min(fetch, len(self.items_ne)))
        parts = min(self.workers, len(query_be))
        if parts <= 1:
            return self._search_part(query_be, fetch)
        if not _search_pool:
            _search_pool.append(ThreadPoolExecutor(SEARCH_WORKERS, thread_name_prefix="ann-search"))
        found = list(_search_pool[0].map(lambda part: self._search_part(part, fetch), np.array_split(query_be, parts)))
        return np.vstack([scores for scores, _ in found]), np.vstack([ids for _, ids in found])

    def _search_part(self, query_be: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        import_faiss("searching an ANN index").omp_set_num_threads(1)  # per calling thread
        if self.kind == "pq":  # coded scores: the best `rerank` re-scored exactly
            _, ids_bf = self.index.search(query_be, min(max(fetch, int(self.params["rerank"])), len(self.items_ne)))
            return rescore(self.items_ne, query_be, ids_bf)
        if self.kind == "hnsw_l2":  # L2 distances: re-score
            _, ids_bf = self.index.search(np.pad(query_be, ((0, 0), (0, 1))), fetch)
            return rescore(self.items_ne, query_be, ids_bf)
        return self.index.search(query_be, fetch)

    def search(self, query_be: np.ndarray, excludes: list[np.ndarray], k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query (ids [<= K], scores) best first, none of them in that query's exclude list."""
        k = min(k, len(self.items_ne))
        results: list = [None] * len(excludes)
        fetch = k + min(max(len(e) for e in excludes), OVERFETCH)
        short = self._fill(results, query_be, excludes, k, np.arange(len(excludes)), fetch)
        if short:
            self.refills += len(short)
            need = k + max(len(excludes[r]) for r in short)
            short = self._fill(results, query_be, excludes, k, np.asarray(short), need) if need > fetch else short
        for row in short:
            self.exact_fallbacks += 1
            results[row] = exact_search(self.items_ne, query_be[row], excludes[row], k)
        return results

    def _fill(self, results, query_be, excludes, k, rows, fetch) -> list[int]:
        """Fill results[row] for the rows whose fetch leaves K allowed ids; return the others."""
        scores_bf, ids_bf = self.raw_search(query_be[rows], fetch)
        short = []
        for row, scores_f, ids_f in zip(rows.tolist(), scores_bf, ids_bf):
            keep = ids_f >= 0
            if len(excludes[row]):
                keep &= ~np.isin(ids_f, excludes[row])
            ids, scores = ids_f[keep][:k], scores_f[keep][:k]
            whole_catalogue = len(ids_f) == len(self.items_ne) and bool(np.all(ids_f >= 0))
            if len(ids) < k and not whole_catalogue:
                short.append(row)
            else:
                results[row] = (ids.astype(np.int32), scores.astype(np.float32))
        return short

    def save(self, directory: Path) -> dict:
        """Write the index file; returns the manifest entry."""
        faiss = import_faiss("writing an ANN index")
        faiss.write_index(self.index, str(Path(directory) / INDEX_FILE))
        return {
            "library": LIBRARY,
            "library_version": faiss.__version__,
            "kind": self.kind,
            "params": self.params,
            "metric": "inner_product",
            "file": INDEX_FILE,
            "install": INSTALL,
            **self.details,
        }


def augment_to_equal_norm(items_ne: np.ndarray) -> np.ndarray:
    """[N, e+1]: each item x as [x, sqrt(M^2 - |x|^2)], M the largest norm, so every row has norm M."""
    squared_n = np.einsum("ne,ne->n", items_ne, items_ne, dtype=np.float64)
    extra_n = np.sqrt(np.maximum(squared_n.max(initial=0.0) - squared_n, 0.0))
    return np.hstack([items_ne, extra_n[:, None]]).astype(np.float32)


def rescore(items_ne: np.ndarray, query_be: np.ndarray, ids_bf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scores_bf, ids_bf): the candidates' exact inner products, best first; id -1 stays last."""
    scores_bf = np.einsum("bfe,be->bf", items_ne[np.maximum(ids_bf, 0)], query_be)
    scores_bf[ids_bf < 0] = -np.inf
    order_bf = np.argsort(-scores_bf, axis=1, kind="stable")
    return np.take_along_axis(scores_bf, order_bf, 1), np.take_along_axis(ids_bf, order_bf, 1)


def index_width(kind: str, dim: int) -> int:
    """Vector width the FAISS index stores for items of width `dim`."""
    return dim + 1 if kind == "hnsw_l2" else dim


def exact_search(items_ne: np.ndarray, query_e: np.ndarray, exclude: np.ndarray, k: int):
    """(ids [<= K], scores) by scoring every item: the reference and the last resort."""
    scores_n = items_ne @ query_e
    scores_n[np.asarray(exclude, np.int64)] = -np.inf
    k = min(k, len(scores_n))
    top = np.argpartition(-scores_n, k - 1)[:k]
    top = top[np.argsort(-scores_n[top], kind="stable")]
    top = top[np.isfinite(scores_n[top])]
    return top.astype(np.int32), scores_n[top].astype(np.float32)


def empty_index(kind: str, params: dict, dim: int, train_ne: np.ndarray | None = None):
    """A FAISS index ready for `add`: IVF's lists are trained on `train_ne` (>= 39 rows a list)."""
    faiss = import_faiss(f"--index {kind}")
    faiss.omp_set_num_threads(BUILD_THREADS or _default_threads[0])
    if kind.startswith("hnsw"):
        metric = faiss.METRIC_L2 if kind == "hnsw_l2" else faiss.METRIC_INNER_PRODUCT
        index = faiss.IndexHNSWFlat(index_width(kind, dim), int(params["m"]), metric)
        index.hnsw.efConstruction = int(params["ef_construction"])
    elif kind == "pq":
        index = faiss.IndexPQFastScan(dim, int(params["subspaces"]), 4, faiss.METRIC_INNER_PRODUCT)
        index.train(np.ascontiguousarray(train_ne, np.float32))
    else:
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, params["nlist"], faiss.METRIC_INNER_PRODUCT)
        index.train(np.ascontiguousarray(train_ne, np.float32))
    return index


def training_items(kind: str, params: dict) -> int:
    """Items the kind trains on before `add` (0: none): ivf's k-means, 64 a list; pq's codebooks."""
    return {"ivf": int(params.get("nlist") or 0) * 64, "pq": PQ_TRAIN_ITEMS}.get(kind, 0)


def build_index(items_ne: np.ndarray, kind: str, params: dict | None = None, seed: int = 0) -> AnnIndex:
    """An index over `items_ne` (float32 [N, e]) by inner product."""
    items_ne = np.ascontiguousarray(items_ne, np.float32)
    num_items, dim = items_ne.shape
    params = resolve_params(kind, num_items, params, dim)
    tick = time.perf_counter()
    train_ne, wanted = None, training_items(kind, params)
    if wanted:
        sample = np.random.default_rng(seed).choice(num_items, min(num_items, wanted), replace=False)
        train_ne = items_ne[np.sort(sample)]
    index = empty_index(kind, params, dim, train_ne)
    index.add(augment_to_equal_norm(items_ne) if kind == "hnsw_l2" else items_ne)
    ann = AnnIndex(kind, params, index, items_ne, {"build_seconds": round(time.perf_counter() - tick, 3)})
    ann.apply_search_params()
    return ann


def load_index(path: Path, entry: dict, items_ne: np.ndarray) -> AnnIndex:
    """The bundle's index; a missing library fails with one line saying what to install."""
    faiss = import_faiss(f"bundle {path} has a {entry.get('library')} {entry.get('kind')} index; loading it")
    if entry.get("kind") not in KINDS:
        raise JaxrecError(
            f"bundle {path} has a {entry.get('kind')!r} index, which this jaxrec cannot serve (it "
            f"serves {', '.join(KINDS)}); re-export it with this version"
        )
    try:
        index = faiss.read_index(str(Path(path) / entry["file"]))
    except RuntimeError as err:  # faiss reports a missing or truncated file this way
        raise JaxrecError(f"bundle {path}: cannot read its index {entry['file']}: {str(err).splitlines()[0]}") from None
    width = index_width(entry["kind"], items_ne.shape[1])
    if index.ntotal != len(items_ne) or index.d != width:
        raise JaxrecError(
            f"bundle {path}: the index holds {index.ntotal} vectors of width {index.d}, the bundle "
            f"needs {len(items_ne)} of width {width}; re-export it"
        )
    details = {k: v for k, v in entry.items() if k not in ("library", "kind", "params", "file", "install")}
    ann = AnnIndex(entry["kind"], entry["params"], index, items_ne, details)
    ann.apply_search_params()
    return ann


def recall_at_k(
    index: AnnIndex,
    queries_ue: np.ndarray,
    excludes: list[np.ndarray],
    k: int,
    exact: list[tuple[np.ndarray, np.ndarray]] | None = None,
) -> float:
    """Mean share of each query's exact top K (excluded ids removed) that the index returns. An
    item scoring as high as the exact K-th (to float rounding) counts as found: FAISS and numpy
    sum in different orders, so tied items may swap places without any loss. `exact`: the
    exact_search results of these queries, when already known."""
    found = index.search(queries_ue, excludes, k)
    if exact is None:
        exact = [exact_search(index.items_ne, q, e, k) for q, e in zip(queries_ue, excludes)]
    hits = []
    for query_e, (ids, _), (exact_ids, exact_scores) in zip(queries_ue, found, exact):
        if len(exact_ids) == 0:
            continue
        floor = exact_scores[-1] - 1e-5 * max(1.0, abs(float(exact_scores[-1])))
        good = np.isin(ids, exact_ids) | (index.items_ne[ids] @ query_e >= floor)
        hits.append(min(int(good.sum()), len(exact_ids)) / len(exact_ids))
    return float(np.mean(hits))


def search_ladder(index: AnnIndex) -> list[int]:
    """The values of the index's search setting that tune_search tries, smallest first."""
    if index.kind == "ivf":
        nlist = int(index.params["nlist"])
        return sorted({min(2**i, nlist) for i in range(nlist.bit_length() + 1)})
    return sorted({min(value, len(index.items_ne)) for value in LADDERS[SEARCH_PARAM[index.kind]]})


def tune_search(
    index: AnnIndex,
    queries_ue: np.ndarray,
    excludes: list[np.ndarray],
    k: int,
    target: float,
    exact: list[tuple[np.ndarray, np.ndarray]],
) -> list[dict]:
    """Set the smallest search setting on the ladder whose recall@k on these queries reaches
    `target` (the largest when none does): the cost of a query follows the data, so the setting
    is measured on the model's own vectors rather than fixed. Returns the ladder climbed. `exact`:
    the exact_search results of these queries."""
    name = SEARCH_PARAM[index.kind]
    climbed = []
    for value in search_ladder(index):
        index.params[name] = value
        index.apply_search_params()
        climbed.append({name: value, f"recall@{k}": recall_at_k(index, queries_ue, excludes, k, exact)})
        if climbed[-1][f"recall@{k}"] >= target:
            break
    return climbed


def queries_per_second(index: AnnIndex, queries_ue: np.ndarray, excludes: list[np.ndarray], k: int, batch: int = 16):
    """Queries a second searched in batches of `batch` as the server searches them, the best of
    three passes (another process on the machine only ever slows a pass down)."""
    seconds = []
    for _ in range(3):
        tick = time.perf_counter()
        for start in range(0, len(queries_ue), batch):
            index.search(queries_ue[start : start + batch], excludes[start : start + batch], k)
        seconds.append(time.perf_counter() - tick)
    return len(queries_ue) / min(seconds)
