"""From a run's checkpoint to a serving bundle, and the storage-precision report.

Every dot-product model exports through one path: its Flax module's `query_vectors` and
`item_vectors` (scores = query_vectors @ item_vectors.T), fed by the same host-side inputs and
collection lookups as full-ranking evaluation. A model without them (NeuMF, DCN-v2: the score
is not a dot product) cannot be served by top-K retrieval and fails with one message.

The checkpoint is restored on one device with sharding `none` (checkpoints are
plan-independent), so a run trained on a mesh exports on any machine. Query vectors are those
of the test part: every known user's history up to its last item.

An ANN index (jaxrec.serving.ann) is built over the stored (dequantised) item vectors, and its
recall@10 against exact search, seen items excluded as served, is measured on a sample of the
known users' query vectors and written into the manifest.

Legend: U users, N items, e vector width, d factor dim.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

import jaxrec
from jaxrec.config import Config, to_dict
from jaxrec.data.dataset import Dataset, read_raw
from jaxrec.data.features import user_feature_coders
from jaxrec.data.sequences import eval_histories
from jaxrec.errors import JaxrecError
from jaxrec.eval import evaluate_ranking
from jaxrec.models import feature_ids
from jaxrec.serving import ann
from jaxrec.serving.bundle import (
    FORMAT,
    PRECISIONS,
    bundle_bytes,
    dataset_sha256,
    dequantize,
    load_bundle,
    quantize,
    seen_csr,
    write_bundle,
)
from jaxrec.serving.encoders import PLATFORMS, Encoder, ExportedEncoder, FoldInEncoder

QUERY_BATCH = 1024  # users per query-vector batch
RECALL_QUERIES, RECALL_K = 1000, 10  # known users sampled to measure an index's recall at export
INDEX_CHOICES = ("none", "auto", *ann.KINDS)


@dataclasses.dataclass(frozen=True)
class ExportedRun:
    """A restored run reduced to what a bundle holds, in float32."""

    run_dir: Path
    step: int
    cfg: Config
    dataset: Dataset
    queries_ue: np.ndarray
    items_ne: np.ndarray
    encoder: Encoder | None
    item_meta: list[dict] | None


def check_dot_product(model, name: str) -> None:
    if not (hasattr(model, "query_vectors") and hasattr(model, "item_vectors")):
        raise JaxrecError(
            f"model '{name}' cannot be exported for top-K serving: its score is not a dot product "
            "of a query vector and an item vector (it has no query_vectors/item_vectors)"
        )


def model_vectors(engine, state, dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(queries_ue of the test part, items_ne), through the model's query/item vector methods."""
    model, collection = engine.model, engine.collection
    check_dot_product(model, engine.cfg.model.name)

    def acts(emb, inputs):
        ids = feature_ids(model, inputs)
        return collection.pool(collection.lookup(emb, ids), ids)

    item_vectors = jax.jit(lambda p, e, items: model.apply(p, acts(e, items), items, method=model.item_vectors))
    query_vectors = jax.jit(lambda p, e, query: model.apply(p, acts(e, query), query, method=model.query_vectors))
    items = model.item_inputs(dataset)
    items_ne = np.asarray(item_vectors(state.params, state.emb, items), np.float32)
    users = model.user_inputs(dataset, "test")
    queries = []
    for start in range(0, dataset.num_users, QUERY_BATCH):
        users_b = np.arange(start, start + QUERY_BATCH).clip(max=dataset.num_users - 1)  # fixed shape: one compile
        query = {name: values[users_b] for name, values in users.items()}
        queries.append(np.asarray(query_vectors(state.params, state.emb, query), np.float32))
    return np.concatenate(queries)[: dataset.num_users], items_ne


def fold_in_encoder(engine, state) -> FoldInEncoder:
    """MF's cold start: theta = mean of the history's item factors, b_u = 0, so
    query = mean(items[history]) @ P + q0 where P keeps the factor block and q0 is the query
    vector of a zero user ([0, 1, g])."""
    model, dim = engine.model, engine.cfg.model.dim
    zeros = {"user": jnp.zeros((1, 1, dim))} | ({"user_bias": jnp.zeros((1, 1, 1))} if model.use_bias else {})
    offset_e = np.asarray(model.apply(state.params, zeros, {}, method=model.query_vectors)[0], np.float32)
    projection_ee = np.zeros((offset_e.size, offset_e.size), np.float32)
    projection_ee[np.arange(dim), np.arange(dim)] = 1.0
    return FoldInEncoder(projection_ee, offset_e)


