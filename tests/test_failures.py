"""Hostile or careless inputs (issue 15): each fails in one line naming what to change, before any
data loads where the config alone shows the problem, and never trains a run that cannot finish.

Most cases call the checks directly; a few command lines prove the one-line, exit-2 contract."""

import builtins
import dataclasses
import gzip
import math
import os
import socket
import stat
import subprocess
import sys
import typing
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jaxrec.config import (
    DATA_CONFIGS,
    MODEL_CONFIGS,
    NUMERIC_RANGES,
    Config,
    accept_table_overrides,
    as_override,
    check_bool_overrides,
    compose_config,
)
from jaxrec.data import readers
from jaxrec.data.preprocess import preprocess
from jaxrec.data.types import Interactions
from jaxrec.errors import JaxrecError
from jaxrec.eval import evaluate_ranking, evaluate_sampled
from jaxrec.eval.metrics import rank_metrics

TINY = [
    "data=synthetic",
    "data.num_users=120",
    "data.num_items=60",
    "data.num_interactions=3000",
    "train.batch_size=64",
    "train.progress=false",
    "model.dim=8",
]


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["train.epochs=0"], "train.epochs=0: expected an integer >= 1"),
        (["train.epochs=-2"], "train.epochs=-2: expected an integer >= 1"),
        (["train.max_steps=-1"], "train.max_steps=-1: expected an integer >= 1"),
        (["train.keep_checkpoints=0"], "train.keep_checkpoints=0: expected an integer >= 1"),
        (["data.num_negatives=-1"], "data.num_negatives=-1: expected an integer >= 0"),
        (["data.num_negatives=0"], "data.num_negatives=0: model.loss=bce trains against sampled negatives"),
        (["train.log_every=0"], "train.log_every=0: expected an integer >= 1"),
        (["optimizer.lr=-1"], "optimizer.lr=-1.0: expected a positive number"),
        (["optimizer.lr=nan"], "optimizer.lr=nan: expected a finite number"),
        (["optimizer.table_lr=0"], "optimizer.table_lr=0.0: expected a positive number"),
        (["train.eval_batch_size=0"], "train.eval_batch_size=0: expected an integer >= 1"),
        (["train.ks=[10,0]"], "train.ks=0: expected an integer >= 1"),
        (["train.ks=[]"], "train.ks is empty"),
        (["model=two_tower", "model.dropout=1.5"], "model.dropout=1.5: expected a share in [0, 1)"),
        (["model=two_tower", "model.hidden=[64,0]"], "model.hidden=0: expected an integer >= 1"),
        (["sharding.mesh.model=0"], "sharding.mesh.model=0: expected -1 (all remaining devices) or an integer >= 1"),
        (["sharding.memory_budget_gb=0"], "sharding.memory_budget_gb=0.0: expected a positive number"),
        (["data.split=random", "data.valid_ratio=0.5", "data.test_ratio=0.5"], "leave no training data"),
        (["train.checkpoint_every=-5"], "train.checkpoint_every=-5: expected an integer >= 0"),
        (["train.distributed.process_id=-1"], "train.distributed.process_id=-1: expected an integer >= 0"),
        (["data.min_rating=inf"], "data.min_rating=inf: expected a finite number"),
        (["train.select_metric=foo"], "train.select_metric='foo': this run's validation computes hr@10, ndcg@10"),
        (["train.select_metric=ndcg@15"], "train.select_metric='ndcg@15'"),
        (["model=dcn_v2", "train.select_metric=ndcg@10"], "validation computes auc, logloss, accuracy"),
        (["data=csv", "data.path=a.csv", "data.split=temporal"], "data.timestamp_col is not set"),
        (["data=csv", "data.path=a.csv", "data.item_col=user_id"], "data.user_col and data.item_col both name"),
        (
            ["model=dcn_v2", "data=criteo", "data.shuffle_window_blocks=0"],
            "data.shuffle_window_blocks=0: expected an integer >= 1",
        ),
    ],
)
def test_impossible_config_values_fail_in_one_line_naming_the_key(overrides, message):
    with pytest.raises(JaxrecError, match="config key") as err:
        compose_config(overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


# Numeric keys whose whole range is valid, or that are checked by a rule of their own.
UNRANGED_KEYS = {
    "data.min_rating",
    "model.bias_init",  # any finite value
    "data.fold",
    "data.num_folds",
    "train.batch_size",
}  # checked against each other / the data


def test_every_numeric_config_key_has_a_range():
    """A new numeric option must say which values it accepts (the adversarial run found keys
    whose nonsense values trained for an epoch before failing)."""

    def numeric_keys(schema, prefix):
        hints = typing.get_type_hints(schema)
        for field in dataclasses.fields(schema):
            if dataclasses.is_dataclass(hints[field.name]):
                yield from numeric_keys(hints[field.name], f"{prefix}{field.name}.")
            elif any(kind in str(hints[field.name]) for kind in ("int", "float")):
                yield f"{prefix}{field.name}"

    schemas = [(s, "data.") for s in DATA_CONFIGS.values()] + [(s, "model.") for s in MODEL_CONFIGS.values()]
    schemas += [(s, f"{group}.") for group, s in typing.get_type_hints(Config).items()]
    keys = {key for schema, prefix in schemas for key in numeric_keys(schema, prefix)}
    assert keys - set(NUMERIC_RANGES) - UNRANGED_KEYS == set()


@pytest.mark.parametrize(
    "override,ok",
    [
        ("train.resume=false", True),
        ("+data.strict=True", True),
        ("train.progress=true,false", True),
        ("model.dim=0", True),
        ("train.resume=no", False),
        ("data.strict=0", False),
        ("train.progress=2", False),
        ("model.use_bias=off", False),
        ("train.distributed.process_id=1", True),
        ("train.async_checkpoint=null", True),
        ("train.async_checkpoint=yes", False),
    ],
)
def test_boolean_overrides_are_strict(override, ok):
    """OmegaConf turns 'no', 'off', 0 or 2 into a bool without a word; a bool key takes true/false
    (and null where null means "decide for me")."""
    if ok:
        check_bool_overrides([override])
    else:
        key, value = override.split("=")
        with pytest.raises(JaxrecError, match=f"config key {key}='{value}': expected true"):
            check_bool_overrides([override])


@pytest.mark.parametrize(
    "changes,message",
    [
        (
            {"sharding.strategy": "row_wise", "sharding.mesh.model": 3, "train.batch_size": 1024},
            "train.batch_size=1024 does not divide across the mesh's 3 devices",
        ),
        ({"train.batch_size": 60}, "train.batch_size=60 does not divide across the mesh's 8 devices"),
        ({"sharding.mesh.data": 3, "sharding.mesh.model": 3}, "needs 9 devices; 8 are available"),
        ({"data.name": "synthetic", "data.num_items": 15}, "train.ks=[10, 20]: cutoff 20 exceeds the catalogue's 15"),
        ({"data.name": "synthetic", "data.num_items": 50, "train.sampled_negatives": 50}, "sampled_negatives=50"),
        ({"data.name": "synthetic", "train.batch_size": 40000}, "larger than the training split"),
        ({"data.name": "synthetic", "data.num_users": 10**12}, "generating this data set needs at least 59,604.6 GiB"),
    ],
)
def test_every_shape_is_checked_before_data_loads(changes, message):
    """A csv path that does not exist proves no data was read: the shape error comes first."""
    from jaxrec.train_lib import check_before_data

    overrides = ["data=csv", "data.path=/nonexistent/interactions.csv", "sharding.mesh.model=-1"]
    for key, value in changes.items():
        if key == "data.name":  # another data option: its own schema
            overrides = [o for o in overrides if not o.startswith("data")] + [f"data={value}"]
        else:
            overrides.append(as_override(key, value))
    cfg = compose_config(overrides)
    with pytest.raises(JaxrecError) as err:
        check_before_data(cfg, num_devices=8)
    assert message in str(err.value), str(err.value)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["train.batch_size=1024"], "train.batch_size=1024 is larger than the training split"),
        (["train.batch_size=8", "train.ks=[5,10]"], "train.ks=[5, 10]: cutoff 10 exceeds the catalogue's 6 items"),
        (
            ["train.batch_size=8", "train.ks=[2]", "train.select_metric=ndcg@2", "train.sampled_negatives=3"],
            "a user has interacted with 4 of the 6 items",
        ),
        (
            ["train.batch_size=8", "train.ks=[2]", "train.select_metric=cold/hr@2", "data.cold_max_train=0"],
            "no validation user has at most data.cold_max_train=0",
        ),
    ],
)
def test_data_too_small_for_the_run_fails_before_training(tmp_path, overrides, message):
    """Found once the file is read (its size is not in the config), before anything compiles or
    trains: nothing is written but the run dir."""
    from jaxrec.runner import run

    rows = [(u, i) for u in range(8) for i in range(6) if (u + i) % 3 != 0]
    path = tmp_path / "log.csv"
    pd.DataFrame(rows, columns=["user_id", "item_id"]).to_csv(path, index=False)
    cfg = compose_config(["data=csv", f"data.path={path}", "train.progress=false", *overrides])
    with pytest.raises(JaxrecError) as err:
        run(cfg, tmp_path / "run")
    assert message in str(err.value), str(err.value)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []


