"""Summarise a Hydra multirun: one table, one row per job, plus plots of the swept keys.

    python -m jaxrec.train -m experiment=sweep_bs_lr
    python -m jaxrec.report multirun/<date>/<time> [--metric ndcg@10] [--out DIR]

A job is any directory under the multirun dir that holds `.hydra/`. Finished jobs are read from
their `results.json`; a job without one (it crashed, was killed or is still running) is listed
with its overrides instead of being dropped. Writes `summary.csv`, `summary.md` and the PNGs the
swept keys allow: metric vs learning rate per batch size, throughput per device vs batch size,
and a batch size x learning rate heatmap.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import yaml

from jaxrec.errors import JaxrecError, cli_errors

LR, BATCH = "optimizer.lr", "train.batch_size"
PERF = ("examples_per_sec_per_device", "wall_s")
OK, FAILED = "ok", "failed_or_unfinished"


def parse_value(text: str):
    """'256' -> 256, '1e-3' -> 0.001, anything else stays a string (YAML 1.1 reads 1e-3 as text)."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def read_overrides(job_dir: Path) -> dict:
    path = job_dir / ".hydra" / "overrides.yaml"
    lines = yaml.safe_load(path.read_text()) if path.exists() else None
    pairs = (line.split("=", 1) for line in lines or [] if "=" in line)
    return {key.lstrip("+~"): parse_value(value) for key, value in pairs}


def read_job(job_dir: Path, root: Path) -> dict:
    """One row: job, status, overrides, test metrics, valid metrics and throughput (if finished)."""
    row = {"job": str(job_dir.relative_to(root)), "overrides": read_overrides(job_dir), "status": FAILED}
    try:
        results = json.loads((job_dir / "results.json").read_text())
    except (OSError, ValueError):
        return row
    train = results.get("train", {})
    return row | {"status": OK, "metrics": results.get("metrics", {}), "valid": results.get("valid_metrics", {}),
                  "examples_per_sec_per_device": train.get("examples_per_sec_per_device"),
                  "wall_s": train.get("wall_s"), "batch_size": train.get("batch_size"),
                  "lr": results.get("config", {}).get("optimizer", {}).get("lr")}


def _job_order(path: Path):
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.parts]


def collect_jobs(root: Path) -> list[dict]:
    if not root.is_dir():
        raise JaxrecError(f"multirun directory {root} does not exist")
    job_dirs = sorted({p.parent for p in root.rglob(".hydra") if p.is_dir()}, key=lambda p: _job_order(p.relative_to(root)))
    if not job_dirs:
        raise JaxrecError(f"no jobs under {root}: expected job directories holding .hydra/ (a Hydra multirun dir)")
    return [read_job(d, root) for d in job_dirs]


def swept_keys(jobs: list[dict]) -> list[str]:
    """Override keys whose value differs between jobs (all keys when none differ)."""
    keys = list(dict.fromkeys(k for job in jobs for k in job["overrides"]))
    varying = [k for k in keys if len({repr(job["overrides"].get(k)) for job in jobs}) > 1]
    return varying or keys


def check_metric(jobs: list[dict], metric: str) -> list[str]:
    """All test metric names of the finished jobs; the chosen one must be among them."""
    names = sorted({m for job in jobs if job["status"] == OK for m in job["metrics"]})
    if names and metric not in names:
        raise JaxrecError(f"--metric {metric!r} is not in results.json; available: {', '.join(names)}")
    return names


def sort_by_metric(jobs: list[dict], metric: str) -> list[dict]:
    finished = [j for j in jobs if j["status"] == OK]
    return sorted(finished, key=lambda j: -_num(j["metrics"].get(metric))) + [j for j in jobs if j["status"] != OK]


def _num(value) -> float:
    return float(value) if isinstance(value, (int, float)) else -math.inf


def write_csv(path: Path, jobs: list[dict], keys: list[str], metrics: list[str], metric: str) -> None:
    header = ["job", "status", *keys, *metrics, f"valid_{metric}", *PERF]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for job in jobs:
            writer.writerow([job["job"], job["status"], *(job["overrides"].get(k, "") for k in keys),
                             *(job.get("metrics", {}).get(m, "") for m in metrics),
                             job.get("valid", {}).get(metric, ""), *(job.get(p, "") for p in PERF)])


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:,.0f}"
    return "" if value is None else str(value)


