"""Workdirs on object storage (`s3://…`, `gs://…`) through `pyarrow.fs`.

A remote workdir has a local *mirror*, `<cache>/raysoup-mirror/<scheme>/<bucket>/<key…>`, and
the rest of raysoup keeps handling `Path`s: a path inside a mirror stands for the object with
the same key.

- **Reads** of a mirror path go to the remote object: the remote is the source of truth (a
  mirror may be stale, or absent on another node). Tensor files are read ranged
  (`open_input`), so a reduction shard fetches only its tensors' bytes.
- **Writes** land in the mirror first, atomically as for a local workdir (`write_file`,
  `atomic_dir`), and `publish` uploads them. Each object is uploaded under a temp key and
  moved into place, so an interrupted upload never leaves a truncated object under its final
  key. A directory is uploaded with its completion markers (manifest, index, recipe,
  `_COMPLETE`) last, after the old remote copy is deleted: remote readers see it whole or not
  at all, as locally. Temp names (`raysoup.atomic.is_temp_name`) are never listed, uploaded
  or downloaded.
- `pull` downloads a tree for code that needs local files (image folders, the SQLite store).

Every node maps a mirror path back to its URI from the path alone (the `raysoup-mirror`
segment), so paths can be handed to Ray tasks and actors anywhere in the cluster. For a path
outside any mirror every function is the plain local operation.

S3-compatible stores: set `AWS_ENDPOINT_URL` (read by pyarrow: every store without options),
or write the URI as `s3://bucket/prefix?endpoint_override=host:port&scheme=http` (that URI's
filesystem only).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, urlencode, urlsplit

import pyarrow.fs as pafs

from raysoup.atomic import TMP_PREFIX, is_temp_name, write_atomic
from raysoup.atomic import atomic_dir as _atomic_dir
from raysoup.faults import failpoint

log = logging.getLogger(__name__)

MIRROR = "raysoup-mirror"
SCHEMES = ("s3", "gs")
CACHE_ENV = "RAYSOUP_CACHE"
ENDPOINT_ENV = "AWS_ENDPOINT_URL"
# A URI's store options (its query), kept in its mirror path; pyarrow reads no region
# variable: without `region` it asks the network for the bucket's region.
OPTIONS = ("endpoint_override", "region", "scheme")
# Completion markers, uploaded last and in this order: a reader that sees one sees the rest.
MARKERS = ("model.safetensors.index.json", "manifest.json", "recipe.json", "_COMPLETE")
UPLOAD_CHUNK = 8 << 20
# S3's CopyObject (the server-side half of moving a temp object into place) takes at most
# 5 GiB; a larger file is uploaded under its final key and deleted if the upload fails.
MAX_MOVE_BYTES = 5 << 30


class StorageError(OSError):
    """A remote workdir that cannot be reached or read; the message names the URI."""


def is_uri(text: str | os.PathLike) -> bool:
    return isinstance(text, str) and text.split("://", 1)[0] in SCHEMES and "://" in text


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or tempfile.gettempdir()).expanduser().absolute()


def mirror_of(uri: str) -> Path:
    """The local mirror path of a workdir or data URI. Its `endpoint_override`, `scheme` and
    `region` queries are kept in the path's scheme segment (`s3,endpoint_override=host:port,
    scheme=http/<bucket>/…`), so the filesystem behind a mirror path is opened with that URI's
    own settings, on any node, and nothing else changes: not this process's environment,
    not the filesystem of another URI (another store may hold a bucket of the same name)."""
    parts = urlsplit(uri)
    if parts.scheme not in SCHEMES or not parts.netloc:
        raise StorageError(f"{uri}: expected s3://bucket/prefix or gs://bucket/prefix")
    if parts.netloc in (".", ".."):  # the mirror would be another bucket's, or outside it
        raise StorageError(f"{uri}: bucket name {parts.netloc!r} is not a bucket; expected "
                           "s3://bucket/prefix or gs://bucket/prefix")
    key = PurePosixPath(parts.path.strip("/"))
    if ".." in key.parts:
        raise StorageError(f"{uri}: '..' is not allowed in a workdir URI")
    segment = ",".join((parts.scheme, *(f"{k}={v}" for k, v in _options(uri, parts))))
    return cache_root() / MIRROR / segment / parts.netloc / key


def _options(uri: str, parts) -> tuple[tuple[str, str], ...]:
    """The store options of a URI's query, validated, as sorted (name, value) pairs."""
    query = parse_qs(parts.query)
    unknown = set(query) - set(OPTIONS)
    if unknown:
        raise StorageError(f"{uri}: unsupported query options {sorted(unknown)} "
                           "(known: endpoint_override, scheme, region)")
    scheme = query.get("scheme", ["https"])[0]
    if scheme not in ("http", "https"):
        raise StorageError(f"{uri}: scheme={scheme!r}, expected http or https")
    region = query.get("region", [None])[0]
    if region is not None and parts.scheme != "s3":
        raise StorageError(f"{uri}: region applies to s3:// only")
    if region is not None and not all(c.isascii() and (c.isalnum() or c == "-") for c in region):
        raise StorageError(f"{uri}: region={region!r}, expected a name like us-west-2")
    options = {"region": region}
    if "endpoint_override" in query:
        endpoint = query["endpoint_override"][0]
        if not endpoint or not all(c.isascii() and (c.isalnum() or c in ".-_:[]")
                                   for c in endpoint):
            raise StorageError(f"{uri}: endpoint_override={endpoint!r}, expected host:port")
        options |= {"endpoint_override": endpoint, "scheme": scheme}
    return tuple(sorted((k, v) for k, v in options.items() if v is not None))


def _locate(path: str | os.PathLike) -> tuple[str, tuple[tuple[str, str], ...], str] | None:
    """(URI scheme, store options, "bucket/key") of a mirror path, None for any other."""
    parts = Path(path).absolute().parts
    for i in range(len(parts) - 3, -1, -1):
        if parts[i] != MIRROR:
            continue
        scheme, *opts = parts[i + 1].split(",")
        pairs = tuple(tuple(o.split("=", 1)) for o in opts)
        if scheme in SCHEMES and all(len(p) == 2 and p[0] in OPTIONS for p in pairs):
            return scheme, pairs, "/".join(parts[i + 2:])
    return None


def uri_of(path: str | os.PathLike) -> str | None:
    """`s3://bucket/key` for a mirror path (its store options left out), None for any other
    path."""
    located = _locate(path)
    return None if located is None else f"{located[0]}://{located[2]}"


def tune_storage(path: str | os.PathLike) -> tuple[str, pafs.FileSystem | None]:
    """(storage_path, storage_filesystem) for Ray Tune / Train to keep their state at `path`.
    A URI with store options gets its own filesystem: Tune would open one from the
    environment, which knows nothing of them."""
    located = _locate(path)
    if located is None or not located[1]:
        return display(path), None
    scheme, options, rest = located
    return rest, _filesystem(scheme, rest.split("/", 1)[0], options)


def display(path: str | os.PathLike) -> str:
    """How a path is shown to users: its URI when it stands for a remote object."""
    return uri_of(path) or str(path)


def is_remote(path: str | os.PathLike) -> bool:
    return uri_of(path) is not None


@functools.cache
def _filesystem(scheme: str, bucket: str,
                options: tuple[tuple[str, str], ...] = ()) -> pafs.FileSystem:
    # One filesystem per (store, bucket): the options are this URI's alone, never the
    # environment's, so a data URI on another store leaves the workdir's filesystem as it was.
    query = f"?{urlencode(options)}" if options else ""
    try:
        fs, _ = pafs.FileSystem.from_uri(f"{scheme}://{bucket}{query}")
    except (OSError, ValueError) as e:
        raise StorageError(f"{scheme}://{bucket}: cannot open the store: {e}") from None
    return fs


def remote(path: str | os.PathLike) -> tuple[pafs.FileSystem, str] | None:
    """(filesystem, "bucket/key") behind a mirror path, or None for a local path."""
    located = _locate(path)
    if located is None:
        return None
    scheme, options, rest = located
    return _filesystem(scheme, rest.split("/", 1)[0], options), rest


def _info(fs: pafs.FileSystem, key: str, path) -> pafs.FileInfo:
    try:
        return fs.get_file_info(key)
    except OSError as e:
        raise StorageError(f"{display(path)}: {e}") from None


# ---------------------------------------------------------------- reads


def stat(path: str | os.PathLike) -> tuple[int, int] | None:
    """(size in bytes, mtime in ns) of a file, None if there is no file."""
    rem = remote(path)
    if rem is None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return (st.st_size, st.st_mtime_ns) if Path(path).is_file() else None
    info = _info(*rem, path)
    if info.type != pafs.FileType.File:
        return None
    return info.size, info.mtime_ns or 0


def is_file(path: str | os.PathLike) -> bool:
    return stat(path) is not None


def is_dir(path: str | os.PathLike) -> bool:
    rem = remote(path)
    if rem is None:
        return Path(path).is_dir()
    return _info(*rem, path).type == pafs.FileType.Directory


def read_bytes(path: str | os.PathLike) -> bytes:
    """The whole file; FileNotFoundError (naming the URI) when absent."""
    rem = remote(path)
    if rem is None:
        return Path(path).read_bytes()
    fs, key = rem
    try:
        with fs.open_input_stream(key) as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{display(path)}: no such object") from None
    except OSError as e:
        if "not exist" in str(e).lower() or "not found" in str(e).lower():
            raise FileNotFoundError(f"{display(path)}: no such object") from None
        raise StorageError(f"{display(path)}: {e}") from None


def read_text(path: str | os.PathLike) -> str:
    return read_bytes(path).decode()


def open_input(path: str | os.PathLike):
    """A random-access binary file: `seek`, `read`, `readinto`, `size()`/`seek(0, 2)`.
    Remote objects are read with ranged requests, so only the bytes asked for travel."""
    rem = remote(path)
    if rem is None:
        return open(path, "rb")
    fs, key = rem
    if not is_file(path):
        raise FileNotFoundError(f"{display(path)}: no such object")
    return fs.open_input_file(key)


def list_files(root: str | os.PathLike) -> list[str]:
    """Every file under `root`, as sorted relative POSIX paths ([] if `root` is absent)."""
    rem = remote(root)
    if rem is None:
        root = Path(root)
        if not root.is_dir():
            return []
        return sorted(rel for rel in (p.relative_to(root).as_posix() for p in root.rglob("*")
                                      if p.is_file()) if not _is_temp(rel))
    fs, key = rem
    try:
        infos = fs.get_file_info(pafs.FileSelector(key, recursive=True, allow_not_found=True))
    except OSError as e:
        raise StorageError(f"{display(root)}: cannot list: {e}") from None
    return sorted(rel for rel in (i.path[len(key) + 1:] for i in infos
                                  if i.type == pafs.FileType.File) if not _is_temp(rel))


def _is_temp(rel: str) -> bool:
    """A relative path inside a writer's temp file or directory (local or remote)."""
    return any(is_temp_name(part) for part in rel.split("/"))


