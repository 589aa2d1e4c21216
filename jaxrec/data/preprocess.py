"""Cleaning: RawData (str tokens, maybe bad rows) -> Interactions (contiguous int32 ids).

Every step logs how many rows it dropped and where they came from (source line numbers), and
reports its count, so a surprising data set size can always be traced back to a step.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from jaxrec.data.types import Interactions, RawData
from jaxrec.errors import JaxrecError

log = logging.getLogger("jaxrec.data")
_SHOWN_LINES = 5  # offending line numbers quoted per step


def _log_dropped(source: str, step: str, lines: pd.Series) -> int:
    if len(lines):
        shown = ", ".join(str(n) for n in lines.iloc[:_SHOWN_LINES])
        more = ", ..." if len(lines) > _SHOWN_LINES else ""
        log.info("%s: %s: dropped %d rows (lines %s%s)", source, step, len(lines), shown, more)
    return len(lines)


INVALID_REASONS = ("", "missing user id", "missing item id", "rating is not a number",
                   "timestamp is not a number or a date", "timestamp out of range")  # fmt: skip
MAX_TIMESTAMP = 2.0**62  # |seconds| beyond this would wrap around when stored as int64


def _invalid_reasons(df: pd.DataFrame, has_rating: bool, has_time: bool) -> np.ndarray:
    """Per row, an index into INVALID_REASONS (0: fine). Ratings and timestamps only count when
    the data set has them at all."""
    time = df["timestamp"].to_numpy(np.float64)
    conditions = [
        df["user_id"].fillna("").eq("").to_numpy(),
        df["item_id"].fillna("").eq("").to_numpy(),
        has_rating & ~np.isfinite(df["rating"].to_numpy()),
        has_time & np.isnan(time),
        has_time & ~(np.abs(time) <= MAX_TIMESTAMP),
    ]
    return np.select(conditions, [1, 2, 3, 4, 5], default=0)


def _drop_invalid(df, source, has_rating, has_time, strict) -> tuple[pd.DataFrame, int]:
    reasons = _invalid_reasons(df, has_rating, has_time)
    bad = reasons != 0
    if strict and bad.any():
        first = int(np.argmax(bad))
        raise JaxrecError(
            f"{source}: line {df['line'].iloc[first]}: {INVALID_REASONS[reasons[first]]} "
            f"({int(bad.sum())} bad rows in all; strict mode is on)"
        )
    if bad.any():
        by_reason = np.bincount(reasons[bad], minlength=len(INVALID_REASONS))
        log.info(
            "%s: invalid rows by reason: %s",
            source,
            ", ".join(f"{INVALID_REASONS[r]} {n}" for r, n in enumerate(by_reason) if n),
        )
    return df[~bad], _log_dropped(source, "invalid ids/ratings/timestamps", df.loc[bad, "line"])


def _drop_below(df, source, min_rating, has_rating) -> tuple[pd.DataFrame, int]:
    if min_rating is None:
        return df, 0
    if not has_rating:
        raise JaxrecError(f"{source}: min_rating={min_rating} is set but the data has no ratings")
    low = df["rating"] < min_rating
    return df[~low], _log_dropped(source, f"rating < {min_rating}", df.loc[low, "line"])


def _pair_keys(df: pd.DataFrame) -> np.ndarray:
    """One int64 per (user, item) pair: hashing ints is much faster than pairs of strings."""
    users, _ = pd.factorize(df["user_id"])
    items, item_tokens = pd.factorize(df["item_id"])
    return users.astype(np.int64) * len(item_tokens) + items


def _drop_duplicates(df, source) -> tuple[pd.DataFrame, int]:
    """Keep the latest (by timestamp, then by line) row of each (user, item) pair."""
    latest_last = np.lexsort((df["line"].to_numpy(), df["timestamp"].to_numpy()))
    dup = np.zeros(len(df), bool)
    dup[latest_last] = pd.Series(_pair_keys(df)[latest_last]).duplicated(keep="last").to_numpy()
    return df[~dup], _log_dropped(source, "duplicate (user, item) pairs", df.loc[dup, "line"])


def _k_core(df, source, k) -> tuple[pd.DataFrame, int]:
    """Repeat until stable: dropping a user can push an item below k, and vice versa."""
    kept = df
    while k > 0:
        users = kept.groupby("user_id")["user_id"].transform("size")
        items = kept.groupby("item_id")["item_id"].transform("size")
        enough = (users >= k) & (items >= k)
        if enough.all():
            break
        kept = kept[enough]
    dropped = df.loc[~df.index.isin(kept.index), "line"].sort_values()
    return kept, _log_dropped(source, f"{k}-core", dropped)


def _token_order(tokens: np.ndarray) -> np.ndarray:
    """Argsort of unique str tokens; numeric when all are integers ("2" before "10")."""
    numbers = pd.to_numeric(pd.Series(tokens), errors="coerce")
    if numbers.notna().all() and (numbers % 1 == 0).all():
        return np.lexsort((tokens, numbers.to_numpy()))
    return np.argsort(tokens, kind="stable")


def _contiguous_ids(tokens: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(int32 id per row, token per id), ids following the sorted token order."""
    codes, uniques = pd.factorize(tokens)
    uniques = np.asarray(uniques, dtype=str)
    order = _token_order(uniques)
    id_of_code = np.empty(len(order), np.int32)
    id_of_code[order] = np.arange(len(order), dtype=np.int32)
    return id_of_code[codes], uniques[order]


