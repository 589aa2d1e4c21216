"""Real processes killed mid-training resume exactly; saves are atomic; a stop signal at any
point ends with a committed checkpoint (or says plainly that none was written); a damaged
checkpoint falls back to the newest one that verifies; resumes that would change the run are
refused."""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxrec.checkpoint import Checkpointer

# 43 steps an epoch, evaluated every epoch: long enough (seconds) to be killed mid-run. Saves
# (every 9 steps) and logs (every 4) fall mostly off the evaluation steps, so a signal can land in
# a step, an evaluation or a save. Saves run in the background (on CPU devices the default
# blocks), so a signal can also land while a save is in flight.
RUN = [
    "data=synthetic",
    "data.num_users=200",
    "data.num_items=100",
    "data.num_interactions=6000",
    "train.async_checkpoint=true",
    "train.epochs=10",
    "train.batch_size=128",
    "train.progress=false",
    "model.dim=8",
    "train.checkpoint_every=9",
    "train.log_every=4",
    "train.keep_checkpoints=4",
]


def _command(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jaxrec.train", *RUN, *extra, f"hydra.run.dir={run_dir}"]


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}


def _train(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    out = subprocess.run(_command(run_dir, *extra), capture_output=True, text=True, timeout=600, env=_env())
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _steps(run_dir: Path) -> list[int]:
    ckpt = run_dir / "checkpoints"
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.exists() else []


def _start_and_wait_for_checkpoint(run_dir: Path, min_step: int, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        _command(run_dir, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )
    deadline = time.time() + 300
    while not [s for s in _steps(run_dir) if s >= min_step]:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    return proc


def test_saves_block_on_cpu_devices_unless_asked_to_run_in_the_background(tmp_path):
    """A background save holds a host copy of the state; on CPU devices that copy is a second
    state in the same RAM, so the default (null) blocks there."""
    checkpointers = [Checkpointer(tmp_path / str(a), every=0, keep=1, async_save=a) for a in (None, True, False)]
    assert [c.async_save for c in checkpointers] == [False, True, False]
    for c in checkpointers:
        c.close()


def _final_tables(run_dir: Path):
    """The latest checkpoint's saved state, as stored (logical tables, params, optimiser state)."""
    ckpt = Checkpointer(run_dir / "checkpoints", every=0, keep=100, async_save=False)
    step = ckpt.latest_step()
    state = ckpt.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    ckpt.close()
    return step, state


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    _train(run_dir)
    return run_dir


def _assert_same_run(run_dir: Path, reference: Path) -> None:
    got, want = (json.loads((d / "results.json").read_text()) for d in (run_dir, reference))
    assert got["metrics"] == want["metrics"]  # bit-identical floats
    assert got["best_epoch"] == want["best_epoch"]
    (step_a, state_a), (step_b, state_b) = _final_tables(run_dir), _final_tables(reference)
    assert step_a == step_b
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), state_a, state_b)


def test_sigkill_then_crash_during_save_then_restart_ends_bit_identical(tmp_path, uninterrupted):
    """Three processes (uninterrupted; killed; restarted) agree bit for bit, which also shows that
    the same config and seed give identical results in separate runs."""
    proc = _start_and_wait_for_checkpoint(tmp_path, min_step=40)
    proc.kill()  # SIGKILL: no handler runs
    proc.wait()
    assert not (tmp_path / "results.json").exists(), "the run finished before it could be killed"
    last = _steps(tmp_path)[-1]
    # What a kill inside Orbax's save leaves: an uncommitted temporary directory of a later step.
    partial = tmp_path / "checkpoints" / f"{last + 20}.orbax-checkpoint-tmp-1700000000000000"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "garbage").write_bytes(b"\0" * 100)
    out = _train(tmp_path)
    assert f"restored checkpoint step {last} " in out.stdout + out.stderr
    _assert_same_run(tmp_path, uninterrupted)
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps), "records of the killed run after its checkpoint were not dropped"


def _assert_no_step_twice(run_dir: Path) -> None:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for kind in ("train/loss", "eval/seconds"):
        steps = [r["step"] for r in records if kind in r]
        assert len(steps) == len(set(steps)), f"{kind}: a step logged twice: {steps}"


