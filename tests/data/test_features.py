"""Side features: bucket boundaries, 0 for unknown, padded genre lists, vocab sizes."""

import json
from pathlib import Path

import numpy as np
import pandas as pd

from jaxrec.data.features import UserFieldCoder, item_features, user_feature_coders, user_features
from jaxrec.data.readers import read_ml100k

FIXTURES = Path(__file__).parent / "fixtures"


def test_user_features_from_ml100k_with_an_unknown_user():
    raw = read_ml100k(FIXTURES / "ml-100k")
    features = user_features(raw.users, np.array(["1", "2", "3", "99"]))
    # ages 24, 53, 16 -> buckets 18-24, 50-55, <18; user 99 is not in u.user
    assert features.columns["age"].tolist() == [2, 6, 1, 0]
    assert features.columns["gender"].tolist() == [2, 1, 2, 0]  # F=1, M=2
    assert features.columns["occupation"].tolist() == [3, 1, 2, 0]  # other, student, technician
    assert features.columns["zip_prefix"].tolist() == [1, 2, 3, 0]  # "8" < "9" < "T"
    assert features.vocab == {"age": 8, "gender": 3, "occupation": 4, "zip_prefix": 4}
    assert all(column.dtype == np.int32 for column in features.columns.values())


def test_age_bucket_boundaries():
    ages = [17, 18, 24, 25, 34, 35, 44, 45, 49, 50, 55, 56, 80]
    users = pd.DataFrame({"age": ages}, index=[str(i) for i in range(len(ages))])
    buckets = user_features(users, users.index.to_numpy()).columns["age"]
    assert buckets.tolist() == [1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7]


def test_item_features_pad_genres_and_bucket_years():
    raw = read_ml100k(FIXTURES / "ml-100k")
    features = item_features(raw.items, np.array(["4", "2", "3", "404"]))
    genres = features.columns["genres"]
    assert genres.shape == (4, 3) and genres.dtype == np.int32
    # vocab: Action=1 Animation=2 Children's=3 Comedy=4 Crime=5 Drama=6 Thriller=7 unknown=8
    assert genres.tolist() == [[1, 5, 7], [6, 0, 0], [8, 0, 0], [0, 0, 0]]
    assert features.vocab == {"genres": 9, "year": 2}
    assert features.columns["year"].tolist() == [1, 1, 0, 0]


def test_year_buckets_are_five_years_wide():
    items = pd.DataFrame({"year": [1990.0, 1994.0, 1995.0, 2001.0, np.nan]},
                         index=["a", "b", "c", "d", "e"])  # fmt: skip
    features = item_features(items, np.array(["a", "b", "c", "d", "e"]))
    assert features.columns["year"].tolist() == [1, 1, 2, 3, 0]
    assert features.vocab["year"] == 4


def test_no_side_table_gives_no_features():
    assert user_features(None, np.array(["1"])).columns == {}
    assert item_features(None, np.array(["1"])).vocab == {}


def test_user_coders_reproduce_the_training_ids_and_flag_unseen_values():
    raw = read_ml100k(FIXTURES / "ml-100k")
    tokens = raw.users.index.to_numpy()
    features = user_features(raw.users, tokens)
    coders = user_feature_coders(raw.users)
    for name, coder in coders.items():
        restored = UserFieldCoder.from_json(json.loads(json.dumps(coder.to_json())))
        assert restored == coder and coder.vocab == features.vocab[name]
        np.testing.assert_array_equal(restored.encode(raw.users[coder.source]), features.columns[name])
    assert coders["zip_prefix"].encode(pd.Series(["94110", None])).tolist() == [2, 0]  # "9": second of 8, 9, T
    assert coders["age"].encode(pd.Series([33.0])).tolist() == [3]
    assert coders["occupation"].unknown("astronaut") and not coders["occupation"].unknown("student")
