"""The data types passed between the stages of the data pipeline.

Raw tokens (strings) live only in `RawData`; everything after preprocessing is
contiguous int32 ids with the mapping back to tokens kept alongside.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd


@dataclasses.dataclass
class RawData:
    """What a reader returns, before any cleaning.

    interactions: columns `user_id`, `item_id` (str tokens), `rating` (float64, NaN when the
        format has none), `timestamp` (float64 seconds, NaN when absent), `line` (1-based line
        number in `source`, for error messages).
    users / items: raw side information indexed by the str token (None when the format has none).
        ml-100k/ml-1m users: `age` (int), `gender` (str), `occupation` (str), `zip` (str).
        items: `title` (str), `genres` (list[str]), `year` (float, NaN if unknown).
    """

    interactions: pd.DataFrame
    source: str
    users: pd.DataFrame | None = None
    items: pd.DataFrame | None = None
    columns: tuple[str, ...] | None = None  # of rating, timestamp: those the source has (None: any with a value)


@dataclasses.dataclass(frozen=True)
class Interactions:
    """Clean, deduplicated interactions with contiguous int32 ids.

    Arrays are aligned, length n, sorted by (user, timestamp, original order) so each user's
    history is a contiguous chronological run.
    """

    user: np.ndarray  # int32 [n]
    item: np.ndarray  # int32 [n]
    rating: np.ndarray  # float32 [n]; 1.0 for implicit data sets
    timestamp: np.ndarray  # int64 [n]; row order when the source has no timestamps
    user_tokens: np.ndarray  # str [num_users]: contiguous id -> original token
    item_tokens: np.ndarray  # str [num_items]

    @property
    def num_users(self) -> int:
        return len(self.user_tokens)

    @property
    def num_items(self) -> int:
        return len(self.item_tokens)

    def __len__(self) -> int:
        return len(self.user)

    def subset(self, index: np.ndarray) -> "Interactions":
        return dataclasses.replace(
            self,
            user=self.user[index],
            item=self.item[index],
            rating=self.rating[index],
            timestamp=self.timestamp[index],
        )


@dataclasses.dataclass(frozen=True)
class Split:
    """Train / validation / test interactions over the same id space."""

    train: Interactions
    valid: Interactions
    test: Interactions


@dataclasses.dataclass(frozen=True)
class Features:
    """Categorical side features as int32 ids ready for embedding tables (0 = unknown/padding).

    columns: name -> int32 array [num_entities] (single-valued) or [num_entities, max_len]
        (multi-valued, padded with 0). vocab: name -> vocabulary size including the 0 id.
    """

    columns: dict[str, np.ndarray]
    vocab: dict[str, int]


@dataclasses.dataclass(frozen=True)
class Field:
    """An id-valued input: `vocab` ids (0 = unknown for side features), `width` ids per entity
    (multi-valued fields are padded with -1)."""

    vocab: int
    width: int = 1


@dataclasses.dataclass(frozen=True)
class Schema:
    """What a model needs to size its tables, without the data: user and item id spaces and
    their side features (name -> Field, as in Features); for CTR data, the per-example
    categorical fields and the number of dense features."""

    num_users: int
    num_items: int
    user_fields: dict[str, Field] = dataclasses.field(default_factory=dict)
    item_fields: dict[str, Field] = dataclasses.field(default_factory=dict)
    example_fields: dict[str, Field] = dataclasses.field(default_factory=dict)
    num_dense: int = 0
    mean_rating: float = 0.0  # mean training rating: where rating models (loss mse) start their global bias
