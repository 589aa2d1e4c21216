"""Data command line: `python -m jaxrec.data fetch ml-100k [--data-dir DIR]`.

Prints the folder that holds the data set, so scripts can use `$(python -m jaxrec.data fetch ...)`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from jaxrec.data.fetch import DATASETS, default_data_dir, fetch
from jaxrec.errors import cli_errors


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jaxrec.data")
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_cmd = commands.add_parser("fetch", help="download a MovieLens data set into the cache")
    fetch_cmd.add_argument("name", help=f"one of {', '.join(DATASETS)}")
    fetch_cmd.add_argument("--data-dir", type=Path, default=None,
                           help=f"cache folder (default: {default_data_dir()})")  # fmt: skip
    return parser


@cli_errors
def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(fetch(args.name, args.data_dir))


if __name__ == "__main__":
    main()
