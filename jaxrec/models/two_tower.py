"""Feature two-tower: score(u, i) = f(user id, age, gender, occupation, zip) . g(item id, genres, year).

Each tower concatenates its feature embeddings (the multi-valued genres are a mean-pooled
embedding bag, pooled by the collection) and runs an MLP; the score is the dot product of the
tower outputs plus a global bias (none under the softmax loss, which a shift cannot change; on
ratings, loss mse, it starts at the mean training rating). Trained with sampled negatives (bce,
bpr, softmax), on ratings (mse), or with in-batch negatives under a sampled softmax whose logits
are corrected by each candidate's log popularity (log-Q, Yi et al., 2019), so popular items are
not over-penalised for being sampled more often. Side features come from the data set's
Schema: on data without them the towers see ids only.

Legend: B batch, C candidates per example, N items, d embedding dim, e tower output dim.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.embedding.specs import TableSpec
from jaxrec.models.layers import MLP
from jaxrec.models.mf import global_bias_init

USER_FEATURES = ("age", "gender", "occupation", "zip_prefix")
ITEM_FEATURES = ("genres", "year")


class TwoTower(nn.Module):
    num_users: int
    num_items: int
    user_fields: tuple[tuple[str, int], ...]  # (name, vocab) of the user side features used
    item_fields: tuple[tuple[str, int, int], ...]  # (name, vocab, ids per item; > 1 is a bag)
    dim: int = 64
    hidden: Sequence[int] = (64,)
    dropout: float = 0.0
    negatives: str = "sampled"
    logq_correction: bool = True
    use_bias: bool = True
    bias_init: float = 0.0  # start of the global bias
    init_std: float = 0.1
    embedding_dtype: str = "float32"

    batches = "pairs"
    reads_side_features = True  # tables are sized from the Schema's user and item fields

    @classmethod
    def from_config(cls, cfg, schema) -> "TwoTower":
        user = tuple((f, schema.user_fields[f].vocab) for f in USER_FEATURES if f in schema.user_fields)
        item = tuple(
            (f, schema.item_fields[f].vocab, schema.item_fields[f].width)
            for f in ITEM_FEATURES
            if f in schema.item_fields
        )
        return cls(
            num_users=schema.num_users,
            num_items=schema.num_items,
            user_fields=user,
            item_fields=item,
            dim=cfg.dim,
            hidden=tuple(cfg.hidden),
            dropout=cfg.dropout,
            negatives=cfg.negatives,
            logq_correction=cfg.logq_correction,
            use_bias=cfg.use_bias and cfg.loss != "softmax",
            bias_init=global_bias_init(cfg, schema),
            init_std=cfg.init_std,
            embedding_dtype=cfg.embedding_dtype,
        )

    def tables(self, optimizer: str, lr: float, candidates: int) -> list[TableSpec]:
        def spec(name, rows, ids=1):
            return TableSpec(name, rows, self.dim, optimizer, lr, self.init_std, ids, self.embedding_dtype)

        return (
            [spec("user", self.num_users), spec("item", self.num_items, candidates)]
            + [spec(f"user_{name}", vocab) for name, vocab in self.user_fields]
            + [spec(f"item_{name}", vocab, candidates * width) for name, vocab, width in self.item_fields]
        )

    def features(self) -> dict[str, str]:
        return {name: name for name in self.inputs()}

    def inputs(self) -> dict[str, str]:
        names = (
            ["user", "item"]
            + [f"user_{name}" for name, _ in self.user_fields]
            + [f"item_{name}" for name, _, _ in self.item_fields]
        )
        return {name: name for name in names}

    def bags(self) -> dict[str, str]:
        return {f"item_{name}": "mean" for name, _, width in self.item_fields if width > 1}

    def user_inputs(self, dataset, part: str) -> dict[str, np.ndarray]:
        del part
        columns = dataset.user_features.columns
        return {"user": np.arange(dataset.num_users, dtype=np.int32)[:, None]} | {
            f"user_{name}": columns[name][:, None] for name, _ in self.user_fields
        }

    def item_inputs(self, dataset) -> dict[str, np.ndarray]:
        """Item ids and features (genre padding 0 -> -1, an empty bag slot), and each item's log
        training popularity (add-one smoothed) for the log-Q correction."""
        columns = dataset.item_features.columns
        inputs = {"item": np.arange(dataset.num_items, dtype=np.int32)}
        for name, _, width in self.item_fields:
            inputs[f"item_{name}"] = np.where(columns[name] > 0, columns[name], -1) if width > 1 else columns[name]
        counts = np.bincount(dataset.split.train.item, minlength=dataset.num_items) + 1.0
        return inputs | {"item_log_q": np.log(counts / counts.sum()).astype(np.float32)}

    def example_batch(self, batch_size: int, candidates: int) -> dict[str, jax.Array]:
        b, c = batch_size, candidates
        batch = {
            "user": jnp.zeros((b, 1), jnp.int32),
            "item": jnp.zeros((b, c), jnp.int32),
            "item_log_q": jnp.zeros((b, c), jnp.float32),
            "label": jnp.zeros((b, c), jnp.float32),
        }
        batch |= {f"user_{name}": jnp.zeros((b, 1), jnp.int32) for name, _ in self.user_fields}
        batch |= {
            f"item_{name}": jnp.zeros((b, c, width) if width > 1 else (b, c), jnp.int32)
            for name, _, width in self.item_fields
        }
        return batch

    def setup(self):
        self.user_tower = MLP((*self.hidden, self.dim), self.dropout)
        self.item_tower = MLP((*self.hidden, self.dim), self.dropout)
        # a softmax is blind to a shift of all logits: there the bias would only drift on noise
        init = nn.initializers.constant(self.bias_init)
        self.global_bias = self.param("global_bias", init, ()) if self.use_bias else 0.0

    def query_vectors(self, acts: dict[str, jax.Array], query: dict, train: bool = False) -> jax.Array:
        """[B, e + 1]: the user tower's output and a 1 that meets the item side's global bias."""
        del query
        names = ["user"] + [f"user_{name}" for name, _ in self.user_fields]
        tower = self.user_tower(jnp.concatenate([acts[n][:, 0] for n in names], axis=-1), train)
        return jnp.concatenate([tower, jnp.ones_like(tower[:, :1])], axis=-1)

    def item_vectors(self, acts: dict[str, jax.Array], items: dict, train: bool = False) -> jax.Array:
        """[..., e + 1]: the item tower's output and the global bias."""
        del items
        names = ["item"] + [f"item_{name}" for name, _, _ in self.item_fields]
        tower = self.item_tower(jnp.concatenate([acts[n] for n in names], axis=-1), train)
        return jnp.concatenate([tower, jnp.broadcast_to(self.global_bias, tower[..., :1].shape)], axis=-1)

    def __call__(self, acts: dict[str, jax.Array], batch: dict, train: bool = False) -> jax.Array:
        """Scores [B, C] of each example's candidates; with in-batch negatives [B, B], each row
        rotated so that column 0 holds the example's own positive."""
        query_be = self.query_vectors(acts, batch, train)
        items_bce = self.item_vectors(acts, batch, train)
        if self.negatives != "in_batch":
            return jnp.einsum("be,bce->bc", query_be, items_bce)
        logits_bb = query_be @ items_bce[:, 0].T
        if self.logq_correction:
            logits_bb = logits_bb - batch["item_log_q"][:, 0][None, :]
        item_b = batch["item"][:, 0]
        batch_size = item_b.shape[0]
        eye = jnp.eye(batch_size, dtype=bool)
        accidental = (item_b[:, None] == item_b[None, :]) & ~eye  # the same positive twice is no negative
        logits_bb = jnp.where(accidental, -1e9, logits_bb)
        rotate_bb = (jnp.arange(batch_size)[:, None] + jnp.arange(batch_size)[None, :]) % batch_size
        return jnp.take_along_axis(logits_bb, rotate_bb, axis=1)

    def score_all(self, query_acts: dict, query: dict, item_acts: dict, items: dict) -> jax.Array:
        return self.query_vectors(query_acts, query) @ self.item_vectors(item_acts, items).T
