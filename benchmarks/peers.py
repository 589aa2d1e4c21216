"""Is jaxrec as fast as what a user would otherwise pick, at equal or better quality?

Two comparisons, each trained side by side in one process on the same data:

- **MF-BPR on ml-100k** (leave-one-out): jaxrec `model=mf model.loss=bpr` (4 sampled
  negatives, the default, and 1) against `implicit`'s BPR and ALS at their tuned settings, the
  same number of epochs (iterations), each scored on test by the same full-ranking evaluator
  (experiments.peers.evaluate_part), after the last epoch. An "example" is one
  training interaction per epoch for all of them, but the work per example differs: jaxrec
  scores the positive against the sampled negatives in a minibatch Adam step; implicit BPR
  samples one (user, positive, negative) triple per interaction (Hogwild SGD); implicit ALS is
  not SGD: one closed-form sweep over users and items per iteration.
- **DCN-v2 on criteo_synthetic**: jaxrec on one device against the same architecture written
  in plain PyTorch on the CPU (benchmarks/torch_dcn.py: one `nn.EmbeddingBag(mode="sum",
  sparse=True)` per categorical feature, Adagrad on the tables' sparse gradients and on the
  dense parameters). The torch model starts from jaxrec's initial parameters (copied) and trains
  on the same numpy batches in the same order with the same optimiser and learning rates, so
  the two runs differ only in the framework; test AUC and logloss come from one metric function.

Timing: jaxrec's first step (compilation included) is `compile_s`, left out of the throughput,
as is torch's first step. MF: examples/s = examples per epoch / median epoch time over epochs
2..E (epoch 1 carries the pipeline's and implicit's start-up); `train_s` is every epoch after
compilation. implicit is fitted before and after jaxrec and its epoch times pooled, so load
drift on a shared machine hits both sides. DCN: the systems train in alternating windows of
--window steps (the same load for both); examples/s = the median over windows of batch x steps /
seconds. ratio = jaxrec examples/s / the peer's; the verdict says "matches" at a ratio of at
least 0.95 (timing noise) and "slower by X x" below. Threads: implicit and torch get this
machine's cores; XLA's CPU client uses them all. torch runs with OMP_WAIT_POLICY=PASSIVE unless
the environment sets it (libgomp's default spin-wait made 2 threads 4-28x slower than 1 on 2
shared cores). `mf_step_costs` times the pieces of a jaxrec MF step per batch size against a
hand-written plain-JAX step, jaxrec's dense update path and the dispatch floor: why it is slower.

Peers are optional (`pip install -e ".[peers]"`): a missing `implicit` or `torch` skips its rows
with one printed message and the rest runs.

Run:  python -m benchmarks.peers --out runs/bench/peers
Toy:  python -m benchmarks.peers --out /tmp/peers --toy          (synthetic data, tiny models)
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit: see experiments/ml100k_baselines/run.py
# torch's OpenMP threads spin-wait between parallel regions by default; on 2 cores shared with
# other work that made 2 threads 4-28x slower than 1 (measured: benchmarks/README.md). PASSIVE
# lets them sleep; it must be set before torch loads. An idle machine does not need it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import itertools
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import int_list, machine_info, markdown_table, plot_lines, summarize, time_calls, write_results
from experiments.peers import KS, evaluate_part, factor_scores, import_implicit, train_csr
from jaxrec.config import Config, compose_config
from jaxrec.data.dataset import load_dataset
from jaxrec.data.pipeline import make_train_dataset
from jaxrec.eval import evaluate_ranking_sweeps
from jaxrec.eval.ctr import CtrEvaluator
from jaxrec.eval.metrics import ctr_metrics
from jaxrec.train_lib import RankingEvaluator, build_engine, candidates_per_example, init_state, make_train_step

# jaxrec MF-BPR: conf/ defaults (dim 64, Adam lr 3e-3 with lazy-Adam tables, l2 0.01, batch 1024,
# 4 sampled negatives: tuned with BCE in experiments/ml100k_baselines) with the BPR loss; and with
# one negative, implicit BPR's example (cheaper, and lower quality: README). Toy runs the first.
MF_VARIANTS = {"jaxrec MF-BPR": ["model.loss=bpr"], "jaxrec MF-BPR, 1 neg": ["model.loss=bpr", "data.num_negatives=1"]}
# implicit: the settings tuned on validation in experiments/ml100k_baselines (iterations = --epochs).
IMPLICIT_PARAMS = {
    "bpr": {"factors": 64, "learning_rate": 0.01, "regularization": 0.01},
    "als": {"factors": 32, "regularization": 0.01, "alpha": 1.0},
}
IMPLICIT_EXAMPLE = {
    "bpr": "1 (user, pos, neg) triple per interaction, Hogwild SGD",
    "als": "1 interaction per closed-form sweep (not SGD)",
}
# DCN-v2: conf/model/dcn_v2.yaml (dim 16, bottom [64,16], 3 cross layers, top [128,64]) trained
# with Adagrad everywhere (element-wise on the table rows, as torch's sparse Adagrad).
# optimizer.table_lr 10: with optax's initial accumulator 0.1 and per-row gradients of ~1e-3,
# Adagrad's first row steps are ~3 x lr x g. Picked on validation after one epoch, (lr, table_lr):
# (0.05, 0.2) 0.658, (0.1, 0.1) 0.659, (0.02, 0.5) 0.653, (0.05, 3) 0.717, (0.2, 5) 0.729,
# (0.1, 10) 0.735 (logloss 0.530), (0.05, 10) 0.734 (logloss 0.506, the best). Adam: 0.757.
DCN_OVERRIDES = [
    "data=criteo_synthetic",
    "model=dcn_v2",
    "optimizer=adagrad",
    "optimizer.lr=0.05",
    "optimizer.table_lr=10",
    "data.num_examples=200000",
    "train.batch_size=1024",
]
TOY_MF = [
    "data=synthetic",
    "data.num_users=300",
    "data.num_items=200",
    "data.num_interactions=6000",
    "model.dim=8",
    "train.batch_size=256",
]
TOY_DCN = [
    "data.num_examples=3000",
    "data.num_sparse=4",
    "data.vocab_size=100",
    "model.dim=4",
    "model.bottom_mlp=[8,4]",
    "model.hidden=[8]",
    "model.cross_layers=1",
    "train.batch_size=64",
]
TORCH_HINT = (
    'torch is not importable: skipping the PyTorch DCN-v2 rows. Install the peers with: pip install -e ".[peers]"'
)
NOISE = 0.05  # ratios within 5% of 1 count as equal speed
COLUMNS = (
    "task",
    "system",
    "example",
    "threads",
    "epochs",
    "steps",
    "batch",
    "examples_per_sec",
    "epoch_s_p50",
    "step_ms_p50",
    "compile_s",
    "train_s",
    "hr@10",
    "ndcg@10",
    "auc",
    "logloss",
    "ratio",
    "verdict",
)


def init_state_jit(engine, seed: int):
    """train_lib.init_state as one jitted program: the same values (checked bit for bit), in a
    third to half the time of its eager op-by-op dispatch, which dominates a toy run."""
    return jax.jit(lambda: init_state(engine, seed))()


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _median_after_first(seconds: list[float]) -> float:
    """Median of every timing but the first (warm-up), or of all when there is only one."""
    return float(np.median(seconds[1:] if len(seconds) > 1 else seconds))


# ----------------------------------------------------------------------------- MF-BPR vs implicit


def train_jaxrec_mf(cfg: Config, dataset, epochs: int) -> dict:
    """The real loop (Grain pipeline -> device_put -> jitted step), timed per epoch; test metrics."""
    engine = build_engine(cfg, dataset.schema, devices=jax.devices()[:1])
    batch, negatives = int(cfg.train.batch_size), candidates_per_example(cfg) - 1
    loader, per_epoch = make_train_dataset(
        engine.model,
        dataset,
        num_negatives=negatives,
        loss=cfg.model.loss,
        batch_size=batch,
        epochs=epochs,
        seed=cfg.train.data_seed,
    )
    iterator, sharding = iter(loader.to_iter_dataset()), engine.batch_sharding()
    state, step_fn = init_state_jit(engine, cfg.train.seed), make_train_step(engine)
    tick = time.perf_counter()
    state, _ = step_fn(state, jax.device_put(next(iterator), sharding))
    jax.block_until_ready(state)
    compile_s, epoch_s = time.perf_counter() - tick, []
    for epoch in range(epochs):
        tick = time.perf_counter()
        for _ in range(per_epoch - (epoch == 0)):
            state, out = step_fn(state, jax.device_put(next(iterator), sharding))
        jax.block_until_ready(state)
        epoch_s.append(time.perf_counter() - tick)
    evaluator, split = RankingEvaluator(engine, dataset), dataset.split  # the same protocol as evaluate_part
    test = evaluate_ranking_sweeps(
        evaluator.sweep_fn(state, "test"),
        split.train,
        split.test,
        exclude=[split.valid],
        ks=KS,
        batch_size=evaluator.chunk,
    )
    return {
        "batch": batch,
        "examples_per_epoch": per_epoch * batch,
        "compile_s": compile_s,
        "epoch_s": epoch_s,
        "final_loss": float(out["loss"]),
        "test": test,
        "example": f"1 (user, pos) + {negatives} sampled neg, minibatch Adam",
    }


def fit_implicit_timed(model_cls, params: dict, user_items, epochs: int, threads: int, seed: int):
    """(model, seconds of each iteration): a 1-iteration warm-up fit first (discarded); the first
    iteration's time includes the fit's own set-up."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):
        model_cls(**params, iterations=1, random_state=seed, num_threads=threads).fit(user_items, show_progress=False)
        model = model_cls(**params, iterations=epochs, random_state=seed, num_threads=threads)
        marks = [time.perf_counter()]
        model.fit(user_items, show_progress=False, callback=lambda *_: marks.append(time.perf_counter()))
    return model, list(np.diff(marks))


