"""Everything a checkpoint restores is verified (meta, arrays, step, data position) and a
damaged one falls back to the newest that verifies; a resume is never silently another run (the
data's content, a checkpoint past the run's end); read-only restores move nothing. In-process,
on one tiny run: each test damages a copy and calls the restore directly."""

import dataclasses
import json
import logging
import shutil

import numpy as np
import pytest

from jaxrec import runner
from jaxrec.checkpoint import Checkpointer, check_same_run, data_fingerprint, summary_fingerprint
from jaxrec.config import compose_config, validate
from jaxrec.data.dataset import load_dataset
from jaxrec.data.pipeline import make_train_dataset, train_examples
from jaxrec.errors import JaxrecError
from jaxrec.restore import restore_run
from jaxrec.train_lib import build_engine, candidates_per_example, resolve_batch_size

STEPS = [5, 10, 15, 16]  # 8 steps an epoch, 2 epochs, a checkpoint every 5 and at the end


def _config(**train):
    cfg = compose_config(["data=synthetic", "sharding=none"])
    cfg.data.num_users, cfg.data.num_items, cfg.data.num_interactions = 60, 40, 1300
    cfg.model.dim = 4
    cfg.train.epochs, cfg.train.batch_size, cfg.train.progress, cfg.train.eval_every = 2, 52, False, 0
    cfg.train.checkpoint_every, cfg.train.keep_checkpoints = 5, 10
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return validate(cfg)


class _FixedMetrics:
    """Stands in for the ranking evaluator (whose compilation is most of a run this small): the
    checkpoints, not the metrics, are under test."""

    has_valid = True

    def __init__(self, engine, dataset):
        self.engine = engine

    def __call__(self, state, part):
        return {"ndcg@10": 0.25 if part == "valid" else 0.35}


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("integrity")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "make_evaluator", _FixedMetrics)
        runner.run(_config(), run_dir)
    assert sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir()) == STEPS
    return run_dir


@pytest.fixture
def run_copy(saved_run, tmp_path):
    shutil.copytree(saved_run, tmp_path / "run")
    return tmp_path / "run"


def _meta_path(run_dir, step):
    return run_dir / "checkpoints" / str(step) / "meta" / "metadata"


def _edit_meta(run_dir, step, edit):
    meta = json.loads(_meta_path(run_dir, step).read_text())
    edit(meta)
    _meta_path(run_dir, step).write_text(json.dumps(meta))


def _resume(run_dir, step=None, then=None):
    """What runner._start_state restores: (restored step, the iterator's next_index); `then`
    is called with (checkpointer, engine, state, iterator) before the checkpointer closes."""
    cfg = _config()
    dataset = load_dataset(cfg.data)
    engine = build_engine(cfg, dataset.schema)
    batch_size = resolve_batch_size(engine, max_batch=train_examples(engine.model, dataset))
    loader, _ = make_train_dataset(
        engine.model,
        dataset,
        num_negatives=candidates_per_example(cfg) - 1,
        loss=cfg.model.loss,
        batch_size=batch_size,
        epochs=cfg.train.epochs,
        seed=cfg.train.data_seed,
    )
    iterator = iter(loader.to_iter_dataset())
    ckpt = Checkpointer(run_dir / "checkpoints", every=0, keep=10, async_save=False)
    try:
        state, _, restored = ckpt.restore(engine, iterator, step, runner._run_identity(cfg, dataset, batch_size))
        if then is not None:
            then(ckpt, engine, state, iterator)
    finally:
        ckpt.close()
    assert int(state.step) == restored
    return restored, iterator.get_state()["next_index"]


def _set_next_index(run_dir, step, value):
    path = run_dir / "checkpoints" / str(step) / "data" / "process_0-of-1.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"next_index": value}))


