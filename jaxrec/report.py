"""Summarise a Hydra multirun: one table, one row per job, plus plots of the swept keys.

    python -m jaxrec.train -m sweep=bs_lr
    python -m jaxrec.report multirun/<date>/<time> [--metric ndcg@10] [--out DIR]

A job is any directory under the multirun dir that holds `.hydra/`. Finished jobs are read from
their `results.json`; a job that failed (its `failure.json` gives the reason) or never finished
is listed with its overrides instead of being dropped. Jobs are ranked and the best one selected
by the VALIDATION value of the metric; the test value is shown for the selected job only, so
the test set plays no part in the choice. Every row carries the command that reruns its job
alone. Jobs in different folders are different arms of one experiment (experiment=ml100k_zoo/mf
writes <dir>/ml100k_zoo/mf/<i>, experiments/peers.py writes its baselines the same way): each
arm gets one row, its job selected by validation, or the mean and spread over its jobs if they
have no validation metric (the folds of a cross-validation). Writes `summary.csv`, `summary.md`
and the PNGs the swept keys allow: validation metric vs learning rate per batch size, throughput
per device vs batch size, and a batch size x learning rate heatmap.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import statistics
from pathlib import Path

import yaml

from jaxrec.errors import JaxrecError, cli_errors
from jaxrec.progress import FAILURE_FILE

LR, BATCH = "optimizer.lr", "train.batch_size"
PERF = ("examples_per_sec_per_device", "wall_s")
OK, FAILED, UNFINISHED = "ok", "failed", "unfinished"


def parse_value(text: str):
    """'256' -> 256, '1e-3' -> 0.001, anything else stays a string (YAML 1.1 reads 1e-3 as text)."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def override_lines(job_dir: Path) -> list[str]:
    """The job's overrides as Hydra recorded them (experiment= first: it reads best there)."""
    path = job_dir / ".hydra" / "overrides.yaml"
    lines = [str(line) for line in (yaml.safe_load(path.read_text()) if path.exists() else None) or []]
    return sorted(lines, key=lambda line: not line.startswith("experiment="))


def read_overrides(job_dir: Path) -> dict:
    pairs = (line.split("=", 1) for line in override_lines(job_dir) if "=" in line)
    return {key.lstrip("+~"): parse_value(value) for key, value in pairs}


def rerun_command(job: dict) -> str:
    """The one line that reruns this job alone: its module (results.json's "entry", jaxrec.train
    unless a peer runner wrote it) and its overrides."""
    return " ".join(["python -m", job.get("entry", "jaxrec.train"), *map(shlex.quote, job["lines"])])


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_job(job_dir: Path, root: Path) -> dict:
    """One row: job, status, overrides; test and valid metrics, throughput and the learning rate
    if it finished; the reason if it failed (a results.json from a later retry wins)."""
    arm = job_dir.relative_to(root).parent.as_posix()
    row = {
        "job": str(job_dir.relative_to(root)),
        "arm": "" if arm == "." else arm,
        "status": UNFINISHED,
        "overrides": read_overrides(job_dir),
        "lines": override_lines(job_dir),
    }
    results = _read_json(job_dir / "results.json")
    if results is None:
        failure = _read_json(job_dir / FAILURE_FILE)
        if failure is None:
            return row
        reason = f"{failure.get('error', 'error')}: {failure.get('reason', '')}".strip().splitlines()[0]
        return row | {"status": FAILED, "reason": reason}
    train, lr = results.get("train", {}), results.get("config", {}).get("optimizer", {}).get("lr")
    cold = (results.get("config", {}).get("data", {}).get("cold_users") or 0) > 0
    return row | {
        "status": OK,
        "entry": results.get("entry", "jaxrec.train"),
        "cold": cold,
        "metrics": results.get("metrics", {}),
        "valid": results.get("valid_metrics", {}),
        "examples_per_sec_per_device": train.get("examples_per_sec_per_device"),
        "wall_s": train.get("wall_s"),
        "batch_size": train.get("batch_size"),
        "lr": lr,
        "effective_lr": results.get("lr_scaling", {}).get("effective_lr", lr),
    }


def _job_order(path: Path):
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.parts]


def collect_jobs(root: Path) -> list[dict]:
    if not root.is_dir():
        raise JaxrecError(f"multirun directory {root} does not exist")
    job_dirs = sorted(
        {p.parent for p in root.rglob(".hydra") if p.is_dir()}, key=lambda p: _job_order(p.relative_to(root))
    )
    if not job_dirs:
        raise JaxrecError(f"no jobs under {root}: expected job directories holding .hydra/ (a Hydra multirun dir)")
    return [read_job(d, root) for d in job_dirs]


