"""NeuMF (He et al., 2017): a GMF branch (theta_u * phi_i) and an MLP over [u, i], fused by a
final linear layer. Both branches have their own user and item tables. The GMF tables can start
from a trained MF run (model.init_from), as the paper pre-trains them.

Legend: B batch, C candidates per example, N items, d dim.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.embedding.specs import TableSpec
from jaxrec.models.id_inputs import IdInputs
from jaxrec.models.layers import MLP


class NeuMF(IdInputs, nn.Module):
    num_users: int
    num_items: int
    dim: int = 32
    hidden: Sequence[int] = (64, 32, 16)
    dropout: float = 0.0
    init_std: float = 0.1
    embedding_dtype: str = "float32"

    batches = "pairs"

    @classmethod
    def from_config(cls, cfg, schema) -> "NeuMF":
        return cls(
            num_users=schema.num_users,
            num_items=schema.num_items,
            dim=cfg.dim,
            hidden=tuple(cfg.hidden),
            dropout=cfg.dropout,
            init_std=cfg.init_std,
            embedding_dtype=cfg.embedding_dtype,
        )

    def tables(self, optimizer: str, lr: float, candidates: int) -> list[TableSpec]:
        def spec(name, rows, ids=1):
            return TableSpec(name, rows, self.dim, optimizer, lr, self.init_std, ids, self.embedding_dtype)

        return [
            spec("user_gmf", self.num_users),
            spec("item_gmf", self.num_items, candidates),
            spec("user_mlp", self.num_users),
            spec("item_mlp", self.num_items, candidates),
        ]

    def features(self) -> dict[str, str]:
        return {name: name for name in self.inputs()}

    def inputs(self) -> dict[str, str]:
        return {"user_gmf": "user", "item_gmf": "item", "user_mlp": "user", "item_mlp": "item"}

    def bags(self) -> dict[str, str]:
        return {}

    def pretrained_tables(self) -> dict[str, str]:
        """Own table -> the MF table that initialises it under model.init_from."""
        return {"user_gmf": "user", "item_gmf": "item"}

    def setup(self):
        self.mlp = MLP(tuple(self.hidden), self.dropout, activate_last=True)
        self.fuse = nn.Dense(1)

    def _score(self, user: dict, item: dict, train: bool) -> jax.Array:
        """user rows [B, 1, d] against item rows [B, C, d] or [1, N, d] -> scores [B, C or N]."""
        shape = jnp.broadcast_shapes(user["user_gmf"].shape, item["item_gmf"].shape)
        gmf = user["user_gmf"] * item["item_gmf"]
        pair = jnp.concatenate(
            [jnp.broadcast_to(user["user_mlp"], shape), jnp.broadcast_to(item["item_mlp"], shape)], axis=-1
        )
        return self.fuse(jnp.concatenate([gmf, self.mlp(pair, train)], axis=-1))[..., 0]

    def __call__(self, acts: dict[str, jax.Array], batch: dict, train: bool = False) -> jax.Array:
        return self._score(acts, acts, train)

    def score_all(self, query_acts: dict, query: dict, item_acts: dict, items: dict) -> jax.Array:
        return self._score(query_acts, {name: rows[None] for name, rows in item_acts.items()}, False)
