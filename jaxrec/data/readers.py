"""Readers: turn the files of each supported format into a `RawData`, and nothing more.

Readers fail loudly only on structural problems the user must fix (a missing file, an empty
file, a missing column, a row with the wrong number of fields). A bad value inside a
well-formed row (a non-numeric rating, an empty id) is kept as NaN / "" so that `preprocess`
can drop and count it, pointing at the source line.
"""

from __future__ import annotations

import csv
import functools
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from jaxrec.data.types import RawData
from jaxrec.errors import JaxrecError

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
NO_GENRES = "(no genres listed)"  # ml-20m / ml-25m / ml-latest spelling of an empty list
RECBOLE_TYPES = ("token", "float", "token_seq", "float_seq")
_SEP_BY_SUFFIX = {".csv": ",", ".tsv": "\t", ".txt": "\t"}
_UNIT_SEP = "\x1f"  # stands in for "::" so the fast C parser can read ml-1m files
_PARSER_ERROR = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
_YEAR_IN_TITLE = r"\((\d{4})\)\s*$"
_MAGIC = {
    b"\x1f\x8b": "gzip-compressed",
    b"BZh": "bzip2-compressed",
    b"\xfd7zXZ\x00": "xz-compressed",
    b"\x28\xb5\x2f\xfd": "zstd-compressed",
    b"PK\x03\x04": "a zip archive",
    b"PAR1": "a Parquet file",
}


def _text_encoding(encoding: str) -> str:
    """UTF-8 files may start with a byte-order mark (Excel writes one); it is not part of a name."""
    return "utf-8-sig" if encoding.lower().replace("_", "-") == "utf-8" else encoding


def _check_plain_text(path: Path) -> None:
    """A compressed or binary file is named as such, instead of showing its bytes as column names."""
    with open(path, "rb") as file:
        head = file.read(8)
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            hint = "decompress it first" if "compressed" in kind or "zip" in kind else "name it .parquet"
            raise JaxrecError(f"{path}: is {kind}, not a text file of fields; {hint}")


def _file_errors(read):
    """A reader whose files cannot be opened (no permission, a directory, ...) fails in one line
    naming the file, like every other structural problem."""

    @functools.wraps(read)
    def wrapped(*args, **kwargs):
        try:
            return read(*args, **kwargs)
        except OSError as err:
            where = err.filename or (args[0] if args else "data file")
            raise JaxrecError(f"{where}: cannot read: {err.strerror or err}") from None

    return wrapped


# ---------------------------------------------------------------------------- low-level parsing


def _require_files(root: Path, fmt: str, needed: tuple[str, ...]) -> None:
    """Name every file the format needs, so one error tells the user what to put where."""
    for name in needed:
        if not (root / name).is_file():
            raise JaxrecError(f"{root / name} not found: the {fmt} format needs {', '.join(needed)} in {root}")


def _read_text(path: Path, encoding: str) -> str:
    try:
        return path.read_text(encoding=_text_encoding(encoding))
    except UnicodeDecodeError as err:
        raise JaxrecError(f"{path}: not valid {encoding} text ({err.reason} at byte {err.start})") from None


def _read_header(path: Path, sep: str, encoding: str) -> list[str]:
    """The header fields; an empty file is an error here because nothing else could explain it."""
    _check_plain_text(path)
    with open(path, encoding=_text_encoding(encoding), errors="replace", newline="") as file:
        first = file.readline().rstrip("\r\n")
    if not first.strip():
        raise JaxrecError(f"{path}: file is empty (expected a header line)")
    names = [field.strip() for field in next(csv.reader([first], delimiter=sep))]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise JaxrecError(f"{path}: the header names column(s) {', '.join(map(repr, repeated))} more than once")
    return names


def _count_fields(text: str, sep: str, quoted: bool) -> int:
    return len(next(csv.reader([text], delimiter=sep))) if quoted else text.count(sep) + 1


