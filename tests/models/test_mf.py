"""MF scores and the losses against hand-computed values."""

import jax.numpy as jnp
import numpy as np

from jaxrec.models.losses import bce, bpr, mse
from jaxrec.models.mf import MF


def test_mf_score_is_dot_product_plus_biases():
    model = MF(num_users=3, num_items=4, dim=2)
    emb = {
        "user": jnp.array([[[1.0, 2.0]]]),  # [B=1, 1, d]
        "item": jnp.array([[[3.0, 4.0], [0.5, -1.0]]]),  # [B=1, C=2, d]
        "user_bias": jnp.array([[[0.25]]]),
        "item_bias": jnp.array([[[1.0], [-2.0]]]),
    }
    params = {"params": {"global_bias": jnp.array(0.5)}}
    scores = model.apply(params, emb, {})
    # 1*3 + 2*4 + 0.25 + 1 + 0.5 = 12.75 ; 0.5 - 2 + 0.25 - 2 + 0.5 = -2.75
    np.testing.assert_allclose(scores, [[12.75, -2.75]])
    full = model.apply(
        params,
        {"user": emb["user"], "user_bias": emb["user_bias"]},
        {},
        {"item": emb["item"][0], "item_bias": emb["item_bias"][0]},
        {},
        method=model.score_all,
    )
    np.testing.assert_allclose(full, scores)


def test_losses_by_hand():
    logits = jnp.array([[2.0, 0.0]])
    labels = jnp.array([[1.0, 0.0]])
    # bce: -log(sigmoid(2)) - log(1 - sigmoid(0)) = 0.126928 + 0.693147
    np.testing.assert_allclose(bce(logits, labels), 0.126928 + 0.693147, rtol=1e-5)
    # bpr: -log(sigmoid(2 - 0)) = 0.126928
    np.testing.assert_allclose(bpr(logits, labels), 0.126928, rtol=1e-5)
    # mse: ((4 - 3)^2 + (1 - 3)^2) / 2 = 2.5
    np.testing.assert_allclose(mse(jnp.array([[4.0], [1.0]]), jnp.array([[3.0], [3.0]])), 2.5)