def _csv(tmp_path: Path, text: str, name: str = "log.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _bad_file(kind: str, tmp_path: Path, monkeypatch) -> Path:
    table = pa.table({"user_id": ["1", "2"], "item_id": ["a", "b"]})
    if kind == "unreadable":
        path = _csv(tmp_path, "user_id,item_id\n1,a\n")
        path.chmod(0)
        real_open = builtins.open  # root reads a mode-000 file anyway: refuse it as the OS would

        def refusing_open(file, *args, **kwargs):
            if Path(str(file)) == path:
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", refusing_open)
        return path
    if kind == "not parquet":
        return _csv(tmp_path, "user_id,item_id\n1,a\n", "log.parquet")
    if kind == "gzip":
        path = tmp_path / "log.csv"
        path.write_bytes(gzip.compress(b"user_id,item_id\n1,a\n"))
        return path
    if kind == "parquet named csv":
        pq.write_table(table, tmp_path / "log.csv")
        return tmp_path / "log.csv"
    column = pa.array([[1, 2], [3]]) if kind == "list ids" else pa.array([True, False])
    pq.write_table(
        table.set_column(1 if kind == "list ids" else 0, "item_id" if kind == "list ids" else "user_id", column),
        tmp_path / "log.parquet",
    )
    return tmp_path / "log.parquet"


@pytest.mark.parametrize(
    "kind,message",
    [
        ("unreadable", "cannot read: Permission denied"),
        ("not parquet", "not a readable Parquet file"),
        ("gzip", "is gzip-compressed, not a text file of fields; decompress it first"),
        ("parquet named csv", "is a Parquet file, not a text file of fields; name it .parquet"),
        ("list ids", "column 'item_id' holds list<element: int64> values"),
        ("bool ids", "column 'user_id' holds bool values"),
    ],
)
def test_unreadable_files_fail_in_one_line_naming_the_file(tmp_path, monkeypatch, kind, message):
    path = _bad_file(kind, tmp_path, monkeypatch)
    with pytest.raises(JaxrecError) as err:
        readers.read_interactions(path)
    assert str(err.value).startswith(str(path)) and message in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_a_repeated_header_name_fails_in_one_line(tmp_path):
    path = _csv(tmp_path, "user_id,item_id,item_id,rating\n1,a,b,4\n")
    with pytest.raises(JaxrecError, match="the header names column\\(s\\) 'item_id' more than once"):
        readers.read_interactions(path, rating_col="rating")


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes("user_id,item_id,rating\n1,a,4\n2,b,5\n".encode("utf-8-sig"))
    raw = readers.read_interactions(path, rating_col="rating")
    assert raw.interactions["user_id"].tolist() == ["1", "2"] and raw.interactions["rating"].tolist() == [4, 5]


@pytest.mark.parametrize(
    "stamps,reason",
    [
        (["x", "y", "z", "w"], "timestamp is not a number or a date"),
        (["100", "1e30", "300", "400"], "timestamp out of range"),
        (["2020-01-01", "yesterday", "2020-01-03", "2020-01-04"], "timestamp is not a number or a date"),
    ],
)
def test_bad_timestamps_are_counted_and_fail_under_strict(tmp_path, caplog, stamps, reason):
    text = "user_id,item_id,ts\n" + "".join(f"1,{item},{ts}\n" for item, ts in zip("abcd", stamps))
    raw = readers.read_interactions(_csv(tmp_path, text), timestamp_col="ts")
    bad = [line for line, ts in enumerate(stamps, start=2) if ts in ("x", "y", "z", "w", "1e30", "yesterday")]
    with pytest.raises(JaxrecError, match=f"line {bad[0]}: {reason} \\({len(bad)} bad rows in all; strict"):
        preprocess(raw, strict=True)
    if len(bad) == len(stamps):  # nothing left: the error says so, with the count
        with pytest.raises(JaxrecError, match=f"no interactions left after preprocessing .*'invalid': {len(bad)}"):
            preprocess(raw)
        return
    caplog.set_level("INFO", logger="jaxrec.data")
    inter, counts = preprocess(raw)
    assert counts["invalid"] == len(bad) and len(inter) == len(stamps) - len(bad)
    assert f"invalid rows by reason: {reason} {len(bad)}" in caplog.text
    assert inter.timestamp.min() >= 0  # nothing wrapped around to INT64_MIN


def _one_user(num_items: int, target: int) -> tuple[Interactions, Interactions]:
    tokens = np.array([str(i) for i in range(num_items)])

    def part(items):
        items = np.asarray(items, np.int32)
        return Interactions(
            np.zeros(len(items), np.int32),
            items,
            np.ones(len(items), np.float32),
            np.arange(len(items)),
            np.array(["u"]),
            tokens,
        )

    return part([0, 1]), part([target])


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
def test_nan_scores_never_earn_ranking_credit(bad):
    """NaN compares false to everything, so before this fix a NaN target ranked first (hr@10 = 1)."""
    train, test = _one_user(30, target=5)
    scores = jnp.zeros((1, 30)).at[0, 5].set(bad)
    full = evaluate_ranking(
        lambda users: jnp.broadcast_to(scores, (len(users), 30)), train, test, ks=(10,), batch_size=8
    )
    assert all(math.isnan(v) for v in full.values()), full
    sampled = evaluate_sampled(
        lambda users: jnp.broadcast_to(scores, (len(users), 30)), train, test, ks=(10,), num_negatives=5, batch_size=8
    )
    assert all(math.isnan(v) for v in sampled.values()), sampled
    per_user = rank_metrics(scores, jnp.zeros((1, 30), bool), jnp.array([[5]]), (10,))
    assert all(bool(jnp.isnan(v).all()) for v in per_user.values())


def test_minus_inf_is_an_ordinary_lowest_score():
    """Retrieval marks items it did not return with -inf: that must not turn metrics into NaN."""
    scores = jnp.full((1, 30), -jnp.inf).at[0, 5].set(1.0)
    per_user = rank_metrics(scores, jnp.zeros((1, 30), bool), jnp.array([[5]]), (10,))
    assert float(per_user["hr@10"][0]) == 1.0 and float(per_user["ndcg@10"][0]) == 1.0


def test_request_booleans_are_strict():
    from pydantic import ValidationError

    from jaxrec.serving.app import RecommendRequest

    assert RecommendRequest.model_validate({"user_id": "1", "exclude_seen": False}).exclude_seen is False
    for value in ("no", "false", 0, "0"):
        with pytest.raises(ValidationError, match="exclude_seen"):
            RecommendRequest.model_validate({"user_id": "1", "exclude_seen": value})


def test_bundle_is_readable_by_other_users(tmp_path):
    from jaxrec.serving.bundle import seen_csr, write_bundle

    old_umask = os.umask(0o022)
    try:
        out = write_bundle(
            tmp_path / "bundle",
            manifest={},
            items_ne=np.ones((3, 2), np.float32),
            users_ue=np.ones((2, 2), np.float32),
            user_tokens=["a", "b"],
            item_tokens=["x", "y", "z"],
            seen=seen_csr(np.array([0]), np.array([1]), 2),
        )
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    for path in out.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o644), path