def _fmt_key(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else _fmt(value)


def markdown(jobs: list[dict], keys: list[str], metric: str, notes: list[str]) -> str:
    """The finished jobs sorted by the metric (best marked), then the failed or unfinished ones."""
    finished = [j for j in jobs if j["status"] == OK]
    cols = [metric, f"valid {metric}", "hr@10", "examples/s/device", "wall s"]
    cols = [c for i, c in enumerate(cols) if c not in cols[:i]]
    lines = [f"# Sweep summary: {len(finished)} of {len(jobs)} jobs finished, sorted by test {metric}", "",
             "| job | " + " | ".join(keys + cols) + " |", "|" + "---|" * (len(keys) + len(cols) + 1)]
    for rank, job in enumerate(finished):
        values = {metric: job["metrics"].get(metric), f"valid {metric}": job["valid"].get(metric),
                  "hr@10": job["metrics"].get("hr@10"), "examples/s/device": job["examples_per_sec_per_device"],
                  "wall s": f"{job['wall_s']:.1f}" if job["wall_s"] is not None else None}
        name = f"**{job['job']} (best)**" if rank == 0 else job["job"]
        lines.append("| " + " | ".join([name] + [_fmt_key(job["overrides"].get(k)) for k in keys]
                                       + [_fmt(values[c]) for c in cols]) + " |")
    failed = [j for j in jobs if j["status"] != OK]
    lines += ["", "## Failed or unfinished", ""]
    lines += [f"- job {j['job']}: " + (" ".join(f"{k}={v}" for k, v in j["overrides"].items()) or "(no overrides)")
              for j in failed] or ["(none)"]
    return "\n".join(lines + ["", "## Plots", ""] + [f"- {n}" for n in notes]) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(finished: list[dict]) -> tuple[list, list]:
    return sorted({j["batch_size"] for j in finished}), sorted({j["lr"] for j in finished})


def plot_metric_vs_lr(finished: list[dict], metric: str, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    batches, _ = _grid(finished)
    for batch in batches:
        points = sorted((j["lr"], j["metrics"][metric]) for j in finished if j["batch_size"] == batch)
        ax.plot(*zip(*points), marker="o", label=f"batch {batch}")
    ax.set(xscale="log", xlabel="optimizer.lr (configured)", ylabel=f"test {metric}", title=f"{metric} vs learning rate")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_throughput(finished: list[dict], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    batches, _ = _grid(finished)
    rates = [[j["examples_per_sec_per_device"] for j in finished if j["batch_size"] == b] for b in batches]
    for batch, values in zip(batches, rates):
        ax.scatter([batch] * len(values), values, s=12, color="grey")
    ax.plot(batches, [sorted(v)[len(v) // 2] for v in rates], marker="o", label="median over jobs")
    ax.set_xscale("log")
    ax.set_xticks(batches, [str(b) for b in batches], minor=False)
    ax.set(yscale="log", xlabel="train.batch_size", ylabel="examples/s per device",
           title="Training throughput per device")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_heatmap(finished: list[dict], metric: str, path: Path) -> None:
    import numpy as np

    plt = _pyplot()
    batches, lrs = _grid(finished)
    grid = np.full((len(batches), len(lrs)), np.nan)
    for job in finished:
        grid[batches.index(job["batch_size"]), lrs.index(job["lr"])] = job["metrics"][metric]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    image = ax.imshow(grid, cmap="viridis", aspect="auto", origin="lower")
    for (i, k), value in np.ndenumerate(grid):
        if not np.isnan(value):
            bright = value > np.nanmin(grid) + 0.6 * (np.nanmax(grid) - np.nanmin(grid))
            ax.text(k, i, f"{value:.3f}", ha="center", va="center", fontsize=8, color="k" if bright else "w")
    ax.set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
    ax.set_yticks(range(len(batches)), [str(b) for b in batches])
    ax.set(xlabel="optimizer.lr", ylabel="train.batch_size", title=f"test {metric}")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def make_plots(jobs: list[dict], keys: list[str], metric: str, out: Path) -> list[str]:
    """Draws the plots the swept keys allow; returns one note per plot, made or skipped."""
    finished = [j for j in jobs if j["status"] == OK and metric in j["metrics"]]
    has_lr, has_batch = LR in keys and len(finished) > 1, BATCH in keys and len(finished) > 1
    plots = [("metric_vs_lr.png", has_lr, f"needs {LR} swept", lambda p: plot_metric_vs_lr(finished, metric, p)),
             ("throughput_vs_batch.png", has_batch, f"needs {BATCH} swept", lambda p: plot_throughput(finished, p)),
             ("heatmap_batch_lr.png", has_lr and has_batch, f"needs {BATCH} and {LR} swept",
              lambda p: plot_heatmap(finished, metric, p))]
    notes = []
    for name, allowed, why, draw in plots:
        if allowed:
            draw(out / name)
            notes.append(f"![{name}]({name})")
        else:
            notes.append(f"{name} skipped: {why} with at least two finished jobs")
    return notes


def write_report(root: Path, metric: str = "ndcg@10", out: Path | None = None) -> dict:
    """Writes summary.csv, summary.md and the plots to `out` (default: root); returns their paths."""
    root, out = Path(root), Path(out or root)
    jobs = collect_jobs(root)
    metrics, keys = check_metric(jobs, metric), swept_keys(jobs)
    jobs = sort_by_metric(jobs, metric)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "summary.csv", jobs, keys, metrics, metric)
    notes = make_plots(jobs, keys, metric, out)
    (out / "summary.md").write_text(markdown(jobs, keys, metric, notes))
    return {"csv": out / "summary.csv", "md": out / "summary.md", "jobs": len(jobs),
            "failed": sum(j["status"] != OK for j in jobs)}


@cli_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jaxrec.report", description=__doc__.splitlines()[0])
    parser.add_argument("multirun_dir", type=Path, help="a Hydra multirun dir (multirun/<date>/<time>)")
    parser.add_argument("--metric", default="ndcg@10", help="test metric to sort by and plot (default ndcg@10)")
    parser.add_argument("--out", type=Path, default=None, help="output dir (default: the multirun dir)")
    args = parser.parse_args(argv)
    written = write_report(args.multirun_dir, args.metric, args.out)
    print(f"{written['jobs']} jobs ({written['failed']} failed or unfinished): {written['md']}, {written['csv']}")


if __name__ == "__main__":
    main()