def exported_encoder(engine, state, request_fields: dict[str, tuple[int, ...]], complete, **details) -> ExportedEncoder:
    """The model's query_vectors for a new user, exported with jax.export.

    request_fields: the input fields a request supplies (field -> shape after the batch axis);
    complete(request) -> the model's query inputs. A query field that no request supplies (the
    user id) holds -1, so its features read zero rows and its tables stay out of the bundle.
    details: history_len or feature_coders, stored with the encoder."""
    from jax import export

    model, collection = engine.model, engine.collection
    tables = {f: t for f, t in model.features().items() if model.inputs()[f] in request_fields}
    weights = {f"params/{k}": np.asarray(v) for k, v in traverse_util.flatten_dict(state.params, sep="/").items()}
    weights |= {f"tables/{t}": np.asarray(collection.table(state.emb, t)) for t in set(tables.values())}

    def rows(weights, feature, ids):
        if feature not in tables:
            spec = collection.specs[model.features()[feature]]
            return jnp.zeros((*ids.shape, spec.dim), spec.dtype)
        found = jnp.take(weights[f"tables/{tables[feature]}"], jnp.maximum(ids, 0), axis=0)
        return jnp.where((ids >= 0)[..., None], found, jnp.zeros((), found.dtype))

    def encode(weights, request):
        params = traverse_util.unflatten_dict(
            {k.removeprefix("params/"): v for k, v in weights.items() if k.startswith("params/")}, sep="/"
        )
        query = complete(request)
        ids = feature_ids(model, query)
        acts = collection.pool({f: rows(weights, f, i) for f, i in ids.items()}, ids)
        return model.apply(params, acts, query, method=model.query_vectors).astype(jnp.float32)

    batch = export.symbolic_shape("b")
    specs = (
        {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in weights.items()},
        {f: jax.ShapeDtypeStruct((*batch, *shape), jnp.int32) for f, shape in request_fields.items()},
    )
    return ExportedEncoder(export.export(jax.jit(encode), platforms=PLATFORMS)(*specs), weights, **details)


def query_encoder(engine, state, dataset: Dataset) -> Encoder | None:
    """The cold-start encoder the model supports: MF folds a history in; sequence models encode
    a history; the feature two-tower encodes user features; None for the others."""
    model, name = engine.model, engine.cfg.model.name
    if name == "mf":
        return fold_in_encoder(engine, state)
    if hasattr(model, "history_inputs"):
        return exported_encoder(
            engine,
            state,
            {"history": (model.history_len,)},
            lambda request: model.history_inputs(request["history"]),
            history_len=model.history_len,
        )
    coders = user_feature_coders(read_raw(engine.cfg.data).users)
    fields = {
        field: coders[field.removeprefix("user_")]
        for field in model.user_inputs(dataset, "test")
        if field != "user" and field.removeprefix("user_") in coders
    }
    if not fields:
        return None

    def complete(request):
        batch = next(iter(request.values())).shape[0]
        return request | {"user": jnp.full((batch, 1), -1, jnp.int32)}

    return exported_encoder(engine, state, {field: (1,) for field in fields}, complete, feature_coders=fields)


def item_metadata(cfg: Config, item_tokens) -> list[dict] | None:
    """Title, genres and year per item id, from the data set's side table (None if it has none)."""
    items = read_raw(cfg.data).items
    if items is None:
        return None
    items = items[~items.index.duplicated()].reindex([str(t) for t in item_tokens])
    meta = []
    for row in items.itertuples():
        entry = {}
        if isinstance(getattr(row, "title", None), str):
            entry["title"] = row.title
        if isinstance(getattr(row, "genres", None), list):
            entry["genres"] = list(row.genres)
        year = getattr(row, "year", None)
        if isinstance(year, float) and math.isfinite(year):
            entry["year"] = int(year)
        meta.append(entry)
    return meta


def load_run(run_dir: Path, step: int | None = None) -> ExportedRun:
    from jaxrec.restore import restore_run

    cfg, dataset, engine, state, step = restore_run(run_dir, step, one_device=True)
    queries_ue, items_ne = model_vectors(engine, state, dataset)
    return ExportedRun(
        Path(run_dir),
        step,
        cfg,
        dataset,
        queries_ue,
        items_ne,
        query_encoder(engine, state, dataset),
        item_metadata(cfg, dataset.interactions.item_tokens),
    )


@jax.jit
def _scores(query_be, items_ne):
    return query_be @ items_ne.T


