"""The FAISS index: exact at an exact setting, recall on a synthetic catalogue, exact seen-item
exclusion however many top candidates are seen, a bundle round trip through the HTTP app, and a
missing library reported in one line."""

import sys

import numpy as np
import pytest

pytest.importorskip("faiss", reason="the ANN index needs the ann extra: pip install -e '.[ann]'")

from jaxrec.errors import JaxrecError  # noqa: E402
from jaxrec.serving import ann  # noqa: E402
from jaxrec.serving.bundle import load_bundle, seen_csr, write_bundle  # noqa: E402
from jaxrec.serving.encoders import FoldInEncoder  # noqa: E402
from jaxrec.serving.exporter import build_item_index  # noqa: E402
from jaxrec.serving.recommender import Recommender  # noqa: E402

N, U, E = 300, 20, 8


def _write_bundle(path, items_ne, users_ue, seen, **options):
    return write_bundle(
        path,
        manifest={"model": "mf"},
        items_ne=items_ne,
        users_ue=users_ue,
        user_tokens=[f"u{u}" for u in range(len(users_ue))],
        item_tokens=[f"i{i}" for i in range(len(items_ne))],
        seen=seen,
        **options,
    )


def _catalogue(num_items, dim, num_queries, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((num_items, dim)).astype(np.float32),
        rng.standard_normal((num_queries, dim)).astype(np.float32),
    )


@pytest.mark.parametrize(
    "kind,params",
    [
        ("ivf", {"nlist": 4, "nprobe": 4}),
        ("hnsw", {"ef_search": N}),
        ("hnsw_l2", {"ef_search": N}),
        ("pq", {"rerank": N}),
    ],
)
def test_index_equals_exact_search_at_an_exact_setting(kind, params):
    items_ne, query_be = _catalogue(N, E, 12)
    index = ann.build_index(items_ne, kind, params)
    rng = np.random.default_rng(1)
    excludes = [rng.choice(N, n, replace=False).astype(np.int32) for n in (0, 3, 20, 70, 0, 5, 1, 2, 9, 0, 40, 100)]
    for query_e, exclude, (ids, scores) in zip(query_be, excludes, index.search(query_be, excludes, 25)):
        exact_ids, exact_scores = ann.exact_search(items_ne, query_e, exclude, 25)
        np.testing.assert_array_equal(ids, exact_ids)
        np.testing.assert_allclose(scores, exact_scores, rtol=1e-5, atol=1e-5)  # inner products, no transform
    assert index.exact_fallbacks == 0


def test_hnsw_recall_meets_the_target_on_a_synthetic_catalogue():
    items_ne, query_be = _catalogue(5_000, 64, 200)
    index = ann.build_index(items_ne, "hnsw")  # the defaults
    recall = ann.recall_at_k(index, query_be, [np.zeros(0, np.int32)] * len(query_be), 10)
    assert recall >= 0.95
    index.params["ef_search"] = 10
    index.apply_search_params()  # a smaller search is measurably worse: the index is not exhaustive
    assert ann.recall_at_k(index, query_be, [np.zeros(0, np.int32)] * len(query_be), 10) < recall


def test_export_tunes_the_search_setting_to_the_smallest_that_reaches_the_target():
    items_ne, queries_ue = _catalogue(5_000, 32, 400, seed=4)
    users = np.repeat(np.arange(400), 5)
    seen = seen_csr(users, np.random.default_rng(5).integers(0, 5_000, len(users)), 400)
    build = {"m": 6, "ef_construction": 20}  # a sparse graph: the ladder climbs to ~ef_search 256
    index = build_item_index(items_ne, queries_ue, seen, "hnsw", build, target_recall=0.95)
    ladder = index.details["tuning"]["ladder"]
    chosen = index.params["ef_search"]
    assert [step["ef_search"] for step in ladder] == list(ann.LADDERS["ef_search"][: len(ladder)]) and len(ladder) >= 3
    assert chosen == ladder[-1]["ef_search"] and index.details["tuning"]["queries"] == 200
    tuning = np.sort(np.random.default_rng(0).permutation(400)[::2])  # as build_item_index samples
    excludes = [seen[1][seen[0][u] : seen[0][u + 1]] for u in tuning]

    def recall(ef_search):
        index.params["ef_search"] = ef_search
        index.apply_search_params()
        return ann.recall_at_k(index, queries_ue[tuning], excludes, 10)

    assert recall(chosen) >= 0.95 > recall(ladder[-2]["ef_search"])  # the smallest setting that reaches it
    assert index.details["recall@10"] >= 0.93 and index.details["recall_queries"] == 200  # the other 200
    pinned = build_item_index(items_ne, queries_ue, seen, "hnsw", build | {"ef_search": 20})
    assert pinned.params["ef_search"] == 20 and "tuning" not in pinned.details


