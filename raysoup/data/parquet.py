"""Parquet shards of labelled images: our own splits and "real" datasets (e.g. Hugging Face).

Layout: <dir>/part-00000.parquet ... with columns key, image (encoded bytes), label, caption.
The label space travels in the schema metadata, so a shift set covering a class subset
still knows the full class list and which classes it covers.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raysoup.atomic import atomic_dir
from raysoup.data import fs as data_fs
from raysoup.data.images import DataError, FileImages, ImageColumn, LabeledImages

CLASSNAMES_KEY = b"raysoup.classnames"
SUBSET_KEY = b"raysoup.class_subset"
ROWS_PER_GROUP = 256
_SCHEMA = pa.schema([("key", pa.string()), ("image", pa.binary()), ("label", pa.int64()),
                     ("caption", pa.string())])


def write_parquet_split(dir: Path, data: LabeledImages, rows_per_shard: int = 5000,
                        rows_per_group: int = ROWS_PER_GROUP) -> list[Path]:
    """Write data as dir/part-NNNNN.parquet; the dir is built aside and renamed into place."""
    with atomic_dir(Path(dir)) as tmp:
        write_parquet_parts(tmp, data, rows_per_shard, rows_per_group)
    return sorted(Path(dir).glob("part-*.parquet"))


def write_parquet_parts(dir: Path, data: LabeledImages, rows_per_shard: int = 5000,
                        rows_per_group: int = ROWS_PER_GROUP) -> list[Path]:
    """Write data as dir/part-NNNNN.parquet into the existing directory `dir`."""
    meta = {CLASSNAMES_KEY: json.dumps(data.classnames).encode(),
            SUBSET_KEY: json.dumps(data.class_subset).encode()}
    schema = _SCHEMA.with_metadata(meta)
    n_shards = max(1, -(-len(data) // rows_per_shard))
    for s in range(n_shards):
        lo, hi = s * rows_per_shard, min(len(data), (s + 1) * rows_per_shard)
        captions = (pa.nulls(hi - lo, pa.string()) if data.captions is None
                    else data.captions[lo:hi])
        table = pa.table({"key": data.keys[lo:hi], "image": data.images.read(range(lo, hi)),
                          "label": data.labels[lo:hi], "caption": captions}, schema=schema)
        # Small row groups: a training batch reads only the groups its samples lie in.
        pq.write_table(table, dir / f"part-{s:05d}.parquet", row_group_size=rows_per_group,
                       compression="none")
    return sorted(dir.glob("part-*.parquet"))


class ParquetImages(ImageColumn):
    """The `image` column of Parquet shards, read one row group at a time.

    Items are (file, row group, row) positions; only the row groups a read touches are
    fetched, and the last few are kept (bounded by `cache_groups`), so reading a batch whose
    samples share row groups costs one read per group. File handles are opened lazily per
    process (they do not pickle to DataLoader workers or Ray actors).
    """

    def __init__(self, files: list[str], file_idx: np.ndarray, group: np.ndarray, row: np.ndarray,
                 cache_groups: int = 4):
        self.files, self.cache_groups = list(files), cache_groups
        self.file_idx = np.asarray(file_idx, np.int32)
        self.group = np.asarray(group, np.int32)
        self.row = np.asarray(row, np.int32)
        self._handles: dict[int, pq.ParquetFile] = {}
        self._cache: dict[tuple[int, int], pa.Array] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handles": {}, "_cache": {}}

    def __len__(self) -> int:
        return len(self.row)

    def take(self, idx: np.ndarray) -> ParquetImages:
        return ParquetImages(self.files, self.file_idx[idx], self.group[idx], self.row[idx],
                             self.cache_groups)

    def is_remote(self) -> bool:
        return any(data_fs.is_uri(f) for f in self.files)

    def units(self) -> np.ndarray:
        return self.file_idx.astype(np.int64) << 32 | self.group.astype(np.int64)

    def where(self, i: int) -> str:
        return f"{self.files[self.file_idx[i]]} (row group {self.group[i]}, row {self.row[i]})"

    def fingerprint(self) -> bytes:
        """The shards' sizes and modification times and the rows taken from them."""
        h = hashlib.sha256(data_fs.stamps(self.files))
        for column in (self.file_idx, self.group, self.row):
            h.update(column.tobytes())
        return h.digest()

    def _group(self, f: int, g: int) -> pa.Array:
        key = (f, g)
        if key in self._cache:
            self._cache[key] = self._cache.pop(key)  # most recently used last
            return self._cache[key]
        try:
            if f not in self._handles:
                fsys, path = data_fs.resolve(self.files[f])
                self._handles[f] = pq.ParquetFile(fsys.open_input_file(path))
            column = self._handles[f].read_row_group(g, columns=["image"]).column(0).combine_chunks()
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"cannot read {self.files[f]} row group {g}: {exc}") from None
        self._cache[key] = column
        while len(self._cache) > self.cache_groups:
            self._cache.pop(next(iter(self._cache)))
        return column

    def read(self, idx) -> list[bytes]:
        out = []
        for i in idx:
            item = self._group(int(self.file_idx[i]), int(self.group[i]))[int(self.row[i])].as_py()
            if isinstance(item, dict):  # Hugging Face style struct{bytes, path}
                if item.get("bytes") is not None:
                    item = item["bytes"]
                elif item.get("path"):
                    base = str(Path(self.files[self.file_idx[i]]).parent)
                    p = item["path"]
                    item = FileImages([p if Path(p).is_absolute() or data_fs.is_uri(p)
                                       else data_fs.join(base, p)]).read([0])[0]
                else:
                    raise DataError(f"{self.where(i)}: neither image bytes nor a path")
            out.append(item)
        return out


