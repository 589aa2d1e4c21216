"""Issue 15 (s4 variants): every command line fails before its work starts, in one line
(`jaxrec: error: ...`, exit 2), and never destroys what it was not asked to replace. Each
command's main is called in-process with its argv; one sweep runs as a subprocess, because its
exit status is the point."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxrec import distributed
from jaxrec.config import (
    DistributedConfig,
    RunDirCheck,
    check_command_line,
    check_run_dir_entries,
    compose_conf,
    compose_config,
)
from jaxrec.errors import JaxrecError
from jaxrec.serving.bundle import seen_csr, write_bundle
from jaxrec.serving.encoders import FoldInEncoder


def _one_line_exit(main, argv, capsys) -> str:
    """The single stderr line of a command that must exit 2."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("jaxrec: error: ")
    return err


def _bundle(path: Path) -> Path:
    rng = np.random.default_rng(0)
    write_bundle(
        path,
        manifest={"model": "test"},
        items_ne=rng.standard_normal((30, 4)).astype(np.float32),
        users_ue=rng.standard_normal((5, 4)).astype(np.float32),
        user_tokens=[f"u{i}" for i in range(5)],
        item_tokens=[f"i{i}" for i in range(30)],
        seen=seen_csr(np.array([0, 1, 4]), np.array([3, 7, 29]), 5),
        encoder=FoldInEncoder(np.eye(4, dtype=np.float32), np.zeros(4, np.float32)),
    )
    return path


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_export_overwrite_replaces_only_an_export_bundle(tmp_path, capsys):
    """D1: --overwrite deleted whatever --out named, the run being exported included. It now
    refuses anything but a bundle, before the run loads (the run dir here holds no checkpoint, so
    any later refusal would name that instead)."""
    from jaxrec.export import main
    from jaxrec.serving.exporter import check_bundle_out

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "results.json").write_text("{}")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    stuffed = _bundle(tmp_path / "stuffed")
    (stuffed / "notes.txt").write_text("mine")
    (tmp_path / "afile").write_text("x")
    before = _tree(tmp_path)
    refusal = "jaxrec: error: --overwrite replaces only an export bundle; refusing to replace --out"
    for out, reason in [
        (run, f"it holds the run dir {run} being exported"),
        (tmp_path, f"it holds the run dir {run} being exported"),
        (run / "checkpoints", "it has no bundle manifest.json"),
        (precious, "it has no bundle manifest.json"),
        (stuffed, "it holds what is not the bundle's (notes.txt)"),
        (tmp_path / "afile", "it is not a directory"),
    ]:
        err = _one_line_exit(main, [str(run), "--out", str(out), "--overwrite"], capsys)
        assert err == f"{refusal} {out}: {reason}"
    assert _tree(tmp_path) == before  # nothing deleted, nothing half-written
    err = _one_line_exit(main, [str(run), "--out", str(precious)], capsys)
    assert err == f"jaxrec: error: {precious} already exists; choose another --out or pass --overwrite"
    check_bundle_out(_bundle(tmp_path / "bundle"), run, overwrite=True)  # a bundle may be replaced


def test_export_out_that_cannot_be_created_is_one_line(tmp_path, capsys):
    """D22: an --out that cannot be created was a FileNotFoundError traceback after the export."""
    from jaxrec.export import main

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "afile").write_text("x")
    argv = [str(tmp_path / "run"), "--out"]
    err = _one_line_exit(main, [*argv, str(tmp_path / "afile" / "sub" / "b")], capsys)
    assert err.endswith(f"(--out): {tmp_path / 'afile'} is not a directory")
    if Path("/proc/self").is_dir():  # Linux: a folder where nothing can be created
        err = _one_line_exit(main, [*argv, "/proc/jaxrec-bundle"], capsys)
        assert err.startswith("jaxrec: error: cannot create the bundle directory /proc/jaxrec-bundle (--out): ")


