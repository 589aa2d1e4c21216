"""Synthetic interactions with a learnable low-rank structure, for tests and benchmarks.

Each interaction picks a user uniformly, then an item with probability
    p(i | u) ∝ popularity_i * exp(<user_u, item_i> / TEMPERATURE)
so a model that learns the latent factors beats a popularity baseline. Sampling that exactly
needs a [users, items] matrix; instead each interaction draws CANDIDATES items from the
popularity prior and keeps one with probability ∝ exp(affinity / T) (sampling-importance-
resampling: exact as CANDIDATES grows), which costs O(n * CANDIDATES * rank).
Popularity is Zipf over a random item order, drawn by inverting the continuous power law
(no table search), so 10^6 interactions take about a second.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from jaxrec.data.types import RawData

TEMPERATURE = 0.5  # affinities have unit variance: lower means more predictable choices
CANDIDATES = 16  # popularity draws per interaction
CHUNK = 1 << 16  # interactions per vectorised block, bounds memory to ~CHUNK*CANDIDATES*rank
START_TIME = 1_600_000_000  # seconds; timestamps then increase by 1..60 s per interaction


def _draw_zipf(shape: tuple[int, ...], num_items: int, zipf_a: float, rng) -> np.ndarray:
    """Popularity ranks 0..num_items-1 with P(rank r) ∝ (r+1)^-a, via the inverse CDF of the
    continuous power law on [1, num_items + 1)."""
    uniform = rng.random(shape, dtype=np.float32)
    if np.isclose(zipf_a, 1.0):
        ranks = np.exp(uniform * np.log(num_items + 1.0))
    else:
        top = float(num_items + 1) ** (1 - zipf_a)
        ranks = ((top - 1) * uniform + 1) ** (1 / (1 - zipf_a))
    return np.minimum(ranks.astype(np.int64) - 1, num_items - 1)


def _choose_items(user_vecs, item_vecs, item_of_rank, zipf_a, rng) -> tuple[np.ndarray, ...]:
    """One item per row of user_vecs [b, rank]: (item ids [b], affinities [b]).

    Keeping candidate c with probability ∝ w_c is an exponential race: argmin(E_c / w_c).
    """
    ranks = _draw_zipf((len(user_vecs), CANDIDATES), len(item_vecs), zipf_a, rng)
    candidates = item_of_rank[ranks]
    affinity = (item_vecs[candidates] @ user_vecs[:, :, None])[..., 0]
    race = rng.standard_exponential(affinity.shape, dtype=np.float32)
    pick = np.argmin(race * np.exp(-affinity / TEMPERATURE), axis=1)
    rows = np.arange(len(user_vecs))
    return candidates[rows, pick], affinity[rows, pick]


def generate_synthetic(
    num_users: int, num_items: int, num_interactions: int, seed: int, rank: int = 8, zipf_a: float = 1.1
) -> RawData:
    """Interactions from Zipf popularity times a rank-`rank` affinity; deterministic per seed.

    Ratings 1..5 grow with the affinity (plus noise); timestamps strictly increase by row.
    Duplicate (user, item) pairs can occur, as in real logs; preprocessing removes them.
    """
    rng = np.random.default_rng(seed)
    user_vecs, item_vecs = _latent_factors(num_users, num_items, rank, rng)
    item_of_rank = rng.permutation(num_items)
    users = rng.integers(num_users, size=num_interactions)
    items = np.empty(num_interactions, np.int64)
    affinity = np.empty(num_interactions, np.float32)
    for start in range(0, num_interactions, CHUNK):
        block = slice(start, start + CHUNK)
        items[block], affinity[block] = _choose_items(user_vecs[users[block]], item_vecs, item_of_rank, zipf_a, rng)
    ratings = np.clip(np.rint(2.0 + affinity + rng.normal(scale=0.5, size=num_interactions)), 1, 5)
    timestamps = START_TIME + np.cumsum(rng.integers(1, 61, size=num_interactions))
    interactions = pd.DataFrame({
        "user_id": pd.Series(users).astype(str),
        "item_id": pd.Series(items).astype(str),
        "rating": ratings.astype(np.float64),
        "timestamp": timestamps.astype(np.float64),
        "line": np.arange(1, num_interactions + 1, dtype=np.int64),
    })  # fmt: skip
    users, items = _side_features(user_vecs, item_vecs, np.random.default_rng([seed, 2]))
    return RawData(interactions, source=f"synthetic(seed={seed})", users=users, items=items)


def _latent_factors(num_users: int, num_items: int, rank: int, rng) -> tuple[np.ndarray, ...]:
    """User [num_users, rank] and item [num_items, rank] factors: the generator's first draws."""
    scale = rank**-0.25  # so <user, item> has unit variance
    user_vecs = rng.normal(scale=scale, size=(num_users, rank)).astype(np.float32)
    item_vecs = rng.normal(scale=scale, size=(num_items, rank)).astype(np.float32)
    return user_vecs, item_vecs


def generate_side_tables(num_users: int, num_items: int, seed: int, rank: int = 8) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The users and items side tables generate_synthetic returns for the same arguments, without
    drawing any interaction: what a plan needs to size the side-feature tables."""
    user_vecs, item_vecs = _latent_factors(num_users, num_items, rank, np.random.default_rng(seed))
    return _side_features(user_vecs, item_vecs, np.random.default_rng([seed, 2]))


def _side_features(user_vecs, item_vecs, rng) -> tuple[pd.DataFrame, pd.DataFrame]:
    """MovieLens-shaped side tables that carry part of the latent taste, so feature models can
    place users and items they have few interactions for: gender and occupation read the sign and
    the argmax of latent dimensions, genres are the dimensions where an item's factor is high;
    age, zip and year are noise. Drawn from their own generator: interactions do not change."""
    num_users, rank = user_vecs.shape
    users = pd.DataFrame({
        "age": rng.integers(7, 74, num_users),
        "gender": np.where(user_vecs[:, 0] > 0, "M", "F"),
        "occupation": [f"occ{k}" for k in np.argmax(user_vecs[:, 1:], axis=1)],
        "zip": [f"{z:05d}" for z in rng.integers(0, 100_000, num_users)],
    }, index=pd.Index(np.arange(num_users).astype(str)))  # fmt: skip
    high = item_vecs > np.quantile(item_vecs, 0.75)
    items = pd.DataFrame({
        "title": [f"item {i}" for i in range(len(item_vecs))],
        "genres": [[f"g{k}" for k in np.flatnonzero(row)] for row in high],
        "year": rng.integers(1950, 2020, len(item_vecs)).astype(float),
    }, index=pd.Index(np.arange(len(item_vecs)).astype(str)))  # fmt: skip
    return users, items
