"""What the serving benchmark's modules share: K, percentiles, the random vectors, seen lists."""

from __future__ import annotations

import sys

import numpy as np

K = 10


def percentiles(times_ms) -> dict[str, float]:
    values = np.asarray(times_ms, np.float64)
    return {"p50": float(np.median(values)), "p99": float(np.percentile(values, 99)), "n": int(values.size)}


def random_items(rng, num_items: int, dim: int) -> np.ndarray:
    return (rng.standard_normal((num_items, dim), np.float32) / np.sqrt(dim)).astype(np.float32)


def seen_lists(bundle, users) -> list[np.ndarray]:
    return [bundle.seen(int(u)) for u in users]


def log(record: dict) -> None:
    print(
        " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()),
        file=sys.stderr,
        flush=True,
    )
