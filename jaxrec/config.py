"""Typed run configuration, registered with Hydra's ConfigStore.

Hydra composes configs by mutating them, and OmegaConf refuses frozen dataclasses while it
does, so these are plain dataclasses; library code treats them as read-only. Every field has
a comment; an unknown key or a value of the wrong type fails at composition with Hydra's
message naming the key.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.experimental.callback import Callback
from omegaconf import MISSING, DictConfig, OmegaConf

from jaxrec.errors import JaxrecError

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
SPLITS = ("leave_one_out", "random", "temporal", "kfold")
LOSSES = ("bce", "bpr", "mse", "softmax")
EMBEDDING_DTYPES = ("float32", "bfloat16", "float16")
OPTIMIZERS = ("adam", "adagrad", "sgd")
LR_SCALING = ("none", "linear", "sqrt")
TABLE_OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad", "lazy_adam")
STRATEGIES = ("none", "data_parallel", "table_wise", "table_row_wise", "row_wise", "column_wise", "auto")


@dataclasses.dataclass
class DataConfig:
    """What every data set has; each `data` option's schema below adds its own keys."""

    name: str = MISSING  # the option: one of DATASETS


@dataclasses.dataclass
class InteractionDataConfig(DataConfig):
    """User-item interaction logs: cleaning, splitting and negative sampling (conf/data_shared)."""

    min_rating: float | None = None  # keep rating >= this (explicit -> implicit feedback)
    k_core: int = 0  # iterate until every user and item has >= k interactions (0: off)
    strict: bool = False  # fail on the first invalid row instead of dropping and counting it
    split: str = "leave_one_out"  # one of SPLITS
    valid_ratio: float = 0.1  # split=random|temporal|kfold: validation share (kfold: of the non-test part)
    test_ratio: float = 0.1  # split=random|temporal: share of each user's interactions held out as test
    split_seed: int = 0  # split=random: seed of the per-user shuffle; split=kfold: of the fold assignment
    num_folds: int = 5  # split=kfold: folds of the rating-level cross-validation
    fold: int = 0  # split=kfold: the fold held out as test, 0 .. num_folds - 1
    num_negatives: int = 4  # uniform negatives sampled per positive (bce, bpr, softmax)
    cold_users: float = 0.0  # share of users cut to their first cold_max_train training interactions
    cold_max_train: int = 5  # users with at most this many training interactions form the "cold/" metrics


@dataclasses.dataclass
class MovieLensConfig(InteractionDataConfig):
    """A GroupLens MovieLens release, fetched and cached on first use (data=ml100k, ml1m, ...)."""

    name: str = "ml100k"


@dataclasses.dataclass
class CsvConfig(InteractionDataConfig):
    name: str = "csv"
    path: str | None = None  # a CSV, TSV or Parquet file of interactions (required)
    sep: str | None = None  # field separator; None infers it from the extension
    user_col: str = "user_id"  # column holding user tokens
    item_col: str = "item_id"  # column holding item tokens
    rating_col: str | None = None  # optional rating column
    timestamp_col: str | None = None  # optional timestamp column


@dataclasses.dataclass
class SyntheticConfig(InteractionDataConfig):
    name: str = "synthetic"
    num_users: int = 1000  # users
    num_items: int = 500  # items
    num_interactions: int = 20000  # interactions drawn before dedup
    seed: int = 0  # generator seed
    zipf_a: float = 1.1  # popularity skew (P(rank r) ~ r^-a); lower is flatter


@dataclasses.dataclass
class CriteoSyntheticConfig(DataConfig):
    name: str = "criteo_synthetic"
    num_examples: int = 100_000  # examples before the valid/test split
    num_dense: int = 13  # dense (count) features
    num_sparse: int = 26  # categorical features, one embedding table each
    vocab_size: int = 10_000  # ids per categorical feature
    vocab_sizes: list[int] = dataclasses.field(default_factory=list)  # one per feature (overrides vocab_size)
    zipf_a: float = 1.1  # popularity skew of the ids (P(rank r) ~ r^-a)
    seed: int = 0  # generator seed
    valid_ratio: float = 0.1  # share of validation examples
    test_ratio: float = 0.1  # share of test examples


@dataclasses.dataclass
class CriteoConfig(DataConfig):
    name: str = "criteo"
    path: str | None = None  # the folder written by `python -m jaxrec.data prepare criteo` (required)
    shuffle_block_rows: int = 65536  # rows of one block of the block shuffle (consecutive on disk)
    shuffle_window_blocks: int = 16  # blocks whose rows are permuted together (the shuffle window)


