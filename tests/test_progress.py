"""The run's console bar (rich), metrics.jsonl and its TensorBoard twin, read back from the event
file with a reader that needs neither TensorFlow nor TensorBoard."""

import io
import json
import logging
import struct

import pytest
from rich.console import Console
from tensorboardX.proto import event_pb2

from jaxrec.progress import (
    BACKEND_PROBE_LOGGER,
    MetricsLog,
    Progress,
    quiet_backend_probe,
    stop_live_bar,
    tensorboard_tag,
)

TRAIN = {"step": 10, "epoch": 0.5, "train/loss": 0.75, "train/skipped_nonfinite": 0}
EVAL = {"step": 20, "epoch": 1.0, "eval/valid/ndcg@10": 0.25, "eval/valid/hr@10": 0.5}


def read_events(path) -> list:
    """Every Event of a TFRecord file: [u64 length][u32 crc][payload][u32 crc] per record."""
    data, events, at = path.read_bytes(), [], 0
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at : at + 8])
        events.append(event_pb2.Event.FromString(data[at + 12 : at + 12 + length]))
        at += 12 + length + 4
    return events


def scalars(events) -> dict:
    return {(e.step, v.tag): v.simple_value for e in events for v in e.summary.value}


def test_metrics_log_writes_jsonl_and_the_same_scalars_to_tensorboard(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.write(TRAIN)
    log.write(EVAL)
    log.close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [TRAIN, EVAL]
    (event_file,) = tmp_path.glob("events.out.tfevents.*")
    assert scalars(read_events(event_file)) == {
        (10, "epoch"): 0.5,
        (10, "train/loss"): 0.75,
        (10, "train/skipped_nonfinite"): 0.0,
        (20, "epoch"): 1.0,
        (20, "eval/valid/ndcg_at_10"): 0.25,
        (20, "eval/valid/hr_at_10"): 0.5,
    }


def test_resumed_metrics_log_purges_tensorboard_steps_after_the_kept_records(tmp_path):
    first = MetricsLog(tmp_path / "metrics.jsonl")
    first.write(TRAIN)
    first.close()
    before = set(tmp_path.glob("events.out.tfevents.*"))
    resumed = MetricsLog(tmp_path / "metrics.jsonl")
    resumed.close()
    (new_file,) = set(tmp_path.glob("events.out.tfevents.*")) - before
    starts = [e.step for e in read_events(new_file) if e.session_log.status == event_pb2.SessionLog.START]
    assert starts == [11]  # TensorBoard drops older events from step 11 on


def test_disabled_metrics_log_writes_nothing(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl", enabled=False)
    log.write(TRAIN)
    log.close()
    assert list(tmp_path.iterdir()) == []


def test_tensorboard_tags():
    assert tensorboard_tag("eval/valid/cold/ndcg@10") == "eval/valid/cold/ndcg_at_10"
    assert tensorboard_tag("perf/examples_per_sec") == "perf/examples_per_sec"


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def terminal_log_handler():
    root, handler = logging.getLogger(), logging.StreamHandler(_Terminal())
    root.addHandler(handler)
    yield handler
    stop_live_bar()
    root.removeHandler(handler)


def test_progress_bar_shows_step_loss_and_last_eval_with_log_lines_above(terminal_log_handler):
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=160, color_system=None)
    progress = Progress(40, enabled=True, initial=0, eval_metric="ndcg@10", console=console)
    assert progress.enabled and terminal_log_handler not in logging.getLogger().handlers
    progress.update(10, loss=0.6931)
    MetricsLog(None, enabled=False, on_write=progress.show).write(EVAL)
    logging.getLogger("jaxrec.train").warning("a line above the bar")
    progress.close()
    text = screen.getvalue()
    assert "10/40" in text and "loss 0.6931" in text and "valid ndcg@10 0.2500 (epoch 1)" in text
    assert "a line above the bar" in text and "a line above the bar" not in terminal_log_handler.stream.getvalue()
    assert terminal_log_handler in logging.getLogger().handlers  # handed back on close


def test_progress_is_off_without_a_terminal_or_when_disabled():
    plain = Console(file=io.StringIO(), force_terminal=False)
    assert not Progress(10, enabled=True, console=plain).enabled
    terminal = Console(file=io.StringIO(), force_terminal=True)
    off = Progress(10, enabled=False, console=terminal)
    off.update(5, loss=1.0)
    off.show(EVAL)
    assert not off.enabled and terminal.file.getvalue() == ""


def test_a_new_bar_stops_the_one_a_failed_job_left_behind(terminal_log_handler):
    console = Console(file=io.StringIO(), force_terminal=True)
    left_behind = Progress(10, console=console)
    Progress(10, console=console)
    assert left_behind.bar is None and logging.getLogger().handlers.count(terminal_log_handler) == 0
    stop_live_bar()
    assert logging.getLogger().handlers.count(terminal_log_handler) == 1


def test_backend_probe_info_is_hidden_but_warnings_are_not():
    quiet_backend_probe()
    probe = logging.getLogger(BACKEND_PROBE_LOGGER)
    assert not probe.isEnabledFor(logging.INFO) and probe.isEnabledFor(logging.WARNING)
