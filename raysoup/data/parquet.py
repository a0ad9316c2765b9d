"""Parquet shards of labelled images: our own splits and "real" datasets (e.g. Hugging Face).

Layout: <dir>/part-00000.parquet ... with columns key, image (encoded bytes), label, caption.
The label space travels in the schema metadata, so a shift set covering a class subset
still knows the full class list and which classes it covers.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raysoup.data.images import DataError, LabeledImages

CLASSNAMES_KEY = b"raysoup.classnames"
SUBSET_KEY = b"raysoup.class_subset"
_SCHEMA = pa.schema([("key", pa.string()), ("image", pa.binary()), ("label", pa.int64()),
                     ("caption", pa.string())])


def write_parquet_split(dir: Path, data: LabeledImages, rows_per_shard: int = 5000) -> list[Path]:
    """Write data as dir/part-NNNNN.parquet; the dir is built aside and renamed into place."""
    dir = Path(dir)
    if data.images and not isinstance(data.images[0], (bytes, bytearray)):
        raise DataError(f"write_parquet_split({dir}): images must be encoded bytes, not paths")
    meta = {CLASSNAMES_KEY: json.dumps(data.classnames).encode(),
            SUBSET_KEY: json.dumps(data.class_subset).encode()}
    schema = _SCHEMA.with_metadata(meta)
    dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = dir.parent / f".tmp-{dir.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    n_shards = max(1, -(-len(data) // rows_per_shard))
    for s in range(n_shards):
        lo, hi = s * rows_per_shard, min(len(data), (s + 1) * rows_per_shard)
        captions = (pa.nulls(hi - lo, pa.string()) if data.captions is None
                    else data.captions[lo:hi])
        table = pa.table({"key": data.keys[lo:hi], "image": data.images[lo:hi],
                          "label": data.labels[lo:hi], "caption": captions}, schema=schema)
        pq.write_table(table, tmp / f"part-{s:05d}.parquet")
    if dir.exists():
        shutil.rmtree(dir)
    os.replace(tmp, dir)
    return sorted(dir.glob("part-*.parquet"))


def _files(path: Path) -> list[Path]:
    if not path.exists():
        raise DataError(f"parquet split not found: {path}")
    if path.is_file():
        return [path]
    files = sorted(path.glob("*.parquet"))
    if not files:
        raise DataError(f"no *.parquet files in {path}")
    return files


def _images(column: pa.ChunkedArray, path: Path, base: Path) -> list:
    """Binary column -> bytes; HF-style struct{bytes, path} -> bytes, or the file path."""
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        return column.to_pylist()
    if pa.types.is_struct(column.type) and column.type.get_field_index("bytes") >= 0:
        out = []
        for i, item in enumerate(column.to_pylist()):
            if item and item.get("bytes") is not None:
                out.append(item["bytes"])
            elif item and item.get("path"):
                p = Path(item["path"])
                out.append(str(p if p.is_absolute() else base / p))
            else:
                raise DataError(f"{path}: row {i} has neither image bytes nor a path")
        return out
    raise DataError(f"{path}: column 'image' must be binary or struct{{bytes, path}}, "
                    f"got {column.type}")


def _hf_classnames(meta: dict) -> list[str] | None:
    """Class names from a Hugging Face datasets schema (features.label.names), if present."""
    try:
        info = json.loads(meta[b"huggingface"])
        return list(info["info"]["features"]["label"]["names"])
    except (KeyError, TypeError, ValueError):
        return None


def read_parquet_split(path: Path | str, classnames: list[str] | None = None) -> LabeledImages:
    """Read one .parquet file or a directory of them (sorted) into LabeledImages.

    Class names: the `classnames` argument, else raysoup's schema metadata, else a Hugging Face
    ClassLabel in the schema. Without a key column, keys are "<dirname>/<row index>".
    """
    path = Path(path)
    files = _files(path)
    try:
        table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"cannot read parquet split {path}: {exc}") from None
    missing = [c for c in ("image", "label") if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {table.column_names}")
    meta = pq.read_schema(files[0]).metadata or {}
    names = classnames
    if names is None and CLASSNAMES_KEY in meta:
        names = json.loads(meta[CLASSNAMES_KEY])
    names = names or _hf_classnames(meta)
    if names is None:
        raise DataError(f"{path}: no class names in the Parquet metadata; pass classnames "
                        "(data.classnames in the experiment config)")
    # Indices into the label space; `classnames` only renames it, so the subset still holds.
    subset = json.loads(meta[SUBSET_KEY]) if SUBSET_KEY in meta else None
    base = files[0].parent
    prefix = path.name if path.is_dir() else path.stem
    keys = (table.column("key").to_pylist() if "key" in table.column_names
            else [f"{prefix}/{i}" for i in range(table.num_rows)])
    captions = (table.column("caption").to_pylist() if "caption" in table.column_names else None)
    if captions is not None and any(c is None for c in captions):
        captions = None
    labels = np.asarray(table.column("label").to_numpy(), dtype=np.int64)
    try:
        return LabeledImages(keys, _images(table.column("image"), path, base), labels,
                             list(names), captions, subset)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
