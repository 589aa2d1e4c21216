"""Side features as int32 ids for embedding tables: 0 always means unknown / padding.

Vocabularies are built from the whole side table (sorted values), so ids do not depend on
which users or items survived preprocessing. Entities absent from the side table get 0s.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from jaxrec.data.types import Features

AGE_BUCKET_STARTS = (18, 25, 35, 45, 50, 56)  # MovieLens: <18, 18-24, 25-34, ..., 50-55, 56+
YEAR_BIN = 5  # release years per bucket


@dataclasses.dataclass(frozen=True)
class UserFieldCoder:
    """How one raw user attribute becomes a feature id (0 = unknown). Training builds its ids with
    it, and a serving bundle stores it, so a new user's features are encoded exactly the same way.

    Categorical: ids 1..V over `values` (the sorted values of the whole side table), compared on
    the first `prefix` characters when set. Numeric: id = 1 + the number of `bucket_starts` <= value.
    """

    source: str  # column of the raw side table
    values: tuple[str, ...] = ()
    prefix: int | None = None
    bucket_starts: tuple[float, ...] = ()

    @property
    def vocab(self) -> int:
        """Ids including 0: V + 1, or for buckets the len(starts) + 1 intervals and 0."""
        return (len(self.bucket_starts) + 1 if self.bucket_starts else len(self.values)) + 1

    def clean(self, values: pd.Series) -> pd.Series:
        """The compared form of each value: stripped (and cut to the prefix) string, "" if missing."""
        text = values.astype(str).str.strip()
        if self.prefix is not None:
            text = text.str[: self.prefix]
        return text.where(values.notna() & (text != "nan"), "")

    def encode(self, values: pd.Series) -> np.ndarray:
        """int32 ids; missing values, and values outside the vocabulary, are 0."""
        if self.bucket_starts:
            numbers = pd.to_numeric(values, errors="coerce").astype(float).to_numpy()
            ids = np.digitize(numbers, self.bucket_starts) + 1
            return np.where(np.isnan(numbers), 0, ids).astype(np.int32)
        clean = self.clean(values).to_numpy(dtype=str)
        vocab = np.asarray(self.values, dtype=str)
        position = np.searchsorted(vocab, clean).clip(max=max(len(vocab) - 1, 0))
        found = (vocab[position] == clean) if len(vocab) else np.zeros(len(clean), bool)
        return np.where(found & (clean != ""), position + 1, 0).astype(np.int32)

    def unknown(self, value) -> bool:
        """Whether a given (not missing) value falls outside what training saw."""
        return value is not None and self.encode(pd.Series([value], dtype=object))[0] == 0

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict) -> "UserFieldCoder":
        return cls(data["source"], tuple(data["values"]), data["prefix"], tuple(data["bucket_starts"]))


def _categorical_coder(source: str, column: pd.Series, prefix: int | None = None) -> UserFieldCoder:
    coder = UserFieldCoder(source, prefix=prefix)
    return dataclasses.replace(coder, values=tuple(sorted(set(coder.clean(column)) - {""})))


def user_feature_coders(users: pd.DataFrame | None) -> dict[str, UserFieldCoder]:
    """age bucket (7 MovieLens buckets), gender, occupation, zip prefix (first character: the US
    postal region digit, or the letter of a Canadian code), for the columns the table has."""
    if users is None:
        return {}
    coders = {}
    if "age" in users:
        coders["age"] = UserFieldCoder("age", bucket_starts=AGE_BUCKET_STARTS)
    for name, source, prefix in (
        ("gender", "gender", None),
        ("occupation", "occupation", None),
        ("zip_prefix", "zip", 1),
    ):
        if source in users:
            coders[name] = _categorical_coder(source, users[source], prefix)
    return coders


def _lookup(ids: pd.Series, tokens: np.ndarray) -> np.ndarray:
    """Per-entity ids in token order; entities missing from the side table get 0."""
    ids = ids[~ids.index.duplicated()]
    return ids.reindex(pd.Index(tokens, dtype=str)).fillna(0).to_numpy(np.int32)


def _year_buckets(years: pd.Series, tokens: np.ndarray) -> tuple[np.ndarray, int]:
    """5-year bins counted from the earliest year in the table (bin 1 holds the earliest)."""
    years = pd.to_numeric(years, errors="coerce").astype(float).dropna()
    if years.empty:
        return np.zeros(len(tokens), np.int32), 1
    bins = (years // YEAR_BIN - years.min() // YEAR_BIN + 1).astype(np.int64)
    return _lookup(bins, tokens), int(bins.max()) + 1


def _genre_lists(genres: pd.Series, tokens: np.ndarray) -> tuple[np.ndarray, int]:
    """Multi-hot genres as padded id lists [num_items, max_genres] (at least one column)."""
    lists = genres[~genres.index.duplicated()].reindex(pd.Index(tokens, dtype=str))
    lists = [g if isinstance(g, list) else [] for g in lists]
    vocab = {g: i + 1 for i, g in enumerate(sorted({g for gs in genres if isinstance(gs, list)
                                                    for g in gs}))}  # fmt: skip
    ids = np.zeros((len(tokens), max([1, *map(len, lists)])), np.int32)
    for row, names in enumerate(lists):
        ids[row, : len(names)] = [vocab[g] for g in names]
    return ids, len(vocab) + 1


def _build(table: pd.DataFrame | None, tokens: np.ndarray, makers: dict) -> Features:
    if table is None:
        return Features({}, {})
    table = table.set_axis(table.index.astype(str))
    columns, vocab = {}, {}
    for name, (source, make) in makers.items():
        if source in table:
            columns[name], vocab[name] = make(table[source], tokens)
    return Features(columns, vocab)


def user_features(users: pd.DataFrame | None, user_tokens: np.ndarray) -> Features:
    """The ids of user_feature_coders for every user token (0s for users missing from the table)."""
    coders = user_feature_coders(users)
    if not coders:
        return Features({}, {})
    users = users.set_axis(users.index.astype(str))
    columns = {
        name: _lookup(pd.Series(coder.encode(users[coder.source]), index=users.index), user_tokens)
        for name, coder in coders.items()
    }
    return Features(columns, {name: coder.vocab for name, coder in coders.items()})


def item_features(items: pd.DataFrame | None, item_tokens: np.ndarray) -> Features:
    """genres (padded id lists) and release-year bucket (5-year bins)."""
    return _build(items, item_tokens, {
        "genres": ("genres", _genre_lists),
        "year": ("year", _year_buckets),
    })  # fmt: skip
