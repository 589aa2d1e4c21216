"""Console progress with rate and ETA, and append-only JSON-lines metrics."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


class Progress:
    """A one-line progress bar on stderr: step, rate, ETA and the latest metrics."""

    def __init__(self, total: int, enabled: bool = True, initial: int = 0, every_s: float = 0.5):
        self.total, self.enabled, self.initial, self.every_s = total, enabled, initial, every_s
        self.start = time.perf_counter()
        self.last = 0.0
        self.finished = False

    def update(self, done: int, **metrics: float) -> None:
        now = time.perf_counter()
        if not self.enabled or self.finished or (now - self.last < self.every_s and done < self.total):
            return
        self.last = now
        rate = (done - self.initial) / max(now - self.start, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        width = 24
        filled = int(width * done / max(self.total, 1))
        extra = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} "
            f"{rate:.1f} steps/s ETA {eta:.0f}s {extra}   "
        )
        if done >= self.total:
            self.finished = True
            sys.stderr.write("\n")
        sys.stderr.flush()


class MetricsLog:
    """Appends one JSON object per record to metrics.jsonl, flushed so a crash loses nothing."""

    def __init__(self, path: Path, enabled: bool = True):
        """enabled=False (processes other than 0 of a multi-process run) writes nothing."""
        self.file = open(path, "a", encoding="utf-8") if enabled else None

    def write(self, record: dict) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record, sort_keys=True) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def write_json_atomic(path: Path, obj) -> None:
    """Write to a temporary file and rename it into place: never a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
