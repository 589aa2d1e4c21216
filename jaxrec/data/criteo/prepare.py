"""`python -m jaxrec.data prepare criteo FILE_OR_DIR... --out DIR`: Criteo logs to memory-mappable shards.

Passes, each a list of independent tasks that a process pool (or a job array) runs:
    plan    per input file: size and sha256; per piece (a <= --piece-mb byte range of whole
            lines; a .gz file is one piece): its line count. Fixes the split. -> plan.json
    count   per piece: how often each category occurs in the training lines    -> work/count-P.npz
    merge   per categorical feature: the values seen >= --min-count times     -> vocab/Cj.npy
            (skipped with --hash-buckets)
    encode  per piece and split: label uint8 [n], dense float32 [n, 13], ids int32 [n, 26] as raw
            little-endian arrays, then a manifest                             -> shards/
    finish  metadata.json: counts, vocabulary sizes, split, inputs, options, skipped lines
Every output is written under a temporary name and renamed, so a killed prepare leaves only
whole files, and a rerun skips every task whose output exists.

Why raw arrays and not Parquet: a training batch gathers rows at random; a memory-mapped raw
array reads a row in place (one page, no decoding), where Parquet decodes a whole compressed
column chunk of a row group to reach one row.

Ids: with --min-count N, id 0 is shared by missing and rare values (seen < N times in the
training lines) and kept values get 1..K in the order of their hex value; with --hash-buckets N,
id 0 is missing and a value v gets 1 + v mod (N - 1).
"""

from __future__ import annotations

import json
import logging
import os
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from jaxrec.data.criteo.inputs import (
    check_contents,
    check_out,
    check_unchanged,
    expand_inputs,
    is_gzip,
    read_blocks,
    resolve,
    sha256_of,
)
from jaxrec.data.criteo.parse import NUM_CAT, NUM_INT, dense_features, describe_bad_line, parse_lines
from jaxrec.data.criteo.split import SPLITS, assign_splits, split_plan
from jaxrec.errors import JaxrecError

log = logging.getLogger("jaxrec.data")

STAGES = ("all", "plan", "count", "merge", "encode")
MAX_SKIPPED_EXAMPLES = 10  # malformed lines quoted in metadata.json under --on-bad-line skip
COLUMNS = {"label": ("uint8", []), "dense": ("float32", [NUM_INT]), "sparse": ("int32", [NUM_CAT])}


def prepare(
    inputs: list[str],
    out: Path,
    options: dict,
    *,
    workers: int = 1,
    stage: str = "all",
    task_index: int = 0,
    num_tasks: int = 1,
) -> dict | None:
    """Run `stage` (or every pass) into `out`; returns the metadata once finished.

    Everything that can be checked before the work starts is: --out, each input (present,
    readable, not empty, not given twice, its compression), and, on a rerun, that no input
    changed since plan.json was written (jaxrec/data/criteo/inputs.py)."""
    out = resolve(out, "--out ")
    check_out(out)
    files = expand_inputs(inputs)
    try:
        return _run_passes(out, files, options, _Runner(workers, task_index, num_tasks), stage)
    except OSError as err:  # a full disk, an input deleted midway, ...
        raise JaxrecError(f"prepare stopped: {err}; finished pieces are kept, so rerun once it is fixed") from None
    except BrokenProcessPool:
        raise JaxrecError(
            "prepare stopped: a worker process died (out of memory?); rerun with fewer --workers or a smaller "
            "--piece-mb (finished pieces are kept)"
        ) from None


