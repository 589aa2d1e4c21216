"""Fetching without the network: every source is replaced by a local fake."""

import hashlib
import io
import subprocess
import zipfile
from pathlib import Path

import pytest

from jaxrec.data import __main__ as cli
from jaxrec.data import fetch
from jaxrec.errors import JaxrecError

RATINGS = b"1\t1\t5\t100\n"


def _fake_source(files: dict[str, bytes], calls: list, ratings_file: str = "u.data"):
    def source(name, staging):
        calls.append(name)
        for file, content in files.items():
            (staging / file).write_bytes(content)
        return ratings_file

    return source


def _failing(message: str):
    def source(name, staging):
        (staging / "u.data").write_bytes(b"half a file")
        raise OSError(message)

    return source


@pytest.fixture
def calls(monkeypatch) -> list:
    """Both real sources replaced: GroupLens gives a one-line u.data, RecBole fails."""
    made = []
    monkeypatch.setattr(fetch, "download_grouplens", _fake_source({"u.data": RATINGS}, made))
    monkeypatch.setattr(fetch, "extract_from_recbole_wheel", _failing("pip is offline"))
    return made


def _everything_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_fetch_writes_files_and_record_then_uses_the_cache(tmp_path, calls):
    folder = fetch.fetch("ml100k", tmp_path)
    assert folder == tmp_path / "ml-100k" and (folder / "u.data").read_bytes() == RATINGS
    assert _everything_in(tmp_path) == ["ml-100k", "ml-100k/.jaxrec-fetch.json", "ml-100k/u.data"]
    assert fetch.ensure_dataset("ml-100k", tmp_path) == folder
    assert calls == ["ml-100k"]  # the second call did not download again


def test_changed_cached_file_triggers_a_refetch(tmp_path, calls):
    folder = fetch.fetch("ml-100k", tmp_path)
    (folder / "u.data").write_bytes(b"edited\n")
    assert fetch.fetch("ml-100k", tmp_path) == folder
    assert (folder / "u.data").read_bytes() == RATINGS and calls == ["ml-100k", "ml-100k"]
    assert _everything_in(tmp_path) == ["ml-100k", "ml-100k/.jaxrec-fetch.json", "ml-100k/u.data"]


def test_interrupted_fetch_leaves_nothing_and_lists_every_source(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "download_grouplens", _failing("connection reset"))
    monkeypatch.setattr(fetch, "extract_from_recbole_wheel", _failing("pip is offline"))
    with pytest.raises(JaxrecError) as error:
        fetch.fetch("ml-100k", tmp_path)
    message = str(error.value)
    assert message.startswith(f"could not fetch ml-100k into {tmp_path}; tried GroupLens https://")
    assert "ml-100k.zip: OSError: connection reset" in message
    assert "PyPI wheel recbole==1.2.1 (pip download): OSError: pip is offline" in message
    assert _everything_in(tmp_path) == []


class _BrokenResponse(io.BytesIO):
    """An HTTP response that dies after the first block."""

    def read(self, size=-1):
        if self.tell():
            raise ConnectionResetError("peer went away")
        return super().read(1 << 20)


def test_interrupted_download_removes_the_partial_zip(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch.urllib.request, "urlopen",
                        lambda url, timeout: _BrokenResponse(b"x" * (3 << 20)))  # fmt: skip
    with pytest.raises(JaxrecError, match="ConnectionResetError: peer went away"):
        fetch.fetch("ml-1m", tmp_path)
    assert _everything_in(tmp_path) == []


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def test_grouplens_zip_is_md5_checked_and_unpacked_flat(tmp_path, monkeypatch):
    archive = _zip({"ml-1m/ratings.dat": b"1::1::5::1\n", "ml-1m/README": b"hi",
                    "ml-1m/sub/skip.txt": b"", "other/x": b""})  # fmt: skip
    monkeypatch.setattr(fetch.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(archive))
    with pytest.raises(JaxrecError, match="is not the published c4d9eecf"):
        fetch.fetch("ml-1m", tmp_path)
    spec = fetch.MovieLens("ratings.dat", hashlib.md5(archive).hexdigest())
    monkeypatch.setitem(fetch.DATASETS, "ml-1m", spec)
    folder = fetch.fetch("ml-1m", tmp_path)
    assert _everything_in(folder) == [".jaxrec-fetch.json", "README", "ratings.dat"]


def test_recbole_wheel_files_must_match_the_pinned_sha256(tmp_path, monkeypatch):
    wheel = _zip({f"{fetch.RECBOLE_DIR}{name}": b"not the real file" for name in
                  (*fetch.RECBOLE_FILES, "ml-100k.kg")})  # fmt: skip

    def fake_pip(command, **kwargs):
        (Path(command[-1]) / "recbole-1.2.1-py3-none-any.whl").write_bytes(wheel)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(fetch, "download_grouplens", _failing("no route to host"))
    monkeypatch.setattr(fetch.subprocess, "run", fake_pip)
    with pytest.raises(JaxrecError, match=r"sha256 of ml-100k\.inter is \w+, expected 4edb74e2"):
        fetch.fetch("ml-100k", tmp_path)
    assert _everything_in(tmp_path) == []
    monkeypatch.setitem(fetch.PINNED_SHA256, "ml-100k.inter",
                        hashlib.sha256(b"not the real file").hexdigest())  # fmt: skip
    folder = fetch.fetch("ml-100k", tmp_path)
    assert _everything_in(folder) == [".jaxrec-fetch.json", *sorted(fetch.RECBOLE_FILES)]


def test_hand_placed_folder_without_record_is_trusted(tmp_path, calls):
    (tmp_path / "ml-100k").mkdir()
    (tmp_path / "ml-100k" / "u.data").write_bytes(b"mine\n")
    assert fetch.fetch("ml-100k", tmp_path).joinpath("u.data").read_bytes() == b"mine\n"
    assert calls == []


def test_cache_dir_follows_the_environment(monkeypatch):
    monkeypatch.setenv("JAXREC_DATA_DIR", "~/data")
    assert fetch.default_data_dir() == Path.home() / "data"
    monkeypatch.delenv("JAXREC_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    assert fetch.default_data_dir() == Path("/xdg/jaxrec")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert fetch.default_data_dir() == Path.home() / ".cache" / "jaxrec"


def test_unknown_name_and_command_line(tmp_path, calls, capsys):
    with pytest.raises(JaxrecError, match="unknown data set 'ml-7k'"):
        fetch.fetch("ml-7k", tmp_path)
    cli.main(["fetch", "ml-100k", "--data-dir", str(tmp_path)])
    assert capsys.readouterr().out.strip() == str(tmp_path / "ml-100k")
