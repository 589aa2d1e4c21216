"""data=criteo: the shards of `python -m jaxrec.data prepare criteo`, memory-mapped, and their shuffle.

A split is a list of shards (raw arrays written by prepare.py); a batch gathers its rows from
the memory maps, so a process holds only the pages it touches and memory does not grow with
the data set. Planning reads metadata.json only.

The training order is a block shuffle, so no permutation of the whole split is ever held: the
split is cut into blocks of `block_rows` consecutive rows, each epoch visits the blocks in a
seeded order, and the rows of each window of `window_blocks` consecutive blocks (of that order)
are permuted together. Memory: one int64 per block for the block order and one per row of a
window (cached for the last two windows). A row therefore meets rows from window_blocks random
places of the data in its batch, and reads stay within a window's few MB of each file.
Position (epoch, start, stop) -> rows is a pure function of the seed, so any process can compute
any slice of any batch, and resuming from a step needs nothing but the step.

Legend: B batch, F dense features (13), S categorical features (26).
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import numpy as np

from jaxrec.data.ctr import CtrDataset
from jaxrec.errors import JaxrecError

log = logging.getLogger("jaxrec.data")


def read_metadata(path: str | None) -> dict:
    """metadata.json of a prepared folder, with one clear line when it is missing."""
    if not path:
        raise JaxrecError(
            "config key data.path is required when data=criteo: the --out folder of "
            "`python -m jaxrec.data prepare criteo FILES --out DIR`"
        )
    meta_path = Path(path) / "metadata.json"
    if not meta_path.is_file():
        raise JaxrecError(
            f"data.path={path}: no metadata.json; prepare the logs first with `python -m jaxrec.data "
            f"prepare criteo FILES --out {path}` (rerunning it finishes an interrupted one)"
        )
    try:
        metadata = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        raise JaxrecError(f"{meta_path} cannot be read ({err}); re-run prepare with --out {path}") from None
    if not isinstance(metadata, dict) or metadata.get("format") != "jaxrec-criteo-shards-1":
        raise JaxrecError(f"{meta_path} is not the metadata of `python -m jaxrec.data prepare criteo`")
    missing = [key for key in METADATA_KEYS if key not in metadata]
    if missing:
        raise JaxrecError(f"{meta_path} lacks {', '.join(missing)}; re-run prepare with --out {path}")
    return metadata


METADATA_KEYS = ("vocab_sizes", "num_dense", "num_sparse", "num_examples", "splits", "columns", "shard_path")


def check_shards(folder: Path, metadata: dict) -> None:
    """Every shard file metadata.json lists is present with the size its row count implies, so
    a missing or truncated shard is one line here and not an mmap error inside the data loader."""
    try:
        _check_shard_sizes(folder, metadata)
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise JaxrecError(
            f"{folder / 'metadata.json'} is damaged ({type(err).__name__}: {err}); re-run prepare with --out {folder}"
        ) from None


def _check_shard_sizes(folder: Path, metadata: dict) -> None:
    for split in ("train", "valid", "test"):
        info = metadata["splits"][split]
        for shard in info["shards"]:
            for column in ("label", "dense", "sparse"):
                spec = metadata["columns"][column]
                path = folder / metadata["shard_path"].format(split=split, piece=shard["piece"], column=column)
                expected = shard["rows"] * np.dtype(spec["dtype"]).itemsize * int(np.prod(spec["shape"]))
                size = path.stat().st_size if path.is_file() else None
                if size != expected:
                    found = "is missing" if size is None else f"has {size} bytes"
                    raise JaxrecError(
                        f"{path} {found}; metadata.json says {expected} ({shard['rows']} rows): the shard is "
                        f"damaged or cut short; re-run `python -m jaxrec.data prepare criteo ... --out {folder}` "
                        "with the same inputs and options (it encodes such pieces again)"
                    )


class BlockShuffle:
    """order(epoch, start, stop) -> int64 [stop - start]: rows at those positions of the epoch."""

    def __init__(self, num_rows: int, block_rows: int, window_blocks: int, seed: int):
        if block_rows < 1 or window_blocks < 1:
            raise JaxrecError(
                f"config keys data.shuffle_block_rows={block_rows}, data.shuffle_window_blocks="
                f"{window_blocks}: both must be >= 1"
            )
        self.num_rows, self.block_rows, self.window_blocks, self.seed = num_rows, block_rows, window_blocks, seed
        self.num_blocks = -(-num_rows // block_rows)

    def __call__(self, epoch: int, start: int, stop: int) -> np.ndarray:
        window_starts = self._window_starts(epoch)
        first, last = np.searchsorted(window_starts, [start, stop - 1], side="right") - 1
        parts = [
            self._window_rows(epoch, w)[max(start - window_starts[w], 0) : stop - window_starts[w]]
            for w in range(first, last + 1)
        ]  # slices only: a window is never copied
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    @functools.lru_cache(maxsize=2)
    def _block_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_blocks)

    @functools.lru_cache(maxsize=2)
    def _window_starts(self, epoch: int) -> np.ndarray:
        """int64 [windows + 1]: the first position of each window in the epoch, then num_rows."""
        order = self._block_order(epoch)
        sizes = np.minimum(self.block_rows, self.num_rows - order * self.block_rows)
        starts = np.r_[0, np.cumsum(sizes)][:: self.window_blocks]
        return np.r_[starts, self.num_rows] if self.num_blocks % self.window_blocks else starts

    @functools.lru_cache(maxsize=2)
    def _window_rows(self, epoch: int, window: int) -> np.ndarray:
        blocks = self._block_order(epoch)[window * self.window_blocks :][: self.window_blocks]
        rows = np.concatenate(
            [np.arange(b * self.block_rows, min((b + 1) * self.block_rows, self.num_rows)) for b in blocks]
        )
        return np.random.default_rng([self.seed, epoch, window]).permutation(rows)


class PreparedPart:
    """One split of a prepared folder: its shards as memory maps, read a batch of rows at a time."""

    def __init__(self, folder: Path, metadata: dict, split: str, block_rows: int, window_blocks: int):
        self.folder, self.metadata = folder, metadata
        self.shards = [s for s in metadata["splits"][split]["shards"] if s["rows"]]
        self.split, self.block_rows, self.window_blocks = split, block_rows, window_blocks
        self.offsets = np.r_[0, np.cumsum([s["rows"] for s in self.shards])]
        self.positives = metadata["splits"][split]["positives"]
        self.num_dense, self.num_sparse = metadata["num_dense"], metadata["num_sparse"]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @functools.lru_cache(maxsize=None)
    def _column(self, shard: int, column: str) -> np.memmap:
        spec = self.metadata["columns"][column]
        path = self.folder / self.metadata["shard_path"].format(
            split=self.split, piece=self.shards[shard]["piece"], column=column
        )
        return np.memmap(path, np.dtype(spec["dtype"]), "r", shape=(self.shards[shard]["rows"], *spec["shape"]))

    def rows(self, index_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(dense float32 [B, F], ids int32 [B, S], label float32 [B]) of rows `index_b`.

        Rows are read in ascending order, one contiguous run of the sorted indices per shard, so
        each memory map is walked forwards."""
        index_b = np.asarray(index_b, np.int64)
        order = np.argsort(index_b)
        sorted_b = index_b[order]
        bounds = np.searchsorted(sorted_b, self.offsets)
        dense = np.empty((len(index_b), self.num_dense), np.float32)
        sparse = np.empty((len(index_b), self.num_sparse), np.int32)
        label = np.empty(len(index_b), np.float32)
        for shard in np.flatnonzero(bounds[1:] > bounds[:-1]):
            lo, hi = bounds[shard], bounds[shard + 1]
            rows, local = order[lo:hi], sorted_b[lo:hi] - self.offsets[shard]
            dense[rows] = self._column(shard, "dense")[local]
            sparse[rows] = self._column(shard, "sparse")[local]
            label[rows] = self._column(shard, "label")[local]
        return dense, sparse, label

    @property
    def label(self) -> np.ndarray:
        """float32 [n]: every label of the split (evaluation needs them all)."""
        parts = [np.asarray(self._column(s, "label"), np.float32) for s in range(len(self.shards))]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def order(self, seed: int) -> BlockShuffle:
        return BlockShuffle(len(self), self.block_rows, self.window_blocks, seed)