def _field_error(path: Path, line: int, names: list[str], sep: str, found: int) -> JaxrecError:
    shown = {"\t": "tab", _UNIT_SEP: "'::'"}.get(sep, repr(sep))
    return JaxrecError(
        f"{path}: line {line}: expected {len(names)} {shown}-separated fields ({', '.join(names)}), found {found}"
    )


def _lines_at(path: Path, encoding: str, wanted: set[int]) -> dict[int, str]:
    """The raw text of a few lines, read lazily: only needed when a row looks short."""
    found = {}
    with open(path, encoding=_text_encoding(encoding), errors="replace") as file:
        for number, text in enumerate(file, start=1):
            if number in wanted:
                found[number] = text.rstrip("\r\n").replace("::", _UNIT_SEP)
                if len(found) == len(wanted):
                    break
    return found


def _drop_blank_lines(df, path, names, sep, encoding, quoted) -> pd.DataFrame:
    """Skip blank lines and fail on short rows.

    pandas pads a short row with "" exactly like an empty last value, so rows ending in "" are
    re-checked against their raw text (rare: clean files never end a row with an empty field).
    """
    suspects = df.loc[df[names[-1]] == "", "line"]
    if suspects.empty:
        return df
    blank = []
    for line, text in sorted(_lines_at(path, encoding, set(suspects)).items()):
        if not text.strip():
            blank.append(line)
        elif (found := _count_fields(text, sep, quoted)) != len(names):
            raise _field_error(path, line, names, sep, found)
    return df[~df["line"].isin(blank)].reset_index(drop=True)


def _read_rows(
    path: Path, sep: str, names: list[str], *, header: bool = False, encoding: str = "utf-8", quoted: bool = False
) -> pd.DataFrame:
    """All fields as str columns named `names`, plus `line`: the 1-based line in `path`."""
    _check_plain_text(path)
    source: Path | io.StringIO = path
    if sep == "::":
        source, sep = io.StringIO(_read_text(path, encoding).replace("::", _UNIT_SEP)), _UNIT_SEP
    try:
        df = pd.read_csv(
            source, sep=sep, header=None, names=names, skiprows=int(header), dtype=str,
            keep_default_na=False, skip_blank_lines=False, encoding=_text_encoding(encoding),
            quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE,
        )  # fmt: skip
    except pd.errors.EmptyDataError:
        df = pd.DataFrame({name: pd.Series(dtype=str) for name in names})
    except pd.errors.ParserError as err:
        match = _PARSER_ERROR.search(str(err))
        if not match:
            raise JaxrecError(f"{path}: cannot parse: {err}") from None
        raise _field_error(path, int(match[2]), names, sep, int(match[3])) from None
    except UnicodeDecodeError as err:
        raise JaxrecError(f"{path}: not valid {encoding} text ({err.reason})") from None
    df["line"] = np.arange(1 + header, 1 + header + len(df), dtype=np.int64)
    df = _drop_blank_lines(df, path, names, sep, encoding, quoted)
    if df.empty:
        raise JaxrecError(f"{path}: {'header only, ' if header else ''}no data rows")
    return df


def _require_columns(path: Path, found: list[str], required: list[str]) -> None:
    for column in required:
        if column not in found:
            raise JaxrecError(f"{path}: missing column '{column}' (found: {', '.join(found) or 'none'})")


def _numeric(values: pd.Series) -> pd.Series:
    """float64, NaN where a value is not a number. The strict cast is tried first because it
    is several times faster than `to_numeric` on clean columns."""
    stripped = values.str.strip()
    try:
        return stripped.astype(np.float64)
    except ValueError:
        return pd.to_numeric(stripped, errors="coerce").astype(np.float64)


def _seconds(values: pd.Series) -> pd.Series:
    """Timestamps as float seconds: numbers as they are, or dates when no value is a number."""
    numbers = _numeric(values)
    if numbers.notna().any() or not values.str.strip().ne("").any():
        return numbers
    dates = pd.to_datetime(values.str.strip(), errors="coerce", utc=True, format="mixed")
    return (dates - pd.Timestamp(0, tz="UTC")).dt.total_seconds()


