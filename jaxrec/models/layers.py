"""Dense building blocks shared by models (everything here is replicated, never sharded)."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax


class MLP(nn.Module):
    """Dense layers with ReLU between them (none after the last) and dropout while training."""

    widths: Sequence[int]
    dropout: float = 0.0
    activate_last: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for i, width in enumerate(self.widths):
            x = nn.Dense(width)(x)
            if i < len(self.widths) - 1 or self.activate_last:
                x = nn.relu(x)
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return x
