"""Start a multi-process run on this machine: N CPU processes on 127.0.0.1 with gloo collectives.

    python -m jaxrec.launch_local --processes 2 --devices-per-process 4 -- sharding=row_wise \\
        sharding.mesh.model=-1 hydra.run.dir=runs/mp

For development and tests: the same program then runs unchanged on a cluster, one process per
host (see the README for SLURM). Every process gets the same overrides plus its rank; all share
one run directory (process 0's output goes to the console, each process's to
<run_dir>/launch/process_<i>.log). If one process fails, the others are stopped at once (no
waiting for a collective to time out) and the launcher exits with that process's status.
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from jaxrec.errors import JaxrecError, cli_errors

GRACE_S = 10  # after SIGTERM, how long a process may take to exit before SIGKILL


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_dir_of(overrides: list[str]) -> tuple[Path, list[str]]:
    """The shared run dir (hydra.run.dir, or a fresh one under outputs/launch/) and the overrides."""
    for item in overrides:
        if item.startswith("hydra.run.dir="):
            return Path(item.split("=", 1)[1]), overrides
    run_dir = Path("outputs/launch") / datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    return run_dir, [*overrides, f"hydra.run.dir={run_dir}"]


def process_command(overrides: list[str], processes: int, rank: int, devices: int, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "jaxrec.train",
        *overrides,
        f"train.distributed.coordinator_address=127.0.0.1:{port}",
        f"train.distributed.num_processes={processes}",
        f"train.distributed.process_id={rank}",
        f"sharding.num_devices={devices}",
    ]


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    for proc in procs:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_group(commands: list[list[str]], log_dir: Path, poll_s: float = 0.2) -> int:
    """Runs one process per command to the end; the exit status of the first that failed, else 0.

    Process 0 writes to the console, process i to log_dir/process_<i>.log. When one fails the
    others are stopped at once rather than left waiting in a collective until it times out.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"JAX_PLATFORMS": "cpu"}
    procs, logs = [], []
    try:
        for rank, command in enumerate(commands):
            out = None if rank == 0 else open(log_dir / f"process_{rank}.log", "w")
            logs.append(out)
            procs.append(subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT if out else None))
        while True:
            codes = [proc.poll() for proc in procs]
            failed = [(rank, code) for rank, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                rank, code = failed[0]
                print(
                    f"jaxrec.launch_local: process {rank} exited with status {code}; stopping the others "
                    f"(logs in {log_dir})",
                    file=sys.stderr,
                    flush=True,
                )
                stop(procs)
                return code
            if all(code == 0 for code in codes):
                return 0
            time.sleep(poll_s)
    except KeyboardInterrupt:
        stop(procs)
        return 130
    finally:
        for out in logs:
            if out is not None:
                out.close()


def launch(overrides: list[str], processes: int, devices: int) -> int:
    """Trains with `processes` local processes of `devices` CPU devices each; run_group's status."""
    if processes < 1 or devices < 1:
        raise JaxrecError(f"--processes={processes} and --devices-per-process={devices} must be >= 1")
    run_dir, overrides = run_dir_of(overrides)
    port = free_port()
    return run_group(
        [process_command(overrides, processes, rank, devices, port) for rank in range(processes)], run_dir / "launch"
    )


@cli_errors
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--devices-per-process", type=int, default=4)
    args = parser.parse_args(argv[:split])
    sys.exit(launch(argv[split + 1 :], args.processes, args.devices_per_process))


if __name__ == "__main__":
    main()