def _interactions(df: pd.DataFrame, user: str, item: str, rating: str | None, timestamp: str | None) -> pd.DataFrame:
    """The `RawData.interactions` frame from str columns; absent columns become NaN."""
    missing = pd.Series(np.nan, index=df.index)
    return pd.DataFrame({
        "user_id": df[user].str.strip(),
        "item_id": df[item].str.strip(),
        "rating": _numeric(df[rating]) if rating else missing,
        "timestamp": _seconds(df[timestamp]) if timestamp else missing,
        "line": df["line"].to_numpy(np.int64),
    })  # fmt: skip


def _year_from_title(titles: pd.Series) -> pd.Series:
    return pd.to_numeric(titles.str.extract(_YEAR_IN_TITLE)[0], errors="coerce").astype(float)


def _split_genres(genres: pd.Series, sep: str) -> pd.Series:
    return genres.map(lambda text: [g for g in text.strip().split(sep) if g and g != NO_GENRES])


def _users(df: pd.DataFrame) -> pd.DataFrame:
    """The users side table from whichever of age, gender, occupation, zip the file has."""
    users = pd.DataFrame(index=pd.Index(df["user_id"].str.strip(), name="user_id"))
    for column in ("gender", "occupation", "zip"):
        if column in df:
            users[column] = df[column].str.strip().to_numpy()
    if "age" in df:
        users["age"] = pd.array(_numeric(df["age"]).round(), dtype="Int64")
    return users


def _items(ids: pd.Series, titles: pd.Series, genres: pd.Series, years: pd.Series) -> pd.DataFrame:
    return pd.DataFrame(
        {"title": titles.to_numpy(), "genres": genres.to_numpy(), "year": years.to_numpy()},
        index=pd.Index(ids.str.strip(), name="item_id"),
    )


# ---------------------------------------------------------------------------- MovieLens formats


def _ml100k_genres(root: Path) -> tuple[str, ...]:
    """Genre names in flag order: u.genre when shipped, else the 19 documented names."""
    path = root / "u.genre"
    if not path.is_file():
        return ML100K_GENRES
    table = _read_rows(path, "|", ["genre", "index"], encoding="latin-1")
    return tuple(table.sort_values("index", key=_numeric)["genre"].str.strip())


@_file_errors
def read_ml100k(root: Path) -> RawData:
    """MovieLens 100K as GroupLens ships it: u.data, u.user, u.item (+ optional u.genre)."""
    root = Path(root)
    _require_files(root, "ml-100k", ("u.data", "u.user", "u.item"))
    data = _read_rows(root / "u.data", "\t", ["user_id", "item_id", "rating", "timestamp"])
    user_df = _read_rows(root / "u.user", "|", ["user_id", "age", "gender", "occupation", "zip"])
    genres = _ml100k_genres(root)
    names = ["item_id", "title", "release_date", "video_release_date", "url", *genres]
    item_df = _read_rows(root / "u.item", "|", names, encoding="latin-1")
    flags = item_df[list(genres)].apply(lambda col: col.str.strip() == "1").to_numpy()
    genre_lists = pd.Series([list(np.array(genres)[row]) for row in flags], dtype=object)
    years = _numeric(item_df["release_date"].str.strip().str[-4:])
    return RawData(
        interactions=_interactions(data, "user_id", "item_id", "rating", "timestamp"),
        source=str(root / "u.data"),
        columns=("rating", "timestamp"),
        users=_users(user_df),
        items=_items(item_df["item_id"], item_df["title"].str.strip(), genre_lists, years),
    )


