"""Synthetic Criteo-like click data and its Grain pipeline, for CTR models (DCN-v2).

Why synthetic: the Criteo logs are large and behind a licence page; this generator has their
shape (13 heavy-tailed count features, 26 categorical features with Zipf-distributed ids, about
a quarter positives) and a known ground truth, so a model's AUC can be read against the best any
model could reach (the oracle: `oracle_logit` holds the true click logit of every test example,
and jaxrec.eval.ctr.oracle_summary its metrics).

Labels are Bernoulli(sigmoid(logit)) with
    logit = BIAS + sum_k w_k z_k + sum_j h_j[id_j] + sum_{(a, b) in PAIRS} PAIR_SCALE * u_a[id_a] u_b[id_b]
z the latent dense values (the features are log1p of the counts floor(exp(MU + SIGMA z))), h_j a
hidden weight per id of feature j, and u a hidden value per id of the paired features: a
pairwise interaction that no sum of per-feature terms can express and a cross layer can.

Feature j's id of popularity rank r is (r * HASH_PRIME + j) mod V_j, a bijection on [0, V_j)
(the prime exceeds any int32 vocabulary), so hot ids are scattered over the id space instead of
being 0, 1, 2, ... Generation is vectorised numpy, one pass per feature: 10^6 examples take
about a second; the hidden weights take O(sum of vocabularies) memory.

Legend: n examples, B batch, F dense features, S categorical features, V_j vocabulary of feature j.
"""

from __future__ import annotations

import dataclasses
import logging

import grain
import numpy as np

from jaxrec.config import DataConfig
from jaxrec.data.steps import StepRows, permutation_order
from jaxrec.data.synthetic import _draw_zipf
from jaxrec.data.types import Field, Schema
from jaxrec.errors import JaxrecError

log = logging.getLogger("jaxrec.data")

BIAS = -1.6  # with the terms below: about 26% positives (Criteo: 25.6%)
DENSE_STD, SPARSE_STD, PAIR_SCALE = 0.3, 0.3, 0.8  # std of w_k, of h_j, and the interaction's weight
MU, SIGMA = 1.0, 1.2  # counts are floor(exp(MU + SIGMA z))
PAIRS = ((0, 1), (2, 3))  # interacting categorical features (those that exist)
HASH_PRIME = 2_654_435_761


def field_name(j: int) -> str:
    """The batch field (and the feature and table) of categorical feature j."""
    return f"cat_{j}"


