"""Grain pipeline of per-user item sequences for SASRec (next item) and BERT4Rec (masked items).

Sequences are each user's chronological training items (the train part of the split, so the
held-out valid and test items are never seen in training), LEFT-padded with -1 to
`model.max_len`: the latest item of a window sits in the last column, which is where
evaluation reads the query (evaluation uses each user's most recent items). One Grain element
per train step, as in pipeline.py: an epoch is a numpy permutation of the users with >= 2
training items (seeded by (seed, epoch); data/steps.py), cut into len(users) // batch_size
batches; windows, negatives and BERT4Rec's masks come from Grain's per-element generator, so
batch k is a pure function of (seed, k).

Training windows: a user longer than the window gets a uniformly random window of it each
epoch rather than always the latest one (the papers), so every item is trained on across
epochs. On ml-100k with max_len 50 the latest windows hold only 40% of the training
transitions; random windows raised SASRec's validation ndcg@10 from 0.100 to 0.104 and test
from 0.076 to 0.084 (one seed each, experiments/sasrec_ml100k) and stopped its decline after
epoch 40. BERT4Rec's reference code cuts long sequences into sliding windows for the same reason.

Batch layout (B users, L = max_len, K = data.num_negatives, C = 1 + K candidates per position):
  history  [B, L] int32     input items (BERT4Rec: masked positions hold the mask token N)
  item     [B, L] int32     each position's target item, -1 where the position has none
  negative [B, K] int32     uniform negatives shared by all positions of the sequence
  label    [B, L, C] float32, 1 in column 0 (the target), 0 for the negatives
  weight   [B, L] float32   1 where the position has a target (the loss's per-example weight)

Negatives are per sequence, not per position: [B, L, C] candidates would make the embedding
collection look up and update B * L * C ids a step (646k at B 128, L 50, C 101; 3.5 s a step
on ml-100k against 0.5 s this way, measured), while shared ones cost B * K. The model masks
a negative that equals a position's target.
"""

from __future__ import annotations

import grain
import numpy as np

from jaxrec.data.dataset import Dataset
from jaxrec.data.steps import StepRows, permutation_order
from jaxrec.data.types import Interactions
from jaxrec.errors import JaxrecError

# BERT4Rec: share of training sequences that mask only their last item, the paper's extra
# samples that match the test task (predict the item after the whole history).
LAST_ONLY_SHARE = 0.1


def sequence_users(dataset: Dataset) -> np.ndarray:
    """int32 ids of the users with >= 2 training items: at least one input and one target."""
    counts_u = np.bincount(dataset.split.train.user, minlength=dataset.num_users)
    return np.flatnonzero(counts_u >= 2).astype(np.int32)


def user_runs(parts: list[Interactions], num_users: int) -> tuple[np.ndarray, np.ndarray]:
    """(indptr [U + 1], items): each user's items of all `parts` in chronological order.

    Parts are merged by (user, timestamp) with a stable sort, so on a timestamp tie an earlier
    part counts as earlier (train before valid, as the leave-one-out split decided)."""
    user = np.concatenate([p.user for p in parts])
    order = np.lexsort((np.concatenate([p.timestamp for p in parts]), user))
    counts_u = np.bincount(user, minlength=num_users)
    indptr = np.concatenate([[0], np.cumsum(counts_u)]).astype(np.int64)
    return indptr, np.concatenate([p.item for p in parts])[order].astype(np.int32)


def last_items(runs: tuple[np.ndarray, np.ndarray], users_b: np.ndarray, width: int, drop=0) -> np.ndarray:
    """int32 [B, width]: the last `width` items of each user's run, leaving out its final
    `drop` items (an int or one per user), left-padded with -1."""
    indptr, items = runs
    start_b, end_b = indptr[users_b], indptr[users_b + 1] - drop
    index_bw = end_b[:, None] - width + np.arange(width)[None, :]
    inside_bw = index_bw >= start_b[:, None]
    gathered_bw = items[np.clip(index_bw, 0, max(len(items) - 1, 0))] if len(items) else np.zeros_like(index_bw)
    return np.where(inside_bw, gathered_bw, -1).astype(np.int32)


def window_offsets(runs, users_b: np.ndarray, span: int, rng: np.random.Generator) -> np.ndarray:
    """int [B]: how many of each user's latest items a training window leaves out, uniform over
    the windows of `span` items that fit (0 for runs no longer than span)."""
    indptr, _ = runs
    return rng.integers(0, np.maximum(indptr[users_b + 1] - indptr[users_b] - span, 0) + 1)


def eval_histories(dataset: Dataset, part: str, width: int) -> np.ndarray:
    """int32 [U, width]: every user's latest items before `part` ("valid": train items; "test":
    train and valid items), left-padded with -1."""
    if part not in ("valid", "test"):
        raise ValueError(f"part must be 'valid' or 'test', got {part!r}")
    split = dataset.split
    parts = [split.train] + ([split.valid] if part == "test" else [])
    return last_items(user_runs(parts, dataset.num_users), np.arange(dataset.num_users), width)