DATA_CONFIGS = {
    "ml100k": MovieLensConfig,
    "ml1m": MovieLensConfig,
    "ml20m": MovieLensConfig,
    "ml25m": MovieLensConfig,
    "ml_latest_small": MovieLensConfig,
    "csv": CsvConfig,
    "synthetic": SyntheticConfig,
    "criteo_synthetic": CriteoSyntheticConfig,
    "criteo": CriteoConfig,
}
CTR_DATA = (CriteoSyntheticConfig, CriteoConfig)
DATASETS = tuple(DATA_CONFIGS)


@dataclasses.dataclass
class ModelConfig:
    """What every model has; each `model` option's schema below adds its own keys."""

    name: str = MISSING  # the option: one of MODELS
    dim: int = 64  # embedding width
    loss: str = "bce"  # one of LOSSES
    init_std: float = 0.1  # std of the normal initialiser of embedding rows
    l2: float = 0.01  # L2 penalty on the embedding rows a batch touches (per example)
    embedding_dtype: str = "float32"  # storage of table rows: one of EMBEDDING_DTYPES (slots stay float32)


@dataclasses.dataclass
class MFConfig(ModelConfig):
    name: str = "mf"
    use_bias: bool = True  # user, item and global biases
    bias_init: float | None = None  # start of the global bias; None: the mean training rating under loss mse, else 0


@dataclasses.dataclass
class SVDppConfig(MFConfig):
    name: str = "svdpp"
    loss: str = "mse"
    l2: float = 0.02
    max_history: int = 64  # the user's most recent training items in the implicit bag N(u)


@dataclasses.dataclass
class TwoTowerConfig(MFConfig):
    name: str = "two_tower"
    hidden: list[int] = dataclasses.field(default_factory=lambda: [128])  # MLP widths of each tower
    dropout: float = 0.0  # dropout rate of the towers while training
    negatives: str = "sampled"  # "sampled" (data.num_negatives uniform) or "in_batch" (softmax)
    logq_correction: bool = True  # in_batch: subtract log popularity of each in-batch candidate


@dataclasses.dataclass
class NeuMFConfig(ModelConfig):
    name: str = "neumf"
    dim: int = 64
    hidden: list[int] = dataclasses.field(default_factory=lambda: [64, 32, 16])  # MLP branch widths
    dropout: float = 0.0  # dropout rate of the MLP branch while training
    init_from: str | None = None  # an MF run dir whose tables initialise the GMF branch (same model.dim)


@dataclasses.dataclass
class DCNv2Config(ModelConfig):
    name: str = "dcn_v2"
    dim: int = 16
    init_std: float = 0.05
    l2: float = 0.0
    bottom_mlp: list[int] = dataclasses.field(default_factory=lambda: [64, 16])  # dense-feature MLP
    cross_layers: int = 3  # layers of the full-rank cross network
    hidden: list[int] = dataclasses.field(default_factory=lambda: [128, 64])  # top MLP (a width-1 layer is added)
    dropout: float = 0.0  # dropout rate of the MLPs while training


@dataclasses.dataclass
class SASRecConfig(ModelConfig):
    name: str = "sasrec"
    loss: str = "softmax"
    l2: float = 0.0
    dropout: float = 0.2  # dropout rate of attention blocks while training
    max_len: int = 50  # items per sequence (older ones are cut, shorter padded)
    num_layers: int = 2  # Transformer blocks
    num_heads: int = 2  # attention heads (model.dim must be a multiple)


@dataclasses.dataclass
class BERT4RecConfig(SASRecConfig):
    name: str = "bert4rec"
    mask_prob: float = 0.2  # share of positions masked per training sequence


MODEL_CONFIGS = {
    "mf": MFConfig,
    "two_tower": TwoTowerConfig,
    "neumf": NeuMFConfig,
    "dcn_v2": DCNv2Config,
    "sasrec": SASRecConfig,
    "bert4rec": BERT4RecConfig,
    "svdpp": SVDppConfig,
}
CTR_MODELS = ("dcn_v2",)
MODELS = tuple(MODEL_CONFIGS)


@dataclasses.dataclass
class OptimizerConfig:
    name: str = "adam"  # optax optimiser for dense parameters: one of OPTIMIZERS
    lr: float = 3e-3  # learning rate of dense parameters and (by default) tables
    table_optimizer: str | None = None  # sparse row optimiser; None: lazy_adam/adagrad/sgd to match name
    table_lr: float | None = None  # learning rate of tables; None: lr
    sparse: bool = True  # False trains tables with dense optax (a baseline: O(rows) per step)
    lr_scaling: str = "none"  # scale lr (and table_lr) with train.batch_size: none | linear | sqrt
    base_batch_size: int = 256  # the batch size at which lr is the configured value


@dataclasses.dataclass
class MeshConfig:
    data: int = 1  # devices along the data axis; -1: all remaining devices
    model: int = 1  # devices along the model axis (tables split here); -1: all remaining


