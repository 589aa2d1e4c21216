"""Matrix factorisation: score(u, i) = theta_u . phi_i + b_u + b_i + g, P(u, i) = sigmoid(score).

The factors and biases are embedding tables owned by the embedding collection; this module
only combines the activations it is given, so it is the same code on one device or a mesh.

Legend: B batch, C candidates per example, N items, d dim.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.embedding.specs import TableSpec


class MF(nn.Module):
    num_users: int
    num_items: int
    dim: int
    use_bias: bool = True
    init_std: float = 0.1
    embedding_dtype: str = "float32"

    def tables(self, optimizer: str, lr: float, candidates: int) -> list[TableSpec]:
        dtype = self.embedding_dtype
        specs = [
            TableSpec("user", self.num_users, self.dim, optimizer, lr, self.init_std, dtype=dtype),
            TableSpec("item", self.num_items, self.dim, optimizer, lr, self.init_std, candidates, dtype),
        ]
        if self.use_bias:
            specs += [
                TableSpec("user_bias", self.num_users, 1, optimizer, lr, 0.0, dtype=dtype),
                TableSpec("item_bias", self.num_items, 1, optimizer, lr, 0.0, candidates, dtype),
            ]
        return specs

    def features(self) -> dict[str, str]:
        """Feature -> table it reads."""
        names = ("user", "item", "user_bias", "item_bias") if self.use_bias else ("user", "item")
        return {name: name for name in names}

    def feature_ids(self, batch: dict) -> dict[str, jax.Array]:
        """The ids each feature looks up: users [B, 1], candidate items [B, C]."""
        ids = {"user": batch["user"], "item": batch["item"]}
        if self.use_bias:
            ids |= {"user_bias": batch["user"], "item_bias": batch["item"]}
        return ids

    def query_ids(self, users_b: jax.Array) -> dict[str, jax.Array]:
        """The ids a full-ranking query looks up for a batch of users."""
        return {name: users_b[:, None] for name in self.features() if name.startswith("user")}

    def item_tables(self) -> tuple[str, ...]:
        """Tables scored in full against each query."""
        return ("item", "item_bias") if self.use_bias else ("item",)

    def setup(self):
        self.global_bias = self.param("global_bias", nn.initializers.zeros, ()) if self.use_bias else 0.0

    def __call__(self, emb: dict[str, jax.Array], batch: dict) -> jax.Array:
        """Scores [B, C] of each example's candidate items."""
        scores = jnp.einsum("bud,bcd->bc", emb["user"], emb["item"])
        if self.use_bias:
            scores = scores + emb["user_bias"][:, :, 0] + emb["item_bias"][..., 0] + self.global_bias
        return scores

    def score_all(self, user_emb: dict[str, jax.Array], item_tables: dict[str, jax.Array]) -> jax.Array:
        """Scores [B, N] of every item for a batch of users (full-ranking evaluation)."""
        scores = user_emb["user"][:, 0] @ item_tables["item"].T
        if self.use_bias:
            scores = scores + user_emb["user_bias"][:, 0] + item_tables["item_bias"][:, 0] + self.global_bias
        return scores