def _files(path: str) -> list[str]:
    meta = data_fs.info(path)
    if meta.type == pafs.FileType.NotFound:
        raise DataError(f"parquet split not found: {path}")
    if meta.type == pafs.FileType.File:
        return [path]
    files = [data_fs.join(path, e.base_name) for e in data_fs.listdir(path)
             if e.type == pafs.FileType.File and e.base_name.endswith(".parquet")]
    if not files:
        raise DataError(f"no *.parquet files in {path}")
    return files


def _check_image_type(t: pa.DataType, path: str) -> None:
    ok = (pa.types.is_binary(t) or pa.types.is_large_binary(t)
          or (pa.types.is_struct(t) and t.get_field_index("bytes") >= 0))
    if not ok:
        raise DataError(f"{path}: column 'image' must be binary or struct{{bytes, path}}, got {t}")


def _hf_classnames(meta: dict) -> list[str] | None:
    """Class names from a Hugging Face datasets schema (features.label.names), if present."""
    try:
        info = json.loads(meta[b"huggingface"])
        return list(info["info"]["features"]["label"]["names"])
    except (KeyError, TypeError, ValueError):
        return None


def metadata_classnames(path: Path | str) -> list[str] | None:
    """The class names a Parquet split's first file carries (raysoup's schema metadata, else
    a Hugging Face ClassLabel), None without any: read from its footer only."""
    file = _files(str(path))[0]
    try:
        fsys, key = data_fs.resolve(file)
        meta = pq.ParquetFile(fsys.open_input_file(key)).schema_arrow.metadata or {}
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"cannot read parquet split {file}: {exc}") from None
    if CLASSNAMES_KEY in meta:
        return json.loads(meta[CLASSNAMES_KEY])
    return _hf_classnames(meta)


def read_parquet_split(path: Path | str, classnames: list[str] | None = None) -> LabeledImages:
    """Index one .parquet file or a directory of them (sorted; local or s3:// / gs://).

    Reads the footers and the key/label/caption columns only: images stay in the files and are
    read by row group on demand (`ParquetImages`). Class names: the `classnames` argument, else
    raysoup's schema metadata, else a Hugging Face ClassLabel in the schema. Without a key
    column, keys are "<dirname>/<row index>".
    """
    path = str(path)
    files = _files(path)
    keys, labels, captions = [], [], []
    file_idx, groups, rows = [], [], []
    meta: dict = {}
    prefix = Path(path).stem if files == [path] else Path(path).name
    for f, file in enumerate(files):
        try:
            fsys, key = data_fs.resolve(file)
            pf = pq.ParquetFile(fsys.open_input_file(key))
            names = pf.schema_arrow.names
            missing = [c for c in ("image", "label") if c not in names]
            if missing:
                raise DataError(f"{file}: missing column(s) {missing}; found {names}")
            _check_image_type(pf.schema_arrow.field("image").type, file)
            if f == 0:
                meta = pf.schema_arrow.metadata or {}
            cols = [c for c in ("key", "label", "caption") if c in names]
            table = pf.read(columns=cols)
            n = table.num_rows
            for g in range(pf.metadata.num_row_groups):
                m = pf.metadata.row_group(g).num_rows
                groups.append(np.full(m, g, np.int32))
                rows.append(np.arange(m, dtype=np.int32))
            file_idx.append(np.full(n, f, np.int32))
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"cannot read parquet split {file}: {exc}") from None
        keys += (table.column("key").to_pylist() if "key" in cols
                 else [f"{prefix}/{len(keys) + i}" for i in range(n)])
        labels.append(np.asarray(table.column("label").to_numpy(), dtype=np.int64))
        captions += (table.column("caption").to_pylist() if "caption" in cols else [None] * n)
    names = classnames
    if names is None and CLASSNAMES_KEY in meta:
        names = json.loads(meta[CLASSNAMES_KEY])
    names = names or _hf_classnames(meta)
    if names is None:
        raise DataError(f"{path}: no class names in the Parquet metadata; pass classnames "
                        "(data.classnames in the experiment config)")
    # Indices into the label space; `classnames` only renames it, so the subset still holds.
    subset = json.loads(meta[SUBSET_KEY]) if SUBSET_KEY in meta else None
    images = ParquetImages(files, np.concatenate(file_idx), np.concatenate(groups),
                           np.concatenate(rows))
    if any(c is None for c in captions):
        captions = None
    try:
        return LabeledImages(keys, images, np.concatenate(labels), list(names), captions, subset)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
