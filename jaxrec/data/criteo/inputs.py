"""The inputs of the Criteo prepare step: found, checked once before any work, and read.

Every check here is one JaxrecError line naming the file: --out that cannot be a folder, inputs
that are missing, empty, not regular files, given twice, or compressed in a way the name hides;
a damaged gzip stream; and, on a rerun, an input whose content changed since plan.json recorded
it (its shards would be stale).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import zlib
from pathlib import Path

from jaxrec.errors import JaxrecError

log = logging.getLogger("jaxrec.data")

BLOCK_BYTES = 8 << 20  # bytes parsed at once: bounds a worker's memory


def check_out(out: Path) -> None:
    """--out must be a folder that exists or can be made, and that this user can write."""
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        kind = "a file" if existing.is_file() else "not a folder"
        where = f"is {kind}" if existing == out else f"is under {existing}, which is {kind}"
        raise JaxrecError(f"--out {out} {where}; give a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise JaxrecError(f"--out {out}: {existing} is not writable")


GZIP_MAGIC = b"\x1f\x8b"
OTHER_COMPRESSION = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd", b"PK\x03\x04": "zip"}


def is_gzip(path: Path) -> bool:
    """Whether the file is gzip-compressed, by its first bytes (its name may say otherwise)."""
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files as given; a folder contributes its day_N[.gz] files in day order, else train.txt[.gz].

    Each file must be readable, not empty, given once, and plain text or gzip (a .gz name that
    is not gzip, or another compression, is refused: it would be read as garbage lines)."""
    files = []
    for name in inputs:
        path = resolve(Path(name))
        if path.is_dir():
            days = sorted(
                (p for p in path.iterdir() if p.name.removesuffix(".gz").removeprefix("day_").isdigit()),
                key=lambda p: int(p.name.removesuffix(".gz").removeprefix("day_")),
            )
            found = days or [p for p in (path / "train.txt", path / "train.txt.gz") if p.exists()][:1]
            if not found:
                raise JaxrecError(f"{path}: no day_N, day_N.gz or train.txt files in this folder")
            files += found
        elif path.exists():
            files.append(path)
        else:
            raise JaxrecError(f"{name}: no such file or folder")
    for k, path in enumerate(files):
        if path in files[:k]:
            raise JaxrecError(f"{path} is given twice: each input must be a different file (a day of the logs)")
        _check_input_file(path)
    return files


def resolve(path: Path, what: str = "") -> Path:
    """The absolute path without symbolic links; a link loop is one line."""
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError) as err:
        raise JaxrecError(f"{what}{path}: cannot be resolved ({err})") from None


def _check_input_file(path: Path) -> None:
    if not path.is_file():
        raise JaxrecError(f"{path}: not a regular file (a device, pipe or socket cannot be cut into pieces)")
    if not os.access(path, os.R_OK):
        raise JaxrecError(f"{path}: no permission to read it")
    if path.stat().st_size == 0:
        raise JaxrecError(f"{path}: the file is empty (0 bytes; an interrupted download?)")
    with open(path, "rb") as f:
        head = f.read(8)
    other = next((kind for magic, kind in OTHER_COMPRESSION.items() if head.startswith(magic)), None)
    if other:
        raise JaxrecError(f"{path} is {other}-compressed; decompress it (or recompress it with gzip) first")
    if path.suffix == ".gz" and not head.startswith(GZIP_MAGIC):
        raise JaxrecError(f"{path} is named .gz but is not gzip-compressed; rename or recompress it")


def check_contents(files: list[Path], hashes: list[str], line_of_file: dict) -> None:
    """No input without lines, and no two inputs with the same lines (a day given twice would be
    both train and test): the same sha256, or, for a .gz and a plain copy, the same line count
    and first 64 KiB of text."""
    first_with = {}
    for i, (path, digest) in enumerate(zip(files, hashes)):
        if line_of_file[i] == 0:
            raise JaxrecError(f"{path}: no lines (an empty log)")
        with gzip.open(path, "rb") if is_gzip(path) else open(path, "rb") as f:
            text_key = (line_of_file[i], hashlib.sha256(f.read(1 << 16)).hexdigest())
        for key in (digest, text_key):
            if key in first_with:
                raise JaxrecError(
                    f"{path} and {first_with[key]} hold the same lines "
                    f"({'the same sha256' if key == digest else 'one compressed, one not'}): "
                    "each input must be a different day of the logs"
                )
            first_with[key] = path


def check_unchanged(out: Path, plan: dict, files: list[Path]) -> None:
    """Refuse to go on from a plan whose inputs changed: its shards would hold the old lines.
    Size and mtime are compared first (a stat); a file whose mtime alone moved is hashed."""
    for path, recorded in zip(files, plan["inputs"]):
        now = path.stat()
        if now.st_size == recorded["size"] and now.st_mtime_ns == recorded.get("mtime_ns"):
            continue
        if now.st_size == recorded["size"] and sha256_of(path) == recorded["sha256"]:
            log.info("%s: modified time changed, content (sha256) did not", path)
            continue
        raise JaxrecError(
            f"{path} changed since {out} was prepared from it (size or sha256 differ from "
            f"{out / 'plan.json'}), so its shards are stale; delete {out} (or use another --out) and prepare again"
        )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def read_blocks(path: Path, piece: dict):
    """The piece's bytes as blocks of whole lines, each ending with b"\\n" (one is added to a
    final line without it). A damaged gzip stream stops with one line naming the file."""
    gz = is_gzip(path)
    lines_read = 0
    try:
        with gzip.open(path, "rb") if gz else open(path, "rb") as f:
            if not gz:
                f.seek(piece["start"])
            left = None if gz else piece["end"] - piece["start"]
            carry = b""
            while left is None or left > 0:
                chunk = f.read(BLOCK_BYTES if left is None else min(BLOCK_BYTES, left))
                if not chunk:
                    break
                left = None if left is None else left - len(chunk)
                data = carry + chunk
                cut = data.rfind(b"\n") + 1
                if cut:
                    lines_read += data.count(b"\n", 0, cut) if gz else 0
                    yield data[:cut]
                carry = data[cut:]
            if carry:
                yield carry + b"\n"
    except EOFError:
        where = f" (somewhere after line {lines_read})" if lines_read else ""
        raise JaxrecError(f"{path}: the compressed stream ends early{where}; a truncated download?") from None
    except (zlib.error, gzip.BadGzipFile) as err:
        where = f" somewhere after line {lines_read}" if lines_read else ""
        raise JaxrecError(f"{path}: damaged gzip data{where} ({err})") from None
