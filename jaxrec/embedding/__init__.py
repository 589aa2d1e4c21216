"""Embedding tables: specs, the sharded collection, and sparse row optimisers."""

from jaxrec.embedding.collection import EmbeddingCollection, EmbeddingState
from jaxrec.embedding.optimizers import ROW_OPTIMIZERS, RowOptimizer
from jaxrec.embedding.specs import TableSpec

__all__ = ["EmbeddingCollection", "EmbeddingState", "ROW_OPTIMIZERS", "RowOptimizer", "TableSpec"]
