"""The serving benchmark's HTTP phase: `python -m jaxrec.serve` in a subprocess, called by a bare
asyncio HTTP/1.1 keep-alive client in this process (see post_loop)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.serving_common import K, percentiles


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(bundle_dir: Path, port: int, args, exact: bool = True) -> subprocess.Popen:
    import httpx

    cmd = [
        sys.executable,
        "-m",
        "jaxrec.serve",
        str(bundle_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-batch",
        str(args.max_batch),
        "--max-wait-ms",
        str(args.max_wait_ms),
    ] + (["--exact"] if exact else [])
    server = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + args.startup_seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode}: {server.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.kill()
    raise RuntimeError(f"server did not answer /health within {args.startup_seconds} s")


async def post_loop(port: int, payloads: list[bytes], state: dict, latencies: list, deadline: float) -> None:
    """One keep-alive connection sending its next request as soon as the previous answer came.

    A bare asyncio HTTP/1.1 client: httpx's own per-request CPU cost capped this 2-core machine at
    ~140 requests/s whatever the server did, which would have measured the client."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while state["sent"] < state["max"] and time.perf_counter() < deadline:
            body = payloads[state["sent"] % len(payloads)]
            state["sent"] += 1
            tick = time.perf_counter()
            writer.write(
                b"POST /recommend HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            latencies.append((time.perf_counter() - tick) * 1e3)
            state["failures"] += head.split(b" ", 2)[1] != b"200"
    finally:
        writer.close()


async def load(port: int, payloads: list[bytes], concurrency: int, max_requests: int, max_seconds: float) -> dict:
    """`concurrency` clients at once, until `max_requests` were sent or `max_seconds` passed."""
    await post_loop(port, payloads[:1], {"sent": 0, "max": 1, "failures": 0}, [], time.perf_counter() + 60)
    state, latencies = {"sent": 0, "max": max_requests, "failures": 0}, []
    start = time.perf_counter()
    await asyncio.gather(
        *(post_loop(port, payloads, state, latencies, start + max_seconds) for _ in range(concurrency))
    )
    wall = time.perf_counter() - start
    return percentiles(latencies) | {"rps": len(latencies) / wall, "failures": state["failures"]}


def over_http(bundle_dir: Path, num_users: int, args, exact: bool = True) -> dict:
    import httpx

    port = free_port()
    server = start_server(bundle_dir, port, args, exact)
    try:
        rng = np.random.default_rng(args.seed + 2)
        payloads = [json.dumps({"user_id": f"u{u}", "k": K}).encode() for u in rng.integers(0, num_users, 1024)]
        single = asyncio.run(load(port, payloads, 1, args.requests, args.seconds))
        before = httpx.get(f"http://127.0.0.1:{port}/health").json()
        concurrent = asyncio.run(load(port, payloads, args.concurrency, args.requests * 4, args.seconds))
        after = httpx.get(f"http://127.0.0.1:{port}/health").json()
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {
        "http_single_p50_ms": single["p50"],
        "http_single_p99_ms": single["p99"],
        "http_single_rps": single["rps"],
        "http_single_n": single["n"],
        "http_concurrent_p50_ms": concurrent["p50"],
        "http_concurrent_p99_ms": concurrent["p99"],
        "http_concurrent_rps": concurrent["rps"],
        "http_concurrent_n": concurrent["n"],
        "http_failures": single["failures"] + concurrent["failures"],
        "http_mean_batch": (after["batched_requests"] - before["batched_requests"])
        / max(after["batches"] - before["batches"], 1),
    }
