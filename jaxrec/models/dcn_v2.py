"""DCN-v2 (Wang et al. 2021), DLRM-style: a ranking model for click-through prediction.

    x_0     = [bottom_mlp(dense) ; e_0 ; ... ; e_{S-1}]        e_j the embedding of categorical j
    x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l                     full-rank W_l [D, D], l < cross_layers
    logit   = top_mlp(x_L)                                     P(click) = sigmoid(logit)

The cross layers learn explicit bounded-degree feature interactions (a product of two features'
embeddings is one cross layer away); the top MLP the implicit ones (the "stacked" structure of
the paper). One embedding table per categorical feature, all of one dim, so the planner can
stack them into one array per layout and serve all 26 with one collective.

Legend: B batch, F dense features, S categorical features, d dim, D = bottom width + S * d.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.embedding.specs import TableSpec
from jaxrec.errors import JaxrecError
from jaxrec.models.layers import MLP


class CrossNetwork(nn.Module):
    """x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l, for `num_layers` layers; [B, D] -> [B, D]."""

    num_layers: int

    @nn.compact
    def __call__(self, x0_bd: jax.Array) -> jax.Array:
        x_bd = x0_bd
        for _ in range(self.num_layers):
            x_bd = x0_bd * nn.Dense(x0_bd.shape[-1])(x_bd) + x_bd
        return x_bd


class DCNv2(nn.Module):
    fields: tuple[str, ...]  # categorical features = tables = batch fields, in order
    vocab_sizes: tuple[int, ...]
    num_dense: int
    dim: int
    bottom_mlp: Sequence[int] = (64, 32)
    top_mlp: Sequence[int] = (64,)
    cross_layers: int = 3
    dropout: float = 0.0
    init_std: float = 0.1
    embedding_dtype: str = "float32"

    batches = "ctr"

    @classmethod
    def from_config(cls, cfg, schema) -> "DCNv2":
        if not schema.example_fields:
            raise JaxrecError(
                "config key model.name=dcn_v2 needs a CTR data set with categorical features (data=criteo_synthetic)"
            )
        fields = schema.example_fields
        return cls(
            fields=tuple(fields),
            vocab_sizes=tuple(f.vocab for f in fields.values()),
            num_dense=schema.num_dense,
            dim=cfg.dim,
            bottom_mlp=tuple(cfg.bottom_mlp),
            top_mlp=tuple(cfg.hidden),
            cross_layers=cfg.cross_layers,
            dropout=cfg.dropout,
            init_std=cfg.init_std,
            embedding_dtype=cfg.embedding_dtype,
        )

    def tables(self, optimizer: str, lr: float, candidates: int) -> list[TableSpec]:
        del candidates  # one id per feature and example
        return [
            TableSpec(name, rows, self.dim, optimizer, lr, self.init_std, dtype=self.embedding_dtype)
            for name, rows in zip(self.fields, self.vocab_sizes)
        ]

    def features(self) -> dict[str, str]:
        return {name: name for name in self.fields}

    def bags(self) -> dict[str, str]:
        return {}

    def inputs(self) -> dict[str, str]:
        return {name: name for name in self.fields}

    def example_batch(self, batch_size: int, candidates: int) -> dict[str, jax.Array]:
        del candidates
        ids = {name: jnp.zeros((batch_size, 1), jnp.int32) for name in self.fields}
        return {
            "dense": jnp.zeros((batch_size, self.num_dense), jnp.float32),
            **ids,
            "label": jnp.zeros((batch_size, 1), jnp.float32),
        }

    @nn.compact
    def __call__(self, acts: dict[str, jax.Array], batch: dict, train: bool = False) -> jax.Array:
        """Click logits [B, 1] from the embeddings acts[field] [B, 1, d] and batch["dense"] [B, F]."""
        parts_b = [acts[name].reshape(acts[name].shape[0], -1).astype(jnp.float32) for name in self.fields]
        if self.num_dense:
            parts_b.insert(0, MLP(self.bottom_mlp, self.dropout, activate_last=True)(batch["dense"], train))
        x_bd = CrossNetwork(self.cross_layers)(jnp.concatenate(parts_b, axis=-1))
        return MLP((*self.top_mlp, 1), self.dropout)(x_bd, train)
