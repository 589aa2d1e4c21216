"""Bundles: storage precisions, atomic writes, loading errors, and export of a trained run whose
float32 bundle reproduces the checkpoint's evaluation exactly."""

import json

import numpy as np
import pandas as pd
import pytest

from jaxrec.config import compose_config, validate
from jaxrec.data.types import RawData
from jaxrec.errors import JaxrecError
from jaxrec.runner import run
from jaxrec.serving import bundle as bundle_lib
from jaxrec.serving import exporter
from jaxrec.serving.bundle import bundle_bytes, dequantize, load_bundle, quantize, write_bundle
from jaxrec.serving.encoders import FoldInEncoder


def _write(path, rng, precision="float32", **kwargs):
    items_ne = rng.standard_normal((40, 6)).astype(np.float32)
    users_ue = rng.standard_normal((7, 6)).astype(np.float32)
    seen = bundle_lib.seen_csr(np.array([0, 0, 3, 6]), np.array([5, 1, 2, 39]), 7)
    write_bundle(
        path,
        manifest={"model": "test"},
        items_ne=items_ne,
        users_ue=users_ue,
        user_tokens=[f"u{i}" for i in range(7)],
        item_tokens=[str(100 + i) for i in range(40)],
        seen=seen,
        precision=precision,
        item_meta=[{"title": f"t{i}"} for i in range(40)],
        encoder=FoldInEncoder(np.eye(6, dtype=np.float32), np.zeros(6, np.float32)),
        **kwargs,
    )
    return items_ne, users_ue


@pytest.mark.parametrize("precision,rel_error", [("float32", 0.0), ("bfloat16", 2.0**-8), ("int8", 0.5 / 127)])
def test_round_trip_error_is_bounded_by_the_precision(tmp_path, precision, rel_error):
    items_ne, users_ue = _write(tmp_path / "b", np.random.default_rng(0), precision)
    loaded = load_bundle(tmp_path / "b")
    for original, restored in ((items_ne, loaded.items_ne), (users_ue, loaded.users_ue)):
        assert restored.dtype == np.float32
        bound = rel_error * np.abs(original).max(axis=1, keepdims=True)  # per-row scale for int8
        assert np.all(np.abs(restored - original) <= bound + 1e-7)
    assert loaded.manifest["precision"] == precision and loaded.manifest["model"] == "test"
    assert loaded.item_tokens[3] == "103" and loaded.item_meta[3] == {"title": "t3"}
    np.testing.assert_array_equal(loaded.seen(0), [1, 5])
    assert loaded.seen(1).size == 0 and loaded.seen(6).tolist() == [39]


def test_int8_and_bf16_shrink_the_vectors(tmp_path):
    sizes = {}
    for precision in bundle_lib.PRECISIONS:
        _write(tmp_path / precision, np.random.default_rng(0), precision)
        sizes[precision] = (tmp_path / precision / "items.npy").stat().st_size - 128  # npy header
    assert sizes["bfloat16"] == sizes["float32"] // 2 and sizes["int8"] == sizes["float32"] // 4
    q = quantize(np.array([[0.0, 0.0], [1.0, -2.0]], np.float32), "int8")
    np.testing.assert_array_equal(q["values"], [[0, 0], [64, -127]])
    np.testing.assert_allclose(dequantize(q["values"], "int8", q["scales"]), [[0, 0], [64 * 2 / 127, -2]], rtol=1e-6)


def test_existing_bundle_needs_overwrite_and_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    _write(tmp_path / "b", rng)
    with pytest.raises(JaxrecError, match="already exists; choose another --out or pass --overwrite"):
        _write(tmp_path / "b", rng)

    def broken_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        _write(tmp_path / "b", rng, "int8", overwrite=True)
    with pytest.raises(OSError):
        _write(tmp_path / "new", rng)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temp dir, no half bundle
    assert load_bundle(tmp_path / "b").manifest["precision"] == "float32"  # the old bundle survived
    monkeypatch.undo()
    _write(tmp_path / "b", rng, "int8", overwrite=True)
    assert load_bundle(tmp_path / "b").manifest["precision"] == "int8"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_loading_a_non_bundle_or_a_damaged_one_is_one_clear_error(tmp_path):
    with pytest.raises(JaxrecError, match="is not a serving bundle: .*manifest.json is missing"):
        load_bundle(tmp_path)
    _write(tmp_path / "b", np.random.default_rng(0))
    (tmp_path / "b" / "items.npy").unlink()
    with pytest.raises(JaxrecError, match="is incomplete or corrupt"):
        load_bundle(tmp_path / "b")


def test_non_dot_product_models_cannot_be_exported():
    class NeuMFLike:
        pass

    with pytest.raises(
        JaxrecError, match="model 'neumf' cannot be exported for top-K serving: its score is not a dot product"
    ):
        exporter.check_dot_product(NeuMFLike(), "neumf")


