"""data=criteo: the log format by hand, vocabularies, splits, bad lines, resuming a killed prepare,
planning from metadata, per-process batches, and a run that learns from prepared shards."""

import gzip
import json
import os
import shutil

import numpy as np
import pytest

from jaxrec.config import CriteoConfig, compose_config, validate
from jaxrec.data.__main__ import main
from jaxrec.data.criteo.fake_logs import write_fake_logs
from jaxrec.data.criteo.parse import parse_lines
from jaxrec.data.criteo.shards import BlockShuffle, load_criteo_dataset
from jaxrec.data.ctr import make_ctr_dataset
from jaxrec.data.dataset import data_schema
from jaxrec.errors import JaxrecError


def _line(label: str, ints: list[str], cats: list[str], end: str = "\n") -> str:
    ints, cats = ints + [""] * (13 - len(ints)), cats + [""] * (26 - len(cats))
    return "\t".join([label, *ints, *cats]) + end


def _prepare(out, *inputs, flags=()) -> dict:
    main(["prepare", "criteo", *map(str, inputs), "--out", str(out), *flags])
    return json.loads((out / "metadata.json").read_text())


def _part(out, split="train"):
    cfg = CriteoConfig(path=str(out))
    return load_criteo_dataset(cfg).part(split)


def _all_rows(part):
    return part.rows(np.arange(len(part)))


EDGE_LINES = (
    _line("1", ["5", "", "-3"], ["68fd1e64", "", "0000000a"], end="\r\n")  # CRLF
    + _line("0", [], [])  # every field missing
    + _line("1", ["2"] * 13, ["FFFFFFFF"] * 26, end="")
)  # upper-case hex, no final newline


def test_parse_values_by_hand():
    parsed = parse_lines(EDGE_LINES.encode() + b"\n")
    assert parsed.label.tolist() == [1, 0, 1] and len(parsed.bad_lines) == 0
    assert parsed.ints[0, :4].tolist() == [5, 0, -3, 0] and parsed.ints[2].tolist() == [2] * 13
    assert parsed.cats[0, :3].tolist() == [0x68FD1E64, 0, 10] and parsed.cat_missing[0, :3].tolist() == [0, 1, 0]
    assert parsed.cats[2].tolist() == [0xFFFFFFFF] * 26 and parsed.cat_missing[1].all()


@pytest.mark.parametrize("compressed", [False, True])
def test_prepare_edge_cases_with_hash_buckets(tmp_path, compressed):
    path = tmp_path / ("logs.txt.gz" if compressed else "logs.txt")
    with gzip.open(path, "wt", newline="") if compressed else open(path, "w", newline="") as f:
        f.write(EDGE_LINES)
    meta = _prepare(
        tmp_path / "out",
        path,
        flags=["--hash-buckets", "11", "--split", "random", "--valid-ratio", "0", "--test-ratio", "0"],
    )
    assert meta["num_lines"] == meta["num_examples"] == 3 and meta["vocab_sizes"] == [11] * 26
    dense, sparse, label = _all_rows(_part(tmp_path / "out"))
    assert label.tolist() == [1, 0, 1]
    # log(1 + max(x, 0)), missing 0: I1 = 5, I2 missing, I3 = -3
    np.testing.assert_allclose(dense[0, :3], [np.log(6), 0, 0], rtol=1e-6)
    np.testing.assert_allclose(dense[2], np.full(13, np.log(3)), rtol=1e-6)
    # id = 1 + value mod 10, missing 0: 0x68fd1e64 = 1761418852, 0xa = 10, 0xffffffff = 4294967295
    assert sparse[0, :3].tolist() == [3, 0, 1] and sparse[1].tolist() == [0] * 26 and sparse[2].tolist() == [6] * 26


def test_min_count_vocabulary_counts_train_lines_only(tmp_path):
    # one file of 7 lines is 7 days of one line: lines 1-6 train, line 7 test
    c1 = ["0000000b", "0000000b", "00000002", "00000002", "00000003", "", "0000000b"]
    (tmp_path / "train.txt").write_text("".join(_line("0", ["1"], [c]) for c in c1))
    meta = _prepare(tmp_path / "out", tmp_path, flags=["--min-count", "2"])
    assert meta["features"][0] == {"name": "C1", "distinct_in_train": 3, "kept": 2}
    assert meta["vocab_sizes"] == [3] + [1] * 25  # id 0 (missing or rare) + kept values
    assert [meta["splits"][s]["rows"] for s in ("train", "valid", "test")] == [6, 0, 1]
    # kept values in hex order: 0x2 -> 1, 0xb -> 2; 0x3 (seen once) and missing -> 0
    assert _all_rows(_part(tmp_path / "out"))[1][:, 0].tolist() == [2, 2, 1, 1, 0, 0]
    assert _all_rows(_part(tmp_path / "out", "test"))[1][:, 0].tolist() == [2]


