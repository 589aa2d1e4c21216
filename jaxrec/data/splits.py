"""Train / validation / test splits over one id space, all vectorised (no loop over users).

Each function relies on `Interactions` being sorted by (user, timestamp, line), as `preprocess`
returns it, so a user's history is one contiguous chronological run. Every split keeps that
order within each part.
"""

from __future__ import annotations

import numpy as np

from jaxrec.data.types import Interactions, Split
from jaxrec.errors import JaxrecError

_TRAIN, _VALID, _TEST = 0, 1, 2


def _check_ratios(valid_ratio: float, test_ratio: float) -> None:
    if valid_ratio < 0 or test_ratio < 0 or valid_ratio + test_ratio >= 1:
        raise JaxrecError(
            f"split ratios must be >= 0 and leave some training data: "
            f"valid_ratio={valid_ratio}, test_ratio={test_ratio}"
        )


def _check_sorted(inter: Interactions) -> None:
    if np.any(np.diff(inter.user) < 0):
        raise JaxrecError("interactions must be sorted by user (as preprocess returns them)")


def _user_positions(user: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of a user-sorted array: its index within the user's run, and the run length."""
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    lengths = np.diff(np.r_[starts, len(user)])
    run_start = np.repeat(starts, lengths)
    return np.arange(len(user)) - run_start, np.repeat(lengths, lengths)


def _split_by(inter: Interactions, part: np.ndarray) -> Split:
    return Split(*(inter.subset(np.flatnonzero(part == p)) for p in (_TRAIN, _VALID, _TEST)))


def leave_one_out(inter: Interactions) -> Split:
    """Per user: the last interaction -> test, the second to last -> valid, the rest -> train.

    Users with fewer than 3 interactions keep everything in train. "Last" follows the sort
    order (timestamp, then source line), so among interactions with the same timestamp the row
    later in the file counts as later. That tie-break matters: in ml-100k, 415 of the 943
    users have more than one interaction at their latest timestamp.
    """
    _check_sorted(inter)
    position, length = _user_positions(inter.user)
    from_end = length - 1 - position
    part = np.full(len(inter), _TRAIN, np.int8)
    held_out = length >= 3
    part[held_out & (from_end == 0)] = _TEST
    part[held_out & (from_end == 1)] = _VALID
    return _split_by(inter, part)


def random_split(inter: Interactions, valid_ratio: float, test_ratio: float, seed: int) -> Split:
    """Per user, a random `test_ratio` / `valid_ratio` share of the interactions (rounded).

    Every user keeps at least one training interaction; test is filled before valid.
    """
    _check_ratios(valid_ratio, test_ratio)
    _check_sorted(inter)
    rng = np.random.default_rng(seed)
    shuffled = np.lexsort((rng.random(len(inter)), inter.user))
    position, length = _user_positions(inter.user[shuffled])
    num_test = np.minimum(np.rint(length * test_ratio), length - 1)
    num_valid = np.minimum(np.rint(length * valid_ratio), length - 1 - num_test)
    part = np.full(len(inter), _TRAIN, np.int8)
    part[shuffled[position < num_test]] = _TEST
    part[shuffled[(position >= num_test) & (position < num_test + num_valid)]] = _VALID
    return _split_by(inter, part)


def temporal_split(inter: Interactions, valid_ratio: float, test_ratio: float) -> Split:
    """One global time cut: the latest `test_ratio` of timestamps -> test, the `valid_ratio`
    before them -> valid. Rows tied at a cut go to the earlier part, so the shares are
    approximate; valid/test may contain users or items never seen in train (cold start)."""
    _check_ratios(valid_ratio, test_ratio)
    valid_cut, test_cut = np.quantile(inter.timestamp, [1 - test_ratio - valid_ratio,
                                                        1 - test_ratio])  # fmt: skip
    part = np.full(len(inter), _TRAIN, np.int8)
    part[inter.timestamp > valid_cut] = _VALID
    part[inter.timestamp > test_cut] = _TEST
    return _split_by(inter, part)


def kfold_split(inter: Interactions, num_folds: int, fold: int, valid_ratio: float, seed: int) -> Split:
    """Rating-level k-fold cross-validation: fold `fold` of `num_folds` -> test.

    Every interaction lands in exactly one fold (a seeded permutation dealt round-robin, so
    fold sizes differ by at most one), and the k test sets of one seed partition the data. A
    random `valid_ratio` share of the remaining interactions goes to validation, so early
    stopping and tuning never see the test fold; with valid_ratio 0 the whole rest is train.
    Users and items keep the global id space (a user or item may be missing from train).
    """
    if num_folds < 2:
        raise JaxrecError(f"data.num_folds={num_folds}: k-fold cross-validation needs at least 2 folds")
    if not 0 <= fold < num_folds:
        raise JaxrecError(
            f"data.fold={fold} is out of range: expected 0 .. {num_folds - 1} (data.num_folds={num_folds})"
        )
    _check_ratios(valid_ratio, 0.0)
    fold_n = np.empty(len(inter), np.int64)
    fold_n[np.random.default_rng(seed).permutation(len(inter))] = np.arange(len(inter)) % num_folds
    part = np.where(fold_n == fold, _TEST, _TRAIN).astype(np.int8)
    rest = np.flatnonzero(part == _TRAIN)
    num_valid = int(np.rint(len(rest) * valid_ratio))
    part[np.random.default_rng([seed, 1, fold]).permutation(rest)[:num_valid]] = _VALID
    return _split_by(inter, part)


def make_cold_users(split: Split, share: float, keep: int, seed: int) -> Split:
    """A cold-start study on warm data: a random `share` of users keep only their first `keep`
    training interactions; validation and test are untouched."""
    if not 0 <= share <= 1 or keep < 1:
        raise JaxrecError(f"data.cold_users={share} must lie in [0, 1] and data.cold_max_train={keep} be >= 1")
    train = split.train
    rng = np.random.default_rng([seed, 1])
    cold_u = rng.random(train.num_users) < share
    _, position = _user_positions(train.user)
    kept = ~cold_u[train.user] | (position < keep)
    return Split(train.subset(np.flatnonzero(kept)), split.valid, split.test)
