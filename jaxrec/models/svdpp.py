"""SVD++ (Koren, KDD 2008): biased MF whose user vector also sums the items the user rated.

    r(u, i) = g + b_u + b_i + phi_i . (theta_u + |N(u)|^-1/2 sum_{j in N(u)} y_j)

N(u) is the user's training items (implicit feedback: which items, not their ratings), a bag
padded with -1 over the table `item_implicit` (the y_j), pooled by the embedding collection's
`sqrtn` combiner. Everything else is MF's: the same tables, biases and dot-product form, so full
ranking, export, sharding and checkpoints work as for MF. The query side of the dot product is
[theta_u + implicit, 1, b_u + g].

`max_history` caps N(u) at the user's most recent items. A padded bag costs batch x max_history
lookups and gradient rows per step whatever the user's true count, so the cap sets the step's
cost (batch 256 on 2 shared, busy CPU cores: 8 ms a step at 32, 16 at 64, 21-27 at 128; MF 1.4). On an ml-100k
5-fold training part (80,000 ratings) the median user has 52 items and the largest 577; the
default 64 truncates 406 of 943 users (to their latest 64), 128 truncates 214 and 256 43. On
fold 0's validation part this cost nothing: RMSE 0.9144 at 64, 0.9140 at 128, 0.9145 at 256
(experiments/ml100k_rating).

The histories follow the ranking protocol: train and validation queries see the train items,
test queries train + validation items (as the sequence models do).

Legend: B batch, C candidates per example, L max_history, N items, d dim, e = d + 2.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.data.sequences import eval_histories
from jaxrec.embedding.specs import TableSpec
from jaxrec.models import id_inputs
from jaxrec.models.mf import MF, global_bias_init


class SVDpp(MF):
    max_history: int = 64

    @classmethod
    def from_config(cls, cfg, schema) -> "SVDpp":
        return cls(
            num_users=schema.num_users,
            num_items=schema.num_items,
            dim=cfg.dim,
            use_bias=cfg.use_bias,
            init_std=cfg.init_std,
            embedding_dtype=cfg.embedding_dtype,
            bias_init=global_bias_init(cfg, schema),
            max_history=cfg.max_history,
        )

    def tables(self, optimizer: str, lr: float, candidates: int) -> list[TableSpec]:
        implicit = TableSpec(
            "item_implicit",
            self.num_items,
            self.dim,
            optimizer,
            lr,
            self.init_std,
            self.max_history,
            self.embedding_dtype,
        )
        return super().tables(optimizer, lr, candidates) + [implicit]

    def bags(self) -> dict[str, str]:
        return {"item_implicit": "sqrtn"}

    def inputs(self) -> dict[str, str]:
        return super().inputs() | {"item_implicit": "history"}

    def user_inputs(self, dataset, part: str) -> dict[str, np.ndarray]:
        """user [U, 1] and history [U, 1, L]: the latest items of N(u), left-padded with -1
        (train and valid: the train items; test: train + valid items)."""
        history_ul = eval_histories(dataset, "test" if part == "test" else "valid", self.max_history)
        return id_inputs.user_inputs(dataset) | {"history": history_ul[:, None, :]}

    def example_batch(self, batch_size: int, candidates: int) -> dict[str, jax.Array]:
        history = jnp.full((batch_size, 1, self.max_history), -1, jnp.int32)
        return id_inputs.example_batch(batch_size, candidates) | {"history": history}

    def user_factors(self, acts: dict[str, jax.Array]) -> jax.Array:
        """[B, d]: theta_u + |N(u)|^-1/2 sum_j y_j (the bag arrives pooled)."""
        return acts["user"][:, 0] + acts["item_implicit"][:, 0]
