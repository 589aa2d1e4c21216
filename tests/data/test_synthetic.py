"""Synthetic data: deterministic per seed, well-formed, popularity-skewed and learnable."""

import numpy as np
import pandas as pd

from jaxrec.data import synthetic
from jaxrec.data.preprocess import preprocess


def test_same_seed_same_data_other_seed_other_data():
    first = synthetic.generate_synthetic(50, 40, 2000, seed=7).interactions
    again = synthetic.generate_synthetic(50, 40, 2000, seed=7).interactions
    other = synthetic.generate_synthetic(50, 40, 2000, seed=8).interactions
    pd.testing.assert_frame_equal(first, again)
    assert not first["item_id"].equals(other["item_id"])


def test_columns_ranges_and_time_order():
    raw = synthetic.generate_synthetic(30, 20, 5000, seed=0)
    df = raw.interactions
    assert list(df.columns) == ["user_id", "item_id", "rating", "timestamp", "line"]
    assert set(df["rating"].unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert np.all(np.diff(df["timestamp"].to_numpy()) > 0)
    assert df["user_id"].astype(int).between(0, 29).all()
    assert df["item_id"].astype(int).between(0, 19).all()
    inter, counts = preprocess(raw)
    assert counts["invalid"] == 0 and inter.num_items <= 20


def _independence_chi2(df: pd.DataFrame) -> float:
    """Chi-square of the user x item table against 'users pick items by popularity alone'."""
    observed = pd.crosstab(df["user_id"], df["item_id"]).to_numpy(float)
    expected = observed.sum(1, keepdims=True) * observed.sum(0, keepdims=True) / observed.sum()
    return float(((observed - expected) ** 2 / expected).sum())


def test_popularity_is_skewed_and_choices_depend_on_the_user(monkeypatch):
    df = synthetic.generate_synthetic(40, 30, 20000, seed=1).interactions
    counts = df["item_id"].value_counts().to_numpy()
    assert counts[0] > 5 * np.median(counts)
    monkeypatch.setattr(synthetic, "TEMPERATURE", 1e9)  # affinity switched off
    popularity_only = synthetic.generate_synthetic(40, 30, 20000, seed=1).interactions
    degrees_of_freedom = 39 * 29
    assert _independence_chi2(popularity_only) < 1.5 * degrees_of_freedom
    assert _independence_chi2(df) > 5 * degrees_of_freedom