def run_mf(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    """(rows of the comparison, rows of the jaxrec step-cost breakdown)."""
    base = TOY_MF if args.toy else []
    variants = dict(list(MF_VARIANTS.items())[:1]) if args.toy else MF_VARIANTS
    dataset = load_dataset(compose_config(base).data)
    split, threads, epochs = dataset.split, cores(), args.mf_epochs
    common = {"task": f"MF on {dataset.name}", "epochs": epochs, "threads": threads}
    peers = import_implicit()
    user_items = train_csr(split.train) if peers else None
    fits = {name: [] for name in (peers and ("bpr", "als")) or ()}

    def fit_peers():
        for name in fits:
            fits[name].append(
                fit_implicit_timed(peers[name], IMPLICIT_PARAMS[name], user_items, epochs, threads, args.seed)
            )
            _progress(f"implicit {name}: {epochs} iterations, {sum(fits[name][-1][1]):.2f} s")

    fit_peers()
    rows = []
    for system, overrides in variants.items():
        mine = train_jaxrec_mf(compose_config(base + overrides), dataset, epochs)
        _progress(f"{system}: {epochs} epochs, {sum(mine['epoch_s']):.1f} s (+ compile {mine['compile_s']:.1f} s)")
        rows.append(
            common
            | {
                "system": system,
                "example": mine["example"],
                "batch": mine["batch"],
                "examples_per_epoch": mine["examples_per_epoch"],
                "compile_s": mine["compile_s"],
                "epoch_s_p50": _median_after_first(mine["epoch_s"]),
                "train_s": sum(mine["epoch_s"]),
                "hr@10": mine["test"]["hr@10"],
                "ndcg@10": mine["test"]["ndcg@10"],
                "final_loss": mine["final_loss"],
                "config": " ".join(overrides),
                "test_metrics": mine["test"],
            }
        )
    fit_peers()
    for name, runs in fits.items():
        model, _ = runs[0]
        epoch_s = [s for _, times in runs for s in times[1:]] or [s for _, times in runs for s in times]
        test = evaluate_part(
            factor_scores(np.asarray(model.user_factors), np.asarray(model.item_factors)), split, "test"
        )
        rows.append(
            common
            | {
                "system": f"implicit {name.upper()}",
                "example": IMPLICIT_EXAMPLE[name],
                "examples_per_epoch": user_items.nnz,
                "compile_s": 0.0,
                "epoch_s_p50": float(np.median(epoch_s)),
                "train_s": float(np.median([sum(times) for _, times in runs])),
                "hr@10": test["hr@10"],
                "ndcg@10": test["ndcg@10"],
                "config": str(IMPLICIT_PARAMS[name]),
                "test_metrics": test,
            }
        )
    for row in rows:
        row["examples_per_sec"] = row["examples_per_epoch"] / row["epoch_s_p50"]
    costs = mf_step_costs(dataset, base + list(MF_VARIANTS.values())[0], args) if args.breakdown else []
    return rows, costs


def plain_jax_mf_step(num_users: int, num_items: int, dim: int, lr: float):
    """(step, state) of the MF-BPR a JAX user would write by hand: two dense tables, a dense
    gradient, optax Adam over every row (no biases, no L2, no dedup or sparse update)."""
    import optax

    keys = jax.random.split(jax.random.key(0))
    params = {
        "user": 0.1 * jax.random.normal(keys[0], (num_users, dim)),
        "item": 0.1 * jax.random.normal(keys[1], (num_items, dim)),
    }
    tx = optax.adam(lr)

    def loss(p, user_b1, item_bc):
        scores_bc = jnp.sum(p["user"][user_b1] * p["item"][item_bc], axis=-1)
        return -jnp.mean(jnp.sum(jax.nn.log_sigmoid(scores_bc[:, :1] - scores_bc[:, 1:]), axis=-1))

    def step(state, batch):
        params, opt_state = state
        grads = jax.grad(loss)(params, batch["user"], batch["item"])
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return jax.jit(step, donate_argnums=0), (params, tx.init(params))


def mf_step_costs(dataset, overrides: list[str], args: argparse.Namespace) -> list[dict]:
    """Where jaxrec MF-BPR's time goes, per batch size (medians of --repeats calls after 3
    warm-up ones, each blocking until done): the jitted step alone on device batches
    (`step_ms`); the same with its numpy batch's device_put, as the loop does (`put_step_ms`);
    jaxrec's dense update path (`optimizer.sparse=false`: a table-shaped gradient and optax Adam
    on every row, no dedup; `dense_update_step_ms`); the hand-written plain-JAX step
    (`plain_jax_step_ms`); one pipeline batch (`loader[k]`, synchronous); and a jitted x + 1
    (`dispatch_floor_ms`)."""
    out = []
    for batch in args.breakdown_batches:
        cfg = compose_config(overrides + [f"train.batch_size={batch}"])
        engines = {
            update: build_engine(
                compose_config(overrides + [f"train.batch_size={batch}", f"optimizer.sparse={update}"]),
                dataset.schema,
                devices=jax.devices()[:1],
            )
            for update in ("true", "false")
        }
        sharding = engines["true"].batch_sharding()
        loader, _ = make_train_dataset(
            engines["true"].model,
            dataset,
            num_negatives=candidates_per_example(cfg) - 1,
            loss=cfg.model.loss,
            batch_size=batch,
            epochs=2,
            seed=0,
        )
        host = itertools.cycle([loader[k] for k in range(min(4, len(loader)))])
        device = itertools.cycle([jax.device_put(b, sharding) for b in itertools.islice(host, 4)])
        plain_step, plain_state = plain_jax_mf_step(
            dataset.num_users, dataset.num_items, cfg.model.dim, cfg.optimizer.lr
        )
        steps = {update: make_train_step(engine) for update, engine in engines.items()}
        holder = {update: init_state_jit(engine, 0) for update, engine in engines.items()} | {"plain": plain_state}
        index = itertools.count()

        def step(update, batch_fn):
            holder[update], _ = steps[update](holder[update], batch_fn())
            jax.block_until_ready(holder[update])

        def plain():
            holder["plain"] = plain_step(holder["plain"], next(device))
            jax.block_until_ready(holder["plain"])

        calls = {
            "step_ms": lambda: step("true", lambda: next(device)),
            "put_step_ms": lambda: step("true", lambda: jax.device_put(next(host), sharding)),
            "dense_update_step_ms": lambda: step("false", lambda: next(device)),
            "plain_jax_step_ms": plain,
            "pipeline_batch_ms": lambda: loader[next(index) % len(loader)],
        }
        timed = {
            name: summarize(time_calls(call, warmup=3, repeats=args.repeats))["p50"] for name, call in calls.items()
        }
        out.append(
            {
                "batch": batch,
                **timed,
                "step_us_per_example": 1e3 * timed["step_ms"] / batch,
                "put_step_us_per_example": 1e3 * timed["put_step_ms"] / batch,
            }
        )
        _progress(f"MF step costs, batch {batch}: " + ", ".join(f"{k} {v:.2f}" for k, v in timed.items()))
    add_one, x = jax.jit(lambda a: a + 1, donate_argnums=0), {"x": jnp.zeros(4)}

    def noop():
        x["x"] = add_one(x["x"])
        x["x"].block_until_ready()

    floor = summarize(time_calls(noop, warmup=3, repeats=100))["p50"]
    return [r | {"dispatch_floor_ms": floor} for r in out]


# ----------------------------------------------------------------------------- DCN-v2 vs PyTorch


def import_torch():
    try:
        import torch  # noqa: F401  (only whether it imports)
    except ImportError:
        print(TORCH_HINT, flush=True)
        return None
    from benchmarks import torch_dcn

    return torch_dcn


class JaxrecSteps:
    """steps(batches): jaxrec train steps on numpy batches (device_put included), done on return."""

    def __init__(self, engine, state):
        self.state, self.step_fn, self.sharding = state, make_train_step(engine), engine.batch_sharding()

    def steps(self, batches: list[dict]) -> None:
        for batch in batches:
            self.state, _ = self.step_fn(self.state, jax.device_put(batch, self.sharding))
        jax.block_until_ready(self.state)


def train_alternating(systems: dict, host: list[dict], window: int) -> dict[str, dict]:
    """Step 1 for each system (compilation, first-touch allocation), then windows of `window`
    steps, alternating between the systems so that both see the same machine load.
    -> name -> {"first_s", "windows": [(steps, seconds)]}."""
    timing = {name: {"first_s": 0.0, "windows": []} for name in systems}
    for name, system in systems.items():
        tick = time.perf_counter()
        system.steps(host[:1])
        timing[name]["first_s"] = time.perf_counter() - tick
    for start in range(1, len(host), window):
        for name, system in systems.items():
            tick = time.perf_counter()
            system.steps(host[start : start + window])
            timing[name]["windows"].append((len(host[start : start + window]), time.perf_counter() - tick))
    return timing


def run_dcn(args: argparse.Namespace) -> list[dict]:
    overrides = DCN_OVERRIDES + (TOY_DCN if args.toy else [])
    cfg = compose_config(overrides)
    dataset, batch = load_dataset(cfg.data), int(cfg.train.batch_size)
    engine = build_engine(cfg, dataset.schema, devices=jax.devices()[:1])
    loader, per_epoch = make_train_dataset(
        engine.model, dataset, num_negatives=0, loss="bce", batch_size=batch, epochs=1, seed=cfg.train.data_seed
    )
    host = [loader[k] for k in range(min(args.dcn_steps or per_epoch, len(loader)))]  # the same batches for both
    evaluator, state = CtrEvaluator(engine, dataset), init_state_jit(engine, cfg.train.seed)
    systems, extra = {}, {}
    torch_dcn = import_torch()
    if torch_dcn is not None:
        torch_dcn.set_threads(cores())
        model = torch_dcn.from_jaxrec(engine, state)
        extra["initial_logit_max_abs_diff"] = float(
            np.max(np.abs(torch_dcn.logits(model, dataset.test) - evaluator.logits(state, "test")))
        )
        table_lr = cfg.optimizer.table_lr or cfg.optimizer.lr
        systems["PyTorch DCN-v2"] = torch_dcn.Trainer(model, cfg.optimizer.lr, table_lr)
    systems = {"jaxrec DCN-v2": JaxrecSteps(engine, state)} | systems
    del state
    timing = train_alternating(systems, host, args.window)
    _progress(f"DCN-v2: {len(host)} steps of {batch} for " + ", ".join(systems))
    rows = []
    for name, system in systems.items():
        if isinstance(system, JaxrecSteps):
            quality = evaluator(system.state, "test")
        else:
            quality = ctr_metrics(torch_dcn.logits(system.model, dataset.test), dataset.test.label)
        t = timing[name]
        rates = [batch * n / seconds for n, seconds in t["windows"]] or [batch / t["first_s"]]
        rate = float(np.median(rates))
        rows.append(
            {
                "task": "DCN-v2 on criteo_synthetic",
                "system": name,
                "threads": cores(),
                "example": f"1 click example ({cfg.data.num_dense} dense, {len(dataset.vocab_sizes)} categorical)",
                "steps": len(host),
                "batch": batch,
                "examples_per_sec": rate,
                "step_ms_p50": 1e3 * batch / rate,
                "compile_s": t["first_s"],
                "train_s": t["first_s"] + sum(s for _, s in t["windows"]),
                "auc": quality["auc"],
                "logloss": quality["logloss"],
                "test_metrics": quality,
                "config": " ".join(overrides),
                **(extra if name != "jaxrec DCN-v2" else {}),
            }
        )
    return rows


# ----------------------------------------------------------------------------- outputs


def add_verdicts(rows: list[dict]) -> None:
    """ratio = the task's first jaxrec row's examples/s / this peer's, on the peer's row; the
    verdict reads it with a NOISE tolerance (repeated timings on a shared machine move by a few
    percent). Other jaxrec rows (variants) get no ratio."""
    for row in rows:
        mine = next(r for r in rows if r["task"] == row["task"] and r["system"].startswith("jaxrec"))
        if row["system"].startswith("jaxrec"):
            row["ratio"], row["verdict"] = (1.0 if row is mine else None), "-"
            continue
        row["ratio"] = ratio = mine["examples_per_sec"] / row["examples_per_sec"]
        if ratio >= 1 + NOISE:
            row["verdict"] = f"matches ({ratio:.2g}x faster)"
        elif ratio >= 1 - NOISE:
            row["verdict"] = f"matches (within {NOISE:.0%})"
        else:
            row["verdict"] = f"slower by {1 / ratio:.2g}x"


def plot(out: Path, rows: list[dict], costs: list[dict]) -> None:
    """Examples/s of every system (log scale, one bar each), and jaxrec MF's step time per batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    labels = [f"{r['system']}\n({r['task'].split(' on ')[0]})" for r in rows][::-1]
    rates = [r["examples_per_sec"] for r in rows][::-1]
    ax.barh(labels, rates, color="tab:blue")
    for y, rate in enumerate(rates):
        ax.text(rate, y, f" {rate:,.0f}", va="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(min(rates) / 10, max(rates) * 10)
    ax.set_xlabel("train examples/s (median, compile excluded)")
    ax.set_title("jaxrec vs peers, same data, same epochs/steps")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "examples_per_sec.png", dpi=120)
    plt.close(fig)
    if costs:
        batches = [c["batch"] for c in costs]
        series = {
            "jaxrec step + device_put": (batches, [c["put_step_ms"] for c in costs]),
            "jaxrec step alone": (batches, [c["step_ms"] for c in costs]),
            "jaxrec dense update path": (batches, [c["dense_update_step_ms"] for c in costs]),
            "plain JAX step (dense Adam)": (batches, [c["plain_jax_step_ms"] for c in costs]),
            "one pipeline batch": (batches, [c["pipeline_batch_ms"] for c in costs]),
        }
        for r in rows:
            if r["system"] == "implicit BPR":
                series["implicit BPR, same examples"] = (batches, [1e3 * b / r["examples_per_sec"] for b in batches])
        plot_lines(
            out / "mf_step_costs.png",
            series,
            xlabel="batch",
            ylabel="ms per batch (median)",
            title="MF-BPR on one CPU device: where a step's time goes",
            logx=True,
            logy=True,
        )


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for results.json, results.md, PNG")
    parser.add_argument("--toy", action="store_true", help="tiny data and models (a smoke test, seconds)")
    parser.add_argument("--tasks", default="mf,dcn", help="comma-separated subset of mf,dcn")
    parser.add_argument("--mf-epochs", type=int, default=None, help="epochs = implicit iterations (default 30; toy 3)")
    parser.add_argument("--dcn-steps", type=int, default=None, help="train steps (default one epoch; toy 9)")
    parser.add_argument("--window", type=int, default=None, help="steps per timed DCN window (default 10; toy 4)")
    parser.add_argument(
        "--breakdown-batches",
        type=int_list,
        default=None,
        help="batch sizes of the MF step-cost breakdown (default 256,1024,4096,16384; toy: none)",
    )
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per breakdown measurement")
    parser.add_argument("--seed", type=int, default=0, help="implicit random_state")
    args = parser.parse_args(argv)
    args.tasks = args.tasks.split(",")
    if set(args.tasks) - {"mf", "dcn"}:
        parser.error(f"--tasks: unknown {sorted(set(args.tasks) - {'mf', 'dcn'})}; choose from mf, dcn")
    args.mf_epochs = args.mf_epochs or (3 if args.toy else 30)
    args.dcn_steps = args.dcn_steps or (9 if args.toy else None)
    args.window = args.window or (4 if args.toy else 10)
    if args.breakdown_batches is None:
        args.breakdown_batches = [] if args.toy else [256, 1024, 4096, 16384]
    args.breakdown = bool(args.breakdown_batches)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    start, load_start = time.perf_counter(), os.getloadavg()
    rows, costs = run_mf(args) if "mf" in args.tasks else ([], [])
    rows += run_dcn(args) if "dcn" in args.tasks else []
    add_verdicts(rows)
    wall_s = time.perf_counter() - start
    machine = machine_info() | {
        "loadavg_start": list(load_start),
        "loadavg_end": list(os.getloadavg()),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    notes = __doc__.split("\n\n", 1)[1].split("Run:")[0]
    if costs:
        notes += "\nWhere jaxrec MF-BPR's step time goes (ms, medians; see mf_step_costs):\n\n" + markdown_table(
            costs,
            (
                "batch",
                "put_step_ms",
                "step_ms",
                "dense_update_step_ms",
                "plain_jax_step_ms",
                "pipeline_batch_ms",
                "dispatch_floor_ms",
                "step_us_per_example",
            ),
        )
    write_results(
        args.out,
        rows,
        machine,
        title="jaxrec against peers, trained side by side",
        columns=COLUMNS,
        extra={"wall_s": wall_s, "mf_step_costs": costs, "args": {k: v for k, v in vars(args).items() if k != "out"}},
        notes=notes + f"\n\nWall time {wall_s:.0f} s.",
    )
    if rows:
        plot(args.out, rows, costs)
    _progress(f"wrote {args.out / 'results.json'} ({wall_s:.0f} s)")
    return {"records": rows, "mf_step_costs": costs, "wall_s": wall_s}


if __name__ == "__main__":
    main(sys.argv[1:])