def candidates(
    targets_bl: np.ndarray, num_items: int, num_negatives: int, rng: np.random.Generator, batch_size: int, rows: slice
):
    """(negative [B, K], label [B, L, 1 + K], weight [B, L]) for targets with -1 where there is
    none: rows `rows` of the global batch's negatives (drawn for all batch_size rows)."""
    negatives_bk = rng.integers(0, num_items, (batch_size, num_negatives), dtype=np.int32)[rows]
    labels_blc = np.zeros((*targets_bl.shape, 1 + num_negatives), np.float32)
    labels_blc[..., 0] = 1.0
    return negatives_bk, labels_blc, (targets_bl >= 0).astype(np.float32)


def mask_items(real_bl: np.ndarray, mask_prob: float, rng: np.random.Generator) -> np.ndarray:
    """bool [B, L]: BERT4Rec's cloze positions among the real items `real_bl`. Each is masked
    with mask_prob; a share LAST_ONLY_SHARE of sequences masks only the last item; a sequence
    left with no mask gets its last item masked (the last column is always real)."""
    masked_bl = real_bl & (rng.random(real_bl.shape) < mask_prob)
    last_only_b = rng.random(real_bl.shape[0]) < LAST_ONLY_SHARE
    masked_bl[last_only_b] = False
    masked_bl[:, -1] |= last_only_b | ~masked_bl.any(axis=1)
    return masked_bl


class _SequenceBatch(grain.transforms.RandomMap):
    """Rows `rows` of batch `step` of the run: the permuted users' sequences as inputs, targets
    and negatives. Windows, masks and negatives are drawn for the whole global batch (from run
    lengths alone), so a row does not depend on which process reads it; only this process's
    rows gather their items."""

    def __init__(
        self,
        runs,
        users: np.ndarray,
        *,
        num_items: int,
        max_len: int,
        objective: str,
        mask_token: int,
        mask_prob: float,
        num_negatives: int,
        step_rows: StepRows,
    ):
        self.runs, self.users = runs, users
        self.num_items, self.max_len = num_items, max_len
        self.objective, self.mask_token, self.mask_prob = objective, mask_token, mask_prob
        self.num_negatives, self.step_rows = num_negatives, step_rows
        self.batch_size, self.rows = step_rows.batch_size, step_rows.rows

    def random_map(self, step: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        batch_users = self.users[self.step_rows.global_batch(step)]
        skip_b = window_offsets(self.runs, batch_users, self.max_len + (self.objective == "next_item"), rng)
        mine, users_b = self.rows, batch_users[self.rows]
        if self.objective == "next_item":
            history_bl = last_items(self.runs, users_b, self.max_len, drop=1 + skip_b[mine])
            targets_bl = np.where(history_bl >= 0, last_items(self.runs, users_b, self.max_len, drop=skip_b[mine]), -1)
        else:
            indptr = self.runs[0]
            kept_b = indptr[batch_users + 1] - indptr[batch_users] - skip_b  # items in each window
            real_bl = np.arange(self.max_len) >= self.max_len - np.minimum(kept_b, self.max_len)[:, None]
            masked_bl = mask_items(real_bl, self.mask_prob, rng)[mine]
            seq_bl = last_items(self.runs, users_b, self.max_len, drop=skip_b[mine])
            history_bl = np.where(masked_bl, self.mask_token, seq_bl).astype(np.int32)
            targets_bl = np.where(masked_bl, seq_bl, -1)
        negatives_bk, labels_blc, weight_bl = candidates(
            targets_bl, self.num_items, self.num_negatives, rng, self.batch_size, mine
        )
        return {
            "history": history_bl,
            "item": targets_bl.astype(np.int32),
            "negative": negatives_bk,
            "label": labels_blc,
            "weight": weight_bl,
        }


def make_sequence_dataset(
    model, dataset: Dataset, *, batch_size: int, epochs: int, num_negatives: int, seed: int, rows: slice | None = None
) -> grain.MapDataset:
    """One element per train step: epochs x (len(sequence_users) // batch_size) batches (with
    `rows`, only those rows of each)."""
    users = sequence_users(dataset)
    if batch_size > len(users):
        raise JaxrecError(
            f"train.batch_size={batch_size} exceeds the {len(users)} users with >= 2 training items "
            f"(one sequence each per epoch); use a batch of at most {len(users)}"
        )
    if num_negatives < 1:
        raise JaxrecError("sequence models need data.num_negatives >= 1 (the candidates scored per position)")
    step_rows = StepRows(permutation_order(seed, len(users)), len(users), batch_size, rows or slice(0, batch_size))
    transform = _SequenceBatch(
        user_runs([dataset.split.train], dataset.num_users),
        users,
        num_items=dataset.num_items,
        max_len=model.max_len,
        objective=model.objective,
        mask_token=dataset.num_items,
        mask_prob=getattr(model, "mask_prob", 0.0),
        num_negatives=num_negatives,
        step_rows=step_rows,
    )
    return grain.MapDataset.range(step_rows.num_steps(epochs)).random_map(transform, seed=seed)