@dataclasses.dataclass
class ShardingConfig:
    strategy: str = "none"  # one of STRATEGIES, applied to every table unless `tables` says otherwise
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    memory_budget_gb: float = 16.0  # per-device memory the planner may use
    tables: dict[str, str] = dataclasses.field(default_factory=dict)  # per-table strategy overrides
    num_devices: int | None = None  # simulate this many CPU devices (planning, CPU runs); None: real devices
    capacity_factor: float = 1.5  # row exchange: all_to_all bucket size over a balanced share (overflow: more rounds)


@dataclasses.dataclass
class DistributedConfig:
    coordinator_address: str | None = None  # host:port of process 0; None: one process, or detected (SLURM, MPI)
    num_processes: int = 1  # processes in the group (one per host)
    process_id: int = 0  # this process's rank, 0 .. num_processes - 1
    heartbeat_timeout_s: int = 100  # a process silent this long is declared dead and the group stops


@dataclasses.dataclass
class TrainConfig:
    batch_size: int | str = 1024  # global batch; "auto": largest power of two whose plan fits
    epochs: int = 30  # passes over the training interactions
    max_steps: int | None = None  # stop early after this many steps (None: run all epochs)
    seed: int = 0  # parameter init seed
    data_seed: int = 0  # shuffle and negative-sampling seed
    eval_every: int = 1  # evaluate on validation every N epochs (0: only at the end)
    eval_batch_size: int = 256  # users per full-ranking batch
    ks: list[int] = dataclasses.field(default_factory=lambda: [10, 20])  # metric cutoffs
    select_metric: str = "ndcg@10"  # validation metric that picks the best epoch (rmse, mae, logloss: lowest wins)
    sampled_negatives: int = 0  # > 0: also report sampled/ metrics, each target ranked against this many negatives
    ranking_metrics: bool = True  # full-ranking metrics at each evaluation; false: rmse/mae only (loss mse)
    log_every: int = 50  # steps between metrics.jsonl train records
    progress: bool = True  # console progress bar with rate and ETA
    checkpoint_every: int = 500  # steps between checkpoints (0: only at the end); always at the end
    keep_checkpoints: int = 3  # most recent checkpoints kept
    # true: save in the background, holding a host copy of the state while training goes on; false: block
    # the step; null: background on accelerators, blocking on CPU devices (their memory is that host RAM)
    async_checkpoint: bool | None = None
    resume: bool = True  # continue from the latest checkpoint in the run dir, if there is one
    resume_step: int | None = None  # resume from this checkpoint step (None: the newest that verifies)
    on_nonfinite: str = "stop"  # a non-finite loss or gradient: stop (naming step and table) or skip the batch
    distributed: DistributedConfig = dataclasses.field(default_factory=DistributedConfig)  # multi-process runs


@dataclasses.dataclass
class Config:
    data: DataConfig = dataclasses.field(default_factory=MovieLensConfig)  # an option of DATA_CONFIGS
    model: ModelConfig = dataclasses.field(default_factory=MFConfig)  # an option of MODEL_CONFIGS
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    sharding: ShardingConfig = dataclasses.field(default_factory=ShardingConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)


def register_configs() -> None:
    """The root schema (its data and model left to the chosen options) and one schema per option,
    which each option's YAML names first in its defaults list (/schema/model/mf@model, ...)."""
    store = ConfigStore.instance()
    root = OmegaConf.structured(Config)
    root.data, root.model = MISSING, MISSING
    store.store(name="base_config", node=root)
    for name, schema in MODEL_CONFIGS.items():
        store.store(group="schema/model", name=name, node=schema)
    for name, schema in DATA_CONFIGS.items():
        store.store(group="schema/data", name=name, node=schema)