def ranking_metrics(run: ExportedRun, queries_ue: np.ndarray, items_ne: np.ndarray) -> dict[str, float]:
    """Test metrics of these vectors, with the evaluator, split and cutoffs of training."""
    split, train_cfg = run.dataset.split, run.cfg.train
    items = jnp.asarray(items_ne)
    return evaluate_ranking(
        lambda users_b: _scores(queries_ue[np.asarray(users_b)], items),
        split.train,
        split.test,
        exclude=[split.valid],
        ks=train_cfg.ks,
        batch_size=train_cfg.eval_batch_size,
    )


def stored(matrix: np.ndarray, precision: str) -> np.ndarray:
    """The float32 matrix a bundle of this precision serves (quantised and back)."""
    parts = quantize(matrix, precision)
    return dequantize(parts["values"], precision, parts.get("scales"))


def index_kind(requested: str, num_items: int) -> str | None:
    """The index kind to build: none, the one named, or auto (see build_item_index) at or above
    ann.AUTO_MIN_ITEMS items when faiss is installed (exact retrieval otherwise)."""
    if requested not in INDEX_CHOICES:
        raise JaxrecError(f"--index {requested!r} is not valid; expected one of {', '.join(INDEX_CHOICES)}")
    if requested == "none" or (requested == "auto" and num_items < ann.AUTO_MIN_ITEMS):
        return None
    if requested == "auto":
        try:
            ann.import_faiss("--index auto")
        except JaxrecError:
            return None
    return requested


def build_item_index(
    items_ne: np.ndarray,
    queries_ue: np.ndarray,
    seen: tuple[np.ndarray, np.ndarray],
    kind: str,
    params: dict | None = None,
    seed: int = 0,
    target_recall: float = ann.TARGET_RECALL,
) -> ann.AnnIndex:
    """The index over these (stored) item vectors. Up to RECALL_QUERIES known users are sampled and
    split in two: unless `params` pins it, the search setting is tuned on one half to reach
    `target_recall`, and recall@10 is measured on the other (held-out) half, their seen items
    excluded as the server excludes them. Kind auto builds each of ann.AUTO_KINDS, tunes it, and
    keeps the one that answers the tuning queries fastest among those reaching the target."""
    users = np.random.default_rng(seed).permutation(len(queries_ue))[:RECALL_QUERIES]
    tuning, held_out = np.sort(users[::2]), np.sort(users[1::2])
    if len(held_out) == 0:  # one known user: tune and measure on it
        held_out = tuning

    def excludes(rows):
        return [seen[1][seen[0][u] : seen[0][u + 1]] for u in rows]

    tuning_ue, tuning_excludes = queries_ue[tuning], excludes(tuning)
    pinned = ann.SEARCH_PARAM.get(kind) in (params or {})  # auto's kinds are always tuned
    exact = None if pinned else [ann.exact_search(items_ne, q, e, RECALL_K) for q, e in zip(tuning_ue, tuning_excludes)]

    def tuned(kind):
        index = ann.build_index(items_ne, kind, params, seed)
        if exact is not None:
            climbed = ann.tune_search(index, tuning_ue, tuning_excludes, RECALL_K, target_recall, exact)
            index.details["tuning"] = {"target_recall@10": target_recall, "queries": len(tuning), "ladder": climbed}
        return index

    if kind == "auto":
        candidates = []
        for candidate in map(tuned, ann.AUTO_KINDS):
            recall = candidate.details["tuning"]["ladder"][-1][f"recall@{RECALL_K}"]
            speed = ann.queries_per_second(candidate, tuning_ue, tuning_excludes, RECALL_K)
            candidates.append((recall >= target_recall, speed, recall, candidate))
        index = max(candidates, key=lambda c: c[:3])[3]
        index.details["auto"] = [
            {
                "index": c.name,
                "search": {ann.SEARCH_PARAM[c.kind]: c.params[ann.SEARCH_PARAM[c.kind]]},
                f"tuning_recall@{RECALL_K}": recall,
                "queries_per_second_at_batch_16": round(speed, 1),
                "build_seconds": c.details["build_seconds"],
            }
            for _, speed, recall, c in candidates
        ]
    else:
        index = tuned(kind)
    recall = ann.recall_at_k(index, queries_ue[held_out], excludes(held_out), RECALL_K)
    index.refills = index.exact_fallbacks = 0  # served counts, not those of tuning and measuring
    index.details |= {
        f"recall@{RECALL_K}": recall,
        "recall_queries": len(held_out),
        "recall_measured_on": f"{len(held_out)} known users' query vectors (seed {seed}) not used to tune "
        "the search setting, seen items excluded, against exact search over the same stored vectors",
    }
    return index


