"""Cleaning: drop counts checked against hand-computed numbers, dedup, k-core, reindexing."""

import logging

import numpy as np
import pandas as pd
import pytest

from jaxrec.data.preprocess import preprocess
from jaxrec.data.types import RawData
from jaxrec.errors import JaxrecError

NAN = float("nan")


def _raw(rows, source="log.tsv") -> RawData:
    """rows: (user, item, rating, timestamp); lines are numbered from 1 in order."""
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    df["line"] = np.arange(1, len(df) + 1)
    return RawData(df.astype({"rating": float, "timestamp": float}), source)


MESSY = [
    ("u1", "a", 5, 10),  # 1  duplicate of line 6 (older): dropped
    ("u1", "b", 3, 20),  # 2
    ("", "c", 4, 30),  # 3  missing user id
    ("u2", "a", NAN, 40),  # 4  bad rating
    ("u2", "b", 2, NAN),  # 5  bad timestamp
    ("u1", "a", 1, 50),  # 6
    ("u2", "a", 4, 60),  # 7  duplicate of line 9 at the same time: the later line wins
    ("u3", "c", 5, 70),  # 8
    ("u2", "a", 4, 60),  # 9
    ("u3", "d", 2, 80),  # 10
]


def test_drop_counts_match_hand_computed_numbers():
    inter, counts = preprocess(_raw(MESSY))
    assert counts == {"invalid": 3, "below_min_rating": 0, "duplicates": 2, "k_core": 0, "kept": 5}
    assert len(inter) == 5 and inter.num_users == 3 and inter.num_items == 4


def test_dedup_keeps_the_latest_row():
    inter, _ = preprocess(_raw(MESSY))
    u1_a = (inter.user_tokens[inter.user] == "u1") & (inter.item_tokens[inter.item] == "a")
    assert inter.rating[u1_a].tolist() == [1.0] and inter.timestamp[u1_a].tolist() == [50]


def test_min_rating_is_applied_before_dedup():
    _, counts = preprocess(_raw(MESSY), min_rating=3)
    assert counts == {"invalid": 3, "below_min_rating": 2, "duplicates": 1, "k_core": 0, "kept": 4}


def test_each_step_logs_its_drops_with_line_numbers(caplog):
    with caplog.at_level(logging.INFO, logger="jaxrec.data"):
        preprocess(_raw(MESSY))
    assert "log.tsv: invalid ids/ratings/timestamps: dropped 3 rows (lines 3, 4, 5)" in caplog.text
    assert "duplicate (user, item) pairs: dropped 2 rows (lines 1, 7)" in caplog.text


def test_strict_names_the_file_and_the_first_bad_line():
    with pytest.raises(JaxrecError, match=r"log\.tsv: line 3: missing user id \(3 bad rows"):
        preprocess(_raw(MESSY), strict=True)


def test_k_core_iterates_until_stable():
    rows = [("u1", "a", 1, 1), ("u1", "b", 1, 2), ("u2", "a", 1, 3), ("u2", "b", 1, 4),
            ("u3", "a", 1, 5), ("u3", "c", 1, 6)]  # fmt: skip
    inter, counts = preprocess(_raw(rows), k_core=2)
    # item c has one user; without it u3 has one item, and then every count is 2.
    assert counts["k_core"] == 2 and counts["kept"] == 4
    assert inter.user_tokens.tolist() == ["u1", "u2"] and inter.item_tokens.tolist() == ["a", "b"]
    assert np.bincount(inter.user).min() >= 2 and np.bincount(inter.item).min() >= 2


def test_reindex_round_trips_and_sorts_integer_tokens_numerically():
    rows = [("10", "x", 1, 5), ("2", "y", 2, 3), ("2", "x", 3, 1), ("10", "z", 4, 2)]
    inter, _ = preprocess(_raw(rows))
    assert inter.user_tokens.tolist() == ["2", "10"]
    assert inter.user.dtype == np.int32 and inter.item.dtype == np.int32
    pairs = set(zip(inter.user_tokens[inter.user], inter.item_tokens[inter.item]))
    assert pairs == {(u, i) for u, i, _, _ in rows}
    # sorted by (user, timestamp): user "2" at t=1, 3, then user "10" at t=2, 5
    assert inter.timestamp.tolist() == [1, 3, 2, 5]
    assert inter.rating.dtype == np.float32 and inter.timestamp.dtype == np.int64


def test_implicit_data_gets_unit_ratings_and_line_order_as_time():
    rows = [("u1", "b", NAN, NAN), ("u1", "a", NAN, NAN), ("u2", "a", NAN, NAN)]
    inter, counts = preprocess(_raw(rows))
    assert counts["invalid"] == 0
    assert inter.rating.tolist() == [1.0, 1.0, 1.0] and inter.timestamp.tolist() == [1, 2, 3]
    assert inter.item_tokens[inter.item].tolist() == ["b", "a", "a"]
    with pytest.raises(JaxrecError, match="min_rating=4 is set but the data has no ratings"):
        preprocess(_raw(rows), min_rating=4)


def test_nothing_left_is_an_error():
    with pytest.raises(JaxrecError, match=r"log\.tsv: no interactions left after preprocessing"):
        preprocess(_raw([("u1", "a", 1, 1), ("u2", "b", 1, 2)]), k_core=2)