# Every numeric key's allowed values: (test, what the message says is expected). None-able keys are
# only checked when set; a list's elements are checked one by one. Checked before any data loads.
_POSITIVE = (lambda v: v > 0, "a positive number")
_NON_NEGATIVE = (lambda v: v >= 0, "a number >= 0")
_AT_LEAST_0 = (lambda v: v >= 0, "an integer >= 0")
_AT_LEAST_1 = (lambda v: v >= 1, "an integer >= 1")
_SHARE = (lambda v: 0 <= v < 1, "a share in [0, 1)")
_MESH_AXIS = (lambda v: v == -1 or v >= 1, "-1 (all remaining devices) or an integer >= 1")
_ZERO_MEANS = (lambda v: v >= 0, "an integer >= 0 (0: only at the end)")
NUMERIC_RANGES = {
    "data.num_users": _AT_LEAST_1, "data.num_items": _AT_LEAST_1, "data.num_interactions": _AT_LEAST_1,
    "data.zipf_a": _NON_NEGATIVE, "data.num_examples": _AT_LEAST_1, "data.num_dense": _AT_LEAST_0,
    "data.num_sparse": _AT_LEAST_1, "data.vocab_size": _AT_LEAST_1, "data.vocab_sizes": _AT_LEAST_1,
    "data.k_core": _AT_LEAST_0, "data.valid_ratio": _SHARE, "data.test_ratio": _SHARE,
    "data.num_negatives": _AT_LEAST_0, "data.cold_users": (lambda v: 0 <= v <= 1, "a share in [0, 1]"),
    "data.cold_max_train": _AT_LEAST_0, "data.seed": _AT_LEAST_0, "data.split_seed": _AT_LEAST_0,
    "data.shuffle_block_rows": _AT_LEAST_1, "data.shuffle_window_blocks": _AT_LEAST_1,
    "train.seed": _AT_LEAST_0, "train.data_seed": _AT_LEAST_0,
    "model.dim": _AT_LEAST_1, "model.init_std": _NON_NEGATIVE, "model.l2": _NON_NEGATIVE,
    "model.hidden": _AT_LEAST_1, "model.dropout": _SHARE, "model.bottom_mlp": _AT_LEAST_1,
    "model.cross_layers": _AT_LEAST_0, "model.max_len": _AT_LEAST_1, "model.num_layers": _AT_LEAST_1,
    "model.num_heads": _AT_LEAST_1, "model.mask_prob": (lambda v: 0 < v <= 1, "a share in (0, 1]"),
    "model.max_history": _AT_LEAST_1,
    "optimizer.lr": _POSITIVE, "optimizer.table_lr": _POSITIVE, "optimizer.base_batch_size": _AT_LEAST_1,
    "sharding.memory_budget_gb": _POSITIVE, "sharding.num_devices": _AT_LEAST_1,
    "sharding.mesh.data": _MESH_AXIS, "sharding.mesh.model": _MESH_AXIS, "sharding.capacity_factor": _POSITIVE,
    "train.epochs": _AT_LEAST_1, "train.max_steps": _AT_LEAST_1, "train.eval_every": _ZERO_MEANS,
    "train.eval_batch_size": _AT_LEAST_1, "train.ks": _AT_LEAST_1, "train.sampled_negatives": _AT_LEAST_0,
    "train.log_every": _AT_LEAST_1, "train.checkpoint_every": _ZERO_MEANS, "train.resume_step": _AT_LEAST_0,
    "train.keep_checkpoints": (lambda v: v >= 1, "an integer >= 1 (the last checkpoint is what resume and "
                               "export read)"),
    "train.distributed.num_processes": _AT_LEAST_1, "train.distributed.process_id": _AT_LEAST_0,
    "train.distributed.heartbeat_timeout_s": _AT_LEAST_1,
}  # fmt: skip


def _numeric_values(node, prefix: str = ""):
    """(dotted key, value) of every int or float leaf, list elements included, in field order."""
    for field in dataclasses.fields(node):
        key, value = f"{prefix}{field.name}", getattr(node, field.name)
        if dataclasses.is_dataclass(value):
            yield from _numeric_values(value, f"{key}.")
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, (int, float)) and not isinstance(item, bool):
                yield key, item


def check_numeric_ranges(cfg: Config) -> None:
    """Every number finite and inside its key's range (NUMERIC_RANGES), named in one line."""
    for key, value in _numeric_values(cfg):
        if value != value or value in (float("inf"), float("-inf")):
            raise JaxrecError(f"config key {key}={value}: expected a finite number")
        test, expected = NUMERIC_RANGES.get(key, (lambda v: True, ""))
        if not test(value):
            raise JaxrecError(f"config key {key}={value}: expected {expected}")
    split = getattr(cfg.data, "split", None)
    if split in ("random", "temporal") or isinstance(cfg.data, CriteoSyntheticConfig):
        if cfg.data.valid_ratio + cfg.data.test_ratio >= 1:
            raise JaxrecError(
                f"config keys data.valid_ratio={cfg.data.valid_ratio} and data.test_ratio="
                f"{cfg.data.test_ratio} leave no training data: their sum must be below 1"
            )
    samples = isinstance(cfg.data, InteractionDataConfig) and cfg.model.loss != "mse" and not in_batch_negatives(cfg)
    if samples and cfg.data.num_negatives < 1:
        raise JaxrecError(
            f"config key data.num_negatives={cfg.data.num_negatives}: model.loss={cfg.model.loss} "
            "trains against sampled negatives; expected an integer >= 1"
        )
    if not cfg.train.ks:
        raise JaxrecError("config key train.ks is empty: expected at least one metric cutoff")