def check_bundle_out(out: Path, run_dir: Path, overwrite: bool) -> None:
    """--out checked before the run loads: it can be created, and an existing one is replaced only
    under --overwrite and only when it is an export bundle (a manifest of this format and nothing
    but the files it names): never the run being exported, a folder above it, or other files."""
    out = Path(out).absolute()
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise JaxrecError(f"{out} already exists; choose another --out or pass --overwrite")
        refusal = f"--overwrite replaces only an export bundle; refusing to replace --out {out}"
        if out.is_symlink() or not out.is_dir():
            raise JaxrecError(f"{refusal}: it is {'a symbolic link' if out.is_symlink() else 'not a directory'}")
        run = Path(run_dir).resolve()
        if out.resolve() == run or out.resolve() in run.parents:
            raise JaxrecError(f"{refusal}: it holds the run dir {run_dir} being exported")
        strays = _non_bundle_entries(out)
        if strays is None:
            raise JaxrecError(f"{refusal}: it has no bundle manifest.json")
        if strays:
            raise JaxrecError(f"{refusal}: it holds what is not the bundle's ({', '.join(strays[:3])})")
    blocking = next((p for p in out.parents if p.exists() or p.is_symlink()), None)
    if blocking is not None and not blocking.is_dir():
        raise JaxrecError(f"cannot create the bundle directory {out} (--out): {blocking} is not a directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{out.name}.probe-", dir=out.parent):
            pass  # the bundle is written to such a temporary directory, then renamed to --out
    except OSError as err:
        raise JaxrecError(f"cannot create the bundle directory {out} (--out): {err.strerror or err}") from None


