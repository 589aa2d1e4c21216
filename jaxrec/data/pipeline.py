"""Grain pipelines: shuffled training batches with sampled negatives, deterministic per seed.

One Grain dataset covers the whole run, one element per train step, so a single iterator state,
saved in a checkpoint, pins the exact position in the data. Which training interactions step k
reads (a seeded permutation per epoch, cut into len(train) // batch_size batches) is
data/steps.py's, shared with the sequence and CTR pipelines.

Negatives are uniform over the catalogue (they can hit an item the user interacted with, the
standard "uniform sampled negatives" of NCF and most libraries), drawn per batch from Grain's
per-element generator, so batch k of a run is the same whatever the process or restart.

Batch layout: every per-user input of the model (`user` [B, 1] int32, side features [B, 1, ...])
and every per-item input for each candidate (`item` [B, C] int32 with column 0 the positive,
side features [B, C, ...]), and label [B, C] float32 (1/0 for bce, bpr and softmax, the rating
for mse where C = 1).
"""

from __future__ import annotations

import grain
import numpy as np

from jaxrec.data.dataset import Dataset
from jaxrec.data.steps import StepRows, permutation_order, steps_per_epoch
from jaxrec.data.types import Interactions


class _PairBatch(grain.transforms.RandomMap):
    """Rows `rows` of batch `step` of the run: the permuted training pairs, negatives, and every
    model input gathered from the per-user / per-item arrays (ids, side features). Negatives are
    drawn for the whole global batch, so a row's data does not depend on which process reads it;
    only this process's rows are gathered."""

    def __init__(
        self, train: Interactions, user_side: dict, item_side: dict, num_negatives: int, loss: str, step_rows: StepRows
    ):
        self.step_rows = step_rows
        self.user, self.item, self.rating = train.user, train.item, train.rating
        self.user_side, self.item_side = user_side, item_side
        self.num_items = train.num_items
        self.num_negatives = num_negatives
        self.loss = loss

    def random_map(self, step: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        shape = (self.step_rows.batch_size, self.num_negatives)
        negatives = rng.integers(0, self.num_items, shape, dtype=np.int32)[self.step_rows.rows]
        index_b = self.step_rows.examples(step)
        items_bc = np.concatenate([self.item[index_b][:, None], negatives], axis=1)
        if self.loss == "mse":
            labels = self.rating[index_b][:, None].astype(np.float32)
        else:
            labels = np.zeros(items_bc.shape, np.float32)
            labels[:, 0] = 1.0
        users_b = self.user[index_b]
        return (
            {name: values[users_b] for name, values in self.user_side.items()}
            | {name: values[items_bc] for name, values in self.item_side.items()}
            | {"label": labels}
        )


def train_examples(model, dataset) -> int:
    """Examples in one epoch of the model's pipeline (the most a batch can hold)."""
    if model.batches == "sequences":
        from jaxrec.data.sequences import sequence_users

        return len(sequence_users(dataset))
    if model.batches == "ctr":
        return len(dataset.train)
    return len(dataset.split.train)


def make_train_dataset(
    model, dataset, *, num_negatives: int, loss: str, batch_size: int, epochs: int, seed: int, rows: slice | None = None
) -> tuple[grain.MapDataset, int]:
    """The model's training pipeline (one element per step) and its steps per epoch. `rows`: the
    rows of every global batch this process feeds (all when None). Every process derives the
    global batch's order and random draws from the seeds but reads and gathers only its rows,
    so a step sees the same data whatever the process count."""
    per_epoch = steps_per_epoch(train_examples(model, dataset), batch_size)
    rows = rows or slice(0, batch_size)
    if model.batches == "sequences":
        from jaxrec.data.sequences import make_sequence_dataset

        loader = make_sequence_dataset(
            model, dataset, batch_size=batch_size, epochs=epochs, num_negatives=num_negatives, seed=seed, rows=rows
        )
    elif model.batches == "ctr":
        from jaxrec.data.ctr import make_ctr_dataset

        loader = make_ctr_dataset(dataset, batch_size=batch_size, epochs=epochs, seed=seed, rows=rows)
    else:
        loader = make_pair_dataset(
            model,
            dataset,
            batch_size=batch_size,
            epochs=epochs,
            num_negatives=num_negatives,
            loss=loss,
            seed=seed,
            rows=rows,
        )
    return loader, per_epoch


def make_pair_dataset(
    model,
    dataset: Dataset,
    *,
    batch_size: int,
    epochs: int,
    num_negatives: int,
    loss: str,
    seed: int,
    rows: slice | None = None,
) -> grain.MapDataset:
    """One element per train step: epochs x (len(train) // batch_size) batches (with `rows`,
    only those rows of each)."""
    train = dataset.split.train
    step_rows = StepRows(permutation_order(seed, len(train)), len(train), batch_size, rows or slice(0, batch_size))
    transform = _PairBatch(
        train, model.user_inputs(dataset, "train"), model.item_inputs(dataset), num_negatives, loss, step_rows
    )
    return grain.MapDataset.range(step_rows.num_steps(epochs)).random_map(transform, seed=seed)