def _check_choice(key: str, value, choices) -> None:
    if value not in choices:
        raise JaxrecError(f"config key {key}={value!r} is not valid; expected one of {', '.join(choices)}")


def in_batch_negatives(cfg: Config) -> bool:
    """Whether the model scores each example against the batch's other items (no sampling)."""
    return isinstance(cfg.model, TwoTowerConfig) and cfg.model.negatives == "in_batch"


def check_model_fits_data(cfg: Config) -> None:
    """A CTR model needs CTR examples, every other model user-item interactions."""
    ctr_model, ctr_data = cfg.model.name in CTR_MODELS, isinstance(cfg.data, CTR_DATA)
    if ctr_model and not ctr_data:
        raise JaxrecError(
            f"model={cfg.model.name} trains on CTR examples with categorical features; "
            f"data={cfg.data.name} holds user-item interactions "
            "(use data=criteo_synthetic or data=criteo)"
        )
    if ctr_data and not ctr_model:
        interaction_sets = [name for name, schema in DATA_CONFIGS.items() if schema not in CTR_DATA]
        raise JaxrecError(
            f"data={cfg.data.name} holds CTR examples (dense and categorical features, no user-item "
            f"pairs); model={cfg.model.name} needs interactions: use model={CTR_MODELS[0]} or an "
            f"interaction data set ({', '.join(interaction_sets)})"
        )


RANKING_AT_K = ("hr", "ndcg", "recall", "precision", "coverage")


def selectable_metrics(cfg: Config) -> list[str]:
    """The validation metrics the run computes: what train.select_metric may pick (a name it
    does not compute would leave every epoch's value NaN and select the first)."""
    if isinstance(cfg.data, CTR_DATA):
        return ["auc", "logloss", "accuracy"]
    if not cfg.train.ranking_metrics:
        return ["rmse", "mae"]
    ranking = [f"{metric}@{k}" for k in cfg.train.ks for metric in RANKING_AT_K] + ["mrr", "auc"]
    names = ranking + (["rmse", "mae"] if cfg.model.loss == "mse" else [])
    if cfg.train.sampled_negatives:
        names += [f"sampled/{metric}@{k}" for k in cfg.train.ks for metric in ("hr", "ndcg")] + ["sampled/mrr"]
    return names + [f"cold/{name}" for name in ranking]


def _check_csv_columns(data: CsvConfig) -> None:
    """Checks what the file cannot tell: a temporal split needs real timestamps (without a
    timestamp column the rows' file order would stand in for time and the cut would hold out
    whole users of a file sorted by user), and each role names its own column."""
    if not data.path:
        raise JaxrecError("config key data.path is required when data=csv (a CSV, TSV or Parquet file)")
    if data.split == "temporal" and not data.timestamp_col:
        raise JaxrecError(
            "config key data.split=temporal cuts by time, but data.timestamp_col is not set: name the "
            "timestamp column, or use data.split=leave_one_out (file order within each user) or random"
        )
    roles = {"data.user_col": data.user_col, "data.item_col": data.item_col}
    roles |= {"data.rating_col": data.rating_col, "data.timestamp_col": data.timestamp_col}
    named = [(key, column) for key, column in roles.items() if column]
    for index, (key, column) in enumerate(named):
        for other, other_column in named[index + 1 :]:
            if column == other_column:
                raise JaxrecError(f"config keys {key} and {other} both name column {column!r}: each needs its own")


