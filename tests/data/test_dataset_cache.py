"""load_dataset keeps the last data set: the jobs of a multirun that share a data config share it."""

import dataclasses

import numpy as np

from jaxrec.config import CsvConfig, SyntheticConfig
from jaxrec.data.dataset import load_dataset

TOY = SyntheticConfig(num_users=40, num_items=30, num_interactions=400, seed=0)


def test_the_same_data_config_twice_returns_the_same_object_and_another_reloads():
    first = load_dataset(TOY)
    assert load_dataset(dataclasses.replace(TOY)) is first  # an equal config, not the same object
    other = load_dataset(dataclasses.replace(TOY, seed=1))
    assert other is not first
    reloaded = load_dataset(TOY)  # one entry: the seed-1 load replaced it
    assert reloaded is not first
    np.testing.assert_array_equal(reloaded.interactions.item, first.interactions.item)


def test_an_edited_file_reloads(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id\na,x\nb,y\nb,x\n")
    cfg = CsvConfig(path=str(path), split="random", valid_ratio=0.0, test_ratio=0.0)
    assert len(load_dataset(cfg).interactions) == 3
    path.write_text("user_id,item_id\na,x\nb,y\n")
    assert len(load_dataset(cfg).interactions) == 2
