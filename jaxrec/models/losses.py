"""Training losses over candidate scores.

Legend: B batch, C candidates per example (column 0 is the positive for bce/bpr).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def bce(logits_bc: jax.Array, labels_bc: jax.Array) -> jax.Array:
    """Binary cross-entropy of P(u, i) = sigmoid(score) against 1 (positive) / 0 (sampled)."""
    return jnp.mean(jnp.sum(optax.sigmoid_binary_cross_entropy(logits_bc, labels_bc), axis=1))


def bpr(logits_bc: jax.Array, labels_bc: jax.Array) -> jax.Array:
    """Bayesian personalised ranking: the positive should outscore each sampled negative."""
    del labels_bc
    return -jnp.mean(jnp.sum(jax.nn.log_sigmoid(logits_bc[:, :1] - logits_bc[:, 1:]), axis=1))


def mse(logits_bc: jax.Array, labels_bc: jax.Array) -> jax.Array:
    """Squared error of the predicted rating (C = 1)."""
    return jnp.mean(jnp.square(logits_bc - labels_bc))


LOSSES = {"bce": bce, "bpr": bpr, "mse": mse}
