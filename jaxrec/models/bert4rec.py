"""BERT4Rec (Sun et al., "BERT4Rec: Sequential Recommendation with Bidirectional Encoder
Representations from Transformer", CIKM 2019).

A bidirectional, post-LayerNorm Transformer (GELU, feed-forward width 4d) reads a sequence in
which a share mask_prob of the items is replaced by a mask token (row N of the item table) and
predicts the hidden items (the Cloze task). At evaluation the mask token is appended after
the user's latest max_len - 1 items and its state ranks the catalogue. As in the paper the
state passes a GELU projection before the dot product with the shared item rows; unlike the
paper there is no per-item output bias (it would be a second, catalogue-sized table).

Legend: B batch, L max_len, U users, N items, d dim.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.models.transformer import SequenceRecommender


class BERT4Rec(SequenceRecommender):
    """Table "item" [N + 1, d] (the last row is the mask token)."""

    mask_prob: float = 0.2

    objective = "masked_item"
    causal, pre_ln, ffn_mult, activation = False, False, 4, "gelu"

    @classmethod
    def from_config(cls, cfg, schema) -> "BERT4Rec":
        return super().from_config(cfg, schema).clone(mask_prob=cfg.mask_prob)

    @property
    def table_rows(self) -> int:
        return self.num_items + 1

    @property
    def history_len(self) -> int:
        return self.max_len - 1

    def history_inputs(self, history_bh: jax.Array) -> dict[str, jax.Array]:
        """The latest L - 1 items, then the mask token whose state ranks the catalogue."""
        history_bh = jnp.asarray(history_bh, jnp.int32)
        mask_b1 = jnp.full((history_bh.shape[0], 1), self.num_items, jnp.int32)
        return {"history": jnp.concatenate([history_bh, mask_b1], axis=1)}

    def setup(self):
        super().setup()
        self.project = nn.Dense(self.dim)
        self.project_norm = nn.LayerNorm()

    def encode(self, acts: dict[str, jax.Array], history_bl: jax.Array, train: bool) -> jax.Array:
        return self.project_norm(nn.gelu(self.project(super().encode(acts, history_bl, train))))