def _run_passes(out: Path, files: list[Path], options: dict, run: _Runner, stage: str) -> dict | None:
    plan = _load_or_make_plan(out, files, options, run)
    if stage == "plan":
        return None
    pieces, features = run.share(range(len(plan["pieces"]))), run.share(range(NUM_CAT))
    if options["min_count"] is not None and stage in ("all", "count"):
        done = all(_vocab_done(out, j) for j in range(NUM_CAT))
        run.tasks(_count_piece, [(out, plan, p) for p in pieces if not (done or _count_done(out, p))])
    if options["min_count"] is not None and stage in ("all", "merge"):
        todo = [j for j in features if not _vocab_done(out, j)]
        _require(stage, "count", [_count_path(out, p) for p in range(len(plan["pieces"]))] if todo else [])
        run.tasks(_merge_feature, [(out, plan, j) for j in todo])
    if stage in ("all", "encode"):
        if options["min_count"] is not None:
            _require(stage, "merge", [_vocab_path(out, j) for j in range(NUM_CAT)])
        run.tasks(_encode_piece, [(out, plan, p) for p in pieces if not _piece_done(out, p)])
    if stage != "all":
        return None
    _require(stage, "encode", [_manifest_path(out, p) for p in range(len(plan["pieces"]))])
    check_unchanged(out, plan, files)  # a file edited while it was being encoded
    return _finish(out, plan)


def _require(stage: str, before: str, paths: list[Path]) -> None:
    """Stop in one line when a pass's inputs are missing (a job array run out of order)."""
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise JaxrecError(
            f"--stage {stage} needs --stage {before} to finish first: {len(missing)} of its outputs "
            f"are missing, e.g. {missing[0]}"
        )


class _Runner:
    """Runs work inline or on a process pool; `share` picks this task's items (every n-th from i)."""

    def __init__(self, workers: int, task_index: int, num_tasks: int):
        self.workers, self.task_index, self.num_tasks = workers, task_index, num_tasks

    def share(self, items) -> list:
        """This task's share of a pass's full list of work items (the same list in every task)."""
        return list(items)[self.task_index :: self.num_tasks]

    def tasks(self, fn, args: list) -> list:
        if self.workers <= 1 or len(args) <= 1:
            return [fn(*a) for a in args]
        with ProcessPoolExecutor(min(self.workers, len(args)), mp_context=get_context("spawn")) as pool:
            return list(pool.map(fn, *zip(*args)))


# ---- plan ----------------------------------------------------------------------------------