DAMAGE = {  # what is damaged -> (how, what the warning says)
    # D3: the best metrics in meta, which end up in results.json
    "meta edited": (
        lambda d: _edit_meta(d, 16, lambda m: m["best"]["test"].update({"ndcg@10": 0.91})),
        "metadata does not match its checksum",
    ),
    # D3 variants: a current-format meta without its checksums is not an old checkpoint
    "array checksums dropped": (
        lambda d: _edit_meta(d, 16, lambda m: m.pop("checksums")),
        "metadata lacks its array checksums",
    ),
    "meta checksum dropped": (
        lambda d: _edit_meta(d, 16, lambda m: m.pop("meta_sha256")),
        "metadata lacks its checksum",
    ),
    # D2: a data position that is in range but not the step's
    "data position moved": (lambda d: _set_next_index(d, 16, 3), "its data position is element 3, not 16"),
    # D9: a step directory renamed, or another step's copied under a new number
    "renamed step": (
        lambda d: (d / "checkpoints" / "16").rename(d / "checkpoints" / "20"),
        "its state is step 16, not 20",
    ),
    "copied step": (
        lambda d: shutil.copytree(d / "checkpoints" / "5", d / "checkpoints" / "20"),
        "its state is step 5, not 20",
    ),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damage_to_any_restored_item_falls_back_to_the_previous_checkpoint(run_copy, damage, caplog):
    how, reason = DAMAGE[damage]
    how(run_copy)
    with caplog.at_level(logging.WARNING, "jaxrec.checkpoint"):
        restored = _resume(run_copy)
    previous = 16 if damage == "copied step" else 15  # the copy is a new newest step; 16 stays intact
    assert restored == (previous, previous)
    damaged = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(damaged) == 1 and f"is damaged ({reason}); trying the previous one" in damaged[0], caplog.text
    assert f"resumed from step {previous}, the newest checkpoint that verifies" in caplog.text
    moved = run_copy / "checkpoints-damaged"
    assert sorted(p.name for p in moved.iterdir()) == ["20" if damage.endswith("step") else "16"]


def test_a_meta_written_before_the_meta_checksum_still_restores(run_copy):
    """The previous writer's meta: array checksums, the counts fingerprint, no meta checksum."""
    _edit_meta(run_copy, 16, lambda m: [m.pop(k) for k in ("meta_sha256", "data_content")])
    assert _resume(run_copy) == (16, 16)


def test_an_explicit_damaged_step_is_refused_naming_the_flag(run_copy):
    _set_next_index(run_copy, 16, 3)
    with pytest.raises(JaxrecError, match=r"damaged \(its data position is element 3, not 16\); choose another "):
        _resume(run_copy, step=16)


def test_read_only_restores_move_nothing_and_name_their_own_flag(run_copy):
    DAMAGE["meta edited"][0](run_copy)
    with pytest.raises(
        JaxrecError, match=r"/16 is damaged \(metadata does not match its checksum\); choose another --step"
    ):
        restore_run(run_copy, 16)
    assert restore_run(run_copy)[-1] == 15
    assert 16 in [int(p.name) for p in (run_copy / "checkpoints").iterdir()]
    assert not (run_copy / "checkpoints-damaged").exists()


def test_a_save_over_a_step_this_run_did_not_write_is_one_line(run_copy):
    """D9: Orbax's StepAlreadyExistsError never surfaces raw."""
    shutil.copytree(run_copy / "checkpoints" / "16", run_copy / "checkpoints" / "15-copy")

    def save_over_a_foreign_step(ckpt, engine, state, iterator):
        (run_copy / "checkpoints" / "15-copy").rename(run_copy / "checkpoints" / "17")
        ckpt.manager.reload()
        with pytest.raises(JaxrecError, match=r"/17 already exists, but this run did not write it"):
            ckpt.save(engine, state.replace(step=state.step + 1), iterator, {"best": {}})

    _resume(run_copy, then=save_over_a_foreign_step)


def test_a_plain_file_named_like_a_step_is_set_aside_with_a_warning(run_copy, caplog):
    shutil.rmtree(run_copy / "checkpoints" / "16")
    (run_copy / "checkpoints" / "16").write_text("the user's notes")
    with caplog.at_level(logging.WARNING, "jaxrec.checkpoint"):
        assert _resume(run_copy) == (15, 15)
    assert "16 is a file, not a checkpoint; moved to" in caplog.text
    assert (run_copy / "checkpoints-damaged" / "16").read_text() == "the user's notes"


@pytest.mark.parametrize("override", [{"epochs": 1}, {"max_steps": 12}])
def test_a_checkpoint_past_the_runs_end_is_refused_and_kept(run_copy, override):
    """D10/D11: fewer epochs or max_steps below the checkpoint: intact checkpoints are neither
    called damaged nor reported as a shorter run."""
    results = (run_copy / "results.json").read_text()
    total = 8 if "epochs" in override else 12
    with pytest.raises(JaxrecError, match=rf"checkpoint step 16 in \S+ is past this run's end: {total} steps"):
        runner.run(_config(**override), run_copy)
    assert sorted(int(p.name) for p in (run_copy / "checkpoints").iterdir()) == STEPS
    assert not (run_copy / "checkpoints-damaged").exists()
    assert (run_copy / "results.json").read_text() == results


def test_a_resume_that_fails_leaves_no_results_of_the_earlier_run(run_copy, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("the machine died")

    monkeypatch.setattr(runner, "_train", fail)
    with pytest.raises(RuntimeError):
        runner.run(_config(epochs=3), run_copy)
    assert not (run_copy / "results.json").exists()


def test_a_torn_or_foreign_metrics_line_is_dropped_with_one_warning(tmp_path, caplog):
    """D12: what a kill mid-write leaves, an empty line, a non-object, a step that is not a number."""
    path = tmp_path / "metrics.jsonl"
    good = [json.dumps({"step": s, "train/loss": 0.5}) for s in (5, 10, 15)]
    path.write_text("\n".join([good[0], "", "[]", '{"step": "x"}', good[1], good[2], '{"step": 16, "tru']))
    with caplog.at_level(logging.WARNING, "jaxrec.train"):
        runner._truncate_metrics(path, 10)
    assert path.read_text().splitlines() == good[:2]
    assert len(caplog.records) == 1 and "dropped 4 line(s)" in caplog.text


def test_the_data_fingerprint_covers_content_and_old_checkpoints_compare_counts(saved_run):
    """D4: ids relabelled with the same counts are another data set; a meta with only the old
    counts fingerprint is still compared the old way."""
    dataset = load_dataset(_config().data)
    train = dataset.split.train
    permuted = dataclasses.replace(train, item=(train.item + 1) % dataset.num_items)
    relabelled = dataclasses.replace(dataset, split=dataclasses.replace(dataset.split, train=permuted))
    assert summary_fingerprint(relabelled) == summary_fingerprint(dataset)
    assert data_fingerprint(relabelled) != data_fingerprint(dataset)
    assert data_fingerprint(load_dataset(_config().data)) == data_fingerprint(dataset)

    meta = json.loads(_meta_path(saved_run, 16).read_text())
    current = {"config": meta["config"], "batch_size": meta["batch_size"]}
    changed = current | {"data_content": data_fingerprint(relabelled), "data_fingerprint": summary_fingerprint(dataset)}
    with pytest.raises(JaxrecError, match=r"different run: the data's content \(sha256 "):
        check_same_run(meta, changed, saved_run)
    old_meta = {k: v for k, v in meta.items() if k != "data_content"}
    check_same_run(old_meta, changed, saved_run)  # the counts agree: resumable, as before
    with pytest.raises(JaxrecError, match=r"the data set \(its counts differ\)"):
        check_same_run(old_meta, changed | {"data_fingerprint": "0" * 16}, saved_run)
    assert np.array_equal(dataset.split.train.item, train.item)  # nothing above changed the data set
