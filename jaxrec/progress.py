"""What a run shows and keeps while it trains: a live console bar (rich), metrics.jsonl, and the
same scalars as TensorBoard events (tensorboardX) next to it."""

from __future__ import annotations

import atexit
import itertools
import json
import logging
import os
import re
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress
from rich.text import Text

BACKEND_PROBE_LOGGER = "jax._src.xla_bridge"  # logs "Unable to initialize backend 'tpu'" at INFO
FAILURE_FILE = "failure.json"  # a failed multirun job's reason, in its dir (jaxrec.train, jaxrec.report)


def quiet_backend_probe() -> None:
    """Hide JAX's INFO line about a missing TPU library (and its other backend probes) at start;
    its warnings and errors still show. Command-line entry points call this before jax starts."""
    logging.getLogger(BACKEND_PROBE_LOGGER).setLevel(logging.WARNING)


class _StepRate(ProgressColumn):
    """Steps per second over rich's recent window (so the compiling first step fades out)."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("?" if speed is None else f"{speed:.1f} steps/s")


def _is_terminal_stream(handler: logging.Handler) -> bool:
    stream = getattr(handler, "stream", None)
    return (
        isinstance(handler, logging.StreamHandler)
        and not isinstance(handler, logging.FileHandler)
        and callable(getattr(stream, "isatty", None))
        and stream.isatty()
    )


class Progress:
    """One live bar on the terminal: step, rate, ETA, the latest loss and the latest validation
    value of `eval_metric`. While it is live, the root logger's terminal handlers are swapped for
    rich's handler on the same console, so log lines print above the bar instead of through it.
    Off when `enabled` is false or stdout is not a terminal (pipes, CI, log files)."""

    _live: Progress | None = None  # at most one bar at a time (multirun jobs share a process)

    def __init__(
        self,
        total: int,
        enabled: bool = True,
        initial: int = 0,
        eval_metric: str | None = None,
        console: Console | None = None,
    ):
        """`console` defaults to rich's console on stdout."""
        stop_live_bar()
        self.total, self.eval_metric = total, eval_metric
        self.console = console or Console()
        self.enabled = enabled and self.console.is_terminal
        self._swapped: list[tuple[int, logging.Handler, logging.Handler]] = []
        self.bar = None
        if not self.enabled:
            return
        self.bar = RichProgress(
            TextColumn("train"),
            BarColumn(),
            MofNCompleteColumn(),
            _StepRate(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[loss]}"),
            TextColumn("{task.fields[eval]}"),
            console=self.console,
            refresh_per_second=4,
        )
        self.task = self.bar.add_task("train", total=total, completed=initial, loss="", eval="")
        self._swap_log_handlers()
        self.bar.start()
        Progress._live = self

    def _swap_log_handlers(self) -> None:
        root = logging.getLogger()
        for index, handler in enumerate(root.handlers):
            if _is_terminal_stream(handler):
                rich_handler = RichHandler(level=handler.level, console=self.console, show_path=False)
                rich_handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
                root.handlers[index] = rich_handler
                self._swapped.append((index, handler, rich_handler))

    def update(self, done: int, **metrics: float) -> None:
        """Move the bar to step `done`; `loss=` updates the loss shown."""
        if self.bar is None:
            return
        fields = {"loss": f"loss {metrics['loss']:.4g}"} if "loss" in metrics else {}
        self.bar.update(self.task, completed=done, **fields)

    def show(self, record: dict) -> None:
        """Take the loss and the validation value of `eval_metric` from a metrics.jsonl record."""
        if self.bar is None:
            return
        key = f"eval/valid/{self.eval_metric}"
        if "train/loss" in record:
            self.bar.update(self.task, loss=f"loss {record['train/loss']:.4g}")
        if key in record:
            self.bar.update(self.task, eval=f"valid {self.eval_metric} {record[key]:.4f} (epoch {record['epoch']:.3g})")

    def close(self) -> None:
        """Stop the bar (left on screen at its last state) and give logging its handlers back."""
        if self.bar is None:
            return
        self.bar.stop()
        root = logging.getLogger()
        for index, original, rich_handler in self._swapped:
            if rich_handler in root.handlers:
                root.handlers[root.handlers.index(rich_handler)] = original
            else:
                root.handlers.insert(min(index, len(root.handlers)), original)
        self._swapped, self.bar = [], None
        if Progress._live is self:
            Progress._live = None


def stop_live_bar() -> None:
    """Stop the bar still on screen, if any: a job that failed mid-run leaves one behind."""
    if Progress._live is not None:
        Progress._live.close()


atexit.register(stop_live_bar)


def tensorboard_tag(name: str) -> str:
    """A metrics.jsonl key as a TensorBoard tag: 'eval/valid/ndcg@10' -> 'eval/valid/ndcg_at_10'."""
    return re.sub(r"[^-/\w.]", "_", name.replace("@", "_at_"))


_event_file_ids = itertools.count()  # event files are named by the second: two in one second would clash


def _last_step(path: Path) -> int | None:
    if not path.exists():
        return None
    steps = [json.loads(line).get("step", 0) for line in path.read_text().splitlines() if line.strip()]
    return max(steps) if steps else None


class MetricsLog:
    """Appends one JSON object per record to metrics.jsonl, flushed so a crash loses nothing, and
    writes its numbers as TensorBoard scalars (same names, `@` as `_at_`) in the same directory."""

    def __init__(self, path: Path, enabled: bool = True, on_write: Callable[[dict], None] | None = None):
        """enabled=False (processes other than 0 of a multi-process run) writes nothing. A run
        resumed into a dir that already has records purges the TensorBoard steps after the last
        of them (the resume already cut metrics.jsonl back to its checkpoint)."""
        from tensorboardX import SummaryWriter

        self.on_write = on_write
        self.file = self.events = None
        if enabled:
            last = _last_step(path)
            self.file = open(path, "a", encoding="utf-8")
            self.events = SummaryWriter(
                str(path.parent),
                purge_step=None if last is None else last + 1,
                filename_suffix=f".{os.getpid()}.{next(_event_file_ids)}",
            )

    def write(self, record: dict) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record, sort_keys=True) + "\n")
            self.file.flush()
            step = int(record.get("step", 0))
            for name, value in record.items():
                if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.events.add_scalar(tensorboard_tag(name), float(value), step)
            self.events.flush()
        if self.on_write is not None:
            self.on_write(record)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.events.close()
            self.file = self.events = None


def write_json_atomic(path: Path, obj) -> None:
    """Write to a temporary file and rename it into place: never a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