def test_readme_table_override_spelling_composes():
    """`sharding.tables.item=row_wise` (the README's form) and Hydra's own `+` form both work."""
    for spelling in ("sharding.tables.item=row_wise", "+sharding.tables.item=row_wise"):
        overrides = accept_table_overrides(["sharding=auto", spelling, "sharding.tables.user=table_wise"])
        cfg = compose_config(overrides)
        assert cfg.sharding.tables == {"item": "row_wise", "user": "table_wise"}


def test_a_local_coordinator_listens_on_loopback_only():
    """What every launch_local process runs: the coordinator at 127.0.0.1 binds 127.0.0.1, not
    JAX's default [::] (every interface). Read back from the kernel's table of listening sockets."""
    from jaxrec.launch_local import process_command

    assert "train.distributed.coordinator_address=127.0.0.1:1234" in process_command([], 2, 0, 4, 1234)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = (
        f"from jaxrec.config import DistributedConfig\nfrom jaxrec import distributed\n"
        f"distributed.initialize(DistributedConfig(coordinator_address='127.0.0.1:{port}'))\n"
        f"for table in ('/proc/net/tcp', '/proc/net/tcp6'):\n"
        f"    for row in open(table).read().splitlines()[1:]:\n"
        f"        local, state = row.split()[1], row.split()[3]\n"
        f"        if state == '0A' and local.endswith(':{port:04X}'): print('LISTEN', local)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    listening = [line.split()[1] for line in out.stdout.splitlines() if line.startswith("LISTEN")]
    assert listening, out.stdout + out.stderr[-2000:]
    loopback = ("0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000")
    assert all(address.split(":")[0] in loopback for address in listening), listening


def _cli(module: str, args: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize(
    "case",
    [
        "unwritable run dir",
        "epochs 0 with README table override",
        "plan batch 60",
        "evaluate missing step",
        "gzip data",
        "bool no",
    ],
)
def test_command_lines_fail_in_one_line_with_status_2(tmp_path, case):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    run_dir = f"hydra.run.dir={tmp_path / 'run'}"
    if case == "unwritable run dir":
        module, args = "jaxrec.train", [*TINY, f"hydra.run.dir={blocker}/run"]
        message = "cannot write the run directory"
    elif case == "epochs 0 with README table override":
        module = "jaxrec.train"
        args = [*TINY, "sharding=auto", "sharding.tables.item=row_wise", "train.epochs=0", run_dir]
        message = "train.epochs=0: expected an integer >= 1"
    elif case == "plan batch 60":
        module, args = (
            "jaxrec.plan",
            [*TINY, "sharding=row_wise", "sharding.num_devices=8", "train.batch_size=60", run_dir],
        )
        message = "train.batch_size=60 does not divide across the mesh's 8 devices"
    elif case == "bool no":
        module, args, message = "jaxrec.train", [*TINY, "train.resume=no", run_dir], "train.resume='no': expected true"
    elif case == "evaluate missing step":
        (tmp_path / "checkpoints" / "10").mkdir(parents=True)
        module, args, message = "jaxrec.evaluate", [str(tmp_path), "--step", "5"], "has no checkpoint of step 5"
    else:
        data = tmp_path / "log.csv"
        data.write_bytes(gzip.compress(b"user_id,item_id\n1,a\n"))
        module, args, message = "jaxrec.train", ["data=csv", f"data.path={data}", run_dir], "is gzip-compressed"
    out = _cli(module, args)
    errors = [line for line in out.stderr.splitlines() if line.startswith("jaxrec: error:")]
    assert out.returncode == 2 and len(errors) == 1 and message in errors[0], out.stderr[-3000:]
    assert "Traceback" not in out.stderr
