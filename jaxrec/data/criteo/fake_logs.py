"""Files in the exact Criteo log format with made-up values, for tests and benchmarks.

Lines are assembled from a table of rendered tokens (each with its trailing tab or newline) by
one ragged gather per chunk of lines, so a million lines take seconds, not a Python loop's
minutes. Counts are geometric (about 20% missing, 2% negative); categories are log-uniform
ranks (P(rank r) ~ 1 / (r + 1), Zipf-like) over per-feature vocabularies of random 8-hex-digit
values (5% missing). With `signal_feature` the label is 1 with probability 0.8 when that
feature's value is among the popular half of its vocabulary and 0.1 otherwise; without it, 25%
of labels are 1 at random. Lines average about 255 bytes (Kaggle's train.txt: about 240).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from jaxrec.data.criteo.parse import NUM_CAT, NUM_INT

MAX_COUNT = 1000
CHUNK_LINES = 100_000


def fake_vocab_sizes(vocab: int) -> list[int]:
    """Per-feature vocabularies: `vocab`, vocab / 2, ... / 128, repeating (Criteo's vary like this)."""
    return [max(2, vocab >> (j % 8)) for j in range(NUM_CAT)]


def write_fake_logs(
    path: Path, num_lines: int, *, seed: int = 0, vocab: int = 1000, signal_feature: int | None = None
) -> None:
    """Write `num_lines` lines to `path` (gzip-compressed when it ends in .gz)."""
    rng = np.random.default_rng(seed)
    table = _TokenTable(rng, fake_vocab_sizes(vocab))
    with gzip.open(path, "wb", compresslevel=1) if str(path).endswith(".gz") else open(path, "wb") as f:
        for start in range(0, num_lines, CHUNK_LINES):
            f.write(table.render(rng, min(CHUNK_LINES, num_lines - start), signal_feature))


class _TokenTable:
    """Every token a line can hold, rendered once: labels, counts, and each feature's values."""

    def __init__(self, rng: np.random.Generator, vocab_sizes: list[int]):
        tokens = [b"0\t", b"1\t", b"\t"] + [b"%d\t" % k for k in range(-3, MAX_COUNT)]
        self.empty, self.count0 = 2, 3 + 3  # token ids of "" and of "0"
        self.cat_first = []
        for j, size in enumerate(vocab_sizes):
            end = b"\n" if j == NUM_CAT - 1 else b"\t"
            self.cat_first.append(len(tokens))
            tokens += [b"%08x" % v + end for v in rng.integers(0, 2**32, size, dtype=np.uint64)]
        self.missing_last = len(tokens)
        tokens.append(b"\n")
        self.vocab_sizes = vocab_sizes
        self.bytes = np.frombuffer(b"".join(tokens), np.uint8)
        self.length = np.array([len(t) for t in tokens], np.int64)
        self.offset = np.r_[0, np.cumsum(self.length)[:-1]]

    def render(self, rng: np.random.Generator, n: int, signal_feature: int | None) -> bytes:
        ids = np.empty((n, 1 + NUM_INT + NUM_CAT), np.int64)
        counts = np.minimum(rng.geometric(0.05, (n, NUM_INT)) - 1, MAX_COUNT - 1)
        counts = np.where(rng.random((n, NUM_INT)) < 0.02, -rng.integers(1, 4, (n, NUM_INT)), counts)
        ids[:, 1 : 1 + NUM_INT] = np.where(rng.random((n, NUM_INT)) < 0.2, self.empty, self.count0 + counts)
        ranks = np.empty((n, NUM_CAT), np.int64)
        for j, size in enumerate(self.vocab_sizes):
            ranks[:, j] = np.exp(rng.random(n) * np.log(size)).astype(np.int64) - 1  # P(rank r) ~ 1 / (r + 1)
            missing = rng.random(n) < 0.05
            empty = self.missing_last if j == NUM_CAT - 1 else self.empty
            ids[:, 1 + NUM_INT + j] = np.where(missing, empty, self.cat_first[j] + ranks[:, j])
        if signal_feature is None:
            click = rng.random(n) < 0.25
        else:
            popular = ranks[:, signal_feature] < self.vocab_sizes[signal_feature] // 2
            click = rng.random(n) < np.where(popular, 0.8, 0.1)
        ids[:, 0] = click
        return self._gather(ids.ravel())

    def _gather(self, token_ids: np.ndarray) -> bytes:
        """The tokens' bytes, concatenated: one ragged gather."""
        lengths = self.length[token_ids]
        out_start = np.cumsum(lengths) - lengths
        source = np.repeat(self.offset[token_ids] - out_start, lengths) + np.arange(lengths.sum())
        return self.bytes[source].tobytes()