def test_pq_rescores_its_coded_candidates_exactly_and_more_candidates_find_more():
    items_ne, query_be = _catalogue(5_000, 64, 200, seed=8)
    index = ann.build_index(items_ne, "pq")  # 32 subspaces of 2 dimensions, 4-bit codes
    assert index.params == {"subspaces": 32, "rerank": 512} and index.index.code_size == 16
    no_excludes = [np.zeros(0, np.int32)] * len(query_be)
    recalls = {}
    for rerank in (16, 512):
        index.params["rerank"] = rerank
        recalls[rerank] = ann.recall_at_k(index, query_be, no_excludes, 10)
    assert recalls[512] >= 0.95 and recalls[16] < recalls[512] - 0.1
    ids, scores = index.search(query_be[:1], no_excludes[:1], 10)[0]
    np.testing.assert_allclose(scores, items_ne[ids] @ query_be[0], rtol=1e-6)  # exact scores, not coded ones
    with pytest.raises(JaxrecError, match="subspaces=5 must divide the vector width 64"):
        ann.build_index(items_ne, "pq", {"subspaces": 5})


@pytest.mark.parametrize(
    "speeds,rerank_ladder,chosen",
    [
        ({"hnsw": 100.0, "pq": 200.0}, None, "faiss-pq"),
        ({"hnsw": 300.0, "pq": 200.0}, None, "faiss-hnsw"),
        ({"hnsw": 100.0, "pq": 900.0}, (16,), "faiss-hnsw"),  # pq cannot reach the target: never chosen
    ],
)
def test_auto_keeps_the_faster_index_among_those_that_reach_the_target(monkeypatch, speeds, rerank_ladder, chosen):
    items_ne, queries_ue = _catalogue(3_000, 16, 200, seed=9)
    seen = seen_csr(np.repeat(np.arange(200), 3), np.random.default_rng(9).integers(0, 3_000, 600), 200)
    monkeypatch.setattr(ann, "queries_per_second", lambda index, *args: speeds[index.kind])
    if rerank_ladder:
        monkeypatch.setitem(ann.LADDERS, "rerank", rerank_ladder)
    index = build_item_index(items_ne, queries_ue, seen, "auto", target_recall=0.95)
    assert index.name == chosen
    built = {entry["index"]: entry for entry in index.details["auto"]}
    assert set(built) == {"faiss-hnsw", "faiss-pq"}
    assert built["faiss-pq"]["queries_per_second_at_batch_16"] == speeds["pq"]
    assert (built["faiss-pq"]["tuning_recall@10"] >= 0.95) == (rerank_ladder is None)
    assert index.details["tuning"]["ladder"][-1]["recall@10"] == built[chosen]["tuning_recall@10"] >= 0.95


def test_a_pq_index_round_trips_through_a_bundle(tmp_path):
    items_ne, users_ue = _catalogue(N, E, U, seed=10)
    seen = seen_csr(np.arange(U), np.arange(U), U)
    index = build_item_index(items_ne, users_ue, seen, "pq", {"rerank": 40})
    loaded = load_bundle(_write_bundle(tmp_path / "bundle", items_ne, users_ue, seen, index=index)).index
    assert loaded.name == "faiss-pq" and loaded.params == {"subspaces": 4, "rerank": 40}
    excludes = [np.array([u], np.int32) for u in range(U)]
    for (ids, scores), (loaded_ids, loaded_scores) in zip(
        index.search(users_ue, excludes, 10), loaded.search(users_ue, excludes, 10), strict=True
    ):
        np.testing.assert_array_equal(loaded_ids, ids)
        np.testing.assert_array_equal(loaded_scores, scores)