@_file_errors
def read_ml1m(root: Path) -> RawData:
    """MovieLens 1M: `::`-separated ratings.dat, users.dat, movies.dat (latin-1).

    users.dat's age is already MovieLens's bucket code (1, 18, 25, ..., 56) and occupation its
    numeric code (kept as a str token).
    """
    root = Path(root)
    _require_files(root, "ml-1m", ("ratings.dat", "users.dat", "movies.dat"))
    data = _read_rows(root / "ratings.dat", "::", ["user_id", "item_id", "rating", "timestamp"])
    user_names = ["user_id", "gender", "age", "occupation", "zip"]
    user_df = _read_rows(root / "users.dat", "::", user_names)
    movies = _read_rows(root / "movies.dat", "::", ["item_id", "title", "genres"],
                        encoding="latin-1")  # fmt: skip
    titles = movies["title"].str.strip()
    return RawData(
        interactions=_interactions(data, "user_id", "item_id", "rating", "timestamp"),
        source=str(root / "ratings.dat"),
        columns=("rating", "timestamp"),
        users=_users(user_df),
        items=_items(movies["item_id"], titles, _split_genres(movies["genres"], "|"),
                     _year_from_title(titles)),
    )  # fmt: skip


def _read_csv_with_header(path: Path, required: list[str], sep: str = ",") -> pd.DataFrame:
    header = _read_header(path, sep, "utf-8")
    _require_columns(path, header, required)
    return _read_rows(path, sep, header, header=True, quoted=True)


@_file_errors
def read_ml_csv(root: Path) -> RawData:
    """MovieLens 20M / 25M / latest: ratings.csv and movies.csv, both with a header."""
    root = Path(root)
    _require_files(root, "MovieLens csv (ml-20m, ml-25m, ml-latest)", ("ratings.csv", "movies.csv"))
    data = _read_csv_with_header(root / "ratings.csv", ["userId", "movieId", "rating", "timestamp"])
    movies = _read_csv_with_header(root / "movies.csv", ["movieId", "title", "genres"])
    titles = movies["title"].str.strip()
    return RawData(
        interactions=_interactions(data, "userId", "movieId", "rating", "timestamp"),
        source=str(root / "ratings.csv"),
        columns=("rating", "timestamp"),
        items=_items(movies["movieId"], titles, _split_genres(movies["genres"], "|"),
                     _year_from_title(titles)),
    )  # fmt: skip


# ---------------------------------------------------------------------------- RecBole atomic files


def _read_atomic(path: Path, required: list[str]) -> pd.DataFrame:
    """A RecBole atomic file; the `:type` suffixes are checked, then dropped from column names."""
    fields = _read_header(path, "\t", "utf-8")
    names = []
    for field in fields:
        name, _, kind = field.partition(":")
        if kind not in RECBOLE_TYPES:
            raise JaxrecError(
                f"{path}: line 1: header field '{field}' is not name:type with type one of {', '.join(RECBOLE_TYPES)}"
            )
        names.append(name)
    _require_columns(path, names, required)
    return _read_rows(path, "\t", names, header=True)


