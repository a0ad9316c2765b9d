"""Where data sources live: a local path or an `s3://` / `gs://` URI, through `pyarrow.fs`.

Data paths stay strings (a URI is not a `Path`), and every reader opens them here, so a
Parquet split or an ImageFolder reads the same from local disk and from object storage.
URIs take the same forms as a workdir URI (`?endpoint_override=host:port&scheme=http`,
`AWS_ENDPOINT_URL`, credentials from the usual places).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from pathlib import Path

import pyarrow.fs as pafs

from raysoup import storage
from raysoup.data.errors import DataError


def is_uri(path: str) -> bool:
    return storage.is_uri(path)


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it); local paths become absolute."""
    if storage.is_uri(path):
        try:
            return storage.remote(storage.mirror_of(path))
        except storage.StorageError as e:
            raise DataError(str(e)) from None
    return pafs.LocalFileSystem(), str(Path(path).expanduser().absolute())


def display(fs: pafs.FileSystem, key: str) -> str:
    """How a (filesystem, key) pair is named in messages: its URI, or the local path."""
    if isinstance(fs, pafs.LocalFileSystem):
        return key
    return f"{fs.type_name.replace('gcs', 'gs')}://{key}"


def join(path: str, *parts: str) -> str:
    if storage.is_uri(path):
        base, sep, query = path.partition("?")
        return posixpath.join(base, *parts) + (sep + query if sep else "")
    return str(Path(path, *parts))


def info(path: str) -> pafs.FileInfo:
    fs, key = resolve(path)
    try:
        return fs.get_file_info(key)
    except OSError as e:  # denied, unreachable, bad credentials
        raise DataError(f"cannot read {path}: {e}") from None


def listdir(path: str, recursive: bool = False) -> list[pafs.FileInfo]:
    """Entries below a directory, sorted by path; an error names the path."""
    fs, key = resolve(path)
    try:
        entries = fs.get_file_info(pafs.FileSelector(key, recursive=recursive))
    except FileNotFoundError:
        raise DataError(f"not found: {path}") from None
    except OSError as e:
        raise DataError(f"cannot list {path}: {e}") from None
    return sorted(entries, key=lambda e: e.path)


def stamps(paths: list[str]) -> bytes:
    """A digest of the (size, modification time) of every file in `paths`, in order: local
    files by stat, remote ones from one listing of each parent directory."""
    h = hashlib.sha256()
    listed: dict[str, dict[str, tuple[int, int]]] = {}
    for path in paths:
        if is_uri(path):
            parent, _, name = path.partition("?")[0].rpartition("/")
            if parent not in listed:
                query = path.partition("?")[2]
                listed[parent] = {e.base_name: (e.size or 0, e.mtime_ns or 0)
                                  for e in listdir(parent + (f"?{query}" if query else ""))}
            stamp = listed[parent].get(name)
        else:
            try:
                st = os.stat(path)
                stamp = (st.st_size, st.st_mtime_ns)
            except OSError:
                stamp = None
        h.update(f"{path}\0{stamp}\0".encode())
    return h.digest()


def read_bytes(path: str) -> bytes:
    fs, key = resolve(path)
    try:
        with fs.open_input_stream(key) as f:
            return f.read()
    except FileNotFoundError:
        raise DataError(f"not found: {path}") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from None
