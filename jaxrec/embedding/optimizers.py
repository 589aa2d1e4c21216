"""Sparse row optimisers: update only the rows a batch touched, and only their slots.

Each optimiser sees the summed gradient of every touched row once (`grads_ud`, after
deduplication), so its cost is O(touched rows x dim), never O(table rows). On the rows it
touches, `sgd` and `adagrad` equal optax.sgd / optax.adagrad applied to the dense gradient
(untouched rows have zero gradient there too, and neither moves them). `lazy_adam` equals
optax.adam on the first step; afterwards it differs by design: untouched rows keep their
moments instead of decaying them (TensorFlow's LazyAdam). `rowwise_adagrad` keeps one
accumulator per row (mean squared gradient over the row), the production default for large
tables because its slot costs 1/dim of the table.

Legend: u touched rows, d dim (the local column slice for column-wise tables), w slot width.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

ADAGRAD_INIT = 0.1  # optax.adagrad's initial_accumulator_value
ADAGRAD_EPS = 1e-7  # optax.adagrad's eps
ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8  # optax.adam's defaults


@dataclasses.dataclass(frozen=True)
class RowOptimizer:
    """slots: name -> ("element" | "row", initial value). An element slot has the table's
    shape and shards like it; a row slot has one value per row and follows the table's rows.

    update(rows_ud, grads_ud, slots, lr, step, row_mean_sq_u) -> (rows_ud, slots). The caller
    passes `row_mean_sq_u`, the mean of squared gradients over the whole logical row, because a
    column-sharded table sees only part of each row.
    """

    name: str
    slots: dict[str, tuple[str, float]]
    update: Callable


def _sgd(rows, grads, slots, lr, step, row_mean_sq):
    return rows - lr * grads, slots


def _adagrad(rows, grads, slots, lr, step, row_mean_sq):
    acc = slots["acc"] + jnp.square(grads)
    return rows - lr * grads * jax.lax.rsqrt(acc + ADAGRAD_EPS), {"acc": acc}


def _rowwise_adagrad(rows, grads, slots, lr, step, row_mean_sq):
    acc = slots["acc"] + row_mean_sq[:, None]
    return rows - lr * grads * jax.lax.rsqrt(acc + ADAGRAD_EPS), {"acc": acc}


def _lazy_adam(rows, grads, slots, lr, step, row_mean_sq):
    t = (step + 1).astype(jnp.float32)
    m = ADAM_B1 * slots["m"] + (1 - ADAM_B1) * grads
    v = ADAM_B2 * slots["v"] + (1 - ADAM_B2) * jnp.square(grads)
    m_hat = m / (1 - ADAM_B1**t)
    v_hat = v / (1 - ADAM_B2**t)
    return rows - lr * m_hat / (jnp.sqrt(v_hat) + ADAM_EPS), {"m": m, "v": v}


ROW_OPTIMIZERS: dict[str, RowOptimizer] = {
    "sgd": RowOptimizer("sgd", {}, _sgd),
    "adagrad": RowOptimizer("adagrad", {"acc": ("element", ADAGRAD_INIT)}, _adagrad),
    "rowwise_adagrad": RowOptimizer("rowwise_adagrad", {"acc": ("row", ADAGRAD_INIT)}, _rowwise_adagrad),
    "lazy_adam": RowOptimizer("lazy_adam", {"m": ("element", 0.0), "v": ("element", 0.0)}, _lazy_adam),
}
