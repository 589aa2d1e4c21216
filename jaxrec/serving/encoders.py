"""Cold start: the query vector of a user unknown at export, from a history or from features.

Two kinds, named by the manifest's "encoder" entry:
- "mean_items_linear" (MF folding-in): query_e = mean(items_ne[history]) @ projection_ee + offset_e.
- "jax_export": the model's own query side, serialized with jax.export for CPU and CUDA and run
  without jaxrec's model code: a sequence model's Transformer over the latest `history_len`
  items (left-padded with -1), or the feature two-tower's user tower over the user's side
  features (ids by the stored UserFieldCoders; the unknown user id reads a zero row). Its
  weights (Flax parameters and the tables the query side reads) sit beside it in an npz; the
  batch dimension is symbolic, so one export serves any batch.

Legend: B batch, H history_len, N items, e vector width.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from jaxrec.data.features import UserFieldCoder
from jaxrec.errors import JaxrecError

KINDS = ("mean_items_linear", "jax_export")
PLATFORMS = ("cpu", "cuda")  # where an exported encoder runs


@dataclasses.dataclass(frozen=True)
class FoldInEncoder:
    """MF's folding-in: query_e = mean(items_ne[history]) @ projection_ee + offset_e."""

    projection_ee: np.ndarray
    offset_e: np.ndarray

    kind = "mean_items_linear"
    takes_history, feature_coders = True, {}

    def history_vector(self, history: np.ndarray, items_ne: np.ndarray) -> np.ndarray:
        return items_ne[history].mean(axis=0) @ self.projection_ee + self.offset_e

    def save(self, directory: Path) -> dict:
        np.savez(directory / "encoder.npz", projection_ee=self.projection_ee, offset_e=self.offset_e)
        return {"kind": self.kind, "file": "encoder.npz"}


@dataclasses.dataclass(frozen=True)
class ExportedEncoder:
    """The model's query side as a jax.export function of (weights, inputs) -> query vectors [B, e]."""

    exported: object  # jax.export.Exported
    weights: dict[str, np.ndarray]  # flat "a/b/c" keys
    history_len: int | None = None  # takes {"history": [B, H]} when set
    feature_coders: dict[str, UserFieldCoder] = dataclasses.field(default_factory=dict)  # input field -> coder

    kind = "jax_export"

    @property
    def takes_history(self) -> bool:
        return self.history_len is not None

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.exported.call(self.weights, inputs), np.float32)

    def history_vector(self, history: np.ndarray, items_ne: np.ndarray) -> np.ndarray:
        del items_ne
        latest = np.asarray(history, np.int32)[-self.history_len :]
        padded_1h = np.full((1, self.history_len), -1, np.int32)
        padded_1h[0, self.history_len - len(latest) :] = latest
        return self({"history": padded_1h})[0]

    def features_vector(self, raw: dict) -> np.ndarray:
        """raw: source column -> value (e.g. {"age": 25, "occupation": "writer"}); absent -> unknown."""
        inputs = {
            field: coder.encode(pd.Series([raw.get(coder.source)], dtype=object))[:, None]
            for field, coder in self.feature_coders.items()
        }
        return self(inputs)[0]

    def save(self, directory: Path) -> dict:
        (directory / "encoder.jaxexport").write_bytes(self.exported.serialize())
        np.savez(directory / "encoder_weights.npz", **self.weights)
        return {
            "kind": self.kind,
            "file": "encoder.jaxexport",
            "weights": "encoder_weights.npz",
            "platforms": list(self.exported.platforms),
            "history_len": self.history_len,
            "features": {field: coder.to_json() for field, coder in self.feature_coders.items()},
        }


Encoder = FoldInEncoder | ExportedEncoder


def load_encoder(path: Path, entry: dict | None) -> Encoder | None:
    if entry is None:
        return None
    if entry["kind"] not in KINDS:
        raise JaxrecError(
            f"bundle {path}: encoder kind {entry['kind']!r} is not one of {KINDS} (exported by a newer jaxrec?)"
        )
    if entry["kind"] == FoldInEncoder.kind:
        arrays = np.load(path / entry["file"])
        return FoldInEncoder(arrays["projection_ee"].astype(np.float32), arrays["offset_e"].astype(np.float32))
    from jax import export

    weights = dict(np.load(path / entry["weights"]))
    coders = {field: UserFieldCoder.from_json(coder) for field, coder in entry["features"].items()}
    return ExportedEncoder(
        export.deserialize(bytearray((path / entry["file"]).read_bytes())), weights, entry["history_len"], coders
    )