def swept_keys(jobs: list[dict]) -> list[str]:
    """Override keys whose value differs between jobs (all keys when none differ)."""
    keys = list(dict.fromkeys(k for job in jobs for k in job["overrides"]))
    varying = [k for k in keys if len({repr(job["overrides"].get(k)) for job in jobs}) > 1]
    return varying or keys


def check_metric(jobs: list[dict], metric: str) -> list[str]:
    """All validation metric names of the finished jobs; the chosen one must be among them."""
    finished = [job for job in jobs if job["status"] == OK]
    names = sorted({m for job in finished for m in job["valid"]})
    if finished and not names:
        raise JaxrecError(
            "no finished job has validation metrics (data.valid_ratio=0?): jaxrec.report selects "
            "by validation, and choosing by test would tune on the test set"
        )
    if names and metric not in names:
        raise JaxrecError(
            f"--metric {metric!r} is not among the validation metrics in results.json; available: {', '.join(names)}"
        )
    return names


def lower_is_better(metric: str) -> bool:
    from jaxrec.runner import LOWER_IS_BETTER  # imports jax: only once there are jobs to rank

    return metric in LOWER_IS_BETTER


def rank_jobs(jobs: list[dict], metric: str) -> list[dict]:
    """Finished jobs best first by the validation metric (those without it after them), then the
    failed and the unfinished ones. The first row, if it has the metric, is the selected one."""
    sign = 1.0 if lower_is_better(metric) else -1.0

    def key(job):
        value = job["valid"].get(metric)
        return sign * value if isinstance(value, (int, float)) and math.isfinite(value) else math.inf

    finished = sorted((j for j in jobs if j["status"] == OK), key=key)
    return finished + [j for j in jobs if j["status"] == FAILED] + [j for j in jobs if j["status"] == UNFINISHED]


def selected_job(ranked: list[dict], metric: str) -> dict | None:
    best = ranked[0] if ranked else None
    value = best["valid"].get(metric) if best and best["status"] == OK else None
    return best if isinstance(value, (int, float)) and math.isfinite(value) else None


def write_csv(
    path: Path, jobs: list[dict], keys: list[str], valid_names: list[str], metric: str, selected: dict | None
) -> None:
    """Every job's validation metrics; test metrics only in the selected job's row."""
    test_names = sorted(selected["metrics"]) if selected else []
    header = [
        "job",
        "status",
        "selected",
        *keys,
        *(f"valid_{m}" for m in valid_names),
        "effective_lr",
        *PERF,
        *(f"test_{m}" for m in test_names),
        "reason",
        "command",
    ]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for job in jobs:
            chosen = job is selected
            writer.writerow(
                [
                    job["job"],
                    job["status"],
                    "yes" if chosen else "",
                    *(job["overrides"].get(k, "") for k in keys),
                    *(job.get("valid", {}).get(m, "") for m in valid_names),
                    job.get("effective_lr", ""),
                    *(job.get(p, "") for p in PERF),
                    *(job["metrics"].get(m, "") if chosen else "" for m in test_names),
                    job.get("reason", ""),
                    rerun_command(job),
                ]
            )


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:,.0f}"
    return "" if value is None else str(value)