def _reindex(df: pd.DataFrame, has_rating: bool, has_time: bool) -> Interactions:
    user, user_tokens = _contiguous_ids(df["user_id"])
    item, item_tokens = _contiguous_ids(df["item_id"])
    line = df["line"].to_numpy(np.int64)
    time = df["timestamp"].to_numpy(np.float64).astype(np.int64) if has_time else line
    rating = df["rating"].to_numpy(np.float32) if has_rating else np.ones(len(df), np.float32)
    order = np.lexsort((line, time, user))
    return Interactions(
        user=user[order], item=item[order], rating=rating[order], timestamp=time[order],
        user_tokens=user_tokens, item_tokens=item_tokens,
    )  # fmt: skip


def preprocess(
    raw: RawData, *, min_rating: float | None = None, k_core: int = 0, strict: bool = False
) -> tuple[Interactions, dict[str, int]]:
    """Drop invalid rows, apply the rating threshold, dedup, k-core, then reindex.

    Returns the interactions sorted by (user, timestamp, line) and the rows dropped per step:
    {"invalid", "below_min_rating", "duplicates", "k_core", "kept"}. Ratings are 1.0 and
    timestamps the source line number when the data set has none. `strict` turns the first
    invalid row into an error instead of a logged drop.
    """
    df, source = raw.interactions, raw.source
    if raw.columns is None:  # the reader did not say: a column with any value is one the source has
        has_rating, has_time = bool(df["rating"].notna().any()), bool(df["timestamp"].notna().any())
    else:
        has_rating, has_time = "rating" in raw.columns, "timestamp" in raw.columns
    counts = {}
    df, counts["invalid"] = _drop_invalid(df, source, has_rating, has_time, strict)
    df, counts["below_min_rating"] = _drop_below(df, source, min_rating, has_rating)
    df, counts["duplicates"] = _drop_duplicates(df, source)
    df, counts["k_core"] = _k_core(df, source, k_core)
    if df.empty:
        raise JaxrecError(f"{source}: no interactions left after preprocessing (dropped: {counts})")
    counts["kept"] = len(df)
    inter = _reindex(df, has_rating, has_time)
    log.info("%s: kept %d interactions, %d users, %d items", source, len(inter),
             inter.num_users, inter.num_items)  # fmt: skip
    return inter, counts
