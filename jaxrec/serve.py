"""Serve a bundle's top-K recommendations over HTTP (needs the `serve` extra).

    python -m jaxrec.serve <bundle> [--host 127.0.0.1] [--port 8000] [--max-batch 32]
        [--max-wait-ms 1] [--exact] [--shards N | --approx-recall R]

Endpoints and errors: see jaxrec.serving.app. A bundle exported with --index is served from its
ANN index (needs the `ann` extra); --exact ignores the index. --shards splits the item matrix
over N devices (exact); --approx-recall uses the binned approximate top-K with that expected recall.
"""

from __future__ import annotations

import argparse
import importlib.util
import socket
import sys
from pathlib import Path

from jaxrec.errors import JaxrecError, cli_errors

MAX_BATCH = 65536  # requests per retrieval; startup compiles one batch of this size (max_batch x items scores)


@cli_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch", type=int, default=32, help="most requests answered by one retrieval")
    parser.add_argument("--max-wait-ms", type=float, default=1.0, help="how long a batch waits to fill")
    parser.add_argument("--shards", type=int, default=1, help="devices the item matrix is split over")
    parser.add_argument("--approx-recall", type=float, default=None, help="approximate top-K at this recall")
    parser.add_argument("--exact", action="store_true", help="ignore the bundle's ANN index: score every item")
    args = parser.parse_args(argv)
    if not 1 <= args.max_batch <= MAX_BATCH or not 0 <= args.max_wait_ms < float("inf"):
        raise JaxrecError(
            f"--max-batch must lie in 1..{MAX_BATCH} and --max-wait-ms be a finite number >= 0 "
            f"(got {args.max_batch}, {args.max_wait_ms})"
        )
    if args.shards < 1:
        raise JaxrecError(f"--shards {args.shards}: expected an integer >= 1 (the devices the items are split over)")
    if not 0 <= args.port <= 65535:
        raise JaxrecError(f"--port {args.port} is not a TCP port: expected 1..65535 (or 0: any free port, printed)")
    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise JaxrecError(f"serving needs the serve extra ({', '.join(missing)} missing): pip install -e '.[serve]'")
    import uvicorn

    from jaxrec.serving.bundle import load_bundle

    sock = bind_socket(args.host, args.port)  # before the bundle loads: a busy port fails fast
    bundle = load_bundle(args.bundle)  # before jax is imported: a wrong path fails fast
    from jaxrec.serving.app import make_app
    from jaxrec.serving.recommender import Recommender

    recommender = Recommender(bundle, shards=args.shards, approx_recall=args.approx_recall, use_index=not args.exact)
    app = make_app(recommender, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms)
    host, port = sock.getsockname()[:2]
    url_host = f"[{host}]" if ":" in host else host
    print(f"jaxrec: serving {args.bundle} on http://{url_host}:{port}", file=sys.stderr, flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening address bound here rather than by uvicorn, so that a host that does not
    resolve or a port in use is one line, and port 0's actual port can be announced."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as err:
        raise JaxrecError(f"cannot listen on --host {host} --port {port}: {err.strerror or err}") from None
    sock.set_inheritable(True)
    return sock


if __name__ == "__main__":
    main()