def _local_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*")
            if p.is_file() and not _is_temp(p.relative_to(root).as_posix())]


# ---------------------------------------------------------------- writes


def publish(path: str | os.PathLike) -> None:
    """Upload a mirror file or directory to its remote object(s); a no-op for local paths.

    A directory replaces its remote copy: the old objects are deleted first (markers and
    all), then files are uploaded with the completion markers last."""
    rem = remote(path)
    if rem is None:
        return
    fs, key = rem
    path = Path(path)
    try:
        if path.is_dir():
            files = sorted(_local_files(path),
                           key=lambda p: (MARKERS.index(p.name) if p.name in MARKERS else -1,
                                          p.as_posix()))
            if fs.get_file_info(key).type == pafs.FileType.Directory:
                fs.delete_dir_contents(key)  # not delete_dir: `key` may be a bucket
            for f in files:
                _upload(fs, f, f"{key}/{f.relative_to(path).as_posix()}")
        else:
            _upload(fs, path, key)
    except OSError as e:
        raise StorageError(f"{display(path)}: upload failed: {e}") from None


def publish_missing(path: str | os.PathLike) -> int:
    """Upload the files of a mirror tree that the remote lacks (or holds at another size),
    markers last, deleting nothing: for caches that only grow (generated data, the base
    model, MLflow artifacts). Returns the number of files uploaded."""
    rem = remote(path)
    path = Path(path)
    if rem is None or not path.is_dir():
        return 0
    fs, key = rem
    have = {i.path[len(key) + 1:]: i.size
            for i in fs.get_file_info(pafs.FileSelector(key, recursive=True,
                                                        allow_not_found=True))
            if i.type == pafs.FileType.File}
    todo = sorted((p for p in _local_files(path)
                   if have.get(p.relative_to(path).as_posix()) != p.stat().st_size),
                  key=lambda p: (p.name in MARKERS, p.as_posix()))
    try:
        for f in todo:
            _upload(fs, f, f"{key}/{f.relative_to(path).as_posix()}")
    except OSError as e:
        raise StorageError(f"{display(path)}: upload failed: {e}") from None
    return len(todo)


