"""Training losses over candidate scores.

Every loss takes logits and labels [..., C] (C candidates per example; for bce, bpr and softmax
column 0 is the positive unless the labels say otherwise) and an optional weight [...] per
example: padded sequence positions carry weight 0. The result is the weighted mean over examples.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def _mean(per_example: jax.Array, weight: jax.Array | None) -> jax.Array:
    if weight is None:
        return jnp.mean(per_example)
    return jnp.sum(per_example * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def bce(logits: jax.Array, labels: jax.Array, weight: jax.Array | None = None) -> jax.Array:
    """Binary cross-entropy of P(u, i) = sigmoid(score) against 1 (positive) / 0 (sampled)."""
    return _mean(jnp.sum(optax.sigmoid_binary_cross_entropy(logits, labels), axis=-1), weight)


def bpr(logits: jax.Array, labels: jax.Array, weight: jax.Array | None = None) -> jax.Array:
    """Bayesian personalised ranking: the positive should outscore each sampled negative."""
    del labels
    return _mean(-jnp.sum(jax.nn.log_sigmoid(logits[..., :1] - logits[..., 1:]), axis=-1), weight)


def mse(logits: jax.Array, labels: jax.Array, weight: jax.Array | None = None) -> jax.Array:
    """Squared error of the predicted rating (C = 1)."""
    return _mean(jnp.mean(jnp.square(logits - labels), axis=-1), weight)


def softmax(logits: jax.Array, labels: jax.Array, weight: jax.Array | None = None) -> jax.Array:
    """Sampled softmax cross-entropy of the positive (column 0) against the other candidates,
    sampled or in-batch negatives (any log-Q correction is already in the logits)."""
    del labels
    return _mean(-jax.nn.log_softmax(logits, axis=-1)[..., 0], weight)


LOSSES = {"bce": bce, "bpr": bpr, "mse": mse, "softmax": softmax}
