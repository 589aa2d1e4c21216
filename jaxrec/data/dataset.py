"""One call from a data config to split, featurised interactions: read -> clean -> split."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np

from jaxrec.config import DataConfig
from jaxrec.data import features, preprocess, readers, splits, synthetic
from jaxrec.data.types import Features, Field, Interactions, RawData, Schema, Split

log = logging.getLogger("jaxrec.data")

# Users and items with default preprocessing, so a plan needs no data: ml-100k measured here,
# the others as GroupLens publishes them (every user and item has at least one rating).
KNOWN_SHAPES = {"ml100k": (943, 1682), "ml1m": (6040, 3706), "ml20m": (138493, 26744), "ml25m": (162541, 59047)}
FETCH_NAMES = {
    "ml100k": "ml-100k",
    "ml1m": "ml-1m",
    "ml20m": "ml-20m",
    "ml25m": "ml-25m",
    "ml_latest_small": "ml-latest-small",
}


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    interactions: Interactions
    split: Split
    user_features: Features
    item_features: Features
    drop_counts: dict[str, int]

    @property
    def num_users(self) -> int:
        return self.interactions.num_users

    @property
    def num_items(self) -> int:
        return self.interactions.num_items

    def summary(self) -> dict:
        """The data section of results.json."""
        return {
            "num_users": self.num_users,
            "num_items": self.num_items,
            "num_interactions": len(self.interactions),
            "drop_counts": self.drop_counts,
        }

    @property
    def schema(self) -> Schema:
        train = self.split.train
        return Schema(
            self.num_users,
            self.num_items,
            _fields(self.user_features),
            _fields(self.item_features),
            mean_rating=float(np.mean(train.rating)) if len(train) else 0.0,
        )


def _fields(features: Features) -> dict[str, Field]:
    return {
        name: Field(features.vocab[name], 1 if col.ndim == 1 else col.shape[1])
        for name, col in features.columns.items()
    }


def read_raw(cfg: DataConfig) -> RawData:
    if cfg.name == "synthetic":
        return synthetic.generate_synthetic(
            cfg.num_users, cfg.num_items, cfg.num_interactions, cfg.seed, zipf_a=cfg.zipf_a
        )
    if cfg.name == "csv":
        return readers.read_interactions(
            Path(cfg.path),
            sep=cfg.sep,
            user_col=cfg.user_col,
            item_col=cfg.item_col,
            rating_col=cfg.rating_col,
            timestamp_col=cfg.timestamp_col,
        )
    from jaxrec.data.fetch import ensure_dataset

    return readers.read_dataset(cfg.name, ensure_dataset(FETCH_NAMES[cfg.name]))


def split_interactions(inter: Interactions, cfg: DataConfig) -> Split:
    if cfg.split == "leave_one_out":
        return splits.leave_one_out(inter)
    if cfg.split == "random":
        return splits.random_split(inter, cfg.valid_ratio, cfg.test_ratio, cfg.split_seed)
    if cfg.split == "kfold":
        return splits.kfold_split(inter, cfg.num_folds, cfg.fold, cfg.valid_ratio, cfg.split_seed)
    return splits.temporal_split(inter, cfg.valid_ratio, cfg.test_ratio)


# The last data set loaded and its key: the jobs of a Hydra multirun run one after another in one
# process (basic launcher), and a sweep over model or optimizer keys reads the same data every job.
_last_loaded: tuple[str, object] | None = None


def _cache_key(cfg: DataConfig) -> str:
    """The data config as JSON; a file it names adds its size and mtime, so an edited file reloads."""
    fields = dataclasses.asdict(cfg)
    path = fields.get("path")
    if path and Path(path).exists():
        stat = Path(path).stat()
        fields["path_stat"] = [stat.st_size, stat.st_mtime_ns]
    return json.dumps([type(cfg).__name__, fields], sort_keys=True, default=str)


def load_dataset(cfg: DataConfig):
    """The Dataset of interactions, or for CTR data sets (criteo_synthetic, criteo) a CtrDataset.
    The same data config twice in a row returns the same object (treat it as read-only)."""
    global _last_loaded
    key = _cache_key(cfg)
    if _last_loaded is not None and _last_loaded[0] == key:
        log.info("%s: reusing the data set loaded by the previous job", cfg.name)
        return _last_loaded[1]
    _last_loaded = None  # let the previous data set go before the next one loads
    dataset = _read_dataset(cfg)
    _last_loaded = (key, dataset)
    return dataset


def _read_dataset(cfg: DataConfig):
    if cfg.name == "criteo_synthetic":
        from jaxrec.data.ctr import load_ctr_dataset

        return load_ctr_dataset(cfg)
    if cfg.name == "criteo":
        from jaxrec.data.criteo.shards import load_criteo_dataset

        return load_criteo_dataset(cfg)
    raw = read_raw(cfg)
    inter, drop_counts = preprocess.preprocess(raw, min_rating=cfg.min_rating, k_core=cfg.k_core, strict=cfg.strict)
    split = split_interactions(inter, cfg)
    if cfg.cold_users:
        split = splits.make_cold_users(split, cfg.cold_users, cfg.cold_max_train, cfg.split_seed)
    log.info(
        "%s: %d users, %d items, %d interactions (train %d, valid %d, test %d)",
        cfg.name,
        inter.num_users,
        inter.num_items,
        len(inter),
        len(split.train),
        len(split.valid),
        len(split.test),
    )
    return Dataset(
        name=cfg.name,
        interactions=inter,
        split=split,
        user_features=features.user_features(raw.users, inter.user_tokens),
        item_features=features.item_features(raw.items, inter.item_tokens),
        drop_counts=drop_counts,
    )


def data_schema(cfg: DataConfig, side_features: bool = False) -> Schema:
    """Users and items from config or data set metadata, without reading any data; with
    side_features, also the user and item side-feature fields that a model sizing tables from
    them needs (this reads or generates the side tables: see side_feature_fields)."""
    schema = _id_schema(cfg)
    if not side_features or schema.example_fields:
        return schema
    user_fields, item_fields = side_feature_fields(cfg)
    return dataclasses.replace(schema, user_fields=user_fields, item_fields=item_fields)


def side_feature_fields(cfg: DataConfig) -> tuple[dict[str, Field], dict[str, Field]]:
    """The user and item fields of Dataset.schema, from the side tables (synthetic ones are
    generated without interactions; a MovieLens set is read whole, as its readers return it,
    and fetched first if not cached).
    Vocabularies are built over the whole side table, as in training, so they are exact; a
    multi-valued field's width is the widest entity in the table, at least training's (which
    counts only entities that survive preprocessing)."""
    if cfg.name == "synthetic":
        users, items = synthetic.generate_side_tables(cfg.num_users, cfg.num_items, cfg.seed)
    else:
        raw = read_raw(cfg)
        users, items = raw.users, raw.items
    return (
        _fields(features.user_features(users, _tokens(users))),
        _fields(features.item_features(items, _tokens(items))),
    )


def _tokens(side_table) -> np.ndarray:
    """Every entity of a side table (None: no side table)."""
    return np.asarray([] if side_table is None else side_table.index.astype(str), dtype=str)


def _id_schema(cfg: DataConfig) -> Schema:
    if cfg.name == "synthetic":
        return Schema(cfg.num_users, cfg.num_items)
    if cfg.name == "criteo_synthetic":
        from jaxrec.data.ctr import ctr_schema, vocab_sizes_of

        return ctr_schema(vocab_sizes_of(cfg), cfg.num_dense)
    if cfg.name == "criteo":
        from jaxrec.data.criteo.shards import read_metadata
        from jaxrec.data.ctr import ctr_schema

        metadata = read_metadata(cfg.path)
        return ctr_schema(metadata["vocab_sizes"], metadata["num_dense"])
    if cfg.name in KNOWN_SHAPES and cfg.k_core == 0 and cfg.min_rating is None:
        return Schema(*KNOWN_SHAPES[cfg.name])
    from jaxrec.errors import JaxrecError

    raise JaxrecError(
        f"data={cfg.name} has no shape metadata for planning (filters change it); plan with "
        "data=synthetic data.num_users=... data.num_items=... of the same size"
    )
