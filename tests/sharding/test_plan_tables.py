"""The planner plans exactly the tables training creates, for every model: the model's own table
specs on the data's schema, with side-feature tables sized from the data's side tables."""

from pathlib import Path

import pandas as pd
import pytest

from jaxrec.config import compose_config
from jaxrec.data import dataset, readers, synthetic
from jaxrec.data.dataset import data_schema, load_dataset
from jaxrec.models import MODEL_CLASSES
from jaxrec.plan import make_plan_json
from jaxrec.train_lib import build_engine

# Small enough to load in well under a second; every user and item has interactions, so the
# data's ids match the config's sizes, as they do for MovieLens under default preprocessing.
INTERACTIONS = ["data=synthetic", "data.num_users=60", "data.num_items=40", "data.num_interactions=3000"]
CTR = ["data=criteo_synthetic", "data.num_examples=2000", "data.vocab_size=50"]
MOVIELENS_FIXTURES = Path(__file__).parents[1] / "data" / "fixtures"
SIDE_TABLES = {"user_age", "user_gender", "user_occupation", "user_zip_prefix", "item_genres", "item_year"}


def _config(model: str, data: list[str] | None = None):
    data = data or (CTR if model == "dcn_v2" else INTERACTIONS)
    overrides = [f"model={model}", "model.dim=8", "train.batch_size=32", *data]
    return compose_config(overrides)


@pytest.mark.parametrize("model", sorted(MODEL_CLASSES))
def test_plan_has_exactly_the_tables_training_creates(model):
    cfg = _config(model)
    tables = make_plan_json(cfg, with_xla=False)["tables"]
    planned = {name: (table["rows"], table["dim"]) for name, table in tables.items()}
    created = build_engine(cfg, load_dataset(cfg.data).schema).collection.specs
    assert planned == {name: (spec.rows, spec.dim) for name, spec in created.items()}
    if model == "two_tower":
        assert SIDE_TABLES <= set(planned)


def test_side_feature_fields_without_interactions_equal_the_loaded_data_sets():
    """Vocabularies and widths, as Dataset.schema builds them after reading every interaction."""
    data = _config("two_tower").data
    planned, loaded = data_schema(data, side_features=True), load_dataset(data).schema
    assert planned.user_fields == loaded.user_fields and planned.item_fields == loaded.item_fields
    assert set(planned.user_fields) == {"age", "gender", "occupation", "zip_prefix"}
    assert planned.item_fields["genres"].width > 1


def test_side_tables_alone_are_the_generators_side_tables():
    raw = synthetic.generate_synthetic(60, 40, 500, seed=3)
    users, items = synthetic.generate_side_tables(60, 40, seed=3)
    pd.testing.assert_frame_equal(users, raw.users)
    pd.testing.assert_frame_equal(items, raw.items)


@pytest.mark.parametrize("name, folder", [("ml100k", "ml-100k"), ("ml1m", "ml-1m"), ("ml20m", "ml-20m")])
def test_movielens_side_feature_fields_equal_the_loaded_data_sets(monkeypatch, name, folder):
    """Each MovieLens format's side tables (tiny fixtures standing in for the fetched folder)."""
    fixture = MOVIELENS_FIXTURES / folder
    monkeypatch.setattr(dataset, "read_raw", lambda cfg: readers.read_dataset(name, fixture))
    data = _config("two_tower", [f"data={name}"]).data
    planned, loaded = data_schema(data, side_features=True), load_dataset(data).schema
    assert planned.user_fields == loaded.user_fields and planned.item_fields == loaded.item_fields
    assert "genres" in planned.item_fields and bool(planned.user_fields) == (name != "ml20m")