def _non_bundle_entries(path: Path) -> list[str] | None:
    """Entries of `path` that its bundle manifest does not name as files (None: no bundle manifest)."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return None
    named = {"manifest.json", "user_tokens.json", "item_tokens.json", "precision_report.json"}
    named |= {manifest.get("seen"), manifest.get("item_meta")}
    entries = [*(manifest.get("arrays") or {}).values(), manifest.get("encoder"), manifest.get("index")]
    named |= {entry.get(key) for entry in entries if isinstance(entry, dict) for key in ("file", "scales", "weights")}
    return sorted(
        p.name + ("/" if p.is_dir() else "") for p in path.iterdir() if p.name not in named or not p.is_file()
    )


def export_run(
    run: ExportedRun,
    out: Path,
    precision: str = "float32",
    overwrite: bool = False,
    index: str = "none",
    index_params: dict | None = None,
    index_recall: float = ann.TARGET_RECALL,
) -> Path:
    """Write `run` as a bundle; the manifest's metrics are measured on the stored precision, and
    `index` (see index_kind) adds an ANN index over the stored item vectors."""
    check_bundle_out(out, run.run_dir, overwrite)
    inter = run.dataset.interactions
    items_ne, queries_ue = stored(run.items_ne, precision), stored(run.queries_ue, precision)
    metrics = ranking_metrics(run, queries_ue, items_ne)
    manifest = {
        "model": run.cfg.model.name,
        "config": to_dict(run.cfg),
        "dataset": {
            "name": run.dataset.name,
            "sha256": dataset_sha256(inter),
            "num_users": inter.num_users,
            "num_items": inter.num_items,
            "num_interactions": len(inter),
        },
        "checkpoint": {"run_dir": str(Path(run.run_dir).absolute()), "step": run.step},
        "metrics": {"part": "test", **metrics},
        "queries": "test part: each known user's history up to its last item",
        "cold_start": cold_start_description(run.encoder),
        "seen": "every interaction of the user in the data set (all splits)",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "jaxrec_version": jaxrec.__version__,
    }
    seen = seen_csr(inter.user, inter.item, inter.num_users)
    kind = index_kind(index, inter.num_items)
    item_index = (
        build_item_index(items_ne, queries_ue, seen, kind, index_params, target_recall=index_recall) if kind else None
    )
    return write_bundle(
        out,
        manifest=manifest,
        items_ne=run.items_ne,
        users_ue=run.queries_ue,
        user_tokens=inter.user_tokens,
        item_tokens=inter.item_tokens,
        seen=seen,
        precision=precision,
        item_meta=run.item_meta,
        encoder=run.encoder,
        index=item_index,
        overwrite=overwrite,
    )


def cold_start_description(encoder: Encoder | None) -> str | None:
    if encoder is None:
        return None
    if isinstance(encoder, FoldInEncoder):
        return "from a history: mean of the history items' factors, user bias 0 (folding-in)"
    if encoder.takes_history:
        return f"from a history: the model's sequence encoder over the latest {encoder.history_len} items"
    return (
        f"from features ({', '.join(c.source for c in encoder.feature_coders.values())}): the user tower, "
        "with the user id unknown"
    )


def cold_start_queries(run: ExportedRun) -> np.ndarray:
    """Query vectors [U, e] of every known user treated as new: from its train + valid items, or
    from its side features alone."""
    encoder, dataset = run.encoder, run.dataset
    if isinstance(encoder, FoldInEncoder):
        split = dataset.split
        users = np.concatenate([split.train.user, split.valid.user])
        items = np.concatenate([split.train.item, split.valid.item])
        counts_u = np.bincount(users, minlength=dataset.num_users)[:, None]
        sums_ue = np.zeros((dataset.num_users, run.items_ne.shape[1]), np.float64)
        np.add.at(sums_ue, users, run.items_ne[items])
        means_ue = (sums_ue / np.maximum(counts_u, 1)).astype(np.float32)
        return means_ue @ encoder.projection_ee + encoder.offset_e
    if encoder.takes_history:
        return encoder({"history": eval_histories(dataset, "test", encoder.history_len)})
    columns = dataset.user_features.columns
    return encoder({field: columns[field.removeprefix("user_")][:, None] for field in encoder.feature_coders})


def cold_start_metrics(run: ExportedRun) -> dict[str, float] | None:
    """Test metrics when every user is served through the cold-start encoder."""
    return None if run.encoder is None else ranking_metrics(run, cold_start_queries(run), run.items_ne)


def precision_report(run: ExportedRun, keys=("hr@10", "ndcg@10")) -> list[dict]:
    """Per precision: bytes of the bundle and of its vectors (items, users, scales), and test
    metrics served from the written and reloaded bundle, with the change against float32."""
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for precision in PRECISIONS:
            path = export_run(run, Path(tmp) / precision, precision)
            bundle = load_bundle(path)
            metrics = ranking_metrics(run, bundle.users_ue, bundle.items_ne)
            files = [f for spec in bundle.manifest["arrays"].values() for f in (spec["file"], spec.get("scales")) if f]
            vector_bytes = sum((path / f).stat().st_size for f in files)
            records.append(
                {
                    "precision": precision,
                    "bundle_bytes": bundle_bytes(path),
                    "vector_bytes": vector_bytes,
                    **{k: metrics[k] for k in keys},
                }
            )
    base = records[0]
    for r in records:
        r["size_vs_float32"] = r["bundle_bytes"] / base["bundle_bytes"]
        r.update({f"{k}_change": r[k] - base[k] for k in keys})
    return records


def index_ranking_metrics(run: ExportedRun, index: ann.AnnIndex, queries_ue: np.ndarray) -> dict[str, float]:
    """Test metrics of the top max(ks) the index serves, each user's train and validation items
    excluded in the search as the evaluator excludes them; unretrieved items score -inf."""
    split, train_cfg, num_items = run.dataset.split, run.cfg.train, run.dataset.num_items
    indptr, excluded = seen_csr(
        np.concatenate([split.train.user, split.valid.user]),
        np.concatenate([split.train.item, split.valid.item]),
        run.dataset.num_users,
    )
    k = min(max(train_cfg.ks), num_items)

    def scores(users_b):
        users_b = np.asarray(users_b)
        found = index.search(queries_ue[users_b], [excluded[indptr[u] : indptr[u + 1]] for u in users_b], k)
        scores_bn = np.full((len(users_b), num_items), -np.inf, np.float32)
        for row, (ids, values) in enumerate(found):
            scores_bn[row, ids] = values
        return jnp.asarray(scores_bn)

    return evaluate_ranking(
        scores, split.train, split.test, exclude=[split.valid], ks=train_cfg.ks, batch_size=train_cfg.eval_batch_size
    )


def index_report(run: ExportedRun, bundle_path: Path, keys=("hr@10", "ndcg@10")) -> dict | None:
    """The written bundle's index against exact search on its own stored vectors: test metrics of
    both, their difference, and the recall measured at export (None without an index)."""
    bundle = load_bundle(bundle_path)
    if bundle.index is None:
        return None
    exact = ranking_metrics(run, bundle.users_ue, bundle.items_ne)
    served = index_ranking_metrics(run, bundle.index, bundle.users_ue)
    return {
        "index": bundle.index.name,
        "params": bundle.index.params,
        "precision": bundle.manifest["precision"],
        **{k: v for k, v in bundle.index.details.items() if k.startswith("recall") or k == "build_seconds"},
        **{f"exact_{k}": exact[k] for k in keys},
        **{f"index_{k}": served[k] for k in keys},
        **{f"{k}_change": served[k] - exact[k] for k in keys},
    }