def _recbole_users(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    return _users(_read_atomic(path, ["user_id"]).rename(columns={"zip_code": "zip"}))


def _recbole_items(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    df = _read_atomic(path, ["item_id"])

    def column(name: str) -> pd.Series:
        return df[name] if name in df else pd.Series("", index=df.index, dtype=str)

    return _items(
        df["item_id"],
        column("movie_title").str.strip(),
        _split_genres(column("class"), " "),
        _numeric(column("release_year")),
    )


@_file_errors
def read_recbole(root: Path, name: str) -> RawData:
    """RecBole atomic files `{name}.inter` (+ optional `.user`, `.item`), tab-separated.

    The interaction columns used are user_id, item_id and, when present, rating and timestamp.
    """
    root = Path(root)
    _require_files(root, f"RecBole atomic ({name})", (f"{name}.inter",))
    inter = _read_atomic(root / f"{name}.inter", ["user_id", "item_id"])
    return RawData(
        interactions=_interactions(
            inter, "user_id", "item_id",
            "rating" if "rating" in inter else None,
            "timestamp" if "timestamp" in inter else None,
        ),
        source=str(root / f"{name}.inter"),
        columns=tuple(c for c in ("rating", "timestamp") if c in inter),
        users=_recbole_users(root / f"{name}.user"),
        items=_recbole_items(root / f"{name}.item"),
    )  # fmt: skip


# ---------------------------------------------------------------------------- generic files


def _check_parquet_types(path: Path, schema: pa.Schema, columns: list[str]) -> None:
    """Ids, ratings and timestamps are scalars: a list, struct or bool column is not one of them."""
    for name in columns:
        kind = schema.field(name).type
        nested = pa.types.is_nested(kind) or pa.types.is_dictionary(kind) and pa.types.is_nested(kind.value_type)
        if nested or pa.types.is_boolean(kind):
            raise JaxrecError(
                f"{path}: column '{name}' holds {kind} values; ids, ratings and timestamps must be "
                "scalar strings or numbers"
            )


def _parquet_rows(path: Path, columns: list[str]) -> pd.DataFrame:
    """Parquet columns as str, like the text readers give them; `line` is the 1-based row."""
    try:
        schema = pq.read_schema(path)
        _require_columns(path, schema.names, columns)
        _check_parquet_types(path, schema, columns)
        df = pd.read_parquet(path, columns=columns)
    except pa.ArrowException as err:
        raise JaxrecError(f"{path}: not a readable Parquet file ({str(err).splitlines()[0]})") from None
    if df.empty:
        raise JaxrecError(f"{path}: no data rows")
    out = pd.DataFrame({name: _as_str(df[name]) for name in columns})
    out["line"] = np.arange(1, len(df) + 1, dtype=np.int64)
    return out


def _as_str(values: pd.Series) -> pd.Series:
    """Str values; integral floats (int ids with nulls) lose their '.0', nulls become ""."""
    if pd.api.types.is_float_dtype(values) and (values.dropna() % 1 == 0).all():
        values = values.astype("Int64")
    return values.astype(str).where(values.notna(), "")


@_file_errors
def read_interactions(
    path: Path,
    *,
    sep: str | None = None,
    user_col: str = "user_id",
    item_col: str = "item_id",
    rating_col: str | None = None,
    timestamp_col: str | None = None,
) -> RawData:
    """Any interaction log: CSV / TSV / TXT with a header, or Parquet. Ids stay str tokens."""
    path = Path(path)
    if not path.is_file():
        raise JaxrecError(f"{path} not found: expected a .csv/.tsv/.txt/.parquet interactions file")
    columns = [c for c in (user_col, item_col, rating_col, timestamp_col) if c]
    if path.suffix == ".parquet":
        df = _parquet_rows(path, columns)
    else:
        sep = sep or _SEP_BY_SUFFIX.get(path.suffix)
        if sep is None:
            raise JaxrecError(
                f"{path}: cannot infer the separator from '{path.suffix}' (use .csv, .tsv, .txt, .parquet or pass sep)"
            )
        df = _read_csv_with_header(path, columns, sep)
    given = tuple(name for name, column in (("rating", rating_col), ("timestamp", timestamp_col)) if column)
    return RawData(_interactions(df, user_col, item_col, rating_col, timestamp_col), str(path), columns=given)


def read_dataset(name: str, root: Path) -> RawData:
    """Read a named data set from `root`; names ignore case, '-' and '_' (ml-100k == ml100k)."""
    root = Path(root)
    key = name.lower().replace("-", "").replace("_", "")
    if key == "ml100k":
        if not (root / "u.data").is_file() and (root / "ml-100k.inter").is_file():
            return read_recbole(root, "ml-100k")
        return read_ml100k(root)
    if key == "ml1m":
        return read_ml1m(root)
    if key in ("ml20m", "ml25m", "mllatest", "mllatestsmall"):
        return read_ml_csv(root)
    raise JaxrecError(f"unknown data set '{name}' (known: ml100k, ml1m, ml20m, ml25m, mllatest)")
