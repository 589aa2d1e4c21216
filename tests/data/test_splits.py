"""Splits: leave-one-out, per-user random, global temporal and k-fold; disjoint, complete, no leaks."""

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from jaxrec.data import fetch, readers
from jaxrec.data.preprocess import preprocess
from jaxrec.data.splits import kfold_split, leave_one_out, random_split, temporal_split
from jaxrec.data.synthetic import generate_synthetic
from jaxrec.data.types import Interactions, RawData
from jaxrec.errors import JaxrecError


@pytest.fixture(scope="module")
def inter() -> Interactions:
    return preprocess(generate_synthetic(200, 150, 6000, seed=3))[0]


def _rows(inter: Interactions) -> Counter:
    return Counter(zip(inter.user.tolist(), inter.item.tolist(), inter.timestamp.tolist()))


def _assert_disjoint_and_complete(inter, split):
    parts = [_rows(split.train), _rows(split.valid), _rows(split.test)]
    assert sum(parts, Counter()) == _rows(inter)  # complete, and no row counted twice


def _by_line(rows) -> Interactions:
    """Interactions from (user, item, timestamp) rows in file order."""
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    df["rating"], df["line"] = 1.0, np.arange(1, len(df) + 1)
    return preprocess(RawData(df.astype({"timestamp": float}), "log"))[0]


def test_leave_one_out_holds_out_the_last_two_per_user(inter):
    split = leave_one_out(inter)
    _assert_disjoint_and_complete(inter, split)
    counts = np.bincount(inter.user, minlength=inter.num_users)
    eligible = np.flatnonzero(counts >= 3)
    for part in (split.valid, split.test):
        assert np.array_equal(np.sort(part.user), eligible)  # exactly one row per eligible user
    train = set(zip(split.train.user.tolist(), split.train.item.tolist()))
    assert not train & set(zip(split.test.user.tolist(), split.test.item.tolist()))
    last_time = pd.Series(inter.timestamp).groupby(inter.user).max()
    assert np.array_equal(split.test.timestamp, last_time[split.test.user].to_numpy())


def test_leave_one_out_breaks_timestamp_ties_by_file_order():
    split = leave_one_out(_by_line([("u", "a", 1), ("u", "d", 3), ("u", "c", 3), ("v", "a", 1)]))
    assert split.test.item_tokens[split.test.item].tolist() == ["c"]  # later line wins the tie
    assert split.valid.item_tokens[split.valid.item].tolist() == ["d"]


def test_leave_one_out_keeps_short_histories_in_train():
    split = leave_one_out(_by_line([("u", "a", 1), ("u", "b", 2), ("v", "a", 1)]))
    assert len(split.train) == 3 and len(split.valid) == 0 and len(split.test) == 0


def test_random_split_is_per_user_seeded_and_keeps_a_train_row(inter):
    split = random_split(inter, 0.1, 0.2, seed=0)
    _assert_disjoint_and_complete(inter, split)
    assert set(split.train.user.tolist()) == set(inter.user.tolist())
    assert len(split.test) == pytest.approx(0.2 * len(inter), rel=0.1)
    again, other = random_split(inter, 0.1, 0.2, seed=0), random_split(inter, 0.1, 0.2, seed=1)
    assert np.array_equal(again.test.item, split.test.item)
    assert not np.array_equal(other.test.item, split.test.item)
    assert np.all(np.diff(split.train.user) >= 0)  # still user-sorted


def test_temporal_split_cuts_time_globally(inter):
    split = temporal_split(inter, 0.1, 0.2)
    _assert_disjoint_and_complete(inter, split)
    assert split.train.timestamp.max() < split.valid.timestamp.min()
    assert split.valid.timestamp.max() < split.test.timestamp.min()
    assert len(split.test) == pytest.approx(0.2 * len(inter), rel=0.05)


def test_kfold_test_folds_partition_the_data_in_balanced_sizes(inter):
    folds = [kfold_split(inter, 5, fold, valid_ratio=0.1, seed=0) for fold in range(5)]
    for split in folds:
        _assert_disjoint_and_complete(inter, split)
        assert np.all(np.diff(split.train.user) >= 0)  # still user-sorted
        assert (split.train.num_users, split.train.num_items) == (inter.num_users, inter.num_items)
    assert sum((_rows(split.test) for split in folds), Counter()) == _rows(inter)  # each row in one test fold
    sizes = [len(split.test) for split in folds]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(inter)


def test_kfold_valid_is_carved_from_the_fold_s_training_part(inter):
    split = kfold_split(inter, 5, 2, valid_ratio=0.1, seed=0)
    whole = kfold_split(inter, 5, 2, valid_ratio=0.0, seed=0)
    assert len(whole.valid) == 0 and _rows(whole.test) == _rows(split.test)
    assert _rows(split.train) + _rows(split.valid) == _rows(whole.train)  # valid never takes a test row
    assert len(split.valid) == round(0.1 * len(whole.train))


def test_kfold_is_deterministic_by_seed(inter):
    split, again, other = (kfold_split(inter, 5, 0, 0.1, seed) for seed in (0, 0, 1))
    assert _rows(split.test) == _rows(again.test) and _rows(split.valid) == _rows(again.valid)
    assert _rows(split.test) != _rows(other.test)


@pytest.mark.parametrize(
    "num_folds,fold,message",
    [
        (1, 0, "data.num_folds=1: k-fold cross-validation needs at least 2 folds"),
        (5, 5, r"data.fold=5 is out of range: expected 0 \.\. 4"),
        (5, -1, "data.fold=-1 is out of range"),
    ],
)
def test_kfold_rejects_bad_folds_in_the_split_and_the_config(inter, num_folds, fold, message):
    from jaxrec.config import compose_config, validate

    with pytest.raises(JaxrecError, match=message):
        kfold_split(inter, num_folds, fold, 0.1, 0)
    cfg = compose_config([])
    cfg.data.split, cfg.data.num_folds, cfg.data.fold = "kfold", num_folds, fold
    with pytest.raises(JaxrecError, match=f"config key {message}"):
        validate(cfg)


def test_bad_ratios_are_rejected(inter):
    with pytest.raises(JaxrecError, match="valid_ratio=0.5, test_ratio=0.5"):
        temporal_split(inter, 0.5, 0.5)


ML100K = fetch.default_data_dir() / "ml-100k"


@pytest.mark.skipif(not fetch.is_cached(ML100K), reason="ml-100k not in the local cache")
def test_ml100k_has_415_users_with_tied_latest_timestamps():
    inter, _ = preprocess(readers.read_dataset("ml100k", ML100K))
    latest = pd.Series(inter.timestamp).groupby(inter.user).transform("max").to_numpy()
    tied = np.bincount(inter.user[inter.timestamp == latest], minlength=inter.num_users) > 1
    assert (len(inter), inter.num_users, inter.num_items) == (100_000, 943, 1682)
    assert tied.sum() == 415