class CriteoDataset(CtrDataset):
    """A CtrDataset of PreparedParts, summarised from its metadata."""

    def summary(self) -> dict:
        meta = self.train.metadata
        splits = meta["splits"]
        return {
            "path": str(self.train.folder),
            "num_examples": meta["num_examples"],
            "num_train": splits["train"]["rows"],
            "num_valid": splits["valid"]["rows"],
            "num_test": splits["test"]["rows"],
            "num_dense": meta["num_dense"],
            "vocab_sizes": meta["vocab_sizes"],
            "positive_rate": splits["train"]["positives"] / max(splits["train"]["rows"], 1),
            "skipped_lines": meta["skipped_lines"],
            "split": meta["split"],
            "options": meta["options"],
            "inputs": [{k: f[k] for k in ("path", "size", "sha256")} for f in meta["inputs"]],
        }


def load_criteo_dataset(cfg) -> CriteoDataset:
    """data=criteo: the prepared folder data.path as a CtrDataset of memory-mapped parts."""
    metadata = read_metadata(cfg.path)
    folder = Path(cfg.path)
    check_shards(folder, metadata)
    parts = {
        s: PreparedPart(folder, metadata, s, cfg.shuffle_block_rows, cfg.shuffle_window_blocks)
        for s in ("train", "valid", "test")
    }
    log.info(
        "criteo %s: %d examples (train %d, valid %d, test %d), vocabularies %d..%d",
        folder,
        metadata["num_examples"],
        len(parts["train"]),
        len(parts["valid"]),
        len(parts["test"]),
        min(metadata["vocab_sizes"]),
        max(metadata["vocab_sizes"]),
    )
    return CriteoDataset(
        "criteo", tuple(metadata["vocab_sizes"]), parts["train"], parts["valid"], parts["test"], oracle_logit=None
    )
