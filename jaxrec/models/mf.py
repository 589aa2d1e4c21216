"""Matrix factorisation: score(u, i) = theta_u . phi_i + b_u + b_i + g, P(u, i) = sigmoid(score).

The factors and biases are embedding tables owned by the embedding collection; this module
only combines the activations it is given, so it is the same code on one device or a mesh.

Legend: B batch, C candidates per example, N items, d dim, e = d + 2 (biases folded in).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.embedding.specs import TableSpec
from jaxrec.models.id_inputs import IdInputs


def global_bias_init(cfg, schema) -> float:
    """model.bias_init if set; else the mean training rating for explicit ratings (mse), so the
    global bias need not climb from 0 to ~3.5 (Adam moves it ~lr a step) while the per-id
    rows soak up the offset; 0 otherwise. On ml-100k the mean start converges in a third of
    the epochs; MF's final RMSE was a little better from 0 (experiments/ml100k_rating)."""
    if cfg.bias_init is not None:
        return float(cfg.bias_init)
    return float(schema.mean_rating) if cfg.loss == "mse" else 0.0


class MF(IdInputs, nn.Module):
    num_users: int
    num_items: int
    dim: int
    use_bias: bool = True
    init_std: float = 0.1
    embedding_dtype: str = "float32"
    bias_init: float = 0.0  # start of the global bias g (global_bias_init)

    batches = "pairs"

    @classmethod
    def from_config(cls, cfg, schema) -> "MF":
        return cls(
            num_users=schema.num_users,
            num_items=schema.num_items,
            dim=cfg.dim,
            use_bias=cfg.use_bias,
            init_std=cfg.init_std,
            embedding_dtype=cfg.embedding_dtype,
            bias_init=global_bias_init(cfg, schema),
        )

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
        return {name: name for name in self.inputs()}

    def bags(self) -> dict[str, str]:
        return {}

    def inputs(self) -> dict[str, str]:
        fields = {"user": "user", "item": "item"}
        return fields | ({"user_bias": "user", "item_bias": "item"} if self.use_bias else {})

    def setup(self):
        init = nn.initializers.constant(self.bias_init)
        self.global_bias = self.param("global_bias", init, ()) if self.use_bias else 0.0

    def user_factors(self, acts: dict[str, jax.Array]) -> jax.Array:
        """[B, d]: theta_u (SVD++ adds its implicit-feedback term here)."""
        return acts["user"][:, 0]

    def query_vectors(self, acts: dict[str, jax.Array], query: dict) -> jax.Array:
        """[B, e]: theta_u, then 1 and b_u + g to meet phi_i's b_i and 1."""
        del query
        user = self.user_factors(acts)
        if not self.use_bias:
            return user
        ones = jnp.ones_like(user[:, :1])
        return jnp.concatenate([user, ones, acts["user_bias"][:, 0] + self.global_bias], axis=-1)

    def item_vectors(self, acts: dict[str, jax.Array], items: dict) -> jax.Array:
        """[..., e]: phi_i, b_i, 1."""
        del items
        if not self.use_bias:
            return acts["item"]
        return jnp.concatenate([acts["item"], acts["item_bias"], jnp.ones_like(acts["item_bias"])], axis=-1)

    def __call__(self, acts: dict[str, jax.Array], batch: dict, train: bool = False) -> jax.Array:
        """Scores [B, C] of each example's candidate items."""
        return jnp.einsum("be,bce->bc", self.query_vectors(acts, batch), self.item_vectors(acts, batch))

    def score_all(self, query_acts: dict, query: dict, item_acts: dict, items: dict) -> jax.Array:
        """Scores [B, N] of every item for a batch of users (full-ranking evaluation)."""
        return self.query_vectors(query_acts, query) @ self.item_vectors(item_acts, items).T
