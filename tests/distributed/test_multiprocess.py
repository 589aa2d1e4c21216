"""Two processes x 4 CPU devices (gloo over loopback) train like one process x 8 devices,
resume together after being killed, and stop together when one dies."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from jaxrec.config import compose_config
from jaxrec.runner import run

DATA = ["data=synthetic", "data.num_users=120", "data.num_items=60", "data.num_interactions=3000"]
TRAIN = [
    "train.epochs=2",
    "train.batch_size=64",
    "train.progress=false",
    "train.eval_every=0",
    "model.dim=8",
    "sharding.mesh.model=-1",
    "train.distributed.heartbeat_timeout_s=10",
]
LAUNCH = [sys.executable, "-m", "jaxrec.launch_local", "--processes", "2", "--devices-per-process", "4", "--"]


def _launch(run_dir: Path, strategy: str, *extra: str, wait: bool = True):
    cmd = [*LAUNCH, *DATA, *TRAIN, f"sharding={strategy}", f"hydra.run.dir={run_dir}", *extra]
    env = os.environ | {"XLA_FLAGS": ""}  # the launcher sets each process's device count
    if not wait:
        return subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads((run_dir / "results.json").read_text())


def _single_process(run_dir: Path, strategy: str) -> dict:
    """The same run in this test process, whose 8 simulated devices make one 1x8 mesh."""
    return run(compose_config([*DATA, *TRAIN, f"sharding={strategy}"]), run_dir)


def _assert_same_metrics(got: dict, want: dict):
    assert got["metrics"].keys() == want["metrics"].keys()
    for key, value in want["metrics"].items():
        assert abs(got["metrics"][key] - value) <= 1e-5, (key, got["metrics"][key], value)


def test_two_processes_match_one_row_wise(tmp_path):
    two = _launch(tmp_path / "mp", "row_wise")
    assert two["num_devices"] == 8 and two["sharding"]["mesh"] == {"data": 1, "model": 8}
    assert (tmp_path / "mp" / "results.json").exists() and (tmp_path / "mp" / "launch" / "process_1.log").exists()
    _assert_same_metrics(two, _single_process(tmp_path / "sp", "row_wise"))


def test_killed_table_wise_group_resumes_and_matches_one_process(tmp_path):
    """Killed (SIGKILL, both processes) after its first checkpoint, restarted, the table_wise
    2-process run ends where the uninterrupted 1-process run does: resume and process count
    both leave the result unchanged. Saves run in the background (CPU devices block by default)."""
    run_dir = tmp_path / "killed"
    saves = ("train.checkpoint_every=10", "train.async_checkpoint=true")
    launcher = _launch(run_dir, "table_wise", *saves, wait=False)
    checkpoints = run_dir / "checkpoints"
    deadline = time.monotonic() + 300
    while not (checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())):
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()[0][-3000:]
        time.sleep(0.05)
    os.killpg(launcher.pid, signal.SIGKILL)  # the launcher and both processes, mid-run
    launcher.wait()
    assert not (run_dir / "results.json").exists(), "the run ended before it could be killed"
    resumed = _launch(run_dir, "table_wise", *saves)
    assert "restored checkpoint step" in (run_dir / "train.log").read_text()
    _assert_same_metrics(resumed, _single_process(tmp_path / "sp", "table_wise"))


def test_a_dead_process_stops_the_group(tmp_path):
    launcher = _launch(tmp_path, "row_wise", "train.epochs=50", wait=False)
    log_1 = tmp_path / "launch" / "process_1.log"
    deadline = time.monotonic() + 300
    while not (log_1.exists() and "epoch" not in log_1.read_text() and "process 1 of 2" in log_1.read_text()):
        assert launcher.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    # only this test's launcher's child: a sibling test's group may be running the same command line
    worker = subprocess.run(
        ["pgrep", "-P", str(launcher.pid), "-f", "train.distributed.process_id=1"], capture_output=True, text=True
    )
    pids = [int(pid) for pid in worker.stdout.split()]
    assert len(pids) == 1, worker.stdout
    os.kill(pids[0], signal.SIGKILL)
    killed_at = time.monotonic()
    output, _ = launcher.communicate(timeout=120)
    assert launcher.returncode != 0
    assert time.monotonic() - killed_at < 60
    assert "process 1 exited with status -9; stopping the others" in output


def test_sigterm_to_one_process_stops_the_group_at_one_saved_step(tmp_path):
    """Only process 1 gets SIGTERM; the processes agree on the stop step (the save is a
    collective, so stopping apart would hang), both say the same step was saved, and it is."""
    import re

    launcher = _launch(tmp_path, "row_wise", "train.epochs=50", "train.checkpoint_every=10", wait=False)
    checkpoints = tmp_path / "checkpoints"
    deadline = time.monotonic() + 300
    while not (checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())):
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()[0][-3000:]
        time.sleep(0.05)
    worker = subprocess.run(
        ["pgrep", "-P", str(launcher.pid), "-f", "train.distributed.process_id=1"], capture_output=True, text=True
    )
    os.kill(int(worker.stdout.split()[0]), signal.SIGTERM)
    output, _ = launcher.communicate(timeout=180)
    saved = [
        re.search(r"checkpoint of step (\d+) saved", text)
        for text in (output, (tmp_path / "launch" / "process_1.log").read_text())
    ]
    assert all(saved), output[-3000:]
    steps = {int(match.group(1)) for match in saved}
    assert len(steps) == 1 and steps <= {int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()}
    assert launcher.returncode == 128 + signal.SIGTERM
