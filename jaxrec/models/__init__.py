"""Models: Flax modules that combine embedding activations; no model knows about meshes.

A model declares
- `tables(optimizer, lr, candidates)`: its embedding tables (TableSpec), sized from the Schema;
- `features()`: feature -> table it reads (several features may share a table), `bags()`:
  feature -> combiner for multi-id features, and `inputs()`: feature -> the input field holding
  its ids;
- `batches`: the pipeline that feeds it ("pairs", "sequences" or "ctr"), `example_batch(B, C)`
  for shapes, and for ranking models the host-side per-user and per-item input arrays
  (`user_inputs(dataset, part)` [U, ...], `item_inputs(dataset)` [N, ...]);
- `__call__(acts, batch, train)`: logits of the batch's candidates, and `score_all(query_acts,
  query, item_acts, items)`: scores [B, N] of every item for a batch of queries. Dot-product
  models also expose `query_vectors` / `item_vectors` (scores = q @ i.T) for export.

Models receive activations already looked up (and bags pooled) by the embedding collection.
"""

from __future__ import annotations

import importlib

import jax

from jaxrec.config import ModelConfig
from jaxrec.data.types import Schema

MODEL_CLASSES = {
    "mf": "jaxrec.models.mf:MF",
    "two_tower": "jaxrec.models.two_tower:TwoTower",
    "neumf": "jaxrec.models.neumf:NeuMF",
    "dcn_v2": "jaxrec.models.dcn_v2:DCNv2",
    "sasrec": "jaxrec.models.sasrec:SASRec",
    "bert4rec": "jaxrec.models.bert4rec:BERT4Rec",
    "svdpp": "jaxrec.models.svdpp:SVDpp",
}


def model_class(name: str) -> type:
    module, attribute = MODEL_CLASSES[name].split(":")  # config.validate lists the valid names
    return getattr(importlib.import_module(module), attribute)


def make_model(cfg: ModelConfig, schema: Schema):
    """The model named by cfg.name, sized by the data schema (each class has from_config)."""
    return model_class(cfg.name).from_config(cfg, schema)


def reads_side_features(cfg: ModelConfig) -> bool:
    """Whether the model sizes tables from the schema's user and item side features (a class
    attribute `reads_side_features`), so a plan must read them from the data's side tables."""
    return getattr(model_class(cfg.name), "reads_side_features", False)


def feature_ids(model, inputs: dict) -> dict[str, jax.Array]:
    """The ids each of the model's features looks up, for the fields present in `inputs`."""
    return {feature: inputs[field] for feature, field in model.inputs().items() if field in inputs}
