"""SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018).

A causal, pre-LayerNorm Transformer reads the user's items in order; the state at position t
predicts the item at t + 1 (every position is a training example), scored against the shared
item table. At evaluation the state after the last history item ranks the whole catalogue.
Deviations from the paper: the loss is configurable (the paper's BCE with one negative per
position, or a sampled softmax over data.num_negatives), negatives are uniform over items
other than the target, and embeddings are not scaled by sqrt(d).

Legend: B batch, L max_len, C candidates per position, N items, d dim.
"""

from __future__ import annotations

from jaxrec.models.transformer import SequenceRecommender


class SASRec(SequenceRecommender):
    """Table "item" [N, d]; history = train items[:-1], targets = items[1:] (jaxrec.data.sequences)."""

    objective = "next_item"
    causal, pre_ln, ffn_mult, activation = True, True, 1, "relu"