def _upload(fs: pafs.FileSystem, src: Path, key: str) -> None:
    # pyarrow commits an output stream when it is closed, also when an exception unwinds the
    # `with`: the bytes go to a temp key next to `key` and are moved into place only once
    # complete, so `key` holds its old object or the whole new one, never a truncated one.
    size = src.stat().st_size
    direct = size > MAX_MOVE_BYTES
    parent, _, name = key.rpartition("/")
    target = key if direct else f"{parent}/{TMP_PREFIX}{name}-{uuid.uuid4().hex[:12]}"
    try:
        with open(src, "rb") as f, fs.open_output_stream(target) as out:
            while block := f.read(UPLOAD_CHUNK):
                out.write(block)
                failpoint("storage.upload")
        if not direct:
            fs.move(target, key)
    except BaseException:
        # Best effort: a truncated `target` must not stay behind (it may be the final key).
        with contextlib.suppress(OSError):
            if fs.get_file_info(target).type == pafs.FileType.File:
                fs.delete_file(target)
        raise


def pull(path: str | os.PathLike, exact: bool = False) -> None:
    """Download a remote file or tree into its mirror (files whose size differs or are
    missing: right for caches that only grow); a no-op for local paths.

    `exact=True` for a file that changes in place (the SQLite store: a stale copy can have
    the same size): always download, and remove the mirror copy if the remote has none."""
    rem = remote(path)
    if rem is None:
        return
    fs, key = rem
    path = Path(path)
    info = _info(fs, key, path)
    if info.type == pafs.FileType.File:
        _download(fs, key, path, None if exact else info.size)
        return
    if info.type == pafs.FileType.NotFound:
        if exact:
            path.unlink(missing_ok=True)
        return
    for i in fs.get_file_info(pafs.FileSelector(key, recursive=True)):
        if i.type == pafs.FileType.File and not _is_temp(i.path[len(key) + 1:]):
            _download(fs, i.path, path / i.path[len(key) + 1:], i.size)


