"""Per-process input: a pipeline built for rows a..b of each global batch returns exactly those
rows of the one-process batch (negatives, windows and masks included), for pairs, sequences and
CTR, so P processes together feed what one process would."""

import numpy as np
import pytest

from jaxrec.config import MODEL_CONFIGS, CriteoSyntheticConfig, DCNv2Config, SyntheticConfig
from jaxrec.data.ctr import load_ctr_dataset
from jaxrec.data.dataset import load_dataset
from jaxrec.data.pipeline import make_train_dataset
from jaxrec.models import make_model

BATCH = 16


@pytest.fixture(scope="module")
def dataset():
    return load_dataset(SyntheticConfig(num_users=60, num_items=40, num_interactions=1500))


def _assert_halves_match(make):
    whole, _ = make(None)
    halves = [make(slice(a, a + BATCH // 2))[0] for a in (0, BATCH // 2)]
    for step in (0, 3, len(whole) - 1):
        for name, values in whole[step].items():
            assert np.array_equal(values, np.concatenate([h[step][name] for h in halves])), (step, name)


@pytest.mark.parametrize("name,loss", [("mf", "bce"), ("mf", "mse"), ("sasrec", "softmax"), ("bert4rec", "softmax")])
def test_interaction_rows_of_two_processes_equal_one(dataset, name, loss):
    sequence = {} if name == "mf" else {"max_len": 10, "num_layers": 1}
    model = make_model(MODEL_CONFIGS[name](loss=loss, dim=8, **sequence), dataset.schema)
    _assert_halves_match(
        lambda rows: make_train_dataset(
            model, dataset, num_negatives=3, loss=loss, batch_size=BATCH, epochs=2, seed=4, rows=rows
        )
    )


def test_ctr_rows_of_two_processes_equal_one():
    data = load_ctr_dataset(CriteoSyntheticConfig(num_examples=400, num_sparse=3, vocab_size=20))
    model = make_model(DCNv2Config(dim=4), data.schema)
    _assert_halves_match(
        lambda rows: make_train_dataset(
            model, data, num_negatives=0, loss="bce", batch_size=BATCH, epochs=2, seed=4, rows=rows
        )
    )
