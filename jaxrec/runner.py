"""run(): the training loop with evaluation, checkpoints, pre-emption and non-finite handling,
and the run's outputs (metrics.jsonl, results.json)."""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import signal
import subprocess
import time
from pathlib import Path

import jax
import numpy as np

from jaxrec import distributed
from jaxrec.checkpoint import Checkpointer, data_fingerprint, summary_fingerprint
from jaxrec.config import Config, scaled_lr, to_dict
from jaxrec.data.dataset import Dataset, load_dataset
from jaxrec.data.pipeline import make_train_dataset, train_examples
from jaxrec.errors import JaxrecError
from jaxrec.eval.ctr import oracle_summary
from jaxrec.progress import MetricsLog, Progress, write_json_atomic
from jaxrec.restore import warm_start
from jaxrec.train_lib import (
    Engine,
    build_engine,
    candidates_per_example,
    check_before_data,
    check_data_fits,
    finite_names,
    init_state,
    make_evaluator,
    make_train_step,
    resolve_batch_size,
)

log = logging.getLogger("jaxrec.train")

LOWER_IS_BETTER = ("rmse", "mae", "logloss")  # train.select_metric values minimised, not maximised


@dataclasses.dataclass
class Best:
    """The best validation evaluation so far and the test metrics of that epoch."""

    epoch: float = -1
    valid: dict = dataclasses.field(default_factory=dict)
    test: dict = dataclasses.field(default_factory=dict)


class StopSignals:
    """SIGTERM / SIGINT set a flag; the loop checkpoints after the current step and exits."""

    def __enter__(self):
        self.received = None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}
        return self

    def _handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclasses.dataclass
class _Timing:
    loop_start: float = dataclasses.field(default_factory=time.perf_counter)
    compile_s: float = 0.0
    paused_s: float = 0.0  # evaluation and checkpointing
    overflow_steps: int = 0  # steps whose row exchange overflowed its buckets (took more rounds)

    def train_seconds(self) -> float:
        return time.perf_counter() - self.loop_start - self.paused_s