def validate(cfg: Config) -> Config:
    """Checks the values Hydra's types cannot express, with the key and valid choices named."""
    _check_choice("data.name", cfg.data.name, DATASETS)
    _check_choice("model.name", cfg.model.name, MODELS)
    check_numeric_ranges(cfg)
    check_model_fits_data(cfg)
    if isinstance(cfg.data, InteractionDataConfig):
        _check_choice("data.split", cfg.data.split, SPLITS)
        if cfg.data.split == "kfold" and cfg.data.num_folds < 2:
            raise JaxrecError(
                f"config key data.num_folds={cfg.data.num_folds}: k-fold cross-validation needs at least 2 folds"
            )
        if cfg.data.split == "kfold" and not 0 <= cfg.data.fold < cfg.data.num_folds:
            raise JaxrecError(
                f"config key data.fold={cfg.data.fold} is out of range: expected 0 .. "
                f"{cfg.data.num_folds - 1} (data.num_folds={cfg.data.num_folds})"
            )
    _check_choice("model.loss", cfg.model.loss, LOSSES)
    _check_choice("model.embedding_dtype", cfg.model.embedding_dtype, EMBEDDING_DTYPES)
    if isinstance(cfg.model, TwoTowerConfig):
        _check_choice("model.negatives", cfg.model.negatives, ("sampled", "in_batch"))
        if cfg.model.negatives == "in_batch" and cfg.model.loss != "softmax":
            raise JaxrecError("config key model.negatives=in_batch needs model.loss=softmax")
    _check_choice("optimizer.name", cfg.optimizer.name, OPTIMIZERS)
    _check_choice("optimizer.lr_scaling", cfg.optimizer.lr_scaling, LR_SCALING)
    if cfg.optimizer.lr_scaling != "none" and not isinstance(cfg.train.batch_size, int):
        raise JaxrecError("optimizer.lr_scaling needs an integer train.batch_size (not 'auto')")
    if cfg.optimizer.table_optimizer is not None:
        _check_choice("optimizer.table_optimizer", cfg.optimizer.table_optimizer, TABLE_OPTIMIZERS)
    _check_choice("sharding.strategy", cfg.sharding.strategy, STRATEGIES)
    _check_choice("train.on_nonfinite", cfg.train.on_nonfinite, ("stop", "skip"))
    if not cfg.train.ranking_metrics and cfg.model.loss != "mse":
        raise JaxrecError("config key train.ranking_metrics=false leaves only rmse/mae, which need model.loss=mse")
    for table, strategy in cfg.sharding.tables.items():
        _check_choice(f"sharding.tables.{table}", strategy, STRATEGIES[1:-1] + ("none",))
    if isinstance(cfg.data, CsvConfig):
        _check_csv_columns(cfg.data)
    metrics = selectable_metrics(cfg)
    if cfg.train.select_metric not in metrics:
        computed = [name for name in metrics if not name.startswith("cold/")]
        raise JaxrecError(
            f"config key train.select_metric={cfg.train.select_metric!r}: this run's validation computes "
            f"{', '.join(computed)}" + (" (and cold/<metric> on the cold-start slice)" if len(computed) > 3 else "")
        )
    if isinstance(cfg.train.batch_size, str) and cfg.train.batch_size != "auto":
        raise JaxrecError(f"config key train.batch_size={cfg.train.batch_size!r}: expected an integer or 'auto'")
    if isinstance(cfg.train.batch_size, int) and cfg.train.batch_size <= 0:
        raise JaxrecError(f"config key train.batch_size={cfg.train.batch_size}: expected a positive integer")
    return cfg


def to_config(cfg: DictConfig | Config) -> Config:
    """Hydra's DictConfig -> the typed, validated Config that library code sees."""
    if isinstance(cfg, DictConfig):
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            check_bool_overrides(list(HydraConfig.get().overrides.task))
        cfg = OmegaConf.to_object(cfg)
    return validate(cfg)


def compose_conf(overrides: list[str], with_hydra: bool = False) -> DictConfig:
    """conf/ composed as Hydra's command line composes it (inside a running Hydra app, whose config
    dir is conf/, through that app); with_hydra keeps the `hydra` node (sweeper params, ...)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    if GlobalHydra.instance().is_initialized():
        return compose(config_name="config", overrides=overrides, return_hydra_config=with_hydra)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=with_hydra)


def compose_config(overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """conf/ composed with command-line style overrides, typed and validated: how library code,
    runners, benchmarks and tests get a config (the same result as `python -m jaxrec.train`)."""
    from hydra.errors import ConfigCompositionException

    overrides = accept_table_overrides(list(overrides))
    check_bool_overrides(overrides)
    try:
        return to_config(compose_conf(overrides))
    except ConfigCompositionException as err:
        raise JaxrecError(composition_error(err)) from None


def as_override(key: str, value) -> str:
    """key=value in Hydra's override syntax: None as null, booleans lower-case, lists bracketed."""

    def text(v):
        if v is None:
            return "null"
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, (list, tuple)):
            return "[" + ",".join(text(x) for x in v) + "]"
        return str(v)

    return f"{key}={text(value)}"


