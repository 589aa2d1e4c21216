"""The serving bundle: a self-contained directory that a server loads without the training code.

    <bundle>/
      manifest.json     format and version, model, config, dataset (name, sha256, sizes), checkpoint,
                        metrics at export, precision, array shapes, cold-start encoder, created, jaxrec
      items.npy         item vectors [N, e] at the storage precision (bfloat16 as its uint16 bits)
      item_scales.npy   int8 only: one float32 scale per row (row = int8 values * scale)
      users.npy         query vectors of the known users [U, e] (+ user_scales.npy for int8)
      user_tokens.json, item_tokens.json   contiguous id -> original token
      seen.npz          CSR (indptr [U + 1], indices) of each known user's items: excluded at serving
      item_meta.json    per item: title, genres, year (only when the data set has item metadata)
      encoder.*         cold start (jaxrec.serving.encoders): MF's folding-in (encoder.npz), or the model's
                        query side exported with jax.export (encoder.jaxexport + encoder_weights.npz)
      index.faiss       optional ANN index over the served (dequantised float32) item vectors; its kind,
                        parameters and export-time recall are in the manifest (jaxrec.serving.ann)

Scores are query_e . item_e. The storage precision only changes the files: loading dequantises
to float32. The bundle is written to a temporary directory and renamed into place, so a failed
export never leaves a half-written bundle.

Legend: N items, U users, e vector width.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import ml_dtypes
import numpy as np

from jaxrec.errors import JaxrecError
from jaxrec.serving.ann import AnnIndex, load_index
from jaxrec.serving.encoders import Encoder, load_encoder

FORMAT, VERSION = "jaxrec-bundle", 1
PRECISIONS = ("float32", "bfloat16", "int8")


@dataclasses.dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict
    items_ne: np.ndarray  # float32, dequantised
    users_ue: np.ndarray  # float32, dequantised
    user_tokens: list[str]
    item_tokens: list[str]
    seen_indptr: np.ndarray  # int64 [U + 1]
    seen_items: np.ndarray  # int32
    item_meta: list[dict] | None
    encoder: Encoder | None
    index: AnnIndex | None = None

    @property
    def num_items(self) -> int:
        return self.items_ne.shape[0]

    @property
    def num_users(self) -> int:
        return self.users_ue.shape[0]

    def seen(self, user: int) -> np.ndarray:
        return self.seen_items[self.seen_indptr[user] : self.seen_indptr[user + 1]]


def quantize(x_ne: np.ndarray, precision: str) -> dict[str, np.ndarray]:
    """{"values": stored array[, "scales": float32 [N]]}; int8 uses a symmetric per-row scale."""
    x_ne = np.asarray(x_ne, np.float32)
    if precision == "float32":
        return {"values": x_ne}
    if precision == "bfloat16":
        return {"values": x_ne.astype(ml_dtypes.bfloat16).view(np.uint16)}
    if precision == "int8":
        scales_n = np.abs(x_ne).max(axis=1) / 127.0
        scales_n = np.where(scales_n > 0, scales_n, 1.0).astype(np.float32)
        return {"values": np.clip(np.rint(x_ne / scales_n[:, None]), -127, 127).astype(np.int8), "scales": scales_n}
    raise JaxrecError(f"precision {precision!r} is not valid; expected one of {', '.join(PRECISIONS)}")


def dequantize(values: np.ndarray, precision: str, scales_n: np.ndarray | None = None) -> np.ndarray:
    if precision == "bfloat16":
        return values.view(ml_dtypes.bfloat16).astype(np.float32)
    if precision == "int8":
        return values.astype(np.float32) * scales_n[:, None]
    return values.astype(np.float32)


def dataset_sha256(interactions) -> str:
    """Identifies the exact interactions a model was trained on (ids, ratings, times, tokens)."""
    digest = hashlib.sha256()
    for array in (interactions.user, interactions.item, interactions.rating, interactions.timestamp):
        digest.update(np.ascontiguousarray(array).tobytes())
    for tokens in (interactions.user_tokens, interactions.item_tokens):
        digest.update("\x00".join(map(str, tokens)).encode())
    return digest.hexdigest()


def seen_csr(users: np.ndarray, items: np.ndarray, num_users: int) -> tuple[np.ndarray, np.ndarray]:
    """(indptr [U + 1], items) with each user's distinct items ascending."""
    keys = np.unique(users.astype(np.int64) << 32 | items.astype(np.int64))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(keys >> 32, minlength=num_users))]).astype(np.int64)
    return indptr, (keys & 0xFFFFFFFF).astype(np.int32)


