"""The HTTP service on 127.0.0.1, called with a real HTTP client: answers equal a numpy
reference, bad requests get a 4xx with a clear detail, and concurrent requests are batched
without changing any answer."""

import asyncio
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

fastapi = pytest.importorskip("fastapi", reason="the server needs the serve extra: pip install -e '.[serve]'")
uvicorn = pytest.importorskip("uvicorn", reason="the server needs the serve extra: pip install -e '.[serve]'")
httpx = pytest.importorskip("httpx", reason="the server tests need the serve extra: pip install -e '.[serve]'")

from jaxrec.errors import JaxrecError  # noqa: E402
from jaxrec.serving.app import make_app  # noqa: E402
from jaxrec.serving.bundle import load_bundle, seen_csr, write_bundle  # noqa: E402
from jaxrec.serving.encoders import FoldInEncoder  # noqa: E402
from jaxrec.serving.recommender import Recommender  # noqa: E402

N, U, E = 300, 20, 8


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(U), 5)
    seen = seen_csr(users, rng.integers(0, N, users.size), U)
    offset_e = np.zeros(E, np.float32)
    offset_e[-1] = 0.5
    path = tmp_path_factory.mktemp("serve") / "bundle"
    write_bundle(
        path,
        manifest={"model": "mf", "dataset": {"name": "toy"}},
        items_ne=rng.standard_normal((N, E)).astype(np.float32),
        users_ue=rng.standard_normal((U, E)).astype(np.float32),
        user_tokens=[str(1000 + u) for u in range(U)],
        item_tokens=[f"i{i}" for i in range(N)],
        seen=seen,
        item_meta=[{"title": f"Movie {i}", "genres": ["Drama"] if i % 2 else []} for i in range(N)],
        encoder=FoldInEncoder(np.diag(np.r_[np.ones(E - 1), 0.0]).astype(np.float32), offset_e),
    )
    return load_bundle(path)


@pytest.fixture(scope="module")
def url(bundle):
    app = make_app(bundle, max_batch=8, max_wait_ms=20.0)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def _reference(query_e, items_ne, exclude, k):
    scores_n = items_ne.astype(np.float64) @ query_e.astype(np.float64)
    scores_n[list(exclude)] = -np.inf
    top = np.argsort(-scores_n, kind="stable")[:k]
    return [f"i{i}" for i in top], scores_n[top]


def test_health_and_item_lookup(url):
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["num_items"] == N and health["num_users"] == U
    assert health["cold_start"] == ["history"] and health["max_k"] == N and health["dataset"] == "toy"
    assert httpx.get(f"{url}/items/i7").json() == {"item_id": "i7", "title": "Movie 7", "genres": ["Drama"]}
    missing = httpx.get(f"{url}/items/nope")
    assert missing.status_code == 404 and missing.json()["detail"] == "unknown item id 'nope'"


@pytest.mark.parametrize("user_id", ["1003", 1003])  # original ids as strings or integers
def test_known_user_gets_the_reference_top_k_without_seen_items(url, bundle, user_id):
    body = httpx.post(f"{url}/recommend", json={"user_id": user_id, "k": 12}).json()
    ids, scores = _reference(bundle.users_ue[3], bundle.items_ne, bundle.seen(3), 12)
    assert body["user_id"] == "1003" and body["k"] == 12
    assert [item["item_id"] for item in body["items"]] == ids
    np.testing.assert_allclose([item["score"] for item in body["items"]], scores, rtol=1e-5)
    assert body["items"][0]["title"] == f"Movie {ids[0][1:]}"
    with_seen = httpx.post(f"{url}/recommend", json={"user_id": user_id, "k": 12, "exclude_seen": False}).json()
    assert [i["item_id"] for i in with_seen["items"]] == _reference(bundle.users_ue[3], bundle.items_ne, [], 12)[0]


def test_new_user_is_folded_in_from_its_history(url, bundle):
    history = ["i4", "i9", "i250"]
    body = httpx.post(f"{url}/recommend", json={"history": history, "k": 5}).json()
    query_e = bundle.items_ne[[4, 9, 250]].mean(axis=0)
    query_e[-1] = 0.5  # projection drops the last coordinate, the offset sets it
    ids, scores = _reference(query_e, bundle.items_ne, [4, 9, 250], 5)
    assert [item["item_id"] for item in body["items"]] == ids and body["history"] == history
    np.testing.assert_allclose([item["score"] for item in body["items"]], scores, rtol=1e-5)


