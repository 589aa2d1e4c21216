"""A loaded bundle ready to answer: token lookups, query vectors, exclusion lists, batched top-K.

The server and the benchmark both go through `Recommender.recommend`. Its jitted retrieval
compiles once per (batch, exclusion width, K) bucket: batches are padded to the next power of
two, exclusion lists to the next power of two but at least the longest known user's list
(16 at least), and K to the next power of two (at least 16, at most N); results are cut back
to each request's K. A bundle with an ANN index (jaxrec.serving.ann) is served from the index
instead, unless use_index=False: no compilation, exact seen-item exclusion by over-fetching.

Legend: B queries, N items, e vector width, X excluded-id slots, K results.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from jaxrec.errors import JaxrecError
from jaxrec.serving import retrieval
from jaxrec.serving.bundle import Bundle

MAX_K = 1000  # largest K a request may ask for (or N, if smaller)


class RequestError(JaxrecError):
    """A request the bundle cannot answer; `status` is the HTTP status it maps to."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True)
class Query:
    vector_e: np.ndarray  # float32 [e]
    exclude: np.ndarray  # int32 item ids not to recommend
    k: int


@dataclasses.dataclass(frozen=True)
class Recommendation:
    ids: np.ndarray  # int32 [<= K], best first
    scores: np.ndarray  # float32, aligned


def bucket(n: int, smallest: int = 1) -> int:
    """The next power of two >= max(n, smallest)."""
    return 1 << (max(n, smallest) - 1).bit_length()