def write_bundle(
    out: Path,
    *,
    manifest: dict,
    items_ne: np.ndarray,
    users_ue: np.ndarray,
    user_tokens,
    item_tokens,
    seen: tuple[np.ndarray, np.ndarray],
    precision: str = "float32",
    item_meta: list[dict] | None = None,
    encoder: Encoder | None = None,
    index: AnnIndex | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a bundle to `out` atomically; `manifest` holds the caller's fields (model, config,
    dataset, metrics, ...), to which the format, precision, shapes and file names are added."""
    out = Path(out).absolute()
    if out.exists() and not overwrite:
        raise JaxrecError(f"{out} already exists; choose another --out or pass --overwrite")
    if items_ne.shape[1] != users_ue.shape[1]:
        raise JaxrecError(f"item vectors are {items_ne.shape[1]} wide but query vectors {users_ue.shape[1]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would keep the bundle from a server running as another user
    try:
        arrays = {}
        for name, matrix in (("items", items_ne), ("users", users_ue)):
            stored = quantize(matrix, precision)
            np.save(tmp / f"{name}.npy", stored["values"])
            arrays[name] = {"file": f"{name}.npy", "shape": list(matrix.shape), "dtype": str(stored["values"].dtype)}
            if "scales" in stored:
                np.save(tmp / f"{name[:-1]}_scales.npy", stored["scales"])
                arrays[name]["scales"] = f"{name[:-1]}_scales.npy"
        _write_json(tmp / "user_tokens.json", [str(t) for t in user_tokens])
        _write_json(tmp / "item_tokens.json", [str(t) for t in item_tokens])
        np.savez_compressed(tmp / "seen.npz", indptr=seen[0], items=seen[1])
        if item_meta is not None:
            _write_json(tmp / "item_meta.json", item_meta)
        encoder_entry = encoder.save(tmp) if encoder is not None else None
        index_entry = index.save(tmp) if index is not None else None
        _write_json(
            tmp / "manifest.json",
            manifest
            | {
                "format": FORMAT,
                "version": VERSION,
                "precision": precision,
                "vector_dim": int(items_ne.shape[1]),
                "num_items": int(items_ne.shape[0]),
                "num_users": int(users_ue.shape[0]),
                "arrays": arrays,
                "seen": "seen.npz",
                "item_meta": "item_meta.json" if item_meta is not None else None,
                "encoder": encoder_entry,
                "index": index_entry,
            },
        )
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=isinstance(obj, dict), default=str) + "\n", encoding="utf-8")


def _replace_dir(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`; an existing `out` is moved aside first and removed only after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old)


def _load_matrix(path: Path, spec: dict, precision: str) -> np.ndarray:
    values = np.load(path / spec["file"])
    scales = np.load(path / spec["scales"]) if "scales" in spec else None
    matrix = dequantize(values, precision, scales)
    if list(matrix.shape) != spec["shape"]:
        raise JaxrecError(f"{path / spec['file']} has shape {list(matrix.shape)}, the manifest says {spec['shape']}")
    return matrix


def load_bundle(path: Path) -> Bundle:
    """Read and check a bundle; every array comes back float32."""
    path = Path(path)
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise JaxrecError(
            f"{path} is not a serving bundle: {manifest_path} is missing (make one with "
            "python -m jaxrec.export <run_dir> --out <dir>)"
        )
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise JaxrecError(
            f"{manifest_path}: format {manifest.get('format')!r} version {manifest.get('version')!r} "
            f"is not {FORMAT!r} version {VERSION}; re-export the run with this jaxrec"
        )
    precision = manifest["precision"]
    try:
        items_ne = _load_matrix(path, manifest["arrays"]["items"], precision)
        users_ue = _load_matrix(path, manifest["arrays"]["users"], precision)
        seen = np.load(path / manifest["seen"])
        meta = manifest["item_meta"]
        item_meta = json.loads((path / meta).read_text(encoding="utf-8")) if meta else None
        encoder = load_encoder(path, manifest["encoder"])
        user_tokens = json.loads((path / "user_tokens.json").read_text(encoding="utf-8"))
        item_tokens = json.loads((path / "item_tokens.json").read_text(encoding="utf-8"))
    except (OSError, KeyError, ValueError) as err:
        raise JaxrecError(f"bundle {path} is incomplete or corrupt: {err}") from err
    if (len(item_tokens), len(user_tokens)) != (items_ne.shape[0], users_ue.shape[0]):
        raise JaxrecError(
            f"bundle {path}: {len(item_tokens)} item and {len(user_tokens)} user tokens for "
            f"{items_ne.shape[0]} item and {users_ue.shape[0]} user vectors"
        )
    index = load_index(path, manifest["index"], items_ne) if manifest.get("index") else None
    return Bundle(
        path,
        manifest,
        items_ne,
        users_ue,
        user_tokens,
        item_tokens,
        seen["indptr"],
        seen["items"],
        item_meta,
        encoder,
        index,
    )


def bundle_bytes(path: Path) -> int:
    """Bytes of every file in the bundle."""
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())