def _eval_due(cfg: Config, step: int, per_epoch: int, total: int) -> bool:
    epoch_end = step % per_epoch == 0
    return step == total or (epoch_end and cfg.train.eval_every > 0 and (step // per_epoch) % cfg.train.eval_every == 0)


def _improves(select: str, valid: dict, best: dict) -> bool:
    """Whether validation metrics `valid` beat `best` on `select`: the first evaluation always
    does; a NaN (a diverged model) or missing value never beats anything, and anything beats a
    NaN best."""
    if not best:
        return True
    new, old = valid.get(select, np.nan), best.get(select, np.nan)
    if np.isnan(new):
        return False
    if np.isnan(old):
        return True
    return (new < old) if select in LOWER_IS_BETTER else (new > old)


def _evaluate(evaluate, state, epoch: float, best: Best, metrics_log: MetricsLog) -> None:
    """Validation metrics; when they improve, this epoch's test metrics become the reported ones."""
    select = evaluate.engine.cfg.train.select_metric
    start = time.perf_counter()
    valid = evaluate(state, "valid") if evaluate.has_valid else {}
    improved = _improves(select, valid, best.valid)
    if improved:
        best.epoch, best.valid, best.test = epoch, valid, evaluate(state, "test")
    record = {"step": int(state.step), "epoch": epoch, "eval/seconds": time.perf_counter() - start}
    metrics_log.write(record | {f"eval/valid/{k}": v for k, v in valid.items()})
    if valid:
        log.info(
            "epoch %.3g valid %s=%.4f%s", epoch, select, valid.get(select, float("nan")), " (best)" if improved else ""
        )
    else:  # no validation part (e.g. data.split=kfold with data.valid_ratio=0): the latest epoch is reported
        log.info("epoch %.3g (no validation part) test %s=%.4f", epoch, select, best.test.get(select, float("nan")))


def _drain(pending: list, names: list[str], on_nonfinite: str, ckpt: Checkpointer) -> tuple[float, int, int]:
    """(mean finite loss, steps, skipped steps) of the steps since the last drain; in `stop`
    mode a non-finite step ends the run naming the step and what went non-finite."""
    steps = [(s, float(out["loss"]), np.asarray(out["finite"])) for s, out in jax.device_get(pending)]
    bad = [(s, [n for n, ok in zip(names, finite) if not ok]) for s, _, finite in steps if not finite.all()]
    if bad and on_nonfinite == "stop":
        step, where = bad[0]
        ckpt.wait()
        last = ckpt.good_step
        kept = f"the last good checkpoint is step {last}" if last is not None else "no verified checkpoint exists yet"
        raise JaxrecError(
            f"non-finite value at step {step} in {', '.join(where)}; stopped ({kept}); "
            "train.on_nonfinite=skip skips such batches instead"
        )
    losses = [loss for _, loss, finite in steps if finite.all()]
    return (float(np.mean(losses)) if losses else float("nan")), len(steps), len(bad)


def _record_step(line: str) -> int | None:
    """The step of a metrics.jsonl line, or None for a line that is not a record (torn by a kill
    mid-write, empty, edited by hand)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    step = record.get("step", 0) if isinstance(record, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records after `step` (the restored checkpoint's, or 0 for a fresh start), so an
    interrupted run's later records never appear twice; lines that are not records are dropped
    with one warning."""
    if not path.exists():
        return
    lines = path.read_text(errors="replace").splitlines()
    steps = [_record_step(line) for line in lines]
    kept = [line for line, s in zip(lines, steps) if s is not None and s <= step]
    unreadable = steps.count(None)
    if unreadable:
        log.warning("%s: dropped %d line(s) that are not JSON records (a torn or edited line)", path, unreadable)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)


def _run_identity(cfg: Config, dataset, batch_size: int) -> dict:
    """What a checkpoint must share with the run that resumes it (checkpoint.check_same_run)."""
    return {
        "config": to_dict(cfg),
        "batch_size": batch_size,
        "data_content": data_fingerprint(dataset),
        "data_fingerprint": summary_fingerprint(dataset),  # what checkpoints written before data_content compare
    }


def _checkpoint(ckpt, engine, state, iterator, best: Best, timing: _Timing, identity: dict) -> None:
    tick = time.perf_counter()
    ckpt.save(
        engine,
        state,
        iterator,
        identity | {"best": dataclasses.asdict(best), "dense_optimizer": engine.cfg.optimizer.name},
    )
    timing.paused_s += time.perf_counter() - tick


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_run_info(run_dir: Path) -> None:
    info = {
        "git_sha": git_sha(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
    }
    write_json_atomic(run_dir / "run_info.json", info)


def run(cfg: Config, run_dir: Path) -> dict:
    """Train (resuming from the run dir's latest checkpoint), evaluate, and write the outputs.

    Stop signals are caught from the start: one that arrives while the data loads or the state
    is restored stops the run after its first step, with that step saved."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with StopSignals() as signals:
        return _run(cfg, run_dir, signals)


def _run(cfg: Config, run_dir: Path, signals: StopSignals) -> dict:
    check_before_data(cfg)
    dataset = load_dataset(cfg.data)
    engine = build_engine(cfg, dataset.schema)
    batch_size = resolve_batch_size(engine, max_batch=train_examples(engine.model, dataset))
    check_data_fits(engine, dataset, batch_size)
    if distributed.is_main():  # the run is possible: say what code and devices run it
        write_run_info(run_dir)
    loader, per_epoch = make_train_dataset(
        engine.model,
        dataset,
        num_negatives=candidates_per_example(cfg) - 1,
        loss=cfg.model.loss,
        batch_size=batch_size,
        epochs=cfg.train.epochs,
        seed=cfg.train.data_seed,
        rows=distributed.process_rows(engine.batch_sharding(), batch_size),
    )
    total = min(len(loader), cfg.train.max_steps or len(loader))
    iterator = iter(loader.to_iter_dataset())
    identity = _run_identity(cfg, dataset, batch_size)
    ckpt = Checkpointer(
        run_dir / "checkpoints",
        cfg.train.checkpoint_every,
        cfg.train.keep_checkpoints,
        async_save=cfg.train.async_checkpoint,
    )
    try:
        state, best = _start_state(engine, ckpt, iterator, identity, run_dir, total=total, per_epoch=per_epoch)
        state, timing = _train(
            engine,
            dataset,
            state,
            iterator,
            ckpt,
            best,
            run_dir,
            signals,
            identity,
            total=total,
            per_epoch=per_epoch,
            batch_size=batch_size,
        )
    finally:
        ckpt.close()
    results = make_results(cfg, engine, dataset, best, steps=total, batch_size=batch_size, timing=timing)
    if distributed.is_main():
        write_json_atomic(run_dir / "results.json", results)
    return results


def _start_state(
    engine: Engine, ckpt: Checkpointer, iterator, identity: dict, run_dir: Path, *, total: int, per_epoch: int
):
    """(state, best): restored from the newest verified checkpoint (or train.resume_step), or
    initialised; metrics.jsonl is cut back to the starting step either way, and an earlier
    finished run's results.json is removed once a restore succeeds (this run writes its own)."""
    cfg = engine.cfg
    ckpt.set_aside_strays()
    steps = ckpt.all_steps()
    if steps and not cfg.train.resume:
        raise JaxrecError(
            f"train.resume=false, but {ckpt.directory} holds checkpoints (steps {steps}) of an "
            "earlier run; choose a new hydra.run.dir, or resume it with train.resume=true"
        )
    if steps:
        _check_within_run(cfg, steps, total, per_epoch, ckpt)
        state, meta, step = ckpt.restore(engine, iterator, cfg.train.resume_step, identity)
        best = Best(**meta["best"])
        if distributed.is_main():
            (run_dir / "results.json").unlink(missing_ok=True)
    else:
        if cfg.train.resume_step is not None:
            raise JaxrecError(f"train.resume_step={cfg.train.resume_step}: {ckpt.directory} holds no checkpoints")
        state, best, step = init_state(engine, cfg.train.seed), Best(), 0
        if getattr(cfg.model, "init_from", None):  # neumf: GMF tables from a trained MF run
            state = warm_start(engine, state, cfg.model.init_from)
    if distributed.is_main():
        _truncate_metrics(run_dir / "metrics.jsonl", step)
    return state, best


def _check_within_run(cfg: Config, steps: list[int], total: int, per_epoch: int, ckpt: Checkpointer) -> None:
    """A checkpoint past this run's last step is intact, just not of a run this long: refused in
    one line (never set aside as damaged, never reported as a run of fewer steps)."""
    step = cfg.train.resume_step if cfg.train.resume_step is not None else steps[-1]
    if step > total:
        raise JaxrecError(
            f"checkpoint step {step} in {ckpt.directory} is past this run's end: {total} steps "
            f"(train.epochs={cfg.train.epochs} x {per_epoch} steps an epoch, train.max_steps={cfg.train.max_steps}); "
            f"resume with train.epochs or train.max_steps reaching step {step}, or pick an earlier "
            f"checkpoint with train.resume_step (steps: {steps})"
        )


def _stop_requested(signals: StopSignals) -> bool:
    """Whether any process received a stop signal: every process must stop at the same step,
    since the checkpoint that follows is a collective."""
    return distributed.any_process(signals.received is not None)


def _exit_on_signal(signals: StopSignals, ckpt: Checkpointer, step: int) -> None:
    """Waits for the save of `step` to commit, then exits saying plainly what is on disk."""
    name = signal.Signals(signals.received or signal.SIGTERM).name
    committed = ckpt.wait()
    if committed == step:
        log.warning(
            "received %s at step %d: checkpoint of step %d saved in %s; exiting", name, step, step, ckpt.directory
        )
    else:
        log.warning(
            "received %s at step %d: NO checkpoint of step %d was written (latest on disk: %s); exiting",
            name,
            step,
            step,
            committed,
        )
    ckpt.close()
    raise SystemExit(128 + (signals.received or signal.SIGTERM))


def _train(
    engine: Engine,
    dataset: Dataset,
    state,
    iterator,
    ckpt: Checkpointer,
    best: Best,
    run_dir: Path,
    signals: StopSignals,
    identity: dict,
    *,
    total: int,
    per_epoch: int,
    batch_size: int,
):
    cfg, start = engine.cfg, int(state.step)
    names, step_fn = finite_names(engine), make_train_step(engine)
    evaluate, sharding = make_evaluator(engine, dataset), engine.batch_sharding()
    main = distributed.is_main()
    progress = Progress(total, cfg.train.progress and main, start, eval_metric=cfg.train.select_metric)
    metrics_log = MetricsLog(run_dir / "metrics.jsonl", enabled=main, on_write=progress.show)
    timing, pending, window_start = _Timing(), [], time.perf_counter()
    for step in range(start + 1, total + 1):
        state, out = step_fn(state, distributed.global_batch(next(iterator), sharding, batch_size))
        pending.append((step, out))
        if step == start + 1:
            jax.block_until_ready(state)
            timing.compile_s = time.perf_counter() - timing.loop_start
            window_start = time.perf_counter()
        eval_due = _eval_due(cfg, step, per_epoch, total)
        stop = _stop_requested(signals)
        if step % cfg.train.log_every == 0 or eval_due or ckpt.due(step) or step == total or stop:
            overflow = int(sum(out["sharding/overflow"] for _, out in jax.device_get(pending)))
            timing.overflow_steps += overflow
            loss, steps, skipped = _drain(pending, names, cfg.train.on_nonfinite, ckpt)
            seconds = time.perf_counter() - window_start
            rate = steps * batch_size / max(seconds, 1e-9)
            metrics_log.write(
                {
                    "step": step,
                    "epoch": step / per_epoch,
                    "train/loss": loss,
                    "train/skipped_nonfinite": skipped,
                    "sharding/overflow_steps": overflow,
                    "perf/examples_per_sec": rate,
                    "perf/examples_per_sec_per_device": rate / engine.num_devices,
                }
            )
            progress.update(step, loss=loss)
            pending = []
        if eval_due:
            tick = time.perf_counter()
            _evaluate(evaluate, state, step / per_epoch, best, metrics_log)
            timing.paused_s += time.perf_counter() - tick
        stop = stop or (eval_due and _stop_requested(signals))  # a signal during the evaluation
        if ckpt.due(step) or step == total or stop:
            _checkpoint(ckpt, engine, state, iterator, best, timing, identity)
        if stop:
            metrics_log.close()
            progress.close()
            _exit_on_signal(signals, ckpt, step)
        window_start = time.perf_counter() if step % cfg.train.log_every == 0 else window_start
        progress.update(step)
    metrics_log.close()
    progress.close()
    return state, timing


def make_results(
    cfg: Config, engine: Engine, dataset: Dataset, best: Best, *, steps: int, batch_size: int, timing: _Timing
) -> dict:
    """train.wall_s counts this process's loop (compilation included, evaluation and checkpoints
    excluded); examples_per_sec excludes the first, compiling step."""
    train_s = timing.train_seconds()
    rate = max(steps - 1, 0) * batch_size / max(train_s - timing.compile_s, 1e-9)
    return {
        "dataset": dataset.name,
        "model": cfg.model.name,
        "loss": cfg.model.loss,
        "num_devices": engine.num_devices,
        "metrics": best.test,
        "valid_metrics": best.valid,
        "best_epoch": best.epoch,
        "train": {
            "epochs": cfg.train.epochs,
            "steps": steps,
            "batch_size": batch_size,
            "batch_size_auto": cfg.train.batch_size == "auto",
            "wall_s": train_s,
            "compile_s": timing.compile_s,
            "examples_per_sec": rate,
            "examples_per_sec_per_device": rate / engine.num_devices,
        },
        "lr_scaling": lr_scaling_summary(cfg),
        "data": dataset.summary() | oracle_summary(dataset),
        "sharding": sharding_summary(engine) | {"overflow_steps": timing.overflow_steps},
        "config": to_dict(cfg),
    }


def lr_scaling_summary(cfg: Config) -> dict:
    """The learning rates the run trained with, after optimizer.lr_scaling (the config holds the
    lr as given, at optimizer.base_batch_size)."""
    table_lr = cfg.optimizer.table_lr if cfg.optimizer.table_lr is not None else cfg.optimizer.lr
    return {
        "rule": cfg.optimizer.lr_scaling,
        "base_batch_size": cfg.optimizer.base_batch_size,
        "lr": cfg.optimizer.lr,
        "effective_lr": scaled_lr(cfg, cfg.optimizer.lr),
        "effective_table_lr": scaled_lr(cfg, table_lr),
    }


def sharding_summary(engine: Engine) -> dict:
    from jaxrec.sharding.memory import table_bytes_per_device

    plan = engine.plan
    return {
        "strategy": engine.cfg.sharding.strategy,
        "mesh": {"data": plan.mesh_shape[0], "model": plan.mesh_shape[1]},
        "tables": {
            name: {"strategy": place.strategy, "bytes_per_device": table_bytes_per_device(plan, name)}
            for name, place in plan.placements.items()
        },
    }