def _load_or_make_plan(out: Path, files: list[Path], options: dict, run: _Runner) -> dict:
    identity = {"inputs": [[str(f), f.stat().st_size] for f in files], "options": options}
    plan_path = out / "plan.json"
    if plan_path.exists():
        try:
            plan = json.loads(plan_path.read_text())
            recorded = {"paths": [p for p, _ in plan["identity"]["inputs"]], "options": plan["identity"]["options"]}
        except (ValueError, KeyError, TypeError) as err:
            raise JaxrecError(f"{plan_path} is damaged ({err}); delete {out} and prepare again") from None
        if recorded != {"paths": [str(f) for f in files], "options": options}:
            raise JaxrecError(
                f"{out} holds a prepare of other inputs or options (see {plan_path}); "
                "use another --out, or delete the folder"
            )
        check_unchanged(out, plan, files)
        return plan
    pieces = [piece for i, f in enumerate(files) for piece in _cut_pieces(i, f, int(options["piece_mb"] * 2**20))]
    stats = [f.stat() for f in files]
    # One pool pass: each file's sha256 (long, so first) next to every piece's line count.
    measured = run.tasks(_measure, [(files, i) for i in range(len(files))] + [(files, p) for p in pieces])
    hashes, lines = measured[: len(files)], measured[len(files) :]
    line_of_file = {i: 0 for i in range(len(files))}
    for piece, n in zip(pieces, lines):
        piece.update(first_line=line_of_file[piece["file"]], lines=n)
        line_of_file[piece["file"]] += n
    check_contents(files, hashes, line_of_file)
    offsets = np.r_[0, np.cumsum([line_of_file[i] for i in range(len(files))])].tolist()
    plan = {
        "identity": identity,
        "pieces": pieces,
        "file_first_line": offsets[:-1],
        "inputs": [
            {"path": str(f), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": h, "lines": line_of_file[i]}
            for i, (f, st, h) in enumerate(zip(files, stats, hashes))
        ],
        "split": split_plan(options, [line_of_file[i] for i in range(len(files))]),
    }
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise JaxrecError(f"--out {out}: cannot make the folder ({err.strerror})") from None
    write_atomic(plan_path, json.dumps(plan, indent=1).encode())
    log.info("plan: %d files, %d pieces, %d lines", len(files), len(pieces), offsets[-1])
    return plan


def _cut_pieces(file_index: int, path: Path, piece_bytes: int) -> list[dict]:
    """Byte ranges of whole lines, each about piece_bytes (a .gz file cannot be cut: one piece)."""
    size = path.stat().st_size
    if is_gzip(path) or size <= piece_bytes:
        return [{"file": file_index, "start": 0, "end": size}]
    bounds = [0]
    with open(path, "rb") as f:
        while bounds[-1] + piece_bytes < size:
            f.seek(bounds[-1] + piece_bytes - 1)
            position = f.tell()
            while (chunk := f.read(1 << 16)) and (newline := chunk.find(b"\n")) < 0:
                position += len(chunk)
            if not chunk or position + newline + 1 >= size:
                break
            bounds.append(position + newline + 1)
    bounds.append(size)
    return [{"file": file_index, "start": a, "end": b} for a, b in zip(bounds, bounds[1:])]


def _measure(files: list[Path], what: int | dict) -> str | int:
    """The sha256 of file `what` (an index), or the line count of piece `what` (a dict)."""
    if isinstance(what, dict):
        return sum(block.count(b"\n") for block in read_blocks(files[what["file"]], what))
    return sha256_of(files[what])


# ---- count and merge -----------------------------------------------------------------------


def _count_path(out: Path, piece: int) -> Path:
    return out / "work" / f"count-{piece:05d}.npz"


def _vocab_path(out: Path, feature: int) -> Path:
    return out / "vocab" / f"C{feature + 1:02d}.npy"


def _count_done(out: Path, piece: int) -> bool:
    """Whether the piece's counts exist and open (a damaged file is counted again)."""
    try:
        with np.load(_count_path(out, piece)) as counts:
            return len(counts.files) == 2 * NUM_CAT
    except (OSError, ValueError, zipfile.BadZipFile):
        return False


def _vocab_done(out: Path, feature: int) -> bool:
    """Whether the feature's vocabulary and its counts exist and open (header and size checked
    by the memory map, nothing read); a damaged one is merged again."""
    try:
        np.load(_vocab_path(out, feature), mmap_mode="r")
        return isinstance(json.loads(_vocab_path(out, feature).with_suffix(".json").read_text())["kept"], int)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _count_piece(out: Path, plan: dict, piece_index: int) -> None:
    pending = [[] for _ in range(NUM_CAT)]
    for parsed, split_of, _ in _parsed_blocks(plan, piece_index):
        train = split_of == 0
        for j in range(NUM_CAT):
            values, counts = np.unique(parsed.cats[train & ~parsed.cat_missing[:, j], j], return_counts=True)
            pending[j].append((values, counts))
            if len(pending[j]) > 8:
                pending[j] = [_sum_counts(pending[j])]
    arrays = {}
    for j in range(NUM_CAT):
        arrays[f"values_{j}"], arrays[f"counts_{j}"] = _sum_counts(pending[j])
    _count_path(out, piece_index).parent.mkdir(exist_ok=True)
    write_atomic(_count_path(out, piece_index), lambda f: np.savez(f, **arrays))


def _sum_counts(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct uint32 values, int64 total counts) of several (values, counts) pairs."""
    if not parts:
        return np.zeros(0, np.uint32), np.zeros(0, np.int64)
    values = np.concatenate([v for v, _ in parts])
    distinct, inverse = np.unique(values, return_inverse=True)
    return distinct, np.bincount(inverse, np.concatenate([c for _, c in parts]), len(distinct)).astype(np.int64)


def _merge_feature(out: Path, plan: dict, feature: int) -> None:
    parts = []
    for p in range(len(plan["pieces"])):
        with np.load(_count_path(out, p)) as counts:
            parts.append((counts[f"values_{feature}"], counts[f"counts_{feature}"]))
    values, counts = _sum_counts(parts)
    kept = values[counts >= plan["identity"]["options"]["min_count"]]
    _vocab_path(out, feature).parent.mkdir(exist_ok=True)
    write_atomic(_vocab_path(out, feature), lambda f: np.save(f, kept))
    write_atomic(
        _vocab_path(out, feature).with_suffix(".json"),
        json.dumps({"distinct_in_train": len(values), "kept": len(kept)}).encode(),
    )


# ---- encode --------------------------------------------------------------------------------


def _manifest_path(out: Path, piece: int) -> Path:
    return out / "shards" / f"piece-{piece:05d}.json"


def shard_file(out: Path, split: str, piece: int, column: str) -> Path:
    return out / "shards" / f"{split}-{piece:05d}.{column}"


def shard_bytes(column: str, rows: int) -> int:
    """The size of a column's shard file of `rows` rows."""
    dtype, shape = COLUMNS[column]
    return rows * np.dtype(dtype).itemsize * int(np.prod(shape))


def _piece_done(out: Path, piece: int) -> bool:
    """Whether the piece's manifest exists and every shard file has the size it states (a shard
    cut short or damaged after the fact is encoded again)."""
    try:
        rows = json.loads(_manifest_path(out, piece).read_text())["rows"]
        return all(
            shard_file(out, s, piece, c).stat().st_size == shard_bytes(c, rows[s]) for s in SPLITS for c in COLUMNS
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _encode_piece(out: Path, plan: dict, piece_index: int) -> None:
    started = time.perf_counter()
    options = plan["identity"]["options"]
    to_ids = _make_id_mapper(out, options)
    (out / "shards").mkdir(exist_ok=True)
    tmp = {(s, c): shard_file(out, s, piece_index, c).with_suffix(f".{c}.tmp") for s in SPLITS for c in COLUMNS}
    handles = {key: open(path, "wb") for key, path in tmp.items()}
    rows, positives, skipped = dict.fromkeys(SPLITS, 0), dict.fromkeys(SPLITS, 0), []
    try:
        for parsed, split_of, bad in _parsed_blocks(plan, piece_index):
            skipped += bad
            dense, sparse = dense_features(parsed.ints), to_ids(parsed.cats, parsed.cat_missing)
            for s, name in enumerate(SPLITS):
                mine = split_of == s
                parsed.label[mine].tofile(handles[name, "label"])
                dense[mine].tofile(handles[name, "dense"])
                sparse[mine].tofile(handles[name, "sparse"])
                rows[name] += int(mine.sum())
                positives[name] += int(parsed.label[mine].sum())
    finally:
        for handle in handles.values():
            handle.close()
    for (s, c), path in tmp.items():
        os.replace(path, shard_file(out, s, piece_index, c))
    manifest = {
        "piece": piece_index,
        "rows": rows,
        "positives": positives,
        "skipped_lines": len(skipped),
        "skipped_examples": skipped[:MAX_SKIPPED_EXAMPLES],
    }
    write_atomic(_manifest_path(out, piece_index), json.dumps(manifest).encode())
    piece = plan["pieces"][piece_index]
    log.info(
        "encoded piece %d: %d lines, %.1f MB/s",
        piece_index,
        piece["lines"],
        (piece["end"] - piece["start"]) / 1e6 / (time.perf_counter() - started),
    )


def _make_id_mapper(out: Path, options: dict):
    """(uint32 [n, C] values, bool [n, C] missing) -> int32 [n, C] ids."""
    if options["hash_buckets"] is not None:
        buckets = np.uint32(options["hash_buckets"] - 1)
        return lambda cats, missing: np.where(missing, 0, 1 + cats % buckets).astype(np.int32)
    vocabs = [np.load(_vocab_path(out, j)) for j in range(NUM_CAT)]

    def to_ids(cats, missing):
        ids = np.zeros(cats.shape, np.int32)
        for j, vocab in enumerate(vocabs):
            if len(vocab):
                position = np.minimum(np.searchsorted(vocab, cats[:, j]), len(vocab) - 1)
                ids[:, j] = np.where((vocab[position] == cats[:, j]) & ~missing[:, j], position + 1, 0)
        return ids

    return to_ids


def _parsed_blocks(plan: dict, piece_index: int):
    """(parsed lines, split code [n] per good line, ["file:line: problem", ...] skipped) per block;
    a malformed line stops with JaxrecError unless on_bad_line is skip."""
    piece = plan["pieces"][piece_index]
    path = plan["inputs"][piece["file"]]["path"]
    options = plan["identity"]["options"]
    line = piece["first_line"]  # lines of the file before this block
    for block in read_blocks(Path(path), piece):
        parsed = parse_lines(block)
        bad = []
        if len(parsed.bad_lines):
            lines = block.split(b"\n")
            bad = [f"{path}:{line + k + 1}: {describe_bad_line(lines[k])}" for k in parsed.bad_lines]
            if options["on_bad_line"] == "error":
                raise JaxrecError(f"{bad[0]} (add --on-bad-line skip to count and skip such lines)")
        global_line = plan["file_first_line"][piece["file"]] + line + parsed.line
        yield parsed, assign_splits(plan["split"], options, global_line), bad
        line += block.count(b"\n")


# ---- finish --------------------------------------------------------------------------------


def _finish(out: Path, plan: dict) -> dict:
    options = plan["identity"]["options"]
    manifests = [json.loads(_manifest_path(out, p).read_text()) for p in range(len(plan["pieces"]))]
    splits = {
        s: {
            "rows": sum(m["rows"][s] for m in manifests),
            "positives": sum(m["positives"][s] for m in manifests),
            "shards": [{"piece": m["piece"], "rows": m["rows"][s]} for m in manifests if m["rows"][s]],
        }
        for s in SPLITS
    }
    if not splits["train"]["rows"]:
        raise JaxrecError(
            f"no training examples: {sum(p['lines'] for p in plan['pieces'])} lines gave train "
            f"{splits['train']['rows']}, valid {splits['valid']['rows']}, test {splits['test']['rows']} "
            f"({sum(m['skipped_lines'] for m in manifests)} skipped as malformed); "
            "give more lines or other split options"
        )
    for split in ("valid", "test"):
        if not splits[split]["rows"]:
            log.warning("warning: the %s split is empty; a run on this folder has nothing to evaluate it on", split)
    if options["hash_buckets"] is not None:
        vocab_sizes, features = [options["hash_buckets"]] * NUM_CAT, []
    else:
        features = [json.loads(_vocab_path(out, j).with_suffix(".json").read_text()) for j in range(NUM_CAT)]
        vocab_sizes = [f["kept"] + 1 for f in features]
    metadata = {
        "format": "jaxrec-criteo-shards-1",
        "num_dense": NUM_INT,
        "num_sparse": NUM_CAT,
        "num_examples": sum(s["rows"] for s in splits.values()),
        "num_lines": sum(p["lines"] for p in plan["pieces"]),
        "skipped_lines": sum(m["skipped_lines"] for m in manifests),
        "skipped_examples": [e for m in manifests for e in m["skipped_examples"]][:MAX_SKIPPED_EXAMPLES],
        "vocab_sizes": vocab_sizes,
        "features": [{"name": f"C{j + 1}"} | f for j, f in enumerate(features)],
        "columns": {name: {"dtype": dtype, "shape": shape} for name, (dtype, shape) in COLUMNS.items()},
        "shard_path": "shards/{split}-{piece:05d}.{column}",
        "splits": splits,
        "split": plan["split"],
        "inputs": plan["inputs"],
        "options": options,
        "transforms": {
            "dense": "log(1 + max(x, 0)), missing as 0",
            "sparse": "id 0: missing; 1 + value mod (hash_buckets - 1)"
            if options["hash_buckets"]
            else "id 0: missing or rare; 1..K: kept values by hex value",
        },
    }
    # Left by a killed run; every task is done now. Only prepare's own files: --out may be a
    # folder that also holds the user's.
    for stale in [*out.glob("*.json.tmp"), *(p for d in ("work", "vocab", "shards") for p in out.glob(f"{d}/*.tmp"))]:
        stale.unlink()
    write_atomic(out / "metadata.json", json.dumps(metadata, indent=1).encode())
    log.info(
        "prepared %d examples (train %d, valid %d, test %d), %d lines skipped -> %s",
        metadata["num_examples"],
        splits["train"]["rows"],
        splits["valid"]["rows"],
        splits["test"]["rows"],
        metadata["skipped_lines"],
        out,
    )
    return metadata


def write_atomic(path: Path, content) -> None:
    """Write bytes, or call content(file), under a temporary name, then rename onto `path`."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        content(f) if callable(content) else f.write(content)
    os.replace(tmp, path)
