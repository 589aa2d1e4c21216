"""What the serving benchmark's modules share: K, percentiles, the catalogue's vectors, seen lists."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

K = 10


def percentiles(times_ms) -> dict[str, float]:
    values = np.asarray(times_ms, np.float64)
    return {"p50": float(np.median(values)), "p99": float(np.percentile(values, 99)), "n": int(values.size)}


class Catalogue:
    """Where the benchmark's item and user vectors come from.

    iid              items ~ N(0, 1/dim), users ~ N(0, 1) per coordinate: no structure at all, the
                     hardest case for any ANN index (every item is about as near as any other);
    trained:BUNDLE   items and users drawn from Gaussians with the mean and covariance of a trained
                     bundle's item and user vectors (e.g. MF on ml-100k): the anisotropy and the
                     shared direction of learned embeddings (an effective dimension near 16 of 64
                     for ml-100k MF), at any catalogue size, without its cluster structure.
    """

    def __init__(self, spec: str, dim: int | None):
        self.spec, self.moments = spec, None
        if spec == "iid":
            self.dim = dim or 64
            return
        kind, _, path = spec.partition(":")
        if kind != "trained" or not path:
            raise ValueError(f"--catalogue {spec!r}: expected iid or trained:BUNDLE_DIR")
        from jaxrec.serving.bundle import load_bundle

        bundle = load_bundle(Path(path))
        self.moments = {
            name: _moments(vectors) for name, vectors in (("items", bundle.items_ne), ("users", bundle.users_ue))
        }
        self.dim = bundle.items_ne.shape[1]
        if dim not in (None, self.dim):
            raise ValueError(f"--dim {dim}, but the vectors of {path} are {self.dim} wide")

    def items(self, rng, count: int) -> np.ndarray:
        if self.moments is None:
            return (rng.standard_normal((count, self.dim), np.float32) / np.sqrt(self.dim)).astype(np.float32)
        return _draw(self.moments["items"], rng, count)

    def users(self, rng, count: int) -> np.ndarray:
        if self.moments is None:
            return rng.standard_normal((count, self.dim), np.float32)
        return _draw(self.moments["users"], rng, count)


def _moments(vectors_ne: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, Cholesky factor of the covariance) of the rows."""
    vectors_ne = vectors_ne.astype(np.float64)
    covariance = np.cov(vectors_ne, rowvar=False) + 1e-9 * np.eye(vectors_ne.shape[1])
    return vectors_ne.mean(0), np.linalg.cholesky(covariance)


def _draw(moments, rng, count: int) -> np.ndarray:
    mean_e, factor_ee = moments
    return (mean_e + rng.standard_normal((count, len(mean_e))) @ factor_ee.T).astype(np.float32)


def seen_lists(bundle, users) -> list[np.ndarray]:
    return [bundle.seen(int(u)) for u in users]


def log(record: dict) -> None:
    print(
        " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()),
        file=sys.stderr,
        flush=True,
    )
