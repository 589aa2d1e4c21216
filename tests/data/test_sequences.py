"""Sequence batches: the same split as the pair pipeline, left-padded windows, shifted targets
(SASRec), cloze masks (BERT4Rec), evaluation histories, and determinism per (seed, step)."""

import numpy as np
import pytest

from jaxrec.config import SyntheticConfig
from jaxrec.data.dataset import load_dataset
from jaxrec.data.sequences import eval_histories, make_sequence_dataset, sequence_users, user_runs
from jaxrec.errors import JaxrecError
from jaxrec.models.bert4rec import BERT4Rec
from jaxrec.models.sasrec import SASRec

L, K, BATCH = 12, 5, 16


@pytest.fixture(scope="module")
def dataset():
    return load_dataset(SyntheticConfig(num_users=60, num_items=40, num_interactions=1500))


def _train_items(dataset, user):
    """The user's training items in time order, the plain-Python way."""
    train = dataset.split.train
    return list(train.item[train.user == user])


def _window(items, width):
    items = items[-width:] if items else []
    return [-1] * (width - len(items)) + items


def _model(cls, dataset, **kw):
    return cls(num_items=dataset.num_items, dim=8, max_len=L, num_layers=1, num_heads=2, **kw)


def _epoch(model, dataset, seed=0, epochs=1):
    loader = make_sequence_dataset(model, dataset, batch_size=BATCH, epochs=epochs, num_negatives=K, seed=seed)
    return [loader[i] for i in range(len(loader))]


def test_sequence_users_have_two_training_items(dataset):
    counts = np.bincount(dataset.split.train.user, minlength=dataset.num_users)
    users = sequence_users(dataset)
    assert list(users) == [u for u in range(dataset.num_users) if counts[u] >= 2]
    assert len(users) > 40  # the fixture has sequences of every length around L


def _owner(dataset, row) -> int | None:
    """The user whose training items hold `row` (-1 padded) as a window: a contiguous run of
    them, and all of them when the row is padded. None if nobody's do."""
    real = [int(i) for i in row if i >= 0]
    for user in sequence_users(dataset):
        items = _train_items(dataset, user)
        if len(real) < len(row):
            if items == real:
                return user
        elif any(items[i : i + len(real)] == real for i in range(len(items) - len(real) + 1)):
            return user
    return None


def test_sasrec_batches_are_shifted_windows_of_the_train_items(dataset):
    batches = _epoch(_model(SASRec, dataset), dataset, epochs=3)
    lengths = np.bincount(dataset.split.train.user, minlength=dataset.num_users)
    assert len(batches) == 3 * (len(sequence_users(dataset)) // BATCH)
    windows, seen_lengths = {}, []
    for batch in batches:
        assert batch["history"].shape == (BATCH, L) and batch["item"].shape == (BATCH, L)
        assert batch["negative"].shape == (BATCH, K) and batch["label"].shape == (BATCH, L, 1 + K)
        for history, targets in zip(batch["history"], batch["item"]):
            np.testing.assert_array_equal(history >= 0, targets >= 0)
            shifted = targets[:-1] >= 0
            np.testing.assert_array_equal(history[1:][shifted], targets[:-1][shifted])  # target t = input t + 1
            user = _owner(dataset, list(history) + [targets[-1]])  # inputs + last target: L + 1 items of a run
            assert user is not None
            windows.setdefault(user, set()).add(tuple(history))
            seen_lengths.append(lengths[user])
    assert min(seen_lengths) <= L < max(seen_lengths)  # both padded and cut rows were checked
    long_users = [u for u in windows if lengths[u] > L + 3]
    assert long_users and max(len(windows[u]) for u in long_users) > 1  # long runs get other windows
    batch = batches[0]
    np.testing.assert_array_equal(batch["weight"], (batch["item"] >= 0).astype(np.float32))
    assert (batch["label"][..., 0] == 1).all() and (batch["label"][..., 1:] == 0).all()
    assert batch["negative"].min() >= 0 and batch["negative"].max() < dataset.num_items


def test_an_epoch_visits_each_sequence_user_at_most_once(dataset):
    histories = np.concatenate([b["history"] for b in _epoch(_model(SASRec, dataset), dataset)])
    rows = {tuple(h) for h in histories}
    assert len(rows) == len(histories) == (len(sequence_users(dataset)) // BATCH) * BATCH


def test_batches_are_a_function_of_seed_and_step(dataset):
    model = _model(BERT4Rec, dataset, mask_prob=0.3)
    first, again, other = _epoch(model, dataset, 0, 2), _epoch(model, dataset, 0, 2), _epoch(model, dataset, 1, 2)
    for a, b in zip(first, again):
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(first[0]["history"], other[0]["history"])
    assert not np.array_equal(first[0]["history"], first[len(first) // 2]["history"])  # epochs differ


def test_bert4rec_masks_a_share_of_real_items_and_targets_only_them(dataset):
    mask_token = dataset.num_items
    batches = _epoch(_model(BERT4Rec, dataset, mask_prob=0.3), dataset, epochs=20)
    real = masked = last_only = 0
    for batch in batches:
        history, targets = batch["history"], batch["item"]
        is_mask = history == mask_token
        np.testing.assert_array_equal(targets >= 0, is_mask)
        np.testing.assert_array_equal(batch["weight"], is_mask.astype(np.float32))
        assert is_mask.any(axis=1).all() and (history[:, -1] >= 0).all()
        real += (history >= 0).sum()
        masked += is_mask.sum()
        last_only += (is_mask.sum(axis=1) == 1).sum()
    for row, target in zip(history, targets):  # unmasking gives back a window of a user's items
        assert _owner(dataset, list(np.where(row == mask_token, target, row))) is not None
    share = masked / real
    assert 0.25 < share < 0.35, share  # 0.3 of real items, slightly more from forced last-item masks
    assert last_only > 0.1 * len(batches) * BATCH  # the last-item-only sequences (10%) and short ones


def test_eval_histories_are_the_items_before_the_part(dataset):
    split = dataset.split
    valid_of = dict(zip(split.valid.user, split.valid.item))
    valid_h, test_h = eval_histories(dataset, "valid", L), eval_histories(dataset, "test", L)
    for user in range(dataset.num_users):
        items = _train_items(dataset, user)
        assert list(valid_h[user]) == _window(items, L)
        expected = items + ([valid_of[user]] if user in valid_of else [])
        assert list(test_h[user]) == _window(expected, L)
    with pytest.raises(ValueError, match="'valid' or 'test'"):
        eval_histories(dataset, "train", L)


def test_user_runs_merge_parts_by_time_train_first_on_ties(dataset):
    split = dataset.split
    valid = split.valid
    tied = type(valid)(
        valid.user, valid.item, valid.rating, np.zeros_like(valid.timestamp), valid.user_tokens, valid.item_tokens
    )
    # every valid row now has the earliest timestamp: it moves to the front of its user's run
    indptr, items = user_runs([split.train, tied], dataset.num_users)
    user = int(valid.user[0])
    assert items[indptr[user]] == valid.item[0]
    assert list(items[indptr[user] + 1 : indptr[user + 1]]) == _train_items(dataset, user)


def test_batch_larger_than_the_users_fails_clearly(dataset):
    with pytest.raises(JaxrecError, match=r"train.batch_size=512 exceeds the \d+ users"):
        make_sequence_dataset(_model(SASRec, dataset), dataset, batch_size=512, epochs=1, num_negatives=K, seed=0)