def _download(fs: pafs.FileSystem, key: str, dest: Path, size: int | None) -> None:
    if size is not None and dest.is_file() and dest.stat().st_size == size:
        return

    def fetch(tmp: Path) -> None:
        with fs.open_input_stream(key) as src, open(tmp, "wb") as out:
            while block := src.read(8 << 20):
                out.write(block)

    write_atomic(dest, fetch)


def delete(path: str | os.PathLike) -> None:
    """Remove the remote file or tree behind a mirror path (not the mirror copy)."""
    rem = remote(path)
    if rem is None:
        return
    fs, key = rem
    info = _info(fs, key, path)
    try:
        if info.type == pafs.FileType.Directory:
            # delete_dir of a bucket would empty it, then fail (bucket deletion is off).
            (fs.delete_dir if "/" in key else fs.delete_dir_contents)(key)
        elif info.type == pafs.FileType.File:
            fs.delete_file(key)
    except OSError as e:
        raise StorageError(f"{display(path)}: cannot delete: {e}") from None



# ---------------------------------------------------------------- atomic writes + publish


def write_file(path: str | os.PathLike, data: bytes | str | Callable[[Path], None]) -> Path:
    """Write a workdir file atomically and durably (`raysoup.atomic.write_atomic`), then
    upload it when it stands for a remote object. `data`: bytes, text, or a function that
    writes the file at the path it is given."""
    path = write_atomic(Path(path), data)
    publish(path)
    return path


@contextmanager
def atomic_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """`raysoup.atomic.atomic_dir`, then the finished directory is uploaded (a remote
    workdir), completion markers last."""
    with _atomic_dir(Path(out_dir)) as tmp:
        yield tmp
    publish(out_dir)
