"""Readers: every format from a tiny hand-written fixture, and every structural error message."""

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jaxrec.data import readers
from jaxrec.errors import JaxrecError

FIXTURES = Path(__file__).parent / "fixtures"
COLUMNS = ["user_id", "item_id", "rating", "timestamp", "line"]


def _copy(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def test_ml100k_reads_all_tables_and_keeps_bad_values_as_nan():
    raw = readers.read_ml100k(FIXTURES / "ml-100k")
    inter = raw.interactions
    assert list(inter.columns) == COLUMNS
    assert len(inter) == 8 and inter["line"].tolist() == list(range(1, 9))
    assert inter.loc[6, "user_id"] == "3" and math.isnan(inter.loc[6, "rating"])
    assert inter["timestamp"].iloc[0] == 100.0 and raw.source.endswith("u.data")
    assert raw.users.loc["3"].to_dict() == {
        "gender": "M", "occupation": "student", "zip": "T8H1N", "age": 16
    }  # fmt: skip
    assert raw.items.loc["1", "genres"] == ["Animation", "Children's", "Comedy"]
    assert raw.items.loc["2", "title"] == "Café Society (1995)"
    assert raw.items.loc["4", "year"] == 1995.0 and math.isnan(raw.items.loc["3", "year"])


def test_ml100k_without_u_genre_uses_the_standard_names(tmp_path):
    root = _copy("ml-100k", tmp_path)
    (root / "u.genre").unlink()
    assert readers.read_ml100k(root).items.loc["4", "genres"] == ["Action", "Crime", "Thriller"]


def test_ml1m():
    raw = readers.read_ml1m(FIXTURES / "ml-1m")
    assert raw.interactions["item_id"].tolist() == ["10", "20", "10", "30"]
    assert raw.interactions["rating"].tolist() == [5.0, 3.0, 4.0, 1.0]
    assert raw.users.loc["2", "age"] == 56 and raw.users.loc["1", "occupation"] == "10"
    assert raw.items.loc["20", "title"] == "Star Wars: Episode IV - A New Hope (1977)"
    assert raw.items.loc["20", "year"] == 1977.0
    assert raw.items.loc["30", "title"].startswith("Pokémon")


def test_ml_csv_quoted_titles_and_no_genres():
    raw = readers.read_dataset("ml20m", FIXTURES / "ml-20m")
    assert raw.interactions["line"].tolist() == [2, 3, 4, 5]
    assert math.isnan(raw.interactions.loc[2, "rating"])
    assert raw.items.loc["29", "title"].startswith("City of Lost Children, The")
    assert raw.items.loc["29", "year"] == 1995.0
    assert raw.items.loc["32", "genres"] == [] and math.isnan(raw.items.loc["32", "year"])
    assert raw.users is None


def test_recbole_atomic_files():
    raw = readers.read_recbole(FIXTURES / "recbole", "toy")
    assert raw.interactions[["user_id", "item_id"]].values.tolist() == [
        ["1", "1"], ["1", "2"], ["2", "1"]
    ]  # fmt: skip
    assert raw.interactions["line"].tolist() == [2, 3, 4]
    assert raw.users.loc["2"].to_dict() == {
        "gender": "F", "occupation": "other", "zip": "94043", "age": 53
    }  # fmt: skip
    assert raw.items.loc["1", "genres"] == ["Animation", "Children's", "Comedy"]
    assert raw.items.loc["1", "title"] == "Toy Story" and raw.items.loc["1", "year"] == 1995
    assert math.isnan(raw.items.loc["2", "year"])


def test_read_dataset_ml100k_falls_back_to_recbole_files(tmp_path):
    root = tmp_path / "ml-100k"
    root.mkdir()
    shutil.copy(FIXTURES / "recbole" / "toy.inter", root / "ml-100k.inter")
    assert len(readers.read_dataset("ml-100k", root).interactions) == 3


def test_generic_csv_with_named_columns_and_quotes():
    raw = readers.read_interactions(
        FIXTURES / "generic" / "interactions.csv",
        user_col="user", item_col="item", rating_col="score", timestamp_col="ts",
    )  # fmt: skip
    inter = raw.interactions
    assert inter["item_id"].tolist() == ["apple", "apple", "pear, green"]
    assert inter["rating"].tolist() == [1.5, 2.0, 3.0] and inter["line"].tolist() == [2, 3, 4]


def test_generic_tsv_without_ratings_or_timestamps():
    inter = readers.read_interactions(FIXTURES / "generic" / "interactions.tsv").interactions
    assert inter["user_id"].tolist() == ["u1", "u2", "u1"]
    assert inter["rating"].isna().all() and inter["timestamp"].isna().all()


def test_generic_parquet_ids_become_str_tokens(tmp_path):
    path = tmp_path / "log.parquet"
    pd.DataFrame({
        "user_id": [1, 2, 2], "item_id": [10.0, np.nan, 30.0],
        "when": pd.to_datetime(["2020-01-01", "2020-01-02", "2020-01-03"]),
    }).to_parquet(path)  # fmt: skip
    inter = readers.read_interactions(path, timestamp_col="when").interactions
    assert inter["user_id"].tolist() == ["1", "2", "2"]
    assert inter["item_id"].tolist() == ["10", "", "30"]
    assert inter["timestamp"].tolist() == [1577836800.0, 1577923200.0, 1578009600.0]
    assert inter["line"].tolist() == [1, 2, 3]


def test_missing_file_names_the_path_and_the_needed_files(tmp_path):
    root = _copy("ml-100k", tmp_path)
    (root / "u.item").unlink()
    with pytest.raises(JaxrecError, match=r"u\.item not found: the ml-100k format needs "
                       r"u\.data, u\.user, u\.item"):  # fmt: skip
        readers.read_ml100k(root)


@pytest.mark.parametrize(
    ("fixture", "message"),
    [
        ("u.data.short_row", r"u\.data: line 4: expected 4 tab-separated fields "
                             r"\(user_id, item_id, rating, timestamp\), found 3"),
        ("u.data.extra_field", r"u\.data: line 2: expected 4 tab-separated fields .*found 5"),
        ("u.data.blank", r"u\.data: no data rows"),
    ],
)  # fmt: skip
def test_bad_u_data(tmp_path, fixture, message):
    root = _copy("ml-100k", tmp_path)
    shutil.copy(FIXTURES / "malformed" / fixture, root / "u.data")
    with pytest.raises(JaxrecError, match=message):
        readers.read_ml100k(root)


def test_blank_lines_are_skipped_but_counted(tmp_path):
    root = _copy("ml-100k", tmp_path)
    (root / "u.data").write_text("1\t1\t5\t100\n\n2\t1\t4\t150\n\n")
    assert readers.read_ml100k(root).interactions["line"].tolist() == [1, 3]


def test_empty_value_in_last_field_is_kept_not_an_error(tmp_path):
    root = _copy("ml-100k", tmp_path)
    (root / "u.data").write_text("1\t1\t5\t\n2\t1\t4\t150\n")
    assert math.isnan(readers.read_ml100k(root).interactions.loc[0, "timestamp"])


def test_wrong_field_count_in_double_colon_file(tmp_path):
    root = _copy("ml-1m", tmp_path)
    (root / "ratings.dat").write_text("1::10::5::978300760\n1::20::3\n")
    with pytest.raises(JaxrecError, match=r"ratings\.dat: line 2: expected 4 '::'-separated"):
        readers.read_ml1m(root)


@pytest.mark.parametrize(
    ("fixture", "message"),
    [
        ("ratings.csv.missing_column", r"ratings\.csv: missing column 'rating' "
                                       r"\(found: userId, movieId, stars, timestamp\)"),
        ("ratings.csv.header_only", r"ratings\.csv: header only, no data rows"),
    ],
)  # fmt: skip
def test_bad_ratings_csv(tmp_path, fixture, message):
    root = _copy("ml-20m", tmp_path)
    shutil.copy(FIXTURES / "malformed" / fixture, root / "ratings.csv")
    with pytest.raises(JaxrecError, match=message):
        readers.read_ml_csv(root)


def test_empty_csv_file(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("")
    with pytest.raises(JaxrecError, match=r"log\.csv: file is empty"):
        readers.read_interactions(path)


def test_recbole_header_type_is_checked(tmp_path):
    shutil.copy(FIXTURES / "malformed" / "toy.inter.bad_type", tmp_path / "toy.inter")
    with pytest.raises(JaxrecError, match=r"toy\.inter: line 1: header field 'item_id:id'"):
        readers.read_recbole(tmp_path, "toy")


def test_unknown_extension_and_unknown_dataset(tmp_path):
    path = tmp_path / "log.json"
    path.write_text("{}")
    with pytest.raises(JaxrecError, match="cannot infer the separator"):
        readers.read_interactions(path)
    with pytest.raises(JaxrecError, match="unknown data set 'netflix'"):
        readers.read_dataset("netflix", tmp_path)
