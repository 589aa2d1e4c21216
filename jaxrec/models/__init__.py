"""Models: Flax modules that combine embedding activations; no model knows about meshes.

A model declares its tables (`tables`), which table each feature reads (`features`), the ids
of a training batch (`feature_ids`) and of a ranking query (`query_ids`, `item_tables`), and
computes scores from the activations the embedding collection hands it.
"""

from __future__ import annotations

from jaxrec.config import ModelConfig
from jaxrec.models.mf import MF


def make_model(cfg: ModelConfig, num_users: int, num_items: int):
    if cfg.name == "mf":
        return MF(num_users=num_users, num_items=num_items, dim=cfg.dim, use_bias=cfg.use_bias,
                  init_std=cfg.init_std, embedding_dtype=cfg.embedding_dtype)
    raise ValueError(f"unknown model {cfg.name!r}")  # config.validate lists the valid names