@dataclasses.dataclass(frozen=True)
class CtrPart:
    dense: np.ndarray  # float32 [n, F]: log1p of counts
    sparse: np.ndarray  # int32 [n, S]: ids, column j in [0, V_j)
    label: np.ndarray  # float32 [n]: 1 click, 0 no click

    def __len__(self) -> int:
        return len(self.label)

    @property
    def num_dense(self) -> int:
        return self.dense.shape[1]

    def rows(self, index_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(dense [B, F], sparse [B, S], label [B]) of examples `index_b` (PreparedPart has the same)."""
        return self.dense[index_b], self.sparse[index_b], self.label[index_b]

    def order(self, seed: int):
        """order(epoch, start, stop): rows at positions start..stop of the epoch's permutation."""
        return permutation_order(seed, len(self))


@dataclasses.dataclass(frozen=True)
class CtrDataset:
    name: str
    vocab_sizes: tuple[int, ...]
    train: CtrPart
    valid: CtrPart
    test: CtrPart
    oracle_logit: np.ndarray | None  # float32 [n_test]: each test example's true logit; None for logged data

    @property
    def train_label(self) -> np.ndarray:
        return self.train.label

    def part(self, name: str) -> CtrPart:
        return getattr(self, name)

    @property
    def schema(self) -> Schema:
        return ctr_schema(self.vocab_sizes, self.train.num_dense)

    def summary(self) -> dict:
        """The data section of results.json."""
        return {
            "num_examples": sum(len(p) for p in (self.train, self.valid, self.test)),
            "num_train": len(self.train),
            "num_valid": len(self.valid),
            "num_test": len(self.test),
            "num_dense": self.train.dense.shape[1],
            "vocab_sizes": list(self.vocab_sizes),
            "positive_rate": float(self.train.label.mean()) if len(self.train) else None,
        }


def ctr_schema(vocab_sizes, num_dense: int) -> Schema:
    """The tables a CTR model needs, from sizes alone (planning needs no data)."""
    fields = {field_name(j): Field(int(v)) for j, v in enumerate(vocab_sizes)}
    return Schema(0, 0, example_fields=fields, num_dense=num_dense)


def vocab_sizes_of(cfg: DataConfig) -> tuple[int, ...]:
    sizes = tuple(cfg.vocab_sizes) or (cfg.vocab_size,) * cfg.num_sparse
    if len(sizes) != cfg.num_sparse:
        raise JaxrecError(
            f"config key data.vocab_sizes has {len(sizes)} entries but data.num_sparse="
            f"{cfg.num_sparse}; give one vocabulary per categorical feature, or none to use "
            "data.vocab_size for all"
        )
    if min(sizes) < 1 or max(sizes) >= 2**31:
        raise JaxrecError(
            f"config key data.vocab_sizes / data.vocab_size: every vocabulary must be in "
            f"[1, 2^31), got {min(sizes)}..{max(sizes)}"
        )
    return sizes


def generate_ctr(num_examples: int, vocab_sizes, num_dense: int, seed: int, zipf_a: float = 1.1):
    """(dense [n, F] float32, sparse [n, S] int32, label [n] float32, true logit [n] float32)."""
    hidden = np.random.default_rng([seed, 0])  # the ground truth, independent of num_examples
    draws = np.random.default_rng([seed, 1])
    z = draws.standard_normal((num_examples, num_dense), dtype=np.float32)
    logit = BIAS + z @ (DENSE_STD * hidden.standard_normal(num_dense, dtype=np.float32))
    dense = np.log1p(np.floor(np.exp(MU + SIGMA * z))).astype(np.float32)
    sparse = np.empty((num_examples, len(vocab_sizes)), np.int32)
    paired = {j for pair in PAIRS if max(pair) < len(vocab_sizes) for j in pair}
    pair_values = {}
    for j, vocab in enumerate(vocab_sizes):
        ranks = _draw_zipf((num_examples,), vocab, zipf_a, draws)
        ids = ((ranks * HASH_PRIME + j) % vocab).astype(np.int32)
        sparse[:, j] = ids
        logit += SPARSE_STD * hidden.standard_normal(vocab, dtype=np.float32)[ids]
        if j in paired:
            pair_values[j] = hidden.standard_normal(vocab, dtype=np.float32)[ids]
    for a, b in PAIRS:
        if a in pair_values and b in pair_values:
            logit += PAIR_SCALE * pair_values[a] * pair_values[b]
    label = (draws.random(num_examples, dtype=np.float32) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return dense, sparse, label, logit.astype(np.float32)


def load_ctr_dataset(cfg: DataConfig) -> CtrDataset:
    """criteo_synthetic: generate, then cut test, valid and train (examples are i.i.d.)."""
    if cfg.num_examples < 1 or cfg.num_dense < 0 or cfg.num_sparse < 1:
        raise JaxrecError(
            f"config keys data.num_examples={cfg.num_examples}, data.num_dense={cfg.num_dense}, "
            f"data.num_sparse={cfg.num_sparse}: need >= 1 example, >= 0 dense and >= 1 categorical"
        )
    sizes = vocab_sizes_of(cfg)
    dense, sparse, label, logit = generate_ctr(cfg.num_examples, sizes, cfg.num_dense, cfg.seed, cfg.zipf_a)
    num_test, num_valid = int(cfg.num_examples * cfg.test_ratio), int(cfg.num_examples * cfg.valid_ratio)
    num_train = cfg.num_examples - num_test - num_valid
    cuts = {
        "train": slice(0, num_train),
        "valid": slice(num_train, num_train + num_valid),
        "test": slice(num_train + num_valid, None),
    }
    parts = {name: CtrPart(dense[cut], sparse[cut], label[cut]) for name, cut in cuts.items()}
    log.info(
        "%s: %d examples (train %d, valid %d, test %d), %.1f%% positive",
        cfg.name,
        cfg.num_examples,
        num_train,
        num_valid,
        num_test,
        100 * label.mean(),
    )
    return CtrDataset(cfg.name, sizes, parts["train"], parts["valid"], parts["test"], logit[cuts["test"]])


def batch_inputs(part: CtrPart, index: np.ndarray, with_label: bool = True) -> dict[str, np.ndarray]:
    """Examples `index` [B] as model inputs: dense [B, F], cat_j [B, 1] int32, label [B, 1]."""
    dense, sparse, label = part.rows(index)
    batch = {"dense": dense} | {field_name(j): sparse[:, j : j + 1] for j in range(sparse.shape[1])}
    return batch | ({"label": label[:, None]} if with_label else {})


class _CtrBatch(grain.transforms.Map):
    """Rows `rows` of batch `step` of the run: that slice of its epoch's seeded order of train
    (a permutation in memory, a block shuffle for prepared shards). Only those rows are read."""

    def __init__(self, train, step_rows: StepRows):
        self.train, self.step_rows = train, step_rows

    def map(self, step: int) -> dict[str, np.ndarray]:
        return batch_inputs(self.train, self.step_rows.examples(step))


def make_ctr_dataset(
    dataset: CtrDataset, *, batch_size: int, epochs: int, seed: int, rows: slice | None = None
) -> grain.MapDataset:
    """One element per train step: epochs x (len(train) // batch_size) batches; with `rows`, only
    those rows of each global batch (this process's share)."""
    train = dataset.train
    step_rows = StepRows(train.order(seed), len(train), batch_size, rows or slice(0, batch_size))
    return grain.MapDataset.range(step_rows.num_steps(epochs)).map(_CtrBatch(train, step_rows))
