"""`raysoup data pack IMAGEFOLDER OUT`: an ImageFolder as Parquet shards raysoup reads.

ImageNet as 1.28M small objects is slow to list and read on object storage; as a few hundred
Parquet files it is a handful of large sequential reads. The shards have raysoup's Parquet
layout (`data/parquet.py`): columns key ("<class_dir>/<file>"), image (the file's bytes,
unchanged), label (int64) and caption (null), the class names in the schema metadata.

Memory is one row group: files are read (in threads: object storage is latency-bound) a row
group at a time, checked, written and dropped. Small row groups keep a random read cheap.
OUT appears complete or not at all: locally the shards are written to a temp directory that
replaces OUT at the end; on S3/GCS each shard goes to a temp key and is moved into place. The
`_COMPLETE` marker (rows, rows per file) comes last either way.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

from raysoup.atomic import (
    TMP_PREFIX,
    is_temp_name,
    move_aside,
    swap_into_place,
    temp_sibling,
    write_atomic,
)
from raysoup.data import fs as data_fs
from raysoup.data.imagefolder import IMAGE_SUFFIXES, numeric_dir_map
from raysoup.data.images import DataError
from raysoup.data.parquet import CLASSNAMES_KEY, SUBSET_KEY
from raysoup.progress import Progress

log = logging.getLogger(__name__)

COMPLETE = "_COMPLETE"
SCHEMA = pa.schema([("key", pa.string()), ("image", pa.binary()), ("label", pa.int64()),
                    ("caption", pa.string())])
# JPEG bytes do not compress; the small columns do. Min/max statistics of the image column
# would copy image bytes into every footer.
_WRITE_OPTS = {"compression": {"key": "snappy", "image": "none", "label": "snappy",
                               "caption": "snappy"},
               "use_dictionary": ["label"], "write_statistics": ["key", "label"]}
VERIFY = ("header", "decode")


@dataclass
class PackResult:
    out: str
    rows: int
    files: dict[str, int]  # shard name -> rows
    skipped: list[str] = field(default_factory=list)  # keys of corrupt files (--skip-corrupt)
    bytes: int = 0  # image bytes packed
    seconds: float = 0.0


def _class_dirs(src: str) -> list[str]:
    entries = data_fs.listdir(src)
    dirs = [e.base_name for e in entries
            if e.type == pafs.FileType.Directory and not e.base_name.startswith(".")]
    if not dirs:
        raise DataError(f"image folder {src} has no class directories")
    return sorted(dirs)


def _images_in(src: str, d: str) -> list[str]:
    return sorted(e.base_name for e in data_fs.listdir(data_fs.join(src, d))
                  if e.type == pafs.FileType.File and not e.base_name.startswith(".")
                  and Path(e.base_name).suffix.lower() in IMAGE_SUFFIXES)


def _label_space(src: str, own: list[str], classes_from: str | None) -> tuple[dict[str, int],
                                                                            list[str]]:
    """{own dir: label}, and the label space's dir names."""
    if classes_from is None:
        return {d: i for i, d in enumerate(own)}, own
    space = _class_dirs(classes_from)
    numeric = numeric_dir_map(own, space)  # ImageNetV2: dirs named by class index
    named = {d: numeric[d] if numeric else d for d in own}
    unknown = sorted(d for d, n in named.items() if n not in space)
    if unknown:
        raise DataError(f"{src}: class directories {unknown[:5]} are not class directories of "
                        f"--classes-from {classes_from} ({len(space)} classes, e.g. {space[:3]})")
    index = {d: i for i, d in enumerate(space)}
    return {d: index[n] for d, n in named.items()}, space


def _classnames(spec: str | None, space: list[str]) -> list[str]:
    if spec is None:
        return list(space)
    if spec == "imagenet":
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        names = list(IMAGENET_CLASSNAMES)
    else:  # a file: a JSON list, or one name per line
        text = data_fs.read_bytes(spec).decode()
        try:
            names = json.loads(text)
        except json.JSONDecodeError:
            names = [line.strip() for line in text.splitlines() if line.strip()]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DataError(f"--classnames {spec}: expected a JSON list of strings or one name "
                            "per line")
    if len(names) != len(space):
        raise DataError(f"--classnames {spec}: {len(names)} names for {len(space)} classes")
    return names