def _numbered_lines(first: int, count: int) -> str:
    return "".join(_line("0", [str(k)], []) for k in range(first, first + count))


def _line_numbers(out, split) -> list[int]:
    return np.rint(np.expm1(_all_rows(_part(out, split))[0][:, 0])).astype(int).tolist()


def test_days_split_one_file_and_day_files(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "train.txt").write_text(_numbered_lines(0, 30))  # days of 5, 5, 4, 4, 4, 4, 4 lines
    _prepare(tmp_path / "out1", tmp_path / "one")
    assert _line_numbers(tmp_path / "out1", "train") == list(range(26))
    assert _line_numbers(tmp_path / "out1", "test") == [26, 27]
    assert _line_numbers(tmp_path / "out1", "valid") == [28, 29]
    (tmp_path / "days").mkdir()
    for day, (first, count) in enumerate([(0, 3), (3, 2), (5, 5)]):  # day_10 sorts after day_2 by number
        (tmp_path / "days" / f"day_{[0, 2, 10][day]}").write_text(_numbered_lines(first, count))
    meta = _prepare(tmp_path / "out2", tmp_path / "days")
    assert meta["split"]["day_lines"] == [3, 2, 5]
    assert _line_numbers(tmp_path / "out2", "train") == [0, 1, 2, 3, 4]
    assert _line_numbers(tmp_path / "out2", "test") == [5, 6, 7] and _line_numbers(tmp_path / "out2", "valid") == [8, 9]


def test_random_split_is_seeded_and_independent_of_pieces(tmp_path):
    (tmp_path / "train.txt").write_text(_numbered_lines(0, 3000))
    flags = ["--split", "random", "--seed", "4", "--valid-ratio", "0.2", "--test-ratio", "0.1"]
    meta = _prepare(tmp_path / "a", tmp_path / "train.txt", flags=flags)
    _prepare(tmp_path / "b", tmp_path / "train.txt", flags=[*flags, "--piece-mb", "0.01", "--workers", "2"])
    assert len(json.loads((tmp_path / "b" / "plan.json").read_text())["pieces"]) > 3
    for split in ("train", "valid", "test"):
        assert _line_numbers(tmp_path / "a", split) == _line_numbers(tmp_path / "b", split)
    assert abs(meta["splits"]["valid"]["rows"] - 600) < 80 and abs(meta["splits"]["test"]["rows"] - 300) < 60


def test_bad_lines_stop_with_file_and_line_or_are_counted(tmp_path, capsys):
    lines = _numbered_lines(0, 2000).splitlines(keepends=True)
    lines[1500] = _line("2", [], [])
    lines[1700] = _line("0", [], ["zz"])
    path = tmp_path / "logs.txt"
    path.write_text("".join(lines))
    with pytest.raises(SystemExit):
        _prepare(tmp_path / "out", path, flags=["--piece-mb", "0.01"])  # line 1501 is in a later piece
    assert f"{path}:1501: label '2' is not 0 or 1" in capsys.readouterr().err
    meta = _prepare(tmp_path / "skip", path, flags=["--on-bad-line", "skip"])
    assert meta["skipped_lines"] == 2 and meta["num_examples"] == 1998 and meta["num_lines"] == 2000
    assert meta["skipped_examples"][1] == f"{path}:1701: categorical feature C1 'zz' is not 8 hex digits"


