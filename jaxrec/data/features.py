"""Side features as int32 ids for embedding tables: 0 always means unknown / padding.

Vocabularies are built from the whole side table (sorted values), so ids do not depend on
which users or items survived preprocessing. Entities absent from the side table get 0s.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from jaxrec.data.types import Features

AGE_BUCKET_STARTS = (18, 25, 35, 45, 50, 56)  # MovieLens: <18, 18-24, 25-34, ..., 50-55, 56+
YEAR_BIN = 5  # release years per bucket


def _categorical(values: pd.Series, tokens: np.ndarray) -> tuple[np.ndarray, int]:
    """Ids 1..V over the sorted non-empty values of the whole column, looked up per token."""
    clean = values.astype(str).str.strip().where(values.notna(), "")
    vocab = np.array(sorted(set(clean) - {""}))
    ids = pd.Series(np.searchsorted(vocab, clean) + 1, index=values.index)[clean != ""]
    return _lookup(ids, tokens), len(vocab) + 1


def _lookup(ids: pd.Series, tokens: np.ndarray) -> np.ndarray:
    """Per-entity ids in token order; entities missing from the side table get 0."""
    ids = ids[~ids.index.duplicated()]
    return ids.reindex(pd.Index(tokens, dtype=str)).fillna(0).to_numpy(np.int32)


def _age_buckets(ages: pd.Series, tokens: np.ndarray) -> tuple[np.ndarray, int]:
    years = pd.to_numeric(ages, errors="coerce").astype(float)
    buckets = pd.Series(np.digitize(years.to_numpy(), AGE_BUCKET_STARTS) + 1, index=ages.index)
    return _lookup(buckets[years.notna()], tokens), len(AGE_BUCKET_STARTS) + 2


def _year_buckets(years: pd.Series, tokens: np.ndarray) -> tuple[np.ndarray, int]:
    """5-year bins counted from the earliest year in the table (bin 1 holds the earliest)."""
    years = pd.to_numeric(years, errors="coerce").astype(float).dropna()
    if years.empty:
        return np.zeros(len(tokens), np.int32), 1
    bins = (years // YEAR_BIN - years.min() // YEAR_BIN + 1).astype(np.int64)
    return _lookup(bins, tokens), int(bins.max()) + 1


def _zip_prefix(zips: pd.Series, tokens: np.ndarray) -> tuple[np.ndarray, int]:
    """The first character: the US postal region digit, or the letter of a Canadian code."""
    return _categorical(zips.astype(str).str.strip().str[:1].where(zips.notna()), tokens)


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
    """age bucket (7 MovieLens buckets), gender, occupation, zip prefix (first character)."""
    return _build(users, user_tokens, {
        "age": ("age", _age_buckets),
        "gender": ("gender", _categorical),
        "occupation": ("occupation", _categorical),
        "zip_prefix": ("zip", _zip_prefix),
    })  # fmt: skip


def item_features(items: pd.DataFrame | None, item_tokens: np.ndarray) -> Features:
    """genres (padded id lists) and release-year bucket (5-year bins)."""
    return _build(items, item_tokens, {
        "genres": ("genres", _genre_lists),
        "year": ("year", _year_buckets),
    })  # fmt: skip