def check_command_line(argv: list[str]) -> None:
    """Composes a command line's overrides before Hydra does, so a bad key or value fails in one
    line that names the option's keys (Hydra's own message names none). A multirun of the basic
    sweeper composes every job of its grid (command line and hydra.sweeper.params) before the
    first starts. Other sweepers, Hydra's own flags (--cfg, --help, ...) and syntax are left to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if any(arg.startswith("-") and arg not in ("-m", "--multirun") for arg in argv):
        return
    overrides = [arg for arg in argv if not arg.startswith("-") and not arg.lstrip("+~").startswith("hydra")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # Hydra reports its own syntax errors
        return
    if not any(arg in ("-m", "--multirun") for arg in argv):
        if not any(override.is_sweep_override() for override in parsed):
            compose_config(overrides)
        return
    jobs = sweep_jobs(argv, overrides, parsed)
    swept = [i for i in range(len(jobs[0]) if jobs else 0) if len({job[i] for job in jobs}) > 1]
    for number, job in enumerate(jobs):
        try:
            compose_config(job)
        except JaxrecError as err:
            values = " ".join(job[i] for i in swept)
            raise JaxrecError(f"sweep job {number} ({values}): {err}; no job was started") from None


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def sweep_jobs(argv: list[str], overrides: list[str], parsed: list) -> list[list[str]]:
    """The basic sweeper's jobs (each a list of overrides), as it builds them: the config's
    hydra.sweeper.params first, then the command line; [] under another sweeper."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import ConfigCompositionException

    fixed = [str(o.input_line) for o in parsed if not o.is_sweep_override()]
    sweeper_args = [arg for arg in argv if arg.lstrip("+~").startswith(("hydra/sweeper", "hydra.sweeper"))]
    try:
        sweeper = compose_conf(fixed + sweeper_args, with_hydra=True).hydra.sweeper
    except ConfigCompositionException as err:
        raise JaxrecError(composition_error(err)) from None
    if sweeper.get("_target_") != BASIC_SWEEPER:
        return []
    params = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
    try:
        grid = OverridesParser.create().parse_overrides(params + overrides)
        jobs = BasicSweeper.split_arguments(grid, None)[0]
    except Exception:  # a sweep kind the basic sweeper refuses: Hydra says so
        return []
    return jobs


def composition_error(err: Exception) -> str:
    """Hydra's composition error in one line; an unknown key also lists the option's keys."""
    cause = err.__cause__ or err
    key = getattr(cause, "full_key", None)
    schema = getattr(cause, "object_type", None)
    if key and dataclasses.is_dataclass(schema) and "not in" in str(cause):
        group = key.rpartition(".")[0]
        keys = ", ".join(f.name for f in dataclasses.fields(schema))
        return f"config key {key} does not exist in {schema.__name__} ({group}); its keys: {keys}"
    if key and getattr(cause, "msg", None):  # a value of the wrong type: say which and why
        return f"config key {key}: {cause.msg.splitlines()[0]}"
    return " ".join(str(err).split()).split(" Config search path:")[0]


def config_from_dict(saved: dict) -> Config:
    """A config saved as a dict (results.json, checkpoint meta) as the typed Config, each option
    read with its own schema. Keys an option's schema lacks are dropped: runs saved before the
    per-option schemas carried every model's and data set's keys."""
    root = OmegaConf.structured(Config)
    for group, schemas in (("data", DATA_CONFIGS), ("model", MODEL_CONFIGS)):
        schema = schemas[saved[group]["name"]]
        names = {f.name for f in dataclasses.fields(schema)}
        root[group] = OmegaConf.merge(
            OmegaConf.structured(schema), {k: v for k, v in saved[group].items() if k in names}
        )
    rest = {k: v for k, v in saved.items() if k not in ("data", "model")}
    return validate(OmegaConf.to_object(OmegaConf.merge(root, rest)))


def _field_type(key: str) -> str | None:
    """The annotation of a dotted config key (e.g. 'bool') in any option's schema, None if it
    names no field."""
    group, _, rest = key.partition(".")
    roots = {"model": MODEL_CONFIGS.values(), "data": DATA_CONFIGS.values()}.get(group)
    if roots is None:
        roots, rest = [Config], key
    for root in roots:
        node, annotation = root, None
        for part in rest.split("."):
            fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
            if part not in fields:
                annotation = None
                break
            annotation = fields[part].type
            node = globals().get(annotation) if isinstance(annotation, str) else annotation
        if annotation is not None:
            return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", None)
    return None


def check_bool_overrides(overrides: list[str]) -> None:
    """A boolean key set on the command line takes true or false only: OmegaConf would turn
    'no', 'off', 0 or 2 into a bool silently (a sweep 'true,false' lists each)."""
    for override in overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        kind = _field_type(key)
        if sep and kind in ("bool", "bool | None"):
            allowed = ("true", "false") if kind == "bool" else ("true", "false", "null")
            if any(part.strip().lower() not in allowed for part in value.split(",")):
                expected = "true or false" if kind == "bool" else "true, false or null"
                raise JaxrecError(f"config key {key}={value!r}: expected {expected}")


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def scaled_lr(cfg: Config, lr: float) -> float:
    """lr for train.batch_size under the linear or square-root scaling rule."""
    ratio = int(cfg.train.batch_size) / cfg.optimizer.base_batch_size if cfg.optimizer.lr_scaling != "none" else 1.0
    return lr * (ratio if cfg.optimizer.lr_scaling == "linear" else ratio**0.5)


def table_optimizer_name(cfg: OptimizerConfig) -> str:
    """The sparse row optimiser matching the dense one unless chosen explicitly."""
    if cfg.table_optimizer is not None:
        return cfg.table_optimizer
    return {"adam": "lazy_adam", "adagrad": "adagrad", "sgd": "sgd"}[cfg.name]