def test_serve_refuses_impossible_ports_and_announces_the_bound_one(tmp_path, capsys, monkeypatch):
    """D18: --port 99999 was announced but served on 99999 mod 65536, and --port 0 never said
    which port it got. The socket is now bound before serving, and its own port announced."""
    uvicorn = pytest.importorskip("uvicorn", reason="the server needs the serve extra: pip install -e '.[serve]'")
    pytest.importorskip("fastapi", reason="the server needs the serve extra: pip install -e '.[serve]'")
    from jaxrec.serve import main

    bundle = str(_bundle(tmp_path / "b"))
    for port in ("99999", "-1", "65536"):
        err = _one_line_exit(main, [bundle, "--port", port], capsys)
        assert (
            err == f"jaxrec: error: --port {port} is not a TCP port: expected 1..65535 (or 0: any free port, printed)"
        )
    for flags, message in [
        (["--shards", "0"], "--shards 0: expected an integer >= 1"),
        (["--max-wait-ms", "inf"], "--max-batch must lie in 1..65536 and --max-wait-ms be a finite number >= 0"),
        (["--max-batch", "100000000000"], "--max-batch must lie in 1..65536"),
    ]:
        assert _one_line_exit(main, [bundle, *flags], capsys).startswith(f"jaxrec: error: {message}")
    served = []

    class Server:  # uvicorn's own Config runs logging.config.dictConfig, which closes pytest's log handlers
        def __init__(self, config):
            pass

        def run(self, sockets):
            served.append(sockets[0].getsockname()[1])
            sockets[0].close()

    monkeypatch.setattr(uvicorn, "Config", lambda app, **kwargs: None)
    monkeypatch.setattr(uvicorn, "Server", Server)
    main([bundle, "--port", "0"])
    announced = capsys.readouterr().err.strip()
    assert served[0] > 0 and announced == f"jaxrec: serving {bundle} on http://127.0.0.1:{served[0]}"
    with __import__("socket").socket() as busy:  # a port in use: one line, before the bundle loads
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        err = _one_line_exit(main, [str(tmp_path / "missing"), "--port", str(port)], capsys)
    assert err.startswith(f"jaxrec: error: cannot listen on --host 127.0.0.1 --port {port}: ")


def test_plan_checks_its_command_line_like_train(capsys, monkeypatch):
    """D21: jaxrec.plan gave Hydra's 8-line error and rc 1 for a bad key or value."""
    from jaxrec import plan

    def plan_main(argv):
        monkeypatch.setattr(sys, "argv", ["jaxrec-plan", *argv])
        plan.main()

    err = _one_line_exit(plan_main, ["model.foo=1"], capsys)
    assert err.startswith("jaxrec: error: config key model.foo does not exist in MFConfig (model); its keys: name, dim")
    err = _one_line_exit(plan_main, ["model.dim=abc"], capsys)
    assert err == "jaxrec: error: config key model.dim: Value 'abc' of type 'str' could not be converted to Integer"


def test_evaluate_runs_on_fewer_devices_than_the_run_trained_on(tmp_path, caplog):
    """D13: a run trained on an 8-device mesh was refused where fewer devices are present; it now
    evaluates on one device (checkpoints are plan-independent) with the metrics of training's own
    final evaluation on 8. (Rating metrics and one step: the cheapest run that saves a mesh.)"""
    from jaxrec.evaluate import evaluate_checkpoint, trained_mesh_too_large
    from jaxrec.runner import run

    cfg = compose_config(
        ["data=synthetic", "data.num_users=80", "data.num_items=40", "data.num_interactions=1500", "model.dim=4"]
        + ["sharding=data_parallel", "sharding.mesh.data=8", "train.batch_size=64", "train.max_steps=1"]
        + ["model.loss=mse", "train.ranking_metrics=false", "train.select_metric=rmse", "train.progress=false"]
    )
    run(cfg, tmp_path)
    trained = json.loads((tmp_path / "results.json").read_text())
    assert trained_mesh_too_large(tmp_path, None, 8) is None
    result = evaluate_checkpoint(tmp_path, num_devices=3)
    assert "needs 8 devices; 3 are available" in caplog.text and "evaluating on one device" in caplog.text
    assert result["step"] == trained["train"]["steps"] == 1
    for key in ("rmse", "mae"):
        np.testing.assert_allclose(result["metrics"][key], trained["metrics"][key], rtol=1e-5, err_msg=key)