def _fmt_key(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else _fmt(value)


def _overrides_text(job: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in job["overrides"].items()) or "(no overrides)"


# Test metrics the per-arm table shows, in this order, where any arm has them (cold/ ones only when
# an arm cut users to cold ones, data.cold_users > 0), after the selection metric.
ARM_TEST_METRICS = (
    "ndcg@10",
    "hr@10",
    "recall@20",
    "mrr",
    "coverage@10",
    "sampled/hr@10",
    "sampled/ndcg@10",
    "cold/hr@10",
    "cold/ndcg@10",
    "cold/mrr",
    "rmse",
    "mae",
)


def summarise_arms(jobs: list[dict], metric: str) -> list[dict]:
    """One entry per arm (job folder), in folder order: the job its validation metric
    selects and that job's test metrics, or, when none of its jobs has the metric (the folds of a
    cross-validation), the mean and sample spread of each test metric over its finished jobs."""
    arms = sorted({job["arm"] for job in jobs}, key=lambda arm: _job_order(Path(arm)))
    summaries = []
    for arm in arms:
        members = [job for job in jobs if job["arm"] == arm]
        finished = [job for job in members if job["status"] == OK]
        selected = selected_job(rank_jobs(finished, metric), metric) if finished else None
        entry = {
            "arm": arm or ".",
            "jobs": len(members),
            "finished": len(finished),
            "selected": selected,
            "cold": any(job["cold"] for job in finished),
        }
        if selected is not None:
            entry |= {
                "test": selected["metrics"],
                "valid": selected["valid"].get(metric),
                "wall_s": selected["wall_s"],
                "command": rerun_command(selected),
            }
        elif finished:
            names = set.intersection(*(set(job["metrics"]) for job in finished))
            entry |= {
                "test": {m: _mean_spread([job["metrics"][m] for job in finished]) for m in names},
                "valid": None,
                "wall_s": sum(job["wall_s"] or 0.0 for job in finished),
                "command": f"{len(finished)} jobs, e.g. " + rerun_command(finished[0]),
            }
        summaries.append(entry)
    return summaries


def _mean_spread(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _fmt_test(value) -> str:
    if isinstance(value, tuple):
        return f"{value[0]:.4f} ± {value[1]:.4f}"
    return _fmt(value)


def arms_markdown(summaries: list[dict], metric: str) -> list[str]:
    """The experiment's table: one row per arm."""
    cold = any(s["cold"] for s in summaries)
    shown = [
        m
        for m in dict.fromkeys([metric, *ARM_TEST_METRICS])
        if (cold or not m.startswith("cold/")) and any(m in s.get("test", {}) for s in summaries)
    ]
    lines = [
        "## Per arm",
        "",
        f"Each arm's job selected by validation {metric} and its test metrics; an arm whose jobs have no "
        "validation metric (cross-validation folds) shows the mean ± std over its jobs, and its fit s is their "
        "sum.",
        "",
        f"| arm | jobs | selected | valid {metric} | "
        + " | ".join(f"test {m}" for m in shown)
        + " | fit s | command |",
        "|" + "---|" * (len(shown) + 6),
    ]
    for s in summaries:
        selected = s["selected"]["job"] if s["selected"] else ("mean of all" if "test" in s else "none finished")
        cells = [
            s["arm"],
            f"{s['finished']}/{s['jobs']}",
            selected,
            _fmt(s.get("valid")) or "-",
            *(_fmt_test(s.get("test", {}).get(m)) or "-" for m in shown),
            f"{s['wall_s']:.1f}" if s.get("wall_s") is not None else "-",
            f"`{s['command']}`" if "command" in s else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _selection_lines(selected: dict | None, metric: str, shown: list[str], direction: str) -> list[str]:
    if selected is None:
        return ["No job was selected: no finished job has a finite validation " + metric + "."]
    tests = ", ".join(f"test {m} {_fmt(selected['metrics'][m])}" for m in shown if m in selected["metrics"])
    return [
        f"**Selected: job {selected['job']}**, by validation {metric} {_fmt(selected['valid'][metric])} "
        f"({direction} is better). Its {tests or 'test metrics: none'}. The other jobs' test metrics are "
        "left out (but for each arm's selected job): picking among them by test would tune on the test set. "
        "Rerun it alone with",
        "",
        "    " + rerun_command(selected),
    ]


def markdown(jobs: list[dict], keys: list[str], metric: str, notes: list[str], selected: dict | None) -> str:
    """The finished jobs ranked by the validation metric (the selected one marked and its test
    metrics given), then the failed and unfinished ones with their reason."""
    finished = [j for j in jobs if j["status"] == OK]
    direction = "lower" if lower_is_better(metric) else "higher"
    shown = [m for m in dict.fromkeys([metric, "hr@10"]) if m == metric or any(m in j["valid"] for j in finished)]
    scaled = any(j["effective_lr"] != j["lr"] for j in finished)
    cols = [f"valid {m}" for m in shown] + (["lr (effective)"] if scaled else []) + ["examples/s/device", "wall s"]
    arms = summarise_arms(jobs, metric)
    lines = [
        f"# Sweep summary: {len(finished)} of {len(jobs)} jobs finished, ranked by validation {metric}",
        "",
        *_selection_lines(selected, metric, shown, direction),
        "",
        *(arms_markdown(arms, metric) if len(arms) > 1 else []),
        "| job | " + " | ".join(keys + cols) + " | command |",
        "|" + "---|" * (len(keys) + len(cols) + 2),
    ]
    for job in finished:
        values = {
            **{f"valid {m}": job["valid"].get(m) for m in shown},
            "lr (effective)": job["effective_lr"],
            "examples/s/device": job["examples_per_sec_per_device"],
            "wall s": f"{job['wall_s']:.1f}" if job["wall_s"] is not None else None,
        }
        name = f"**{job['job']} (selected)**" if job is selected else job["job"]
        lines.append(
            "| "
            + " | ".join(
                [name]
                + [_fmt_key(job["overrides"].get(k)) for k in keys]
                + [_fmt_key(values[c]) if c == "lr (effective)" else _fmt(values[c]) for c in cols]
                + [f"`{rerun_command(job)}`"]
            )
            + " |"
        )
    lines += ["", "## Failed or unfinished", ""]
    lines += [
        f"- job {j['job']} {j['status']}"
        + (f" ({j['reason']})" if j.get("reason") else " (no results.json)")
        + f": {_overrides_text(j)}; rerun: `{rerun_command(j)}`"
        for j in jobs
        if j["status"] != OK
    ] or ["(none)"]
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
        points = sorted((j["lr"], j["valid"][metric]) for j in finished if j["batch_size"] == batch)
        ax.plot(*zip(*points), marker="o", label=f"batch {batch}")
    ax.set(
        xscale="log",
        xlabel="optimizer.lr (configured)",
        ylabel=f"valid {metric}",
        title=f"validation {metric} vs learning rate",
    )
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
    ax.set(
        yscale="log", xlabel="train.batch_size", ylabel="examples/s per device", title="Training throughput per device"
    )
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
        grid[batches.index(job["batch_size"]), lrs.index(job["lr"])] = job["valid"][metric]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    image = ax.imshow(grid, cmap="viridis", aspect="auto", origin="lower")
    for (i, k), value in np.ndenumerate(grid):
        if not np.isnan(value):
            bright = value > np.nanmin(grid) + 0.6 * (np.nanmax(grid) - np.nanmin(grid))
            ax.text(k, i, f"{value:.3f}", ha="center", va="center", fontsize=8, color="k" if bright else "w")
    ax.set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
    ax.set_yticks(range(len(batches)), [str(b) for b in batches])
    ax.set(xlabel="optimizer.lr", ylabel="train.batch_size", title=f"validation {metric}")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def make_plots(jobs: list[dict], keys: list[str], metric: str, out: Path) -> list[str]:
    """Draws the plots the swept keys allow; returns one note per plot, made or skipped."""
    finished = [
        j
        for j in jobs
        if j["status"] == OK and metric in j["valid"] and j["lr"] is not None and j["batch_size"] is not None
    ]  # peers have neither
    has_lr, has_batch = LR in keys and len(finished) > 1, BATCH in keys and len(finished) > 1
    plots = [
        ("metric_vs_lr.png", has_lr, f"needs {LR} swept", lambda p: plot_metric_vs_lr(finished, metric, p)),
        ("throughput_vs_batch.png", has_batch, f"needs {BATCH} swept", lambda p: plot_throughput(finished, p)),
        (
            "heatmap_batch_lr.png",
            has_lr and has_batch,
            f"needs {BATCH} and {LR} swept",
            lambda p: plot_heatmap(finished, metric, p),
        ),
    ]
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
    valid_names, keys = check_metric(jobs, metric), swept_keys(jobs)
    jobs = rank_jobs(jobs, metric)
    selected = selected_job(jobs, metric)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "summary.csv", jobs, keys, valid_names, metric, selected)
    notes = make_plots(jobs, keys, metric, out)
    (out / "summary.md").write_text(markdown(jobs, keys, metric, notes, selected))
    return {
        "csv": out / "summary.csv",
        "md": out / "summary.md",
        "jobs": len(jobs),
        "failed": sum(j["status"] == FAILED for j in jobs),
        "unfinished": sum(j["status"] == UNFINISHED for j in jobs),
        "selected": selected["job"] if selected else None,
    }


@cli_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jaxrec.report", description=__doc__.splitlines()[0])
    parser.add_argument("multirun_dir", type=Path, help="a Hydra multirun dir (multirun/<date>/<time>)")
    parser.add_argument(
        "--metric",
        default="ndcg@10",
        help="metric whose VALIDATION value ranks the jobs and picks the best (default ndcg@10)",
    )
    parser.add_argument("--out", type=Path, default=None, help="output dir (default: the multirun dir)")
    args = parser.parse_args(argv)
    written = write_report(args.multirun_dir, args.metric, args.out)
    print(
        f"{written['jobs']} jobs ({written['failed']} failed, {written['unfinished']} unfinished), "
        f"selected by validation {args.metric}: job {written['selected']}; {written['md']}, {written['csv']}"
    )


if __name__ == "__main__":
    main()