def test_killed_prepare_reruns_to_identical_output(tmp_path):
    write_fake_logs(tmp_path / "train.txt", 3000, seed=2, vocab=50)
    flags = ["--min-count", "2", "--piece-mb", "0.1"]
    _prepare(tmp_path / "whole", tmp_path / "train.txt", flags=flags)
    out = tmp_path / "resumed"
    _prepare(out, tmp_path / "train.txt", flags=flags)
    # What a kill leaves: no metadata, a piece without its manifest and with a half-written shard,
    # a half-written temporary file, a vocabulary and a count file not yet written.
    (out / "metadata.json").unlink()
    (out / "shards" / "piece-00001.json").unlink()
    (out / "shards" / "train-00001.sparse").write_bytes(b"\0" * 100)
    (out / "shards" / "train-00002.dense.tmp").write_bytes(b"\1" * 100)
    (out / "vocab" / "C03.npy").unlink()
    (out / "work" / "count-00000.npz").unlink()
    # ... or what a damaged disk leaves: files cut short after they were written
    for damaged in (out / "vocab" / "C01.npy", out / "work" / "count-00001.npz"):
        damaged.write_bytes(damaged.read_bytes()[:150])
    _prepare(out, tmp_path / "train.txt", flags=flags)
    whole = {p.relative_to(tmp_path / "whole"): p.read_bytes() for p in (tmp_path / "whole").rglob("*") if p.is_file()}
    resumed = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert len(whole) > 40 and whole.keys() == resumed.keys()
    assert [name for name in whole if whole[name] != resumed[name]] == []
    with pytest.raises(SystemExit):  # other options into the same folder
        _prepare(out, tmp_path / "train.txt", flags=["--min-count", "3", "--piece-mb", "0.1"])


