"""Download MovieLens into a local cache, atomically, with checksums.

Cache: `$JAXREC_DATA_DIR`, else `$XDG_CACHE_HOME/jaxrec`, else `~/.cache/jaxrec`; each data set
gets one folder (e.g. `ml-100k/`) holding its files and `.jaxrec-fetch.json`, the record of
where they came from and the sha256 of the ratings file. Everything is written to temporary
names inside the cache and moved into place with `os.replace`, so an interrupted fetch never
leaves a half-written folder, and a cached folder whose ratings file no longer matches its
record is fetched again.

Sources, in order: the official GroupLens zip (md5 checked against the published one where
GroupLens publishes a fixed file), then, for ml-100k only, the copy RecBole ships inside its
wheel on PyPI (`pip download`, never installed), checked against a pinned sha256.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable

from jaxrec.errors import JaxrecError

log = logging.getLogger("jaxrec.data")

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens"
GROUPLENS_TIMEOUT_S = 5
RECBOLE_WHEEL = "recbole==1.2.1"
RECBOLE_DIR = "recbole/dataset_example/ml-100k/"
RECBOLE_FILES = ("ml-100k.inter", "ml-100k.user", "ml-100k.item")
PIP_TIMEOUT_S = 120
RECORD = ".jaxrec-fetch.json"
# sha256 of files whose content is known in advance; other files are checked against RECORD.
PINNED_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
}


@dataclasses.dataclass(frozen=True)
class MovieLens:
    ratings_file: str  # the file whose sha256 marks a complete copy
    zip_md5: str | None  # GroupLens's published md5; None where the zip changes over time


DATASETS = {
    "ml-100k": MovieLens("u.data", "0e33842e24a9c977be4e0107933c0723"),
    "ml-1m": MovieLens("ratings.dat", "c4d9eecfca2ab87c1945afe126590906"),
    "ml-20m": MovieLens("ratings.csv", "cd245b17a1ae2cc31bb14903e1204af3"),
    "ml-25m": MovieLens("ratings.csv", "6b51fb2759a8657d3bfcbfc42b592ada"),
    "ml-latest-small": MovieLens("ratings.csv", None),
}
# A source writes a data set's files into an empty folder and returns its ratings file name.
Source = Callable[[str, Path], str]


def default_data_dir() -> Path:
    if configured := os.environ.get("JAXREC_DATA_DIR"):
        return Path(os.path.expanduser(configured))
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "jaxrec"


def canonical_name(name: str) -> str:
    """'ml100k', 'ML-100K' and 'ml_100k' all mean 'ml-100k'."""
    by_key = {key.replace("-", ""): key for key in DATASETS}
    key = name.lower().replace("-", "").replace("_", "")
    if key not in by_key:
        raise JaxrecError(f"cannot fetch unknown data set '{name}' (known: {', '.join(DATASETS)})")
    return by_key[key]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _extract_flat(archive: Path, folder: str, dest: Path, only: tuple[str, ...] = ()) -> None:
    """Copy the files directly under `folder` in a zip (or wheel) into `dest`.

    Reading a member checks its CRC-32, so a corrupt archive fails here (zipfile.BadZipFile).
    """
    with zipfile.ZipFile(archive) as zf:
        names = [m.removeprefix(folder) for m in zf.namelist() if m.startswith(folder)]
        wanted = [n for n in names if n and "/" not in n and (not only or n in only)]
        if not wanted:
            raise JaxrecError(f"{archive.name} has no files under {folder}")
        for name in wanted:
            with zf.open(folder + name) as src, open(dest / name, "wb") as out:
                shutil.copyfileobj(src, out)


def download_grouplens(name: str, staging: Path) -> str:
    """The official zip, streamed to a temporary file next to `staging`, md5-checked, unpacked."""
    spec, url = DATASETS[name], f"{GROUPLENS_URL}/{name}.zip"
    handle, partial = tempfile.mkstemp(prefix=f".{name}-", suffix=".zip.part", dir=staging.parent)
    try:
        md5 = hashlib.md5()
        with (
            os.fdopen(handle, "wb") as out,
            urllib.request.urlopen(url, timeout=GROUPLENS_TIMEOUT_S) as response,
        ):
            for block in iter(lambda: response.read(1 << 20), b""):
                md5.update(block)
                out.write(block)
        if spec.zip_md5 and md5.hexdigest() != spec.zip_md5:
            raise JaxrecError(f"md5 {md5.hexdigest()} is not the published {spec.zip_md5}")
        _extract_flat(Path(partial), f"{name}/", staging)
    finally:
        os.unlink(partial)
    return spec.ratings_file


def extract_from_recbole_wheel(name: str, staging: Path) -> str:
    """ml-100k as RecBole's atomic files, from the recbole wheel that `pip download` fetches."""
    with tempfile.TemporaryDirectory(prefix=".pip-", dir=staging.parent) as wheel_dir:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   RECBOLE_WHEEL, "-d", wheel_dir]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        wheels = list(Path(wheel_dir).glob("recbole-*.whl"))
        if done.returncode or not wheels:
            last = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise JaxrecError(f"pip download {RECBOLE_WHEEL} failed: {last}")
        _extract_flat(wheels[0], RECBOLE_DIR, staging, only=RECBOLE_FILES)
    return "ml-100k.inter"