def test_item_metadata_is_aligned_with_item_ids(monkeypatch):
    items = pd.DataFrame(
        {"title": ["B", "A"], "genres": [["Drama"], []], "year": [1999.0, float("nan")]},
        index=pd.Index(["2", "1"], name="item_id"),
    )
    monkeypatch.setattr(exporter, "read_raw", lambda cfg: RawData(pd.DataFrame(), "x", items=items))
    assert exporter.item_metadata(compose_config(), np.array(["1", "2", "3"])) == [
        {"title": "A", "genres": []},
        {"title": "B", "genres": ["Drama"], "year": 1999},
        {},
    ]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 2-epoch MF run on synthetic data, evaluated once at its last step (so results.json holds
    the metrics of the checkpoint that is exported)."""
    cfg = compose_config(["data=synthetic"])
    cfg.data.num_users, cfg.data.num_items, cfg.data.num_interactions = 150, 70, 4000
    cfg.model.dim = 6
    cfg.train.epochs, cfg.train.batch_size, cfg.train.progress, cfg.train.eval_every = 2, 64, False, 0
    run_dir = tmp_path_factory.mktemp("mf_run")
    run(validate(cfg), run_dir)
    return run_dir


def test_exported_float32_bundle_reproduces_the_checkpoint_metrics(trained_run, tmp_path, capsys):
    from jaxrec.export import main

    main([str(trained_run), "--out", str(tmp_path / "bundle"), "--report"])
    printed = capsys.readouterr().out
    bundle = load_bundle(tmp_path / "bundle")
    m = bundle.manifest
    expected = json.loads((trained_run / "results.json").read_text())  # evaluated once, at the last step
    assert m["checkpoint"]["step"] == expected["train"]["steps"] and m["model"] == "mf" and m["vector_dim"] == 6 + 2
    assert {"hr@10", "ndcg@10", "mrr", "auc"} <= set(m["metrics"])
    for key, value in m["metrics"].items():
        if key != "part":
            np.testing.assert_allclose(value, expected["metrics"][key], rtol=1e-5, err_msg=key)
    assert m["dataset"]["name"] == "synthetic" and len(m["dataset"]["sha256"]) == 64
    assert m["config"]["model"]["dim"] == 6 and len(bundle.item_meta) == 70
    assert bundle.num_users == 150 and bundle.num_items == 70 and bundle.seen_indptr[-1] > 0

    # MF's query folds the biases in: scores = theta . phi + b_u + b_i + g
    users_ue, items_ne = bundle.users_ue, bundle.items_ne
    np.testing.assert_allclose(users_ue[:, 6], 1.0)
    np.testing.assert_allclose(items_ne[:, 7], 1.0)
    # cold start: a history's query is [mean phi, 1, g]
    folded = bundle.encoder.history_vector(np.array([3, 5]), items_ne)
    np.testing.assert_allclose(folded[:6], items_ne[[3, 5], :6].mean(axis=0), rtol=1e-6)
    assert folded[6] == 1.0 and folded[7] == bundle.encoder.offset_e[7]

    report = json.loads((tmp_path / "bundle" / "precision_report.json").read_text())
    rows = {r["precision"]: r for r in report["records"]}
    assert rows["float32"]["hr@10"] == pytest.approx(expected["metrics"]["hr@10"], rel=1e-5)
    assert rows["int8"]["bundle_bytes"] < rows["bfloat16"]["bundle_bytes"] < rows["float32"]["bundle_bytes"]
    assert all(abs(r["ndcg@10_change"]) < 0.05 for r in rows.values())
    assert report["cold_start"]["hr@10"] > 0 and "| int8 |" in printed
    assert bundle_bytes(tmp_path / "bundle") > 0


def test_export_cli_errors_are_one_line(tmp_path, capsys):
    from jaxrec.export import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--out", str(tmp_path / "b")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"jaxrec: error: {tmp_path} has no checkpoints/ directory (is it a jaxrec run dir?)"
    )
    for bad in ("0", "1.5", "nan"):
        with pytest.raises(SystemExit) as exit_info:
            main([str(tmp_path), "--out", str(tmp_path / "b"), "--index-recall", bad])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.strip() == f"jaxrec: error: --index-recall must be in (0, 1], got {float(bad)}"
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--out", str(tmp_path / "b"), "--index-param", "ef_search=64"])  # --index auto
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "jaxrec: error: --index-param sets a setting of one index kind: name it with --index (hnsw, hnsw_l2, ivf, pq)"
    )


def test_export_with_an_index_measures_recall_and_serves_the_same_metrics(trained_run, tmp_path, capsys):
    pytest.importorskip("faiss", reason="the ANN index needs the ann extra: pip install -e '.[ann]'")
    from jaxrec.export import main

    main(
        [
            str(trained_run),
            "--out",
            str(tmp_path / "bundle"),
            "--precision",
            "int8",
            "--index",
            "ivf",
            "--index-param",
            "nlist=1",
            "--report",
        ]
    )  # one list, scanned whole: exact, so every number must agree
    printed = json.loads(capsys.readouterr().out.split("\n|")[0])
    bundle = load_bundle(tmp_path / "bundle")
    entry = bundle.manifest["index"]
    assert entry["kind"] == "ivf" and entry["params"] == {"nlist": 1, "nprobe": 1} and entry["recall@10"] == 1.0
    assert entry["recall_queries"] == 75 and printed["index_recall@10"] == 1.0  # the 75 of 150 not tuned on
    assert entry["tuning"] == {"target_recall@10": 0.96, "queries": 75, "ladder": [{"nprobe": 1, "recall@10": 1.0}]}
    assert bundle.index.index.ntotal == 70
    report = json.loads((tmp_path / "bundle" / "precision_report.json").read_text())["index"]
    assert report["precision"] == "int8" and report["index_hr@10"] == pytest.approx(report["exact_hr@10"])
    assert report["index_ndcg@10"] == pytest.approx(report["exact_ndcg@10"], abs=1e-6)
    assert report["exact_hr@10"] == pytest.approx(bundle.manifest["metrics"]["hr@10"])
    main([str(trained_run), "--out", str(tmp_path / "auto")])  # 70 items: auto keeps exact retrieval
    assert load_bundle(tmp_path / "auto").manifest["index"] is None
