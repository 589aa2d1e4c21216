"""User-facing errors: one clear line, no traceback unless JAXREC_DEBUG=1."""

from __future__ import annotations

import functools
import os
import sys


class JaxrecError(Exception):
    """An error the user can act on (bad data, bad config, impossible plan)."""


def cli_errors(main):
    """Wrap a command-line entry point so a JaxrecError prints one line and exits 2."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except JaxrecError as err:
            if os.environ.get("JAXREC_DEBUG") == "1":
                raise
            print(f"jaxrec: error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapped
