"""CTR evaluation: logloss, AUC and accuracy (eval/metrics.py) of a model's click probabilities
over a whole split, and the same metrics of a synthetic data set's true logits (the ceiling).

Legend: n examples of the split, B evaluation batch.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxrec.data.ctr import CtrDataset, batch_inputs
from jaxrec.eval.metrics import ctr_metrics
from jaxrec.models import feature_ids


def oracle_summary(dataset) -> dict[str, float | None]:
    """results.json's oracle_test_auc and oracle_test_logloss: the metrics of the true click
    logits on test, the ceiling for any model; {} for logged or non-CTR data (truth unknown)."""
    if not isinstance(dataset, CtrDataset) or dataset.oracle_logit is None:
        return {}
    metrics = ctr_metrics(dataset.oracle_logit, dataset.test.label) if len(dataset.test) else {}
    return {"oracle_test_auc": metrics.get("auc"), "oracle_test_logloss": metrics.get("logloss")}


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
