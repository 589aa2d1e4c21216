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
import sys
from pathlib import Path

from jaxrec.errors import JaxrecError, cli_errors


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
    if args.max_batch < 1 or args.max_wait_ms < 0:
        parser.error(f"--max-batch must be >= 1 and --max-wait-ms >= 0 (got {args.max_batch}, {args.max_wait_ms})")
    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise JaxrecError(f"serving needs the serve extra ({', '.join(missing)} missing): pip install -e '.[serve]'")
    import uvicorn

    from jaxrec.serving.bundle import load_bundle

    bundle = load_bundle(args.bundle)  # before jax is imported: a wrong path fails fast
    from jaxrec.serving.app import make_app
    from jaxrec.serving.recommender import Recommender

    recommender = Recommender(bundle, shards=args.shards, approx_recall=args.approx_recall, use_index=not args.exact)
    app = make_app(recommender, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms)
    print(f"jaxrec: serving {args.bundle} on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