def test_job_array_passes_give_the_same_output(tmp_path):
    write_fake_logs(tmp_path / "train.txt", 3000, seed=3, vocab=50)
    flags = ["--min-count", "2", "--piece-mb", "0.1"]
    _prepare(tmp_path / "whole", tmp_path / "train.txt", flags=flags)
    out = tmp_path / "staged"

    def stage(name, *more):
        main(["prepare", "criteo", str(tmp_path / "train.txt"), "--out", str(out), *flags, "--stage", name, *more])

    stage("plan")
    with pytest.raises(SystemExit):  # merge before every count task has run: one line, exit 2
        stage("merge")
    for name in ("count", "merge", "encode"):
        for task in ("1", "0"):
            stage(name, "--task-index", task, "--num-tasks", "2")
    _prepare(out, tmp_path / "train.txt", flags=flags)  # finds every task done, writes metadata.json
    whole = {p.relative_to(tmp_path / "whole"): p.read_bytes() for p in (tmp_path / "whole").rglob("*") if p.is_file()}
    assert whole == {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def learnable(tmp_path_factory):
    """Prepared fake logs whose click rate depends on C2 only (0.8 for its popular half, else 0.1)."""
    folder = tmp_path_factory.mktemp("criteo")
    write_fake_logs(folder / "train.txt", 14_000, seed=1, vocab=40, signal_feature=1)
    _prepare(folder / "out", folder / "train.txt", flags=["--split", "random", "--seed", "0"])
    return folder / "out"


def test_plan_reads_metadata_only(learnable, tmp_path):
    meta = json.loads((learnable / "metadata.json").read_text())
    (tmp_path / "metadata.json").write_text(json.dumps(meta))  # a folder without any shard
    schema = data_schema(CriteoConfig(path=str(tmp_path)))
    assert [f.vocab for f in schema.example_fields.values()] == meta["vocab_sizes"] and schema.num_dense == 13


def test_block_shuffle_visits_every_row_once_and_processes_read_their_rows(learnable):
    order = BlockShuffle(1000, 64, 3, seed=5)
    epoch = order(1, 0, 1000)
    assert sorted(epoch.tolist()) == list(range(1000)) and epoch.tolist() != order(2, 0, 1000).tolist()
    assert np.array_equal(np.concatenate([order(1, a, a + 100) for a in range(0, 1000, 100)]), epoch)
    cfg = CriteoConfig(path=str(learnable), shuffle_block_rows=500, shuffle_window_blocks=2)
    dataset = load_criteo_dataset(cfg)
    whole = make_ctr_dataset(dataset, batch_size=64, epochs=2, seed=3)
    halves = [make_ctr_dataset(dataset, batch_size=64, epochs=2, seed=3, rows=slice(a, a + 32)) for a in (0, 32)]
    for step in (0, 7, len(whole) - 1):
        for name, values in whole[step].items():
            assert np.array_equal(values, np.concatenate([h[step][name] for h in halves])), name


def test_run_learns_the_category_that_decides_clicks(learnable, tmp_path):
    from jaxrec.runner import run

    cfg = compose_config(["data=criteo", "model=dcn_v2"])
    cfg.data.path = str(learnable)
    cfg.model.dim, cfg.model.bottom_mlp, cfg.model.hidden = 4, [8, 4], [8]
    cfg.model.cross_layers, cfg.model.init_std, cfg.optimizer.lr = 1, 0.05, 0.03
    cfg.train.epochs, cfg.train.batch_size, cfg.train.eval_batch_size = 2, 256, 2048
    cfg.train.select_metric, cfg.train.progress, cfg.train.checkpoint_every = "auc", False, 0
    results = run(validate(cfg), tmp_path)
    # measured test AUC 0.85, about the best possible (clicks 0.8 vs 0.1 by C2); a constant scores 0.5
    assert results["metrics"]["auc"] > 0.7
    assert results["data"]["num_train"] + results["data"]["num_valid"] + results["data"]["num_test"] == 14_000


# ---- issue 15's classes on prepare: every mistake is one line and exit 2, before the work ----


def _refused(capsys, out, *inputs, flags=()) -> str:
    """Run prepare expecting a one-line refusal (exit 2); returns that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        _prepare(out, *inputs, flags=flags)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("jaxrec: error: "), err
    return err


@pytest.fixture(scope="module")
def small_logs(tmp_path_factory):
    """300 fake lines as day_0.txt, and the same lines gzip-compressed."""
    folder = tmp_path_factory.mktemp("small")
    write_fake_logs(folder / "day_0.txt", 300, seed=4, vocab=20)
    (folder / "day_0.gz").write_bytes(gzip.compress((folder / "day_0.txt").read_bytes()))
    return folder


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--piece-mb", "nan"], "--piece-mb nan: must be a finite number"),
        (["--piece-mb", "inf"], "--piece-mb inf: must be a finite number"),
        (["--piece-mb", "0.000001"], "--piece-mb 1e-06: must be a finite number of MiB >= 0.01"),
        (["--min-count", "0"], "--min-count 0: need at least 1"),
        (["--hash-buckets", str(2**40)], f"--hash-buckets {2**40}: need 2 .. 2147483648"),
        (["--split", "random", "--seed", "-1"], "--seed -1: must be in 0"),
        (["--split", "random", "--valid-ratio", "nan"], "--valid-ratio nan --test-ratio 0.1: need shares >= 0"),
    ],
)
def test_impossible_arguments_are_refused_before_any_work(small_logs, tmp_path, capsys, flags, expected):
    assert expected in _refused(capsys, tmp_path / "out", small_logs / "day_0.txt", flags=flags)
    assert not (tmp_path / "out").exists()


def test_an_out_that_is_a_file_is_refused(small_logs, tmp_path, capsys):
    (tmp_path / "afile").write_text("keep me")
    assert f"--out {tmp_path / 'afile'} is a file" in _refused(capsys, tmp_path / "afile", small_logs / "day_0.txt")
    assert "which is a file" in _refused(capsys, tmp_path / "afile" / "sub", small_logs / "day_0.txt")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    assert "loop: cannot be resolved" in _refused(capsys, tmp_path / "loop", small_logs / "day_0.txt")
    assert (tmp_path / "afile").read_text() == "keep me"


def test_damaged_gzip_input_is_one_line_naming_the_file(small_logs, tmp_path, capsys):
    data = (small_logs / "day_0.gz").read_bytes()
    (tmp_path / "truncated.gz").write_bytes(data[: len(data) // 2])
    err = _refused(capsys, tmp_path / "o1", tmp_path / "truncated.gz")
    assert f"{tmp_path / 'truncated.gz'}: the compressed stream ends early" in err
    (tmp_path / "crc.gz").write_bytes(data[:-8] + bytes(8))  # the trailer's CRC and size zeroed
    assert f"{tmp_path / 'crc.gz'}: damaged gzip data" in _refused(capsys, tmp_path / "o2", tmp_path / "crc.gz")
    (tmp_path / "plain.gz").write_bytes((small_logs / "day_0.txt").read_bytes())
    assert "is named .gz but is not gzip-compressed" in _refused(capsys, tmp_path / "o3", tmp_path / "plain.gz")
    (tmp_path / "packed.txt").write_bytes(data)  # gzip under a plain name is read as gzip
    assert _prepare(tmp_path / "o4", tmp_path / "packed.txt")["num_lines"] == 300


def test_inputs_without_examples_are_refused(tmp_path, capsys):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "zero.gz").write_bytes(b"")
    (tmp_path / "nothing.gz").write_bytes(gzip.compress(b""))
    (tmp_path / "bad.txt").write_text("\n\n" + _line("7", [], []))
    assert "empty.txt: the file is empty" in _refused(capsys, tmp_path / "o1", tmp_path / "empty.txt")
    assert "zero.gz: the file is empty" in _refused(capsys, tmp_path / "o2", tmp_path / "zero.gz")
    assert "nothing.gz: no lines" in _refused(capsys, tmp_path / "o3", tmp_path / "nothing.gz")
    assert "/dev/null: not a regular file" in _refused(capsys, tmp_path / "o5", "/dev/null")
    err = _refused(capsys, tmp_path / "o4", tmp_path / "bad.txt", flags=["--on-bad-line", "skip"])
    assert "no training examples: 3 lines gave train 0" in err and "(3 skipped as malformed)" in err
    assert not (tmp_path / "o4" / "metadata.json").exists()


def test_the_same_input_twice_is_refused(small_logs, tmp_path, capsys):
    day = small_logs / "day_0.txt"
    assert f"{day} is given twice" in _refused(capsys, tmp_path / "o1", day, day)
    assert f"{small_logs / 'day_0.gz'} is given twice" in _refused(
        capsys, tmp_path / "o2", small_logs, day.with_suffix(".gz")
    )
    (tmp_path / "copy.txt").write_bytes(day.read_bytes())
    err = _refused(capsys, tmp_path / "o3", day, tmp_path / "copy.txt")
    assert f"{tmp_path / 'copy.txt'} and {day} hold the same lines (the same sha256)" in err
    err = _refused(capsys, tmp_path / "o4", day, small_logs / "day_0.gz")
    assert f"{small_logs / 'day_0.gz'} and {day} hold the same lines (one compressed, one not)" in err


def test_a_rerun_after_the_input_changed_is_refused(tmp_path, capsys):
    write_fake_logs(tmp_path / "train.txt", 300, seed=5, vocab=20)
    _prepare(tmp_path / "out", tmp_path / "train.txt")
    before = (tmp_path / "out" / "metadata.json").read_bytes()
    os.utime(tmp_path / "train.txt")  # touched, content unchanged: the rerun hashes it and goes on
    (tmp_path / "out" / "notes.tmp").write_text("the user's")  # not prepare's to clean up
    _prepare(tmp_path / "out", tmp_path / "train.txt")
    assert (tmp_path / "out" / "notes.tmp").read_text() == "the user's"
    data = bytearray((tmp_path / "train.txt").read_bytes())
    data[0] ^= 1  # label 0 <-> 1, same size
    (tmp_path / "train.txt").write_bytes(data)
    err = _refused(capsys, tmp_path / "out", tmp_path / "train.txt")
    assert f"{tmp_path / 'train.txt'} changed since" in err and "stale" in err
    assert (tmp_path / "out" / "metadata.json").read_bytes() == before


def test_a_cut_short_shard_is_one_line_and_a_rerun_of_prepare_repairs_it(learnable, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(learnable, out)
    shard = out / "shards" / "train-00000.sparse"
    whole = shard.read_bytes()
    shard.write_bytes(whole[:1000])
    with pytest.raises(JaxrecError, match=f"{shard} has 1000 bytes; metadata.json says {len(whole)} .*re-run"):
        load_criteo_dataset(CriteoConfig(path=str(out)))
    meta = json.loads((out / "metadata.json").read_text())
    _prepare(out, *[f["path"] for f in meta["inputs"]], flags=["--split", "random", "--seed", "0"])
    assert shard.read_bytes() == whole and len(load_criteo_dataset(CriteoConfig(path=str(out))).part("train")) > 0
    shard.unlink()
    with pytest.raises(JaxrecError, match=f"{shard} is missing"):
        load_criteo_dataset(CriteoConfig(path=str(out)))
    shard.write_bytes(whole)
    del meta["splits"]["valid"]["shards"]
    (out / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(JaxrecError, match="metadata.json is damaged .KeyError: 'shards'"):
        load_criteo_dataset(CriteoConfig(path=str(out)))
    (out / "metadata.json").write_text('{"format": "jaxrec-crit')
    with pytest.raises(JaxrecError, match="metadata.json cannot be read"):
        load_criteo_dataset(CriteoConfig(path=str(out)))
