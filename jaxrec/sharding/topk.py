"""Exact top-K over an item matrix split into row blocks over the mesh's model axis, for
catalogues whose matrix does not fit one device (serving). Each device takes the top K of its
block with global ids; the candidates are all-gathered and the top K taken again (exact: the
global top K lies within the union of per-shard top Ks).

Legend: B queries, N items, e vector width, X excluded-id slots, K results, R rows per shard.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxrec.sharding.mesh import make_mesh
from jaxrec.sharding.strategies import MODEL


def masked_scores(query_be, items_ne, exclude_bx):
    """float32 [B, N] scores with the excluded ids at -inf (out-of-range ids are dropped)."""
    scores_bn = query_be.astype(jnp.float32) @ items_ne.astype(jnp.float32).T
    rows_b1 = jnp.arange(scores_bn.shape[0])[:, None]
    return scores_bn.at[rows_b1, exclude_bx].set(-jnp.inf, mode="drop")


class ShardedTopK:
    """Exact top-K with the item matrix split into contiguous row blocks over `num_shards`
    devices; for catalogues whose matrix does not fit one device.

    The matrix is padded to num_shards * R rows; padding rows score -inf. Queries and exclusion
    lists are replicated; each device scores only its own block."""

    def __init__(self, items_ne: np.ndarray, num_shards: int, devices=None):
        self.num_items, width = items_ne.shape
        self.mesh = make_mesh((1, num_shards), devices)
        rows = -(-self.num_items // num_shards)
        padded = np.zeros((rows * num_shards, width), items_ne.dtype)
        padded[: self.num_items] = items_ne
        self.items_ne = jax.device_put(padded, NamedSharding(self.mesh, P(MODEL, None)))
        self._top_k = jax.jit(self._sharded, static_argnames="k")

    def __call__(self, query_be, exclude_bx, k: int):
        """(scores_bk, ids_bk), as exact_top_k."""
        return self._top_k(query_be, self.items_ne, exclude_bx, k=k)

    def _sharded(self, query_be, items_ne, exclude_bx, k: int):
        num_items = self.num_items

        def local(query_be, items_re, exclude_bx):
            rows = items_re.shape[0]
            offset = jax.lax.axis_index(MODEL) * rows
            local_bx = exclude_bx - offset
            local_bx = jnp.where((local_bx >= 0) & (local_bx < rows), local_bx, rows)
            scores_br = masked_scores(query_be, items_re, local_bx)
            scores_br = jnp.where(offset + jnp.arange(rows) < num_items, scores_br, -jnp.inf)
            scores_bk, ids_bk = jax.lax.top_k(scores_br, min(k, rows))
            return scores_bk, ids_bk + offset

        # Per-shard candidates side by side: [B, num_shards * min(K, R)], then gathered.
        scores_bc, ids_bc = jax.shard_map(local, mesh=self.mesh, in_specs=(P(), P(MODEL, None), P()),
                                          out_specs=(P(None, MODEL), P(None, MODEL)))(query_be, items_ne, exclude_bx)
        replicated = NamedSharding(self.mesh, P())
        scores_bc = jax.lax.with_sharding_constraint(scores_bc, replicated)
        ids_bc = jax.lax.with_sharding_constraint(ids_bc, replicated)
        best_bk, pos_bk = jax.lax.top_k(scores_bc, k)
        return best_bk, jnp.take_along_axis(ids_bc, pos_bk, axis=1)
