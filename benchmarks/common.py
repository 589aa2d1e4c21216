"""Helpers shared by every benchmark: timing, summaries, machine description, outputs, plots.

Every benchmark writes, into its --out directory, `results.json` ({"records": [...], "machine":
{...}, ...}), `results.md` (the same records as a markdown table) and one or more PNG plots.
Files are written to a temporary name and renamed, so a crash never leaves a half-written one.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np


def time_calls(
    call: Callable[[], Any], *, warmup: int, repeats: int, max_seconds: float | None = None, min_repeats: int = 3
) -> list[float]:
    """Milliseconds of each timed call; `call` must block until its work is done.

    The first `warmup` calls are run and discarded (compilation, allocation, caches). Timing
    stops after `repeats` calls, or earlier once `max_seconds` have passed and at least
    `min_repeats` calls were timed, so that very slow configurations stay affordable.
    """
    for _ in range(warmup):
        call()
    times_ms: list[float] = []
    start = time.perf_counter()
    for _ in range(repeats):
        tick = time.perf_counter()
        call()
        times_ms.append((time.perf_counter() - tick) * 1e3)
        spent = time.perf_counter() - start
        if max_seconds is not None and spent > max_seconds and len(times_ms) >= min_repeats:
            break
    return times_ms


def summarize(times: Sequence[float]) -> dict[str, float]:
    """Median, 90th percentile, min and count of a list of timings (same unit as the input)."""
    values = np.asarray(times, dtype=np.float64)
    return {
        "p50": float(np.median(values)),
        "p90": float(np.percentile(values, 90)),
        "min": float(values.min()),
        "n": int(values.size),
    }


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def int_list(text: str) -> list[int]:
    """A comma-separated command-line list of integers; "1e4" is accepted for 10000."""
    return [int(float(x)) for x in text.split(",")]


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPUs, memory, platform, versions, backend, devices."""
    import jax
    import jaxlib

    devices = jax.devices()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
    }


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def markdown_table(records: Iterable[dict], columns: Sequence[str]) -> str:
    """A GitHub markdown table of `columns` (missing values shown as '-')."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for record in records:
        lines.append("| " + " | ".join(_cell(record.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def machine_line(machine: dict[str, Any]) -> str:
    """One readable line describing the machine, for markdown outputs."""
    return (
        f"{machine.get('cpu_model')} ({machine.get('cpus_usable')} usable of {machine.get('cpu_count')} CPUs, "
        f"{machine.get('memory_gib')} GiB), {machine.get('platform')}, Python {machine.get('python')}, "
        f"jax {machine.get('jax')} ({machine.get('backend')}, {machine.get('device_kind')} "
        f"x{machine.get('device_count')})"
    )


def write_results(
    out_dir: Path,
    records: list[dict],
    machine: dict[str, Any],
    *,
    title: str,
    columns: Sequence[str],
    extra: dict[str, Any] | None = None,
    notes: str = "",
) -> None:
    """results.json = {"records", "machine", **extra}; results.md = title, machine, table, notes."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"records": records, "machine": machine, **(extra or {})}
    _write_text_atomic(out_dir / "results.json", json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    parts = [f"# {title}", "", f"Machine: {machine_line(machine)}", "", markdown_table(records, columns)]
    if notes:
        parts += ["", notes.strip()]
    _write_text_atomic(out_dir / "results.md", "\n".join(parts) + "\n")


def plot_lines(
    path: Path,
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    logx: bool = False,
    logy: bool = False,
) -> None:
    """One line with markers per series (label -> (xs, ys)), saved as a PNG with the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xscale("log" if logx else "linear")
    ax.set_yscale("log" if logy else "linear")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def hlo_collective_bytes(hlo_text: str) -> dict[str, float]:
    """Bytes one device receives per normal step from the compiled program's collectives, by
    opcode: the single accounting of jaxrec.sharding.hlo (ring formulas; a while loop's body once,
    a conditional's busiest branch), which jaxrec.plan and the planner's tests use too."""
    from jaxrec.sharding.hlo import received_bytes_by_op

    return received_bytes_by_op(hlo_text)


def copy_bandwidth_gbps(devices: Sequence[Any], megabytes: int = 256, repeats: int = 10) -> float:
    """Memory bandwidth of `devices` together, in GB/s (10^9 bytes): a jitted, donated x <- x + 1
    over a float32 array of `megabytes` split across them, counting bytes read plus written; the
    median of `repeats` after two warm-up calls. Donation makes it in place: a fresh output
    buffer per call would measure page faults (1.5 GB/s against 5.8 in place, measured on CPU).
    Simulated CPU devices share the host's memory, so this is the roofline of their work."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    sharding = NamedSharding(Mesh(np.array(list(devices)), ("d",)), P("d"))
    n = megabytes * 2**20 // 4 // len(devices) * len(devices)
    holder = {"x": jax.jit(lambda: jnp.zeros(n, jnp.float32), out_shardings=sharding)()}
    add_one = jax.jit(lambda a: a + 1, donate_argnums=0, out_shardings=sharding)

    def call():
        holder["x"] = add_one(holder["x"])
        holder["x"].block_until_ready()

    times_ms = time_calls(call, warmup=2, repeats=repeats)
    del holder["x"]
    return 2 * n * 4 / (float(np.median(times_ms)) / 1e3) / 1e9


def run_children(
    module: str, flags: list[str], device_counts: Iterable[int], expected: int | None = None
) -> list[dict]:
    """Records of `python -m <module> <flags> --child N` for each device count N (one process
    each, so each can simulate its own device count): every stdout line starting "RECORD "
    holds one JSON record. A child that fails, or returns no (or not `expected`) records, stops
    the benchmark with its stderr."""
    import subprocess

    records, env = [], os.environ | {"JAX_PLATFORMS": "cpu"}
    for n in device_counts:
        tick = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", module, *flags, "--child", str(n)],
            capture_output=True,
            text=True,
            env=env,
            cwd=Path(__file__).resolve().parents[1],
        )
        found = [json.loads(line[7:]) for line in out.stdout.splitlines() if line.startswith("RECORD ")]
        if out.returncode or not found or (expected is not None and len(found) != expected):
            raise SystemExit(f"child for {n} devices failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
        records += found
        print(f"{n} devices: {len(found)} records in {time.perf_counter() - tick:.0f} s", flush=True)
    return records