class Recommender:
    """Top-K for known users (by original token) and new users (from a history of item tokens or
    from side features, as the bundle's cold-start encoder allows).

    The bundle's ANN index, when it has one and use_index holds, answers every query (known and
    new users alike). Otherwise shards > 1 splits the item matrix over that many devices
    (ShardedTopK), and approx_recall switches to the binned approximate top-K with that
    expected recall."""

    def __init__(
        self,
        bundle: Bundle,
        *,
        shards: int = 1,
        approx_recall: float | None = None,
        devices=None,
        use_index: bool = True,
    ):
        devices = list(devices if devices is not None else jax.devices())
        if shards > 1 and approx_recall is not None:
            raise JaxrecError("choose sharded exact retrieval or approximate retrieval, not both")
        self.index = bundle.index if use_index else None
        if self.index is not None and (shards > 1 or approx_recall is not None):
            raise JaxrecError(
                f"this bundle has a {self.index.name} index; serve it with --exact to use --shards "
                "or --approx-recall instead"
            )
        if not 1 <= shards <= len(devices):
            raise JaxrecError(
                f"--shards {shards} needs that many devices; {len(devices)} are available (on CPU, "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={shards} simulates them)"
            )
        if approx_recall is not None and not 0.0 < approx_recall < 1.0:
            raise JaxrecError(f"--approx-recall {approx_recall} must lie strictly between 0 and 1")
        self.bundle = bundle
        self.num_items = bundle.num_items
        self.max_k = min(MAX_K, self.num_items)
        self.approx_recall = approx_recall
        self._users = {token: i for i, token in enumerate(bundle.user_tokens)}
        self._items = {token: i for i, token in enumerate(bundle.item_tokens)}
        # Every batch pads its exclusion lists to at least the longest known user's, so known
        # users never meet an exclusion width that warmup did not compile.
        self._min_width = bucket(int(np.diff(bundle.seen_indptr).max(initial=0)), 16)
        self._sharded = retrieval.ShardedTopK(bundle.items_ne, shards, devices) if shards > 1 else None
        on_device = shards == 1 and self.index is None
        self._items_ne = jax.device_put(bundle.items_ne, devices[0]) if on_device else None

    def user_id(self, token) -> int:
        user = self._users.get(str(token))
        if user is None:
            raise RequestError(
                f"unknown user_id {str(token)!r} (the bundle knows {len(self._users)} users; "
                "send a 'history' of item ids for a new user)",
                status=404,
            )
        return user

    def item_id(self, token) -> int:
        item = self._items.get(str(token))
        if item is None:
            raise RequestError(f"unknown item id {str(token)!r}", status=404)
        return item

    def item_ids(self, tokens) -> np.ndarray:
        unknown = [str(t) for t in tokens if str(t) not in self._items]
        if unknown:
            raise RequestError(
                f"history holds {len(unknown)} item id(s) unknown to the bundle: "
                f"{', '.join(repr(t) for t in unknown[:5])}{' ...' if len(unknown) > 5 else ''}"
            )
        return np.asarray([self._items[str(t)] for t in tokens], np.int32)

    def check_k(self, k: int) -> None:
        if not 1 <= k <= self.max_k:
            raise RequestError(
                f"k={k} is out of range: it must lie in 1..{self.max_k} (the catalogue has {self.num_items} items)"
            )

    def user_query(self, token, k: int, exclude_seen: bool = True) -> Query:
        self.check_k(k)
        user = self.user_id(token)
        exclude = self.bundle.seen(user) if exclude_seen else np.zeros(0, np.int32)
        return Query(self.bundle.users_ue[user], exclude, k)

    def history_query(self, tokens, k: int, exclude_seen: bool = True) -> Query:
        """A user unknown at export, from the items of its history (oldest first)."""
        self.check_k(k)
        encoder = self.bundle.encoder
        if encoder is None or not encoder.takes_history:
            raise RequestError(
                "this bundle's model cannot encode a 'history' (it has no history encoder); "
                f"send {self._cold_start_hint()}"
            )
        items = self.item_ids(tokens)
        vector_e = encoder.history_vector(items, self.bundle.items_ne)
        return Query(vector_e.astype(np.float32), items if exclude_seen else np.zeros(0, np.int32), k)

    def features_query(self, features: dict, k: int) -> Query:
        """A user unknown at export, from its side features (source column -> value; absent ones
        are unknown). Values training never saw are refused rather than silently dropped."""
        self.check_k(k)
        coders = self.bundle.encoder.feature_coders if self.bundle.encoder is not None else {}
        if not coders:
            raise RequestError(f"this bundle's model cannot encode user 'features'; send {self._cold_start_hint()}")
        sources = {coder.source: coder for coder in coders.values()}
        unknown = sorted(set(features) - set(sources))
        if unknown:
            raise RequestError(f"unknown feature(s) {unknown}; this model reads {sorted(sources)}")
        for name, value in features.items():
            if sources[name].unknown(value):
                allowed = sources[name].values
                raise RequestError(
                    f"feature {name}={value!r} was never seen in training"
                    + (f"; known values: {', '.join(allowed[:30])}" if allowed else "")
                )
        vector_e = self.bundle.encoder.features_vector(features)
        return Query(vector_e.astype(np.float32), np.zeros(0, np.int32), k)

    def cold_start_inputs(self) -> list[str]:
        """What a request for a new user may send: "history", "features", or nothing."""
        encoder = self.bundle.encoder
        if encoder is None:
            return []
        return ["history"] if encoder.takes_history else ["features"] if encoder.feature_coders else []

    def _cold_start_hint(self) -> str:
        return " or ".join(
            ["a known 'user_id'"]
            + [{"history": "a 'history'", "features": "'features'"}[kind] for kind in self.cold_start_inputs()]
        )

    def retrieval_info(self) -> dict:
        """How queries are answered, for /health: the index with its export-time recall, or exact."""
        if self.index is not None:
            index = self.index
            return {
                "kind": index.name,
                "params": index.params,
                "refills": index.refills,
                "exact_fallbacks": index.exact_fallbacks,
            } | {
                k: v
                for k, v in index.details.items()
                if k.startswith("recall") or k in ("build_seconds", "tuning", "auto")
            }
        if self.approx_recall is not None:
            return {"kind": "approx_top_k", "recall_target": self.approx_recall}
        return {
            "kind": "exact" if self._sharded is None else "exact_sharded",
            "index_in_bundle": None if self.bundle.index is None else self.bundle.index.name,
        }

    def recommend(self, queries: list[Query]) -> list[Recommendation]:
        """One padded, jitted retrieval for the whole batch (or one index search); items scoring
        -inf are left out."""
        if self.index is not None:
            query_be = np.stack([q.vector_e for q in queries]).astype(np.float32)
            found = self.index.search(query_be, [q.exclude for q in queries], max(q.k for q in queries))
            return [Recommendation(ids[: q.k], scores[: q.k]) for q, (ids, scores) in zip(queries, found)]
        size = bucket(len(queries))
        width = max(bucket(max(len(q.exclude) for q in queries)), self._min_width)
        k = min(bucket(max(q.k for q in queries), 16), self.num_items)
        query_be = np.zeros((size, self.bundle.users_ue.shape[1]), np.float32)
        exclude_bx = np.full((size, width), self.num_items, np.int32)
        for row, q in enumerate(queries):
            query_be[row] = q.vector_e
            exclude_bx[row, : len(q.exclude)] = q.exclude
        scores_bk, ids_bk = jax.device_get(self.top_k(query_be, exclude_bx, k))
        results = []
        for row, q in enumerate(queries):
            keep = np.isfinite(scores_bk[row, : q.k])
            results.append(Recommendation(ids_bk[row, : q.k][keep], scores_bk[row, : q.k][keep]))
        return results

    def top_k(self, query_be, exclude_bx, k: int):
        """(scores_bk, ids_bk) by whichever retrieval this recommender was built with."""
        if self.approx_recall is not None:
            bins = retrieval.bins_for_recall(k, self.approx_recall, self.num_items)
            return retrieval.approx_top_k(query_be, self._items_ne, exclude_bx, k=k, bins=bins)
        if self._sharded is not None:
            return self._sharded(query_be, exclude_bx, k)
        return retrieval.exact_top_k(query_be, self._items_ne, exclude_bx, k=k)

    def warmup(self, max_batch: int) -> None:
        """Compile every batch bucket up to max_batch for K <= 16 (requests for known users, and
        histories no longer than the longest known user's, compile nothing more)."""
        query = Query(np.zeros(self.bundle.users_ue.shape[1], np.float32), np.zeros(0, np.int32), 10)
        if self.index is not None:  # nothing to compile
            self.recommend([query])
            return
        size = 1
        while size <= bucket(max_batch):
            self.recommend([query] * size)
            size *= 2