def test_a_batch_split_across_search_threads_finds_what_one_thread_finds():
    items_ne, query_be = _catalogue(3_000, E, 37, seed=6)
    index = ann.build_index(items_ne, "hnsw", {"ef_search": 30})
    excludes = [np.random.default_rng(r).choice(3_000, r, replace=False) for r in range(37)]
    index.workers = 1
    alone = index.search(query_be, excludes, 10)
    index.workers = 3
    for (ids, scores), (split_ids, split_scores) in zip(alone, index.search(query_be, excludes, 10), strict=True):
        np.testing.assert_array_equal(split_ids, ids)
        np.testing.assert_array_equal(split_scores, scores)


def test_the_l2_reduction_ranks_exactly_but_its_graph_finds_less_than_the_inner_product_graph(monkeypatch):
    """Items with norms from 0.09 to 87: [x, sqrt(M^2 - |x|^2)] against [q, 0] by L2 is the inner
    product's order exactly, yet HNSW over those vectors finds far fewer of the top 10 at a small
    ef_search (numbers measured with one build thread, which makes the graph deterministic)."""
    monkeypatch.setattr(ann, "BUILD_THREADS", 1)
    rng = np.random.default_rng(7)
    items_ne = (rng.standard_normal((2_000, E)) * np.exp(rng.standard_normal((2_000, 1)))).astype(np.float32)
    query_be = rng.standard_normal((100, E)).astype(np.float32)
    augmented_nf = ann.augment_to_equal_norm(items_ne)
    np.testing.assert_allclose(np.linalg.norm(augmented_nf, axis=1), np.linalg.norm(items_ne, axis=1).max(), rtol=1e-5)
    padded_bf = np.pad(query_be, ((0, 0), (0, 1)))
    for query_e, query_f in zip(query_be, padded_bf):
        nearest = np.argsort(np.square(augmented_nf - query_f).sum(1), kind="stable")[:10]
        np.testing.assert_array_equal(nearest, ann.exact_search(items_ne, query_e, np.zeros(0, np.int32), 10)[0])
    no_excludes = [np.zeros(0, np.int32)] * len(query_be)
    recalls = {}
    for kind in ("hnsw", "hnsw_l2"):
        index = ann.build_index(items_ne, kind, {"m": 32, "ef_construction": 64})
        for ef_search in (10, 40, 2_000):
            index.params["ef_search"] = ef_search
            index.apply_search_params()
            recalls[kind, ef_search] = ann.recall_at_k(index, query_be, no_excludes, 10)
        ids, scores = index.search(query_be[:1], no_excludes[:1], 10)[0]
        np.testing.assert_allclose(scores, items_ne[ids] @ query_be[0], rtol=1e-5)  # true inner products
    assert recalls["hnsw", 10] == pytest.approx(0.974, abs=0.02) and recalls["hnsw", 40] >= 0.99
    assert recalls["hnsw_l2", 10] == pytest.approx(0.356, abs=0.05)
    assert recalls["hnsw_l2", 40] == pytest.approx(0.658, abs=0.05)
    assert recalls["hnsw", 2_000] == 1.0 and recalls["hnsw_l2", 2_000] >= 0.99


def test_exclusion_is_exact_when_most_top_candidates_are_seen():
    items_ne, query_be = _catalogue(2_000, E, 4, seed=2)
    index = ann.build_index(items_ne, "hnsw", {"ef_search": 400})
    excludes = []
    for query_e, keep in zip(query_be, (0, 3, 10, 1)):  # of the top 200, all but `keep` are seen
        top = np.argsort(-(items_ne @ query_e))[:200]
        excludes.append(np.sort(np.delete(top, np.arange(keep) * 19)).astype(np.int32))
    found = index.search(query_be, excludes, 10)
    assert index.refills == 4  # 200 seen ids: more than the first fetch makes room for
    for query_e, exclude, (ids, _) in zip(query_be, excludes, found):
        assert len(ids) == 10 and not np.isin(ids, exclude).any()
        np.testing.assert_array_equal(ids, ann.exact_search(items_ne, query_e, exclude, 10)[0])
    coded = ann.build_index(items_ne, "pq", {"rerank": 16})  # approximate: checked for exclusion only
    for exclude, (ids, _) in zip(excludes, coded.search(query_be, excludes, 10), strict=True):
        assert len(ids) == 10 and not np.isin(ids, exclude).any()


