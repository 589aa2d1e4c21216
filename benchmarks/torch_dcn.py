"""jaxrec's DCN-v2 written in plain PyTorch, the peer of benchmarks/peers.py (needs torch).

What a PyTorch user would write without TorchRec: one `nn.EmbeddingBag(mode="sum",
sparse=True)` per categorical feature (one id per bag), `nn.Linear` layers for the bottom MLP,
the full-rank cross layers x_{l+1} = x_0 * (W_l x_l + b_l) + x_l and the top MLP, and
`torch.optim.Adagrad` on the tables' sparse gradients and on the dense parameters. The layer
order, widths and activations are those of jaxrec/models/dcn_v2.py; `from_jaxrec` copies a
jaxrec train state's parameters in, so both start from the same point.

Legend: B batch, F dense features, S categorical features, d dim, D = bottom width + S * d.
"""

from __future__ import annotations

import warnings

import jax
import numpy as np
import torch
from torch import nn

from jaxrec.data.ctr import field_name
from jaxrec.embedding.optimizers import ADAGRAD_EPS, ADAGRAD_INIT

# Adagrad's sparse step builds COO tensors from torch's own coalesced gradients: nothing to check.
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def _mlp(widths_in: int, widths, activate_last: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, width in enumerate(widths):
        layers.append(nn.Linear(widths_in, width))
        if i < len(widths) - 1 or activate_last:
            layers.append(nn.ReLU())
        widths_in = width
    return nn.Sequential(*layers)


class TorchDCN(nn.Module):
    def __init__(self, vocab_sizes, num_dense: int, dim: int, bottom_mlp, top_mlp, cross_layers: int):
        super().__init__()
        self.bags = nn.ModuleList(nn.EmbeddingBag(v, dim, mode="sum", sparse=True) for v in vocab_sizes)
        self.bottom = _mlp(num_dense, bottom_mlp, activate_last=True)
        width = bottom_mlp[-1] + len(vocab_sizes) * dim
        self.cross = nn.ModuleList(nn.Linear(width, width) for _ in range(cross_layers))
        self.top = _mlp(width, (*top_mlp, 1), activate_last=False)

    def forward(self, dense_bf: torch.Tensor, ids: list[torch.Tensor]) -> torch.Tensor:
        """Click logits [B] from dense features [B, F] and one [B, 1] id tensor per feature."""
        x0_bd = torch.cat([self.bottom(dense_bf)] + [bag(ids_b1) for bag, ids_b1 in zip(self.bags, ids)], dim=1)
        x_bd = x0_bd
        for layer in self.cross:
            x_bd = x0_bd * layer(x_bd) + x_bd
        return self.top(x_bd)[:, 0]


def _load_dense(linears, flax_layers: dict) -> None:
    for linear, name in zip(linears, sorted(flax_layers, key=lambda n: int(n.split("_")[1]))):
        linear.weight.copy_(torch.from_numpy(np.array(flax_layers[name]["kernel"]).T.copy()))
        linear.bias.copy_(torch.from_numpy(np.array(flax_layers[name]["bias"])))


def from_jaxrec(engine, state) -> TorchDCN:
    """A TorchDCN of the engine's DCN-v2 shape holding the state's parameters (tables included)."""
    model = engine.model
    if not model.num_dense:
        raise ValueError("the PyTorch peer expects dense features (data.num_dense > 0)")
    torch_model = TorchDCN(
        model.vocab_sizes, model.num_dense, model.dim, model.bottom_mlp, model.top_mlp, model.cross_layers
    )
    params = jax.device_get(state.params["params"])
    with torch.no_grad():
        _load_dense([m for m in torch_model.bottom if isinstance(m, nn.Linear)], params["MLP_0"])
        _load_dense(torch_model.cross, params.get("CrossNetwork_0", {}))
        _load_dense([m for m in torch_model.top if isinstance(m, nn.Linear)], params["MLP_1"])
        for bag, name in zip(torch_model.bags, model.fields):
            bag.weight.copy_(torch.from_numpy(np.array(engine.collection.table(state.emb, name), np.float32)))
    return torch_model


def _inputs(batch: dict, num_sparse: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    return torch.from_numpy(batch["dense"]), [torch.from_numpy(batch[field_name(j)]) for j in range(num_sparse)]


class Trainer:
    """BCE on logits; Adagrad with optax's initial accumulator (0.1) and epsilon, one optimiser
    for the tables' sparse gradients and one for the dense parameters."""

    def __init__(self, model: TorchDCN, lr: float, table_lr: float):
        self.model = model
        tables = [bag.weight for bag in model.bags]
        dense = [p for name, p in model.named_parameters() if not name.startswith("bags.")]
        self.optimizers = [
            torch.optim.Adagrad(tables, lr=table_lr, initial_accumulator_value=ADAGRAD_INIT, eps=ADAGRAD_EPS),
            torch.optim.Adagrad(dense, lr=lr, initial_accumulator_value=ADAGRAD_INIT, eps=ADAGRAD_EPS),
        ]
        self.loss_fn = nn.BCEWithLogitsLoss()
        self.last_loss = float("nan")

    def steps(self, batches: list[dict]) -> None:
        """One train step per numpy batch (the pipeline's layout: dense, cat_j [B, 1], label [B, 1])."""
        self.model.train()
        for batch in batches:
            dense_bf, ids = _inputs(batch, len(self.model.bags))
            for opt in self.optimizers:
                opt.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.model(dense_bf, ids), torch.from_numpy(batch["label"][:, 0]))
            loss.backward()
            for opt in self.optimizers:
                opt.step()
        self.last_loss = float(loss.detach())


def logits(model: TorchDCN, part, batch_size: int = 4096) -> np.ndarray:
    """float32 [n]: the model's logit of every example of a CtrPart."""
    from jaxrec.data.ctr import batch_inputs

    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(part), batch_size):
            batch = batch_inputs(part, np.arange(start, min(start + batch_size, len(part))), with_label=False)
            out.append(model(*_inputs(batch, len(model.bags))).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)
