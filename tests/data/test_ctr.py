"""The synthetic Criteo-like data set and its batches."""

import grain
import numpy as np
import pytest

from jaxrec.config import CriteoSyntheticConfig, DataConfig
from jaxrec.data.ctr import generate_ctr, load_ctr_dataset, make_ctr_dataset
from jaxrec.data.dataset import load_dataset
from jaxrec.errors import JaxrecError
from jaxrec.eval.ctr import oracle_summary
from jaxrec.eval.metrics import auc


def _cfg(**kw) -> DataConfig:
    cfg = CriteoSyntheticConfig(num_examples=20_000, vocab_size=500)
    for key, value in kw.items():
        setattr(cfg, key, value)
    return cfg


@pytest.fixture(scope="module")
def dataset():
    return load_dataset(_cfg())


def test_shapes_dtypes_ranges_and_splits(dataset):
    train, valid, test = dataset.train, dataset.valid, dataset.test
    assert (len(train), len(valid), len(test)) == (16_000, 2_000, 2_000)
    assert train.dense.shape == (16_000, 13) and train.dense.dtype == np.float32
    assert train.sparse.shape == (16_000, 26) and train.sparse.dtype == np.int32
    assert train.label.dtype == np.float32 and set(np.unique(train.label)) == {0.0, 1.0}
    assert train.sparse.min() == 0 and train.sparse.max() == 499
    assert train.dense.min() == 0.0  # log1p of counts
    # counts floor(exp(1 + 1.2 z)): the median z gives floor(e) = 2, log1p(2) = 1.0986
    np.testing.assert_allclose(np.median(train.dense), np.log1p(2.0))
    assert 0.2 < train.label.mean() < 0.32  # Criteo: 0.256
    schema = dataset.schema
    assert list(schema.example_fields) == [f"cat_{j}" for j in range(26)] and schema.num_dense == 13
    assert {f.vocab for f in schema.example_fields.values()} == {500}


def test_ids_are_zipf_with_hot_ids_scattered(dataset):
    counts = np.sort(np.bincount(dataset.train.sparse[:, 0], minlength=500))[::-1]
    # P(rank r) ~ (r + 1)^-1.1: the top id is about 2^1.1 = 2.1 times as frequent as the second
    assert 1.6 < counts[0] / counts[1] < 2.8 and counts[0] > 10 * counts[50]
    hottest = np.argsort(np.bincount(dataset.train.sparse[:, 0]))[::-1][:5]
    assert sorted(hottest) != list(range(5))  # not ids 0..4


def test_labels_are_learnable_and_the_oracle_is_reported(dataset):
    dense, sparse, label, logit = generate_ctr(20_000, (500,) * 26, 13, seed=0)
    np.testing.assert_array_equal(sparse[-2_000:], dataset.test.sparse)  # same seed, same data
    # measured: the true logits rank test examples with auc 0.86; the dense features alone 0.56
    np.testing.assert_array_equal(dataset.oracle_logit, logit[-2_000:])
    oracle = oracle_summary(dataset)
    assert oracle["oracle_test_auc"] == pytest.approx(auc(logit[-2_000:], label[-2_000:]))
    assert oracle["oracle_test_auc"] > 0.8
    assert 0.53 < auc(dense[:, 0] * np.sign(np.corrcoef(dense[:, 0], logit)[0, 1]), label) < 0.6


def test_deterministic_per_seed():
    a, b, c = (load_ctr_dataset(_cfg(num_examples=500, seed=s)) for s in (1, 1, 2))
    np.testing.assert_array_equal(a.train.sparse, b.train.sparse)
    np.testing.assert_array_equal(a.train.label, b.train.label)
    assert not np.array_equal(a.train.sparse, c.train.sparse)


def test_per_feature_vocabularies_and_bad_configs():
    data = load_ctr_dataset(_cfg(num_examples=300, num_sparse=3, vocab_sizes=[2, 5, 70]))
    assert data.train.sparse.max(axis=0).tolist() == [1, 4, data.train.sparse[:, 2].max()]
    assert data.train.sparse[:, 2].max() < 70 and data.vocab_sizes == (2, 5, 70)
    with pytest.raises(JaxrecError, match=r"data.vocab_sizes has 2 entries but data.num_sparse=3"):
        load_ctr_dataset(_cfg(num_sparse=3, vocab_sizes=[2, 5]))
    with pytest.raises(JaxrecError, match=r"every vocabulary must be in \[1, 2\^31\)"):
        load_ctr_dataset(_cfg(num_sparse=1, vocab_sizes=[0]))


def test_batches_permute_each_epoch_and_are_checkpointable(dataset):
    loader = make_ctr_dataset(dataset, batch_size=4_000, epochs=2, seed=3)
    assert len(loader) == 8
    batch = loader[0]
    assert batch["dense"].shape == (4_000, 13) and batch["label"].shape == (4_000, 1)
    assert {k: v.shape for k, v in batch.items() if k.startswith("cat_")} == {f"cat_{j}": (4_000, 1) for j in range(26)}
    assert batch["cat_0"].dtype == np.int32

    # Each epoch sees every training example once, in a different order.
    def rows_sorted(x):
        return x[np.lexsort(x.T)]

    for epoch in (0, 1):
        seen = np.concatenate(
            [np.hstack([loader[epoch * 4 + s]["dense"], loader[epoch * 4 + s]["cat_0"]]) for s in range(4)]
        )
        np.testing.assert_array_equal(
            rows_sorted(seen), rows_sorted(np.hstack([dataset.train.dense, dataset.train.sparse[:, :1]]))
        )
    assert not np.array_equal(loader[0]["cat_0"], loader[4]["cat_0"])
    np.testing.assert_array_equal(
        loader[5]["dense"], make_ctr_dataset(dataset, batch_size=4_000, epochs=2, seed=3)[5]["dense"]
    )
    grain.experimental.assert_equal_output_after_checkpoint(loader.to_iter_dataset())
