"""CTR evaluation: logloss, AUC and accuracy of a model's click probabilities over a whole split.

The AUC is exact: the Mann-Whitney statistic over ranks, ties averaged (a tie between a
positive and a negative counts one half), computed in numpy from every example's logit, so no
binning or per-batch averaging bends it. Logloss is computed from logits (softplus), so a
confident wrong prediction costs its true value instead of log(eps).

Legend: n examples of the split, B evaluation batch.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxrec.data.ctr import CtrDataset, batch_inputs
from jaxrec.models import feature_ids


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counting 1/2; NaN when
    the labels hold one class only."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels) > 0.5
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if not positives or not negatives:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    # Average rank (1-based) of each run of tied scores.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    ranks = np.empty(len(scores))
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def logloss(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy of sigmoid(logits): log(1 + e^l) - y l."""
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels, np.float64)
    return float(np.mean(np.logaddexp(0.0, logits) - labels * logits))


def ctr_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"auc": auc(logits, labels), "logloss": logloss(logits, labels),
            "accuracy": float(np.mean((np.asarray(logits) > 0) == (np.asarray(labels) > 0.5)))}


class CtrEvaluator:
    """evaluator(state, part) -> {"auc", "logloss", "accuracy"} over every example of the part.

    Examples go through the same collection lookups as training, in batches of
    train.eval_batch_size rounded up to a multiple of the device count; the last batch is padded
    with repeats of the last example and the padding cut, so the step compiles once."""

    def __init__(self, engine, dataset: CtrDataset):
        self.engine, self.dataset = engine, dataset
        devices = engine.num_devices
        self.batch_size = -(-engine.cfg.train.eval_batch_size // devices) * devices
        model, collection = engine.model, engine.collection

        def predict(params, emb, batch):
            ids = feature_ids(model, batch)
            acts = collection.pool(collection.lookup(emb, ids), ids)
            return model.apply(params, acts, batch)[:, 0]

        self._predict = jax.jit(predict)

    @property
    def has_valid(self) -> bool:
        return len(self.dataset.valid) > 0

    def logits(self, state, part: str) -> np.ndarray:
        """float32 [n]: the model's logit of every example of `part`."""
        data, sharding = self.dataset.part(part), self.engine.batch_sharding()
        n, out = len(data), []
        for start in range(0, n, self.batch_size):
            index_b = np.minimum(np.arange(start, start + self.batch_size), n - 1)
            batch = jax.device_put(batch_inputs(data, index_b, with_label=False), sharding)
            out.append(self._predict(state.params, state.emb, batch))
        # A batch sharded over several processes' devices is gathered to every process.
        out = [o if o.is_fully_addressable else multihost_utils.process_allgather(o, tiled=True) for o in out]
        return np.concatenate(jax.device_get(out))[:n] if out else np.zeros(0, np.float32)

    def __call__(self, state, part: str) -> dict[str, float]:
        return ctr_metrics(self.logits(state, part), self.dataset.part(part).label)