def test_sigterm_at_random_points_always_tells_the_truth_and_resumes_exactly(tmp_path, uninterrupted):
    """SIGTERM three times at random points of a resumed run (in a step, an evaluation or a save);
    each time the log's claim matches checkpoints/, and the final run equals an uninterrupted one."""
    rng = random.Random(0)
    for _ in range(3):  # each attempt waits for a new checkpoint: past start-up, where no handler runs yet
        proc = _start_and_wait_for_checkpoint(tmp_path, min_step=max(_steps(tmp_path), default=0) + 1)
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=180)
        log = stdout + stderr
        if proc.returncode == 0:  # finished before the signal landed
            break
        assert proc.returncode == 128 + signal.SIGTERM, log[-3000:]
        assert "Traceback" not in log
        saved = re.search(r"received SIGTERM at step (\d+): checkpoint of step \1 saved", log)
        unsaved = re.search(r"received SIGTERM at step (\d+): NO checkpoint of step \1 was written", log)
        assert saved or unsaved, log[-3000:]
        step = int((saved or unsaved).group(1))
        assert (step in _steps(tmp_path)) == bool(saved)
    _train(tmp_path)
    _assert_same_run(tmp_path, uninterrupted)
    _assert_no_step_twice(tmp_path)


SHORT = [arg for arg in RUN if not arg.startswith("train.epochs")] + ["train.epochs=2"]


def _short_train(run_dir: Path, *extra: str, ok: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, "-m", "jaxrec.train", *SHORT, *extra, f"hydra.run.dir={run_dir}"],
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(),
    )
    assert (out.returncode == 0) == ok, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def short_runs(tmp_path_factory) -> tuple[Path, Path]:
    """(an uninterrupted 2-epoch run, the same run stopped after step 27: checkpoints 9, 18, 27)."""
    full, stopped = tmp_path_factory.mktemp("short_full"), tmp_path_factory.mktemp("short_stopped")
    _short_train(full)
    _short_train(stopped, "train.max_steps=27")
    assert _steps(stopped) == [9, 18, 27]
    return full, stopped


def _largest_array_file(step_dir: Path) -> Path:
    return max((p for p in (step_dir / "state").rglob("d/*") if p.is_file()), key=lambda p: p.stat().st_size)


def _truncate(step_dir: Path) -> None:
    path = _largest_array_file(step_dir)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_bytes(step_dir: Path) -> None:
    path = _largest_array_file(step_dir)
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 8):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


CORRUPTIONS = {
    "truncated array file": _truncate,
    "flipped bytes in an array": _flip_bytes,
    "empty meta/metadata": lambda step_dir: (step_dir / "meta" / "metadata").write_text(""),
    "deleted manifest.ocdbt files": lambda step_dir: [p.unlink() for p in step_dir.rglob("manifest.ocdbt")],
    "garbage data iterator state": lambda step_dir: [
        p.write_text("garbage{") for p in (step_dir / "data").glob("*.json")
    ],
    "edited best metrics in meta": lambda step_dir: _edit_best(step_dir / "meta" / "metadata"),
}


def _edit_best(path: Path) -> None:
    """A meta that still parses, with a best evaluation results.json would otherwise report."""
    meta = json.loads(path.read_text())
    meta["best"]["valid"] = {key: 0.99 for key in meta["best"]["valid"]}
    meta["best"]["test"] = {key: 0.91 for key in meta["best"]["test"]}
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, short_runs, corruption):
    full, stopped = short_runs
    run_dir = tmp_path / "run"
    shutil.copytree(stopped, run_dir)
    CORRUPTIONS[corruption](run_dir / "checkpoints" / "27")
    out = _short_train(run_dir)
    log = out.stdout + out.stderr
    assert re.search(r"checkpoint \S+/27 is damaged \(.+\); trying the previous one", log), log[-3000:]
    assert "resumed from step 18, the newest checkpoint that verifies" in log
    assert "Traceback" not in log
    _assert_same_run(run_dir, full)
    _assert_no_step_twice(run_dir)


def test_resume_step_picks_a_checkpoint_and_refuses_a_missing_one(tmp_path, short_runs):
    full, stopped = short_runs
    run_dir = tmp_path / "run"
    shutil.copytree(stopped, run_dir)
    out = _short_train(run_dir, "train.resume_step=5", ok=False)
    assert out.returncode == 2 and "train.resume_step=5: no such checkpoint" in out.stderr
    out = _short_train(run_dir, "train.resume_step=9")
    assert "restored checkpoint step 9 " in out.stdout + out.stderr
    _assert_same_run(run_dir, full)


@pytest.mark.parametrize(
    "override,named",
    [
        ("train.batch_size=64", "train.batch_size (128 -> 64)"),
        ("optimizer=sgd", "optimizer.name ('adam' -> 'sgd')"),
        ("train.data_seed=3", "train.data_seed (0 -> 3)"),
        ("train.resume=false", "train.resume=false, but"),
    ],
)
def test_a_resume_that_would_change_the_run_is_refused_in_one_line(tmp_path, short_runs, override, named):
    run_dir = tmp_path / "run"
    shutil.copytree(short_runs[1], run_dir)
    out = _short_train(run_dir, override, ok=False)
    assert out.returncode == 2 and named in out.stderr, out.stderr[-2000:]
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
