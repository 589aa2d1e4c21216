"""Checkpoints written by earlier jaxrec keep resuming. fixtures/run_9f3b375 holds step 40 of
`RUN` (train.epochs=2) as the code of commit 9f3b375 (2026-11-28, before sharded checkpoints)
wrote it: tables in logical [rows, dim] form, no plan layout, no checksums, no data
fingerprint."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np

from jaxrec.config import compose_config
from jaxrec.runner import run

FIXTURE = Path(__file__).parent / "fixtures" / "run_9f3b375"
RUN = ["data=synthetic", "data.num_users=200", "data.num_items=100", "data.num_interactions=6000", "model.dim=8"]
RUN += ["train.batch_size=128", "train.checkpoint_every=20", "train.progress=false"]


def test_a_checkpoint_of_the_logical_format_resumes(tmp_path, caplog):
    run_dir = tmp_path / "run"
    shutil.copytree(FIXTURE, run_dir)
    with caplog.at_level(logging.INFO):
        results = run(compose_config([*RUN, "train.epochs=3"]), run_dir)
    log = caplog.text
    assert "restored checkpoint step 40 " in log and "damaged" not in log
    assert results["train"]["steps"] == 60
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert min(steps) > 40, "the resumed run trained from the start"
    assert np.isfinite(results["metrics"]["ndcg@10"]) and results["metrics"]["ndcg@10"] > 0.1
