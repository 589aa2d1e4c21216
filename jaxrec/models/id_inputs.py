"""The inputs of models that read user and item ids only (MF, NeuMF, SVD++): one per user, one per item."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def user_inputs(dataset) -> dict[str, np.ndarray]:
    """[U, 1]: each user's id (the same for every part: the query is the user)."""
    return {"user": np.arange(dataset.num_users, dtype=np.int32)[:, None]}


def item_inputs(dataset) -> dict[str, np.ndarray]:
    return {"item": np.arange(dataset.num_items, dtype=np.int32)}


def example_batch(batch_size: int, candidates: int) -> dict[str, jax.Array]:
    return {
        "user": jnp.zeros((batch_size, 1), jnp.int32),
        "item": jnp.zeros((batch_size, candidates), jnp.int32),
        "label": jnp.zeros((batch_size, candidates), jnp.float32),
    }


class IdInputs:
    """The host-side inputs of a model that reads user and item ids only (mixed into MF, NeuMF)."""

    def user_inputs(self, dataset, part: str) -> dict[str, np.ndarray]:
        return user_inputs(dataset)

    def item_inputs(self, dataset) -> dict[str, np.ndarray]:
        return item_inputs(dataset)

    def example_batch(self, batch_size: int, candidates: int) -> dict[str, jax.Array]:
        return example_batch(batch_size, candidates)
