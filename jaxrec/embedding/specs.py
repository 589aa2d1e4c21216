"""What a model declares about each embedding table; the planner decides where it lives."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class TableSpec:
    name: str
    rows: int
    dim: int
    optimizer: str = "adagrad"  # a key of embedding.optimizers.ROW_OPTIMIZERS
    lr: float = 1e-2
    init_std: float = 0.1  # normal initialiser; 0 starts the table at zero (biases)
    ids_per_example: int = 1  # ids looked up per example (candidates, bag size): sizes buffers
    dtype: str = "float32"  # storage of the rows (float32, bfloat16, float16); slots stay float32

    @property
    def itemsize(self) -> int:
        return jnp.dtype(self.dtype).itemsize

    @property
    def num_params(self) -> int:
        return self.rows * self.dim