def test_queries_the_index_cannot_fill_fall_back_to_exact_search():
    items_ne, query_be = _catalogue(400, E, 3, seed=3)
    index = ann.build_index(items_ne, "ivf", {"nlist": 8, "nprobe": 1})  # one list: about 50 items reachable
    excludes = [np.arange(0, 400, 2, dtype=np.int32), np.arange(395, dtype=np.int32), np.zeros(0, np.int32)]
    found = index.search(query_be, excludes, 60)
    assert index.exact_fallbacks >= 2
    assert [len(ids) for ids, _ in found[:2]] == [60, 5]  # only 5 items are left to the second query
    for query_e, exclude, (ids, _) in zip(query_be[:2], excludes, found):
        np.testing.assert_array_equal(ids, ann.exact_search(items_ne, query_e, exclude, 60)[0])


@pytest.fixture(scope="module")
def indexed_bundle(tmp_path_factory):
    """An int8 bundle whose index is built on the dequantised vectors, as export builds it."""
    items_ne, users_ue = _catalogue(N, E, U, seed=4)
    rng = np.random.default_rng(5)
    users = np.repeat(np.arange(U), 30)
    seen = seen_csr(users, rng.integers(0, N, users.size), U)
    path = tmp_path_factory.mktemp("ann") / "bundle"
    stored = load_bundle(_write_bundle(path, items_ne, users_ue, seen, precision="int8"))
    index = build_item_index(stored.items_ne, stored.users_ue, seen, "hnsw", {"ef_search": N})
    _write_bundle(
        path,
        items_ne,
        users_ue,
        seen,
        precision="int8",
        encoder=FoldInEncoder(np.eye(E, dtype=np.float32), np.zeros(E, np.float32)),
        index=index,
        overwrite=True,
    )
    return path


def test_bundle_with_an_index_round_trips_export_load_serve(indexed_bundle):
    from fastapi.testclient import TestClient

    from jaxrec.serving.app import make_app

    bundle = load_bundle(indexed_bundle)
    entry = bundle.manifest["index"]
    assert entry["kind"] == "hnsw" and entry["metric"] == "inner_product" and entry["recall@10"] == 1.0
    assert (indexed_bundle / entry["file"]).is_file() and bundle.index.index.ntotal == N
    served, exact = Recommender(bundle), Recommender(bundle, use_index=False)
    queries = [served.user_query(f"u{u}", 10) for u in range(U)] + [served.history_query(["i3", "i7"], 10)]
    for got, want, query in zip(served.recommend(queries), exact.recommend(queries), queries):
        np.testing.assert_array_equal(got.ids, want.ids)
        assert not np.isin(got.ids, query.exclude).any()
    with TestClient(make_app(served, max_batch=4)) as client:
        health = client.get("/health").json()
        answer = client.post("/recommend", json={"user_id": "u3", "k": 5}).json()
    assert health["retrieval"]["kind"] == "faiss-hnsw" and health["retrieval"]["recall@10"] == 1.0
    assert [item["item_id"] for item in answer["items"]] == [f"i{i}" for i in exact.recommend(queries[3:4])[0].ids[:5]]


def test_a_missing_index_library_is_one_line_saying_what_to_install(indexed_bundle, monkeypatch, capsys):
    from jaxrec.serve import main

    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    with pytest.raises(JaxrecError, match=r"pip install 'faiss-cpu>=1.15,<1.16'"):
        load_bundle(indexed_bundle)
    with pytest.raises(SystemExit) as exit_info:
        main([str(indexed_bundle)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "has a faiss hnsw index" in err


def test_a_bundle_whose_index_kind_this_version_does_not_know_is_one_line(indexed_bundle, tmp_path):
    import json
    import shutil

    newer = shutil.copytree(indexed_bundle, tmp_path / "newer")
    manifest = json.loads((newer / "manifest.json").read_text())
    manifest["index"]["kind"] = "hnsw_pq"
    (newer / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(JaxrecError, match=r"has a 'hnsw_pq' index, which this jaxrec cannot serve .*re-export"):
        load_bundle(newer)


def test_serving_an_indexed_bundle_with_another_retrieval_asks_for_exact(indexed_bundle):
    bundle = load_bundle(indexed_bundle)
    with pytest.raises(JaxrecError, match="--exact"):
        Recommender(bundle, approx_recall=0.9)
    assert Recommender(bundle, approx_recall=0.9, use_index=False).retrieval_info()["kind"] == "approx_top_k"
