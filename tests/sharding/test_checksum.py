"""Checkpoint checksums are the same numbers however an array is sharded or chunked, and equal a
hand computation: two wrapping uint32 sums of its bits, plain and weighted by position + 1."""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxrec.checkpoint import checksums
from jaxrec.sharding import checksum
from jaxrec.sharding.mesh import make_mesh


def _by_hand(a: np.ndarray) -> str:
    words = a.view(np.uint32).astype(np.uint64).reshape(-1)
    positions = np.arange(1, words.size + 1, dtype=np.uint64)
    return f"{int(words.sum() % 2**32):08x}{int((words * positions).sum() % 2**32):08x}"


@pytest.mark.parametrize("spec", [P(), P("model", None), P(("data", "model"), None), P(None, "data"), P("data", None)])
def test_checksums_do_not_depend_on_sharding_or_chunks(monkeypatch, spec):
    monkeypatch.setattr(checksum, "CHECKSUM_CHUNK_ROWS", 7)  # several chunks, the last one overlapping
    checksum._jitted_sums.cache_clear()
    values = np.random.default_rng(0).normal(size=(64, 6)).astype(np.float32)
    array = jax.device_put(values, NamedSharding(make_mesh((2, 4), jax.devices()), spec))
    assert checksums({"a": array})["['a']"] == _by_hand(values)
    flipped = values.copy()
    flipped.view(np.uint32)[5, 3] ^= 1 << 7
    assert checksums({"a": jax.device_put(flipped, array.sharding)})["['a']"] != _by_hand(values)
    checksum._jitted_sums.cache_clear()