@pytest.mark.parametrize(
    "payload,status,detail",
    [
        ({"user_id": "nobody", "k": 10}, 404, "unknown user_id 'nobody' (the bundle knows 20 users"),
        ({"user_id": "1001", "k": 0}, 422, "k: Input should be greater than or equal to 1"),
        ({"user_id": "1001", "k": 1001}, 422, "k: Input should be less than or equal to 1000"),
        (
            {"user_id": "1001", "k": 301},
            422,
            "k=301 is out of range: it must lie in 1..300 (the catalogue has 300 items)",
        ),
        ({"user_id": "1001", "k": "ten"}, 422, "k: Input should be a valid integer"),
        ({"history": ["i1", "zzz", "i2"]}, 422, "history holds 1 item id(s) unknown to the bundle: 'zzz'"),
        ({"history": []}, 422, "history: List should have at least 1 item"),
        ({"user_id": "1001", "history": ["i1"]}, 422, "send exactly one of 'user_id', 'history' and 'features'"),
        ({}, 422, "send exactly one of 'user_id', 'history' and 'features'"),
        (
            {"features": {"age": 30}},
            422,
            "this bundle's model cannot encode user 'features'; send a known 'user_id' or a 'history'",
        ),
        ({"features": {"age": [30]}}, 422, "features.age"),
        ({"user_id": "1001", "n": 3}, 422, "n: Extra inputs are not permitted"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_clear_detail(url, payload, status, detail):
    response = httpx.post(f"{url}/recommend", json=payload)
    assert response.status_code == status
    assert detail in response.json()["detail"]


def test_malformed_json_is_400_and_the_server_keeps_serving(url):
    for content in (b'{"user_id": ', b"not json", b"[1, 2"):
        response = httpx.post(f"{url}/recommend", content=content, headers={"content-type": "application/json"})
        assert response.status_code == 400 and response.json()["detail"].startswith("malformed JSON body")
    assert httpx.post(f"{url}/recommend", json={"user_id": "1000"}).status_code == 200


def test_concurrent_requests_are_batched_and_answer_as_single_ones(url):
    payloads = [{"user_id": str(1000 + u), "k": 3 + u % 7} for u in range(U)]
    payloads += [{"history": [f"i{j}", f"i{j + 50}"], "k": 10} for j in range(20)]
    with httpx.Client(base_url=url) as client:
        single = [client.post("/recommend", json=p).json() for p in payloads]
    before = httpx.get(f"{url}/health").json()

    async def concurrent():
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            responses = await asyncio.gather(*(client.post("/recommend", json=p) for p in payloads))
        return [r.json() for r in responses]

    together = asyncio.run(concurrent())
    after = httpx.get(f"{url}/health").json()
    for one, batched in zip(single, together):
        assert [i["item_id"] for i in batched["items"]] == [i["item_id"] for i in one["items"]]
        np.testing.assert_allclose(
            [i["score"] for i in batched["items"]], [i["score"] for i in one["items"]], rtol=1e-5
        )
    assert after["largest_batch"] > 1  # requests shared a retrieval
    assert after["batches"] - before["batches"] < len(payloads)


def test_sharded_and_approximate_recommenders_agree_with_the_exact_one(bundle):
    exact = Recommender(bundle)
    queries = [exact.user_query(str(1000 + u), 10) for u in range(U)] + [exact.history_query(["i1", "i2"], 10)]
    expected = exact.recommend(queries)
    sharded = Recommender(bundle, shards=8).recommend(queries)
    assert all(np.array_equal(s.ids, e.ids) for s, e in zip(sharded, expected))
    approx = Recommender(bundle, approx_recall=0.95).recommend(queries)
    assert np.mean([len(set(a.ids) & set(e.ids)) / 10 for a, e in zip(approx, expected)]) >= 0.85
    with pytest.raises(JaxrecError, match="--shards 9 needs that many devices; 8 are available"):
        Recommender(bundle, shards=9)


def test_serve_cli_on_a_missing_bundle_is_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "jaxrec.serve", str(tmp_path / "nope")], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith(f"jaxrec: error: {tmp_path / 'nope'} is not a serving bundle")