def _sources(name: str) -> list[tuple[str, Source]]:
    """Looked up at call time, so tests can replace the source functions."""
    sources = [(f"GroupLens {GROUPLENS_URL}/{name}.zip", download_grouplens)]
    if name == "ml-100k":
        sources.append((f"PyPI wheel {RECBOLE_WHEEL} (pip download)", extract_from_recbole_wheel))
    return sources


def _read_record(folder: Path) -> dict | None:
    try:
        return json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None


def is_cached(folder: Path) -> bool:
    """True when `folder` holds a complete fetch whose ratings file still has its checksum.

    A folder with files but no record was put there by hand and is trusted as it is.
    """
    record = _read_record(folder)
    if record is None:
        return folder.is_dir() and any(folder.iterdir())
    ratings = folder / record.get("file", "")
    expected = PINNED_SHA256.get(ratings.name, record.get("sha256"))
    return ratings.is_file() and _sha256(ratings) == expected


def _replace_folder(staging: Path, target: Path) -> None:
    """Swap `staging` in for `target`; the old copy is renamed away before it is deleted."""
    if target.exists():
        stale = Path(tempfile.mkdtemp(prefix=f".{target.name}-", suffix=".old", dir=target.parent))
        os.replace(target, stale / target.name)
        os.replace(staging, target)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.replace(staging, target)


def _install(label: str, source: Source, name: str, target: Path) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", suffix=".partial", dir=target.parent))
    try:
        ratings_file = source(name, staging)
        digest = _sha256(staging / ratings_file)
        pinned = PINNED_SHA256.get(ratings_file, digest)
        if digest != pinned:
            raise JaxrecError(f"sha256 of {ratings_file} is {digest}, expected {pinned}")
        record = {"source": label, "file": ratings_file, "sha256": digest}
        (staging / RECORD).write_text(json.dumps(record, indent=1) + "\n")
        _replace_folder(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch(name: str, data_dir: Path | None = None) -> Path:
    """The folder holding data set `name`, downloading it first unless a valid copy is cached."""
    name = canonical_name(name)
    cache = Path(data_dir) if data_dir else default_data_dir()
    target = cache / name
    if is_cached(target):
        return target
    cache.mkdir(parents=True, exist_ok=True)
    failures = []
    for label, source in _sources(name):
        log.info("fetching %s from %s", name, label)
        try:
            _install(label, source, name, target)
        except Exception as err:  # each source's failure is reported, then the next is tried
            failures.append(f"{label}: {type(err).__name__}: {err}")
            log.warning("fetch failed: %s", failures[-1])
            continue
        log.info("%s is in %s", name, target)
        return target
    raise JaxrecError(f"could not fetch {name} into {cache}; tried " + "; ".join(failures))


def ensure_dataset(name: str, data_dir: Path | None = None) -> Path:
    """What training calls with the configured data-set name: the cached folder, fetched once."""
    return fetch(name, data_dir)
