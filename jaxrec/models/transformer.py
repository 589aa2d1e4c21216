"""The Transformer encoder and the ranking protocol shared by SASRec and BERT4Rec.

Both models read ONE item table through three features: `history` (the input sequence, -1
padded), `item` (each position's target) and `negative` (the sequence's sampled negatives,
shared by its positions; see jaxrec.data.sequences). The encoder's state at a position is
scored against item rows by a dot product, so full ranking is `query @ item_table.T` and the
models export like MF. Attention masks are built from `history >= 0`: a padded position is
never a key, so it cannot influence any real position (padded rows are zeros from the
collection, but zeros plus a position embedding are not nothing, hence the mask). SASRec
adds a causal mask so position t only sees positions <= t.

Legend: B batch, L max_len, K negatives per sequence, C = 1 + K candidates per position, N items,
d dim.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.data.sequences import eval_histories
from jaxrec.embedding.specs import TableSpec
from jaxrec.errors import JaxrecError


class TransformerBlock(nn.Module):
    """Self-attention then a position-wise feed-forward net, each with dropout and a residual.

    pre_ln: LayerNorm before each sub-layer (SASRec); otherwise after each residual sum (BERT)."""

    num_heads: int
    ffn_dim: int
    dropout: float = 0.0
    pre_ln: bool = True
    activation: str = "relu"

    @nn.compact
    def __call__(self, x_bld: jax.Array, mask_b1ll: jax.Array, train: bool = False) -> jax.Array:
        def drop(y):
            return nn.Dropout(self.dropout, deterministic=not train)(y)

        def attend(y):
            return nn.MultiHeadDotProductAttention(self.num_heads, dropout_rate=self.dropout, deterministic=not train)(
                y, y, mask=mask_b1ll
            )

        def feed_forward(y):
            y = drop(getattr(nn, self.activation)(nn.Dense(self.ffn_dim)(y)))
            return nn.Dense(x_bld.shape[-1])(y)

        if self.pre_ln:
            x_bld = x_bld + drop(attend(nn.LayerNorm()(x_bld)))
            return x_bld + drop(feed_forward(nn.LayerNorm()(x_bld)))
        x_bld = nn.LayerNorm()(x_bld + drop(attend(x_bld)))
        return nn.LayerNorm()(x_bld + drop(feed_forward(x_bld)))


def attention_mask(valid_bl: jax.Array, causal: bool) -> jax.Array:
    """bool [B, 1, L, L]: query q may attend to key k iff k is a real position (and k <= q)."""
    batch, length = valid_bl.shape
    mask_b1ll = jnp.broadcast_to(valid_bl[:, None, None, :], (batch, 1, length, length))
    return mask_b1ll & jnp.tril(jnp.ones((length, length), bool)) if causal else mask_b1ll


class SequenceEncoder(nn.Module):
    """Item embeddings + learned absolute positions -> num_layers Transformer blocks -> [B, L, d].

    Positions count from the left of the max_len window; sequences are left-padded, so the
    latest item always has position L - 1, in training and at evaluation alike."""

    max_len: int
    num_layers: int
    num_heads: int
    ffn_dim: int
    dropout: float = 0.0
    causal: bool = True
    pre_ln: bool = True
    activation: str = "relu"
    init_std: float = 0.1

    @nn.compact
    def __call__(self, emb_bld: jax.Array, valid_bl: jax.Array, train: bool = False) -> jax.Array:
        position_ld = self.param("position", nn.initializers.normal(self.init_std), (self.max_len, emb_bld.shape[-1]))
        x_bld = emb_bld.astype(jnp.float32) + position_ld
        if not self.pre_ln:  # BERT normalises the input embedding
            x_bld = nn.LayerNorm()(x_bld)
        x_bld = nn.Dropout(self.dropout, deterministic=not train)(x_bld)
        mask_b1ll = attention_mask(valid_bl, self.causal)
        for _ in range(self.num_layers):
            x_bld = TransformerBlock(self.num_heads, self.ffn_dim, self.dropout, self.pre_ln, self.activation)(
                x_bld, mask_b1ll, train
            )
        x_bld = nn.LayerNorm()(x_bld) if self.pre_ln else x_bld
        # A padded query has no key to attend to (flax then spreads it uniformly over all
        # keys): zero its state so padded positions score 0 whatever the sequence holds.
        return x_bld * valid_bl[..., None]


class SequenceRecommender(nn.Module):
    """The model protocol (see jaxrec.models) for encoders of item sequences; subclasses set the
    objective ("next_item" or "masked_item", read by jaxrec.data.sequences) and the encoder."""

    num_items: int
    dim: int
    max_len: int
    num_layers: int
    num_heads: int
    dropout: float = 0.0
    init_std: float = 0.1
    embedding_dtype: str = "float32"

    batches = "sequences"
    objective = "next_item"
    causal, pre_ln, ffn_mult, activation = True, True, 1, "relu"

    @classmethod
    def from_config(cls, cfg, schema):
        if cfg.loss == "mse":
            raise JaxrecError(
                f"model.loss=mse: model.name={cfg.name} ranks items and has no ratings to fit; use softmax, bce or bpr"
            )
        if cfg.dim % cfg.num_heads:
            raise JaxrecError(f"model.dim={cfg.dim} must be a multiple of model.num_heads={cfg.num_heads}")
        return cls(
            num_items=schema.num_items,
            dim=cfg.dim,
            max_len=cfg.max_len,
            num_layers=cfg.num_layers,
            num_heads=cfg.num_heads,
            dropout=cfg.dropout,
            init_std=cfg.init_std,
            embedding_dtype=cfg.embedding_dtype,
        )

    @property
    def table_rows(self) -> int:
        return self.num_items

    def tables(self, optimizer: str, lr: float, candidates: int) -> list[TableSpec]:
        """One item table, read per sequence for L inputs, L targets and C - 1 negatives."""
        ids = 2 * self.max_len + candidates - 1
        return [TableSpec("item", self.table_rows, self.dim, optimizer, lr, self.init_std, ids, self.embedding_dtype)]

    def features(self) -> dict[str, str]:
        return {"history": "item", "item": "item", "negative": "item"}

    def inputs(self) -> dict[str, str]:
        return {"history": "history", "item": "item", "negative": "negative"}

    def bags(self) -> dict[str, str]:
        return {}

    @property
    def history_len(self) -> int:
        """How many of a user's latest items a query reads."""
        return self.max_len

    def history_inputs(self, history_bh: jax.Array) -> dict[str, jax.Array]:
        """The query inputs of histories [B, history_len] (latest items, left-padded with -1);
        the one place that knows the layout, shared by evaluation and cold-start serving."""
        return {"history": jnp.asarray(history_bh, jnp.int32)}

    def user_inputs(self, dataset, part: str) -> dict[str, np.ndarray]:
        """history [U, L]: the items before `part` ("valid": train; "test": train + valid)."""
        inputs = self.history_inputs(eval_histories(dataset, part, self.history_len))
        return {name: np.asarray(values) for name, values in inputs.items()}

    def item_inputs(self, dataset) -> dict[str, np.ndarray]:
        return {"item": np.arange(dataset.num_items, dtype=np.int32)}

    def example_batch(self, batch_size: int, candidates: int) -> dict[str, jax.Array]:
        b, length, c = batch_size, self.max_len, candidates
        return {
            "history": jnp.zeros((b, length), jnp.int32),
            "item": jnp.zeros((b, length), jnp.int32),
            "negative": jnp.zeros((b, c - 1), jnp.int32),
            "label": jnp.zeros((b, length, c), jnp.float32),
            "weight": jnp.zeros((b, length), jnp.float32),
        }

    def setup(self):
        self.encoder = SequenceEncoder(
            self.max_len,
            self.num_layers,
            self.num_heads,
            self.ffn_mult * self.dim,
            self.dropout,
            self.causal,
            self.pre_ln,
            self.activation,
            self.init_std,
        )

    def encode(self, acts: dict[str, jax.Array], history_bl: jax.Array, train: bool) -> jax.Array:
        """[B, L, d]: the state at each position, the vector its targets are scored against."""
        return self.encoder(acts["history"], history_bl >= 0, train)

    def query_vectors(self, acts: dict[str, jax.Array], query: dict) -> jax.Array:
        """[B, d]: the state at the last position (the latest item, or BERT4Rec's appended mask)."""
        return self.encode(acts, query["history"], False)[:, -1]

    def item_vectors(self, acts: dict[str, jax.Array], items: dict) -> jax.Array:
        """[..., d]: the item rows themselves (input and output embeddings are shared)."""
        del items
        return acts["item"].astype(jnp.float32)

    def __call__(self, acts: dict[str, jax.Array], batch: dict, train: bool = False) -> jax.Array:
        """Logits [B, L, C] of each position's target (column 0) and its sequence's negatives; a
        negative that is the position's own target gets -1e9, which every loss reads as absent."""
        hidden_bld = self.encode(acts, batch["history"], train)
        target_bl = jnp.einsum("bld,bld->bl", hidden_bld, self.item_vectors(acts, batch))
        negative_blk = jnp.einsum("bld,bkd->blk", hidden_bld, acts["negative"].astype(jnp.float32))
        collide_blk = batch["negative"][:, None, :] == batch["item"][..., None]
        return jnp.concatenate([target_bl[..., None], jnp.where(collide_blk, -1e9, negative_blk)], axis=-1)

    def score_all(self, query_acts: dict, query: dict, item_acts: dict, items: dict) -> jax.Array:
        """Scores [B, N] of every item after each query's history (full-ranking evaluation)."""
        return self.query_vectors(query_acts, query) @ self.item_vectors(item_acts, items).T