@pytest.mark.parametrize(
    "settings,message",
    [
        (
            {"num_processes": 2},
            "train.distributed.num_processes=2 needs train.distributed.coordinator_address=HOST:PORT",
        ),
        (
            {"coordinator_address": "notahost", "num_processes": 2},
            "train.distributed.coordinator_address='notahost' must be HOST:PORT with a port in 1..65535",
        ),
        ({"coordinator_address": "10.0.0.1:99999"}, "train.distributed.coordinator_address='10.0.0.1:99999' must"),
        ({"coordinator_address": ":1234"}, "train.distributed.coordinator_address=':1234' must be HOST:PORT"),
        ({"process_id": 3}, "train.distributed.process_id=3 must lie in 0..0"),
    ],
)
def test_distributed_mistakes_are_one_line_before_jax_starts(settings, message, monkeypatch):
    """D17: these were jax tracebacks (ValueError, IndexError) from jax.distributed.initialize."""
    for var in distributed.CLUSTER_SIZE_VARS:
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(JaxrecError, match="^" + message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        distributed.initialize(DistributedConfig(**settings))


@pytest.mark.parametrize(
    "name,make,kind",
    [
        ("results.json", Path.mkdir, "a file"),
        ("metrics.jsonl", Path.mkdir, "a file"),
        ("run_info.json", Path.mkdir, "a file"),
        (".results.json.tmp", Path.mkdir, "a file"),
        ("checkpoints", Path.touch, "a directory"),
        ("checkpoints-damaged", Path.touch, "a directory"),
        ("checkpoints-superseded", Path.touch, "a directory"),
    ],
)
def test_run_dir_entries_of_the_wrong_kind_are_refused_before_data_loads(tmp_path, name, make, kind):
    """D23: a results.json folder was found when the results were written, after training."""
    make(tmp_path / name)
    with pytest.raises(JaxrecError) as err:
        check_run_dir_entries(tmp_path)
    assert str(err.value) == (
        f"{tmp_path / name} is in the way: the run writes {kind} there; move it or choose another run dir"
    )


def test_hydras_own_run_dir_entries_are_checked_before_hydra_writes_them(tmp_path, capsys):
    (tmp_path / ".hydra").write_text("x")
    config = compose_conf([f"hydra.run.dir={tmp_path}"], with_hydra=True)
    err = _one_line_exit(lambda _: RunDirCheck().on_run_start(config), None, capsys)
    assert err == f"jaxrec: error: {tmp_path / '.hydra'} is in the way: the run writes a directory there; " + (
        "move it or choose another run dir"
    )
    (tmp_path / ".hydra").unlink()
    RunDirCheck().on_run_start(config)  # a fresh dir passes
    check_run_dir_entries(tmp_path)


def test_a_train_job_checks_its_run_dir_before_anything_else():
    """The check sits in the job itself, so each multirun job's dir is checked too."""
    import inspect

    from jaxrec import train

    source = inspect.getsource(train.train_job)
    assert source.index("check_run_dir_entries(run_dir)") < source.index("runner.run(")


def test_every_job_of_a_sweep_is_checked_before_the_first_starts():
    """D24: with optimizer.lr=1e-3,-1 job 0 trained in full before job 1's value was refused."""
    sweep = ["-m", "data=synthetic", "train.epochs=1", "optimizer.lr=1e-3,-1", "model.dim=8,4"]
    with pytest.raises(JaxrecError) as err:
        check_command_line(sweep)
    assert str(err.value) == (
        "sweep job 2 (optimizer.lr=-1 model.dim=8): config key optimizer.lr=-1.0: expected a positive "
        "number; no job was started"
    )
    # the config's hydra.sweeper.params are part of the grid (sweep=bs_lr: 4 batch sizes x 4 lrs)
    with pytest.raises(JaxrecError, match=r"^sweep job 4 \(train.batch_size=-1 optimizer.lr=0.001\): config key"):
        check_command_line(["-m", "sweep=bs_lr", "train.batch_size=256,-1"])
    check_command_line(["-m", "data=synthetic", "optimizer.lr=1e-3,1e-2"])  # a valid grid passes


def test_a_table_override_naming_no_table_is_refused_without_the_data():
    """Minor: sharding.tables.nosuch was refused only after the data had loaded (this file does not exist)."""
    from jaxrec.train import check_table_names

    cfg = compose_config(["data=csv", "data.path=/nonexistent/interactions.csv", "sharding.tables.nosuch=row_wise"])
    with pytest.raises(JaxrecError, match=r"unknown table\(s\) \['nosuch'\]; this model's tables: user, item"):
        check_table_names(cfg)
    check_table_names(compose_config(["data=csv", "data.path=/x.csv", "sharding.tables.item=row_wise"]))


def test_a_sweep_with_failed_jobs_exits_non_zero_with_a_count(tmp_path):
    """D24: a sweep whose jobs all failed exited 0. A failing job still does not stop the sweep."""
    missing = ",".join(str(tmp_path / f"missing{i}.csv") for i in range(2))
    out = subprocess.run(
        [sys.executable, "-m", "jaxrec.train", "-m", "data=csv", f"data.path={missing}"]
        + [f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"},
    )
    assert out.returncode == 1, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1] == (
        f"jaxrec: error: 2 of 2 sweep jobs failed (jobs 0, 1; each job dir's failure.json says why; "
        f"python -m jaxrec.report {tmp_path / 'sweep'} lists them)"
    )
    assert all((tmp_path / "sweep" / str(job) / "failure.json").exists() for job in (0, 1))
