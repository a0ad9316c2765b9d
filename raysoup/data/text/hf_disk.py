"""`format: hf_disk`: a directory written by `datasets`' `save_to_disk`, read with pyarrow alone.

A `Dataset` directory holds `state.json` (its Arrow files, in order: `_data_files`),
`dataset_info.json` (the features: a `ClassLabel` column names its classes) and the Arrow
files themselves, IPC *stream* files `data-0000N-of-0000M.arrow`; a `DatasetDict` directory
holds `dataset_dict.json` (its split names) and one such directory per split. raysoup reads
these files itself (local or s3:// / gs://, through `raysoup.data.fs`), so the `datasets`
package is not needed at run time. The files are streamed a record batch at a time and only
the columns the split needs are kept: the other columns (GLUE's `idx`, a dataset's extra
features) and the file as a whole are never held in memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa
import pyarrow.fs as pafs

from raysoup.config import SplitSource
from raysoup.data import fs
from raysoup.data.errors import DataError

STATE, INFO, DICT = "state.json", "dataset_info.json", "dataset_dict.json"


def _json(path: str) -> dict:
    try:
        return json.loads(fs.read_bytes(path))
    except ValueError as e:  # DataError (not found, unreadable) is a ValueError too
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: not valid JSON ({e})") from None


def _exists(path: str) -> bool:
    return fs.info(path).type == pafs.FileType.File


def dataset_dir(source: SplitSource) -> str:
    """The directory of the one `Dataset` the source names: the path itself, or its `split`
    of a `DatasetDict` directory."""
    path = source.path
    kind = fs.info(path).type
    if kind == pafs.FileType.NotFound:
        raise DataError(f"{path}: not found (format hf_disk: a directory written by "
                        "datasets' save_to_disk)")
    if kind != pafs.FileType.Directory:
        raise DataError(f"{path}: a file, not a directory written by datasets' save_to_disk")
    if _exists(fs.join(path, DICT)):
        splits = list(_json(fs.join(path, DICT)).get("splits", []))
        if source.split is None:
            raise DataError(f"{path} is a DatasetDict (splits: {', '.join(splits)}): "
                            "set `split` to the one to read")
        if source.split not in splits:
            raise DataError(f"{path}: no split {source.split!r} (splits: {', '.join(splits)})")
        return fs.join(path, source.split)
    if not _exists(fs.join(path, STATE)):
        raise DataError(f"{path}: not a directory written by datasets' save_to_disk "
                        f"(no {STATE} or {DICT})")
    if source.split is not None:
        raise DataError(f"{path}: split {source.split!r} given, but the directory holds one "
                        "Dataset, not a DatasetDict (drop `split`)")
    return path


def data_files(directory: str) -> list[str]:
    """The dataset's Arrow files, in row order."""
    state = _json(fs.join(directory, STATE))
    if state.get("_indices_data_files"):
        raise DataError(f"{directory}: saved with an indices mapping (an old `datasets`): "
                        "save it again after `.flatten_indices()`")
    try:
        names = [f["filename"] for f in state["_data_files"]]
    except (KeyError, TypeError):
        raise DataError(f"{directory}/{STATE}: no `_data_files` list of Arrow files") from None
    if not names:
        raise DataError(f"{directory}/{STATE}: lists no Arrow files")
    return [fs.join(directory, n) for n in names]


def class_names(directory: str, column: str) -> list[str] | None:
    """The class names of `column` when `dataset_info.json` declares it a ClassLabel."""
    if not _exists(fs.join(directory, INFO)):
        return None
    feature = (_json(fs.join(directory, INFO)).get("features") or {}).get(column) or {}
    if feature.get("_type") == "ClassLabel" and feature.get("names"):
        return [str(n) for n in feature["names"]]
    return None


@contextmanager
def _stream(path: str) -> Iterator[pa.ipc.RecordBatchStreamReader]:
    """An Arrow IPC stream file opened for reading a record batch at a time; a missing or
    malformed file (also one that breaks off mid-way) is a DataError naming it."""
    filesystem, key = fs.resolve(path)
    try:
        with filesystem.open_input_stream(key) as f:
            yield pa.ipc.open_stream(f)
    except FileNotFoundError:
        raise DataError(f"not found: {path}") from None
    except (OSError, pa.ArrowInvalid) as e:
        raise DataError(f"{path}: cannot read as an Arrow stream file ({e})") from None


def column_names(files: list[str]) -> list[str]:
    with _stream(files[0]) as reader:
        return reader.schema.names


def _compact(batch: pa.RecordBatch) -> pa.RecordBatch:
    """`batch`'s columns in buffers of their own. A batch read from an IPC stream is slices
    of one buffer, its whole message body: a column kept as it is keeps every dropped
    column's bytes alive too. (concat_arrays copies, even a single array.)"""
    return pa.RecordBatch.from_arrays([pa.concat_arrays([c]) for c in batch.columns],
                                      schema=batch.schema)


def read_columns(files: list[str], columns: list[str]) -> pa.Table:
    """`columns` of every file, streamed a record batch at a time (the rest is dropped as
    each batch is read)."""
    kept: list[pa.RecordBatch] = []
    schema = None
    for path in files:
        with _stream(path) as reader:
            missing = [c for c in columns if c not in reader.schema.names]
            if missing:
                raise DataError(f"{path}: no column(s) {missing}; "
                                f"columns: {reader.schema.names}")
            schema = schema or pa.schema([reader.schema.field(c) for c in columns])
            kept.extend(_compact(batch.select(columns)) for batch in reader)
    try:
        return pa.Table.from_batches(kept, schema)
    except pa.ArrowInvalid as e:  # files of one dataset with different column types
        raise DataError(f"{files[0]}: the Arrow files disagree on column types ({e})") from None


def count_rows(source: SplitSource) -> int:
    """Rows of the split (reads the files: `--dry-run` sizes a text split, megabytes)."""
    rows = 0
    for path in data_files(dataset_dir(source)):
        with _stream(path) as reader:
            rows += sum(batch.num_rows for batch in reader)
    return rows