def accept_table_overrides(argv: list[str] = sys.argv) -> list[str]:
    """`sharding.tables.<table>=<strategy>` (the README's spelling) as Hydra's `++` form, in place
    in `argv` (default: this process's command line, before Hydra reads it): the tables dict
    starts empty, and Hydra only adds a key to a struct config when told to."""
    argv[:] = [f"++{arg}" if arg.startswith("sharding.tables.") and "=" in arg else arg for arg in argv]
    return argv


class RunDirCheck(Callback):
    """Hydra callback (conf/config.yaml): a run or sweep directory that cannot be written, or that
    holds something of the wrong kind where Hydra writes its own files (.hydra/, the job's log),
    fails in one line before anything runs, instead of in a traceback from Hydra's own mkdir."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        run_dir = Path(str(config.hydra.run.dir))
        check_writable_dir(run_dir, "hydra.run.dir")
        hydra_files = (f"{config.hydra.job.name}.log",) if config.hydra.job.get("name") else ()
        hydra_folders = (str(config.hydra.output_subdir),) if config.hydra.output_subdir else ()
        try:
            check_run_dir_entries(run_dir, hydra_files, hydra_folders)
        except JaxrecError as err:
            _exit_in_one_line(err, str(err))

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        check_writable_dir(Path(str(config.hydra.sweep.dir)), "hydra.sweep.dir")


def check_writable_dir(path: Path, key: str) -> None:
    """Create `path` and write a probe file in it, or exit 2 with one line (cli_errors' format:
    Hydra would turn a raised error into a traceback here)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        _exit_in_one_line(err, f"cannot write the run directory {path} ({key}): {err.strerror or err}")


def _exit_in_one_line(err: Exception, message: str) -> None:
    """cli_errors' output for a Hydra callback, whose raised errors Hydra prints as tracebacks."""
    if os.environ.get("JAXREC_DEBUG") == "1":
        raise err
    print(f"jaxrec: error: {message}", file=sys.stderr)
    sys.exit(2)


# What a training run writes into its run dir: files (replaced through a hidden .<name>.tmp, or
# appended) and folders. Each is checked before the data loads (check_run_dir_entries), so that
# a stray entry of the wrong kind does not lose the run when its output is written at the end.
RUN_FILES = ("results.json", "metrics.jsonl", "run_info.json")
RUN_FOLDERS = ("checkpoints", "checkpoints-damaged", "checkpoints-superseded")


def check_run_dir_entries(run_dir: Path, files=RUN_FILES, folders=RUN_FOLDERS) -> None:
    """Every output path in `run_dir` is absent, or a writable file (folder) where a file (folder)
    is written; otherwise one line naming the entry."""
    for name in files:
        for path in (run_dir / name, run_dir / f".{name}.tmp"):
            if path.is_dir() or (path.is_symlink() and not path.exists()):
                raise JaxrecError(
                    f"{path} is in the way: the run writes a file there; move it or choose another run dir"
                )
            if path.exists() and not os.access(path, os.W_OK):
                raise JaxrecError(f"{path} is not writable, and the run writes it; fix its permissions")
    for name in folders:
        path = run_dir / name
        if (path.exists() or path.is_symlink()) and not path.is_dir():
            raise JaxrecError(
                f"{path} is in the way: the run writes a directory there; move it or choose another run dir"
            )
        if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
            raise JaxrecError(f"{path} is not writable, and the run writes into it; fix its permissions")


# Simulated devices are threads of one process: on a starved machine one can reach a collective
# more than XLA:CPU's default 40 s after another, which then aborts the whole process (seen with
# 8 devices on 2 loaded cores). No device of a process can die alone, so waiting longer is safe.
SIMULATED_COLLECTIVE_TIMEOUT = "--xla_cpu_collective_call_terminate_timeout_seconds=1800"


def simulate_cpu_devices(cfg: Config) -> None:
    """Honour sharding.num_devices by simulating CPU devices; must run before jax starts."""
    if cfg.sharding.num_devices is None:
        return
    if "jax" in sys.modules and sys.modules["jax"].config.jax_platforms not in (None, "", "cpu"):
        raise JaxrecError("sharding.num_devices simulates CPU devices; unset it on an accelerator")
    flags = [f"--xla_force_host_platform_device_count={cfg.sharding.num_devices}", SIMULATED_COLLECTIVE_TIMEOUT]
    names = {flag.split("=")[0] for flag in flags}
    kept = [flag for flag in os.environ.get("XLA_FLAGS", "").split() if flag.split("=")[0] not in names]
    os.environ["XLA_FLAGS"] = " ".join(kept + flags)
    os.environ["JAX_PLATFORMS"] = "cpu"