def check_image(data: bytes, verify: str = "header") -> str | None:
    """Why `data` is not a usable image, or None. "header": PIL parses the header (cheap) and a
    JPEG must end in its end-of-image marker (a truncated download does not); "decode": the
    whole image is decoded."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
            if verify == "decode":
                img.load()
            else:
                img.verify()
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
        return f"{type(e).__name__}: {e}"
    # In JPEG scan data 0xFF is always followed by 0x00 or a restart marker, so FF D9 near the
    # end is the end-of-image marker (a little trailing garbage after it is tolerated).
    if fmt == "JPEG" and b"\xff\xd9" not in data[-1024:]:
        return "truncated JPEG (no end-of-image marker)"
    return None


def _packed(path: Path) -> bool:
    """True when `path` holds only what a pack writes (shards, the marker): replaceable."""
    return all(p.is_file() and (p.name == COMPLETE or p.name.startswith("part-")
                                or is_temp_name(p.name)) for p in path.iterdir())


class _Shards:
    """Where shards go, and how they are moved into place when complete."""

    def __init__(self, out: str, overwrite: bool):
        self.out, self.remote = out, data_fs.is_uri(out)
        self.fs, key = data_fs.resolve(out)
        self.key = key.rstrip("/")
        existing = self._existing()
        if existing and not overwrite:
            raise DataError(f"{out} exists and is not empty ({existing[0]}, ...): pass "
                            "--overwrite to replace it, or choose another OUT")
        if self.remote:
            # The old marker goes first: from here on no reader takes OUT for a complete set.
            if f"{self.key}/{COMPLETE}" in existing:
                self.fs.delete_file(f"{self.key}/{COMPLETE}")
            self.stale = [p for p in existing if p.rsplit("/", 1)[-1].startswith("part-")]
        else:
            self.tmp = temp_sibling(Path(self.key))
            self.tmp.mkdir(parents=True)

    def _existing(self) -> list[str]:
        try:
            info = self.fs.get_file_info(self.key)
            if info.type == pafs.FileType.NotFound:
                return []
            if info.type == pafs.FileType.File:
                raise DataError(f"{self.out} is a file, not a directory")
            return sorted(e.path for e in self.fs.get_file_info(
                pafs.FileSelector(self.key, recursive=True)) if e.type == pafs.FileType.File)
        except OSError as e:
            raise DataError(f"cannot list {self.out}: {e}") from None

    def open(self, name: str):
        """(output stream, its temp key) for shard `name`."""
        if self.remote:
            tmp = f"{self.key}/{TMP_PREFIX}{name}-{uuid.uuid4().hex[:12]}"
        else:
            tmp = str(self.tmp / name)
        try:
            return self.fs.open_output_stream(tmp), tmp
        except OSError as e:
            raise DataError(f"cannot write {data_fs.display(self.fs, tmp)}: {e}") from None

    def done(self, name: str, tmp: str) -> None:
        if self.remote:  # a whole object under its final key, or none
            self.fs.move(tmp, f"{self.key}/{name}")

    def finish(self, marker: dict) -> None:
        text = json.dumps(marker, indent=1, sort_keys=True)
        if not self.remote:
            write_atomic(self.tmp / COMPLETE, text)
            dest = Path(self.key)
            if dest.exists() and not _packed(dest):  # --overwrite: a user's files are kept
                log.warning("pack: --overwrite: moved the existing %s aside to %s (nothing "
                            "deleted)", dest, move_aside(dest))
            swap_into_place(self.tmp, dest)
            return
        for path in self.stale:  # shards of an older, larger set
            if path.rsplit("/", 1)[-1] not in marker["files"]:
                self.fs.delete_file(path)
        stream, tmp = self.open(COMPLETE)
        with stream:
            stream.write(text.encode())
        self.fs.move(tmp, f"{self.key}/{COMPLETE}")

    def abort(self, tmp: str | None) -> None:
        """Best effort: no temp key or directory stays behind."""
        try:
            if self.remote:
                if tmp and self.fs.get_file_info(tmp).type == pafs.FileType.File:
                    self.fs.delete_file(tmp)
            else:
                self.fs.delete_dir(str(self.tmp))
        except OSError:
            pass


def _rows(src: str, dirs: list[str], counts: dict[str, int], labels: dict[str, int],
          pool: ThreadPoolExecutor) -> Iterator[tuple[str, str, int]]:
    """(key, path, label) in class-dir then file order, listing one class at a time (the
    next class's listing is fetched while this one's files are read)."""
    ahead = pool.submit(_images_in, src, dirs[0])
    for i, d in enumerate(dirs):
        files = ahead.result()
        if i + 1 < len(dirs):
            ahead = pool.submit(_images_in, src, dirs[i + 1])
        if len(files) != counts[d]:
            raise DataError(f"{data_fs.join(src, d)} changed while packing: {counts[d]} images "
                            f"listed first, {len(files)} now")
        for f in files:
            yield f"{d}/{f}", data_fs.join(src, d, f), labels[d]


def _take(rows: Iterator, n: int) -> list:
    out = []
    for row in rows:
        out.append(row)
        if len(out) == n:
            break
    return out


def pack_imagefolder(src: str, out: str, *, rows_per_group: int = 256,
                     rows_per_file: int = 10_000, classnames: str | None = None,
                     classes_from: str | None = None, skip_corrupt: bool = False,
                     verify: str = "header", threads: int = 16, overwrite: bool = False,
                     progress: bool = True) -> PackResult:
    """Pack the ImageFolder `src` (local or s3:// / gs://) into Parquet shards at `out`.

    Labels index the sorted class dirs, or with `classes_from` (another ImageFolder, e.g. the
    train set) that folder's sorted dirs: this folder's dirs map into them by name, or by index
    when named 0..N-1 (ImageNetV2), and the covered classes become the split's class subset
    (ImageNet-R/A). `classnames`: "imagenet" or a file of names (JSON list or lines); default
    the label space's dir names. A corrupt file is an error naming it, or with `skip_corrupt`
    left out and listed in the result and the marker.
    """
    if rows_per_group < 1 or rows_per_file < 1:
        raise DataError(f"rows per group/file must be >= 1, got {rows_per_group}/{rows_per_file}")
    if verify not in VERIFY:
        raise DataError(f"verify must be one of {VERIFY}, got {verify!r}")
    start = time.perf_counter()
    dirs = _class_dirs(src)
    labels, space = _label_space(src, dirs, classes_from)
    names = _classnames(classnames, space)
    counts = _count_images(src, dirs, threads)
    shards = _Shards(out, overwrite)
    result = PackResult(out, 0, {})
    bar = Progress(sum(counts.values()), "pack", "img") if progress else None
    part = _Part(shards, _schema(names, labels, space))
    packer = _Packer(src, verify, skip_corrupt, rows_per_group, rows_per_file, part, result, bar)
    try:
        with ThreadPoolExecutor(max(1, threads)) as pool:
            rows = _rows(src, dirs, counts, labels, pool)
            while packer.pack_part(rows, pool):
                pass
        if not result.rows:
            raise DataError(f"{src}: every image was corrupt ({len(result.skipped)} skipped)")
        result.seconds = time.perf_counter() - start
        shards.finish({"rows": result.rows, "files": result.files, "source": src,
                       "classes": len(space), "rows_per_group": rows_per_group,
                       "skipped": len(result.skipped), "skipped_keys": result.skipped[:1000]})
    except BaseException:
        part.abort()
        raise
    finally:
        if bar:
            bar.close()
    return result


def _count_images(src: str, dirs: list[str], threads: int) -> dict[str, int]:
    """Images per class dir, refusing an empty one.

    A first listing pass: empty class folders fail before anything is written, and the
    progress has a total. Only counts are kept; classes are listed in parallel (on object
    storage each listing is a round trip)."""
    with ThreadPoolExecutor(max(1, threads)) as pool:
        counts = dict(zip(dirs, pool.map(lambda d: len(_images_in(src, d)), dirs)))
    empty = [d for d in dirs if not counts[d]]
    if empty:
        raise DataError(f"image folder {src}: {len(empty)} class folder(s) without images "
                        f"({', '.join(sorted(IMAGE_SUFFIXES))}): "
                        f"{', '.join(data_fs.join(src, d) for d in empty[:5])}")
    return counts


def _schema(names: list[str], labels: dict[str, int], space: list[str]) -> pa.Schema:
    """SCHEMA with the class names and, where this folder covers only some, the subset."""
    covered = sorted(set(labels.values()))
    subset = covered if len(covered) < len(space) else None
    return SCHEMA.with_metadata({CLASSNAMES_KEY: json.dumps(names).encode(),
                                 SUBSET_KEY: json.dumps(subset).encode()})


class _Part:
    """The Parquet shard being written: opened on its first kept row, published when full."""

    def __init__(self, shards: _Shards, schema: pa.Schema):
        self.shards, self.schema = shards, schema
        self.writer = self.stream = self.tmp = None

    @property
    def opened(self) -> bool:
        return self.writer is not None

    def write(self, name: str, keys: list[str], images: list[bytes], labels: list[int]) -> None:
        if self.writer is None:
            self.stream, self.tmp = self.shards.open(name)
            self.writer = pq.ParquetWriter(self.stream, self.schema, **_WRITE_OPTS)
        self.writer.write_table(pa.table(
            {"key": keys, "image": images, "label": labels,
             "caption": pa.nulls(len(keys), pa.string())}, schema=self.schema),
            row_group_size=len(keys))

    def publish(self, name: str) -> None:
        self.writer.close()
        self.stream.close()
        self.writer = self.stream = None
        self.shards.done(name, self.tmp)
        self.tmp = None

    def abort(self) -> None:
        # Close first: a remote stream commits its object on close, also a late one (GC).
        for handle in (self.writer, self.stream):
            # The original error is the one to report.
            with contextlib.suppress(Exception):
                if handle is not None:
                    handle.close()
        self.shards.abort(self.tmp)


@dataclass
class _Packer:
    """Reads, checks and writes rows a row group at a time, a shard at a time."""

    src: str
    verify: str
    skip_corrupt: bool
    rows_per_group: int
    rows_per_file: int
    part: _Part
    result: PackResult
    bar: Progress | None

    def pack_part(self, rows: Iterator, pool: ThreadPoolExecutor) -> bool:
        """Write the next shard from `rows`; False when none was left to write."""
        name = f"part-{len(self.result.files):05d}.parquet"
        in_file = 0
        while in_file < self.rows_per_file:
            group = _take(rows, min(self.rows_per_group, self.rows_per_file - in_file))
            if not group:
                break
            in_file += self._pack_group(name, group, pool)
            if self.bar:
                self.bar.update(len(group), f"{len(self.result.skipped)} skipped"
                                if self.result.skipped else "")
            del group  # one row group in memory at a time
        if not self.part.opened:
            return False
        self.part.publish(name)
        self.result.files[name] = in_file
        self.result.rows += in_file
        return True

    def _pack_group(self, name: str, group: list, pool: ThreadPoolExecutor) -> int:
        """Write one row group's readable images; how many it kept."""
        keys, images, labels = [], [], []
        for key, data, label, problem in pool.map(self._load, group):
            if problem is not None:
                if not self.skip_corrupt:
                    raise DataError(f"{data_fs.join(self.src, key)}: not a readable image "
                                    f"({problem}); --skip-corrupt leaves such files out")
                log.warning("pack: skipping %s: %s", data_fs.join(self.src, key), problem)
                self.result.skipped.append(key)
                continue
            keys.append(key)
            images.append(data)
            labels.append(label)
            self.result.bytes += len(data)
        if keys:
            self.part.write(name, keys, images, labels)
        return len(keys)

    def _load(self, row: tuple[str, str, int]) -> tuple[str, bytes, int, str | None]:
        key, path, label = row
        data = data_fs.read_bytes(path)
        return key, data, label, check_image(data, self.verify)
