"""Read a safetensors file tensor by tensor, with memory bounded by what the caller keeps.

The lazy reader every streaming consumer shares (the soup reduction, the ingredient audit,
Model Stock, learned soup): only the header is parsed on open; each tensor is a positioned
read (`os.preadv`, or ranged requests for a remote file) into fresh memory, or, through a
`Scratch`, a view of the file's mapping whose pages leave the process at the next read. A plain
`safe_open` mapping keeps every touched page resident while the handle is open: streaming N
ingredients through it holds N models resident by the end.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
import warnings
from pathlib import Path
from typing import NamedTuple, Self

import numpy as np
import torch

from raysoup import storage
from raysoup.checkpoints.ingredient import MANIFEST_FILE, WEIGHTS_FILE

# A remote file's sequential slice reads are fetched this many bytes at a time (per open file:
# a merge over N remote ingredients holds N windows).
READAHEAD = 4 << 20


class TensorEntry(NamedTuple):
    """One tensor of a safetensors header: its bytes [begin, end) after the header, its dtype
    and shape."""

    begin: int
    end: int
    dtype: torch.dtype
    shape: tuple[int, ...]


class TensorFileError(ValueError):
    """An unreadable or inconsistent tensor file; the message names the file (and tensor)."""


def open_tensors(file: Path) -> _TensorFile:
    """Read a safetensors file tensor by tensor: a context manager with `keys()` /
    `get_tensor(name[, scratch])`, like `safe_open`, but RSS holds only what the caller keeps —
    streaming many ingredients through `safe_open` keeps every touched page of every file
    resident."""
    return _open(file)


def _open(file: Path) -> _TensorFile:
    try:
        return _TensorFile(file)
    except (OSError, ValueError, KeyError, TypeError, struct.error) as e:
        raise TensorFileError(f"{storage.display(file)}: cannot open safetensors file: {e!r}"
                             ) from None


# safetensors dtype codes -> torch dtypes (the ones torch can hold).
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


class _TensorFile:
    """A safetensors file read tensor by tensor: positioned reads (`os.preadv`, or ranged
    requests for a remote file) into fresh tensors, or with a `Scratch` a view of the file's
    mapping that the next read releases; memory is only what the caller keeps. Same `keys()` /
    `get_tensor()` surface as a `safe_open` handle."""

    def __init__(self, file: Path):
        self.file = file
        # A remote workdir's file is read with ranged requests: only the bytes of the tensors
        # asked for travel (raysoup.storage).
        self.remote = storage.open_input(file) if storage.is_remote(file) else None
        self.fd = os.open(file, os.O_RDONLY) if self.remote is None else -1
        self.mm: mmap.mmap | None = None
        self._ahead: tuple[int, bytes] = (0, b"")  # remote read-ahead: (offset, bytes)
        self._next = -1  # where the last remote slice read ended
        try:
            size = os.fstat(self.fd).st_size if self.remote is None else self.remote.size()
            if self.remote is None:
                _check_manifest_size(file, size)
            self.size = size
            (n,) = struct.unpack("<Q", self._pread(8, 0))
            if n > size - 8:
                raise ValueError(f"header length {n} exceeds the file size {size}")
            header = json.loads(self._pread(n, 8))
            header.pop("__metadata__", None)
            self.base = 8 + n
            self.entries: dict[str, TensorEntry] = {}
            for name, info in header.items():
                begin, end = info["data_offsets"]
                dtype = _DTYPES.get(info["dtype"])
                if dtype is None:
                    raise ValueError(f"tensor {name!r}: unsupported dtype {info['dtype']!r}")
                if not 0 <= begin <= end <= size - self.base or \
                        end - begin != math.prod(info["shape"]) * dtype.itemsize:
                    raise ValueError(f"tensor {name!r}: byte range {[begin, end]} does not fit "
                                     f"{info['dtype']}{info['shape']} in a {size}-byte file")
                self.entries[name] = TensorEntry(begin, end, dtype, tuple(info["shape"]))
        except BaseException:
            self.close()
            raise

    def _pread(self, n: int, offset: int) -> bytes:
        if self.remote is not None:
            return self.remote.read_at(n, offset)
        return os.pread(self.fd, n, offset)

    def _readinto(self, view: memoryview, offset: int) -> int:
        try:
            if self.remote is not None:
                self.remote.seek(offset)
                return self.remote.readinto(view)
            return os.preadv(self.fd, [view], offset)
        except OSError as e:  # EIO, ESTALE (a file replaced under an NFS client), ...
            raise TensorFileError(f"{storage.display(self.file)}: read failed: {e!r}") from None

    def _check_unchanged(self, end: int) -> None:
        # A mapped page past the file's current end raises SIGBUS, which kills the process
        # (Ray then retries the task until it gives up) without naming the file: a file that
        # shrank since it was opened is an error before its mapping is touched.
        try:
            now = os.fstat(self.fd).st_size
        except OSError as e:
            raise TensorFileError(f"{self.file}: cannot stat: {e!r}") from None
        if now != self.size or now < end:
            raise TensorFileError(f"{self.file}: changed from {self.size} to {now} bytes while "
                                 "being read (truncated or replaced in place)")

    def close(self) -> None:
        if self.remote is not None:
            self.remote.close()
        else:
            os.close(self.fd)
        if self.mm is not None:
            try:
                self.mm.close()
            except BufferError:  # a caller still holds a view; the mapping goes with it
                pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def keys(self):
        return self.entries.keys()

    def get_tensor(self, name: str, scratch: Scratch | None = None) -> torch.Tensor:
        """The tensor in fresh memory; with `scratch`, a read-only tensor valid until the next
        read through `scratch`: for a local file a view of its mapping (no copy; unless
        `scratch.maps` is False), for a remote one (or then) the scratch buffer."""
        begin, end, dtype, shape = self.entries[name]
        offset = self.base + begin
        if scratch is not None and scratch.maps and self.remote is None \
                and offset % dtype.itemsize == 0 and end > begin:
            self._check_unchanged(self.base + end)
            if self.mm is None:
                self.mm = mmap.mmap(self.fd, 0, access=mmap.ACCESS_READ)
            scratch.hold(self.mm, offset, self.base + end)
            view = np.frombuffer(self.mm, dtype=np.uint8, count=end - begin, offset=offset)
            return numpy_view(view).view(dtype).reshape(shape)
        raw = scratch.take(end - begin) if scratch else torch.empty(end - begin, dtype=torch.uint8)
        self._read_exactly(name, memoryview(raw.numpy()), offset)
        return raw.view(dtype).reshape(shape)

    def mapped(self, name: str) -> tuple[int, int, int] | None:
        """(address of entry 0, start, end of the mapping) of a float32 tensor of a local file
        in the file's mapping, valid while the file is open, for compiled loops that read it in
        place (no copy) and release its pages behind them (`raysoup.reduce.mapped`); None for
        a remote file or another dtype (read those through `read_entries`). The file must
        still be the size it was opened at: a mapped page past its end would kill the process
        (SIGBUS) without naming it."""
        begin, end, dtype, _ = self.entries[name]
        if self.remote is not None or dtype != torch.float32:
            return None
        self._check_unchanged(self.base + end)
        if self.mm is None:
            self.mm = mmap.mmap(self.fd, 0, access=mmap.ACCESS_READ)
        view = np.frombuffer(self.mm, np.uint8, count=1)
        start = view.ctypes.data  # (the view goes now: a held view would block close())
        del view
        return start + self.base + begin, start, start + len(self.mm)

    def read_entries(self, name: str, lo: int, hi: int, out: np.ndarray) -> None:
        """Entries [lo, hi) of the flattened tensor into `out` (a contiguous float32 array of
        hi − lo entries; other dtypes are converted): a small positioned read straight into
        memory the caller reuses (a merge that keeps its state in the CPU's cache); a mapping's
        view would fault its pages in and out instead, which costs more than the copy here."""
        begin, end, dtype, _ = self.entries[name]
        if not 0 <= lo <= hi <= (end - begin) // dtype.itemsize or out.size != hi - lo:
            raise TensorFileError(f"tensor {name!r}: entries [{lo}, {hi}) out of range "
                                  f"in {self.file}")
        offset = self.base + begin + lo * dtype.itemsize

        def read(view: memoryview) -> None:
            if self.remote is None:
                self._read_exactly(name, view, offset)
            else:
                self._read_ahead(name, view, offset, self.base + end)

        if dtype == torch.float32:
            read(memoryview(out).cast("B"))
            return
        raw = torch.empty(hi - lo, dtype=dtype)
        read(memoryview(raw.view(torch.uint8).numpy()))
        torch.from_numpy(out).copy_(raw)

    def _read_ahead(self, name: str, view: memoryview, offset: int, limit: int) -> None:
        """A remote read that continues the previous one fetches up to READAHEAD bytes (not
        past `limit`, the tensor's end) and serves the next slices from them: one ranged
        request per few MiB, not per slice (a merge reads 256 KiB slices). Reads that jump
        (sampled runs) fetch exactly what they ask for."""
        n = len(view)
        start, held = self._ahead
        if start <= offset and offset + n <= start + len(held):
            view[:] = held[offset - start:offset - start + n]
        elif offset == self._next and n < READAHEAD:
            held = self._pread(min(limit, offset + READAHEAD) - offset, offset)
            if len(held) < n:
                raise TensorFileError(f"tensor {name!r}: {self.file} ends early (truncated "
                                      "file)")
            self._ahead = (offset, held)
            view[:] = held[:n]
        else:
            self._read_exactly(name, view, offset)
        self._next = offset + n

    def _read_exactly(self, name: str, view: memoryview, offset: int) -> None:
        done = 0
        while done < len(view):
            got = self._readinto(view[done:], offset + done)
            if got == 0:
                raise TensorFileError(f"tensor {name!r}: {self.file} ends early (truncated file)")
            done += got


def _check_manifest_size(file: Path, size: int) -> None:
    """An ingredient's tensor file must have the size its manifest records: a truncated copy
    or a stale file (another write's) is refused, naming the file, before anything is mapped."""
    file = Path(file)
    manifest = file.with_name(MANIFEST_FILE)
    if file.name != WEIGHTS_FILE or not manifest.is_file():
        return  # a soup shard or a bare file: its header is checked against its size below
    try:
        expected = json.loads(manifest.read_text()).get("bytes")
    except (OSError, ValueError):
        return  # an unreadable manifest is the audit's to report; the header check still runs
    if expected is not None and expected != size:
        raise ValueError(f"{size} bytes, but {manifest} says {expected} (truncated or stale)")


class Scratch:
    """Memory for reads that live until the next read: a reusable byte buffer (grown to the
    largest tensor), or a held range of a file mapping, which the next read releases.

    A local file's tensor is a view of its page-cache pages (no copy: a reduction is bound by
    memory bandwidth, and a copy adds a pass) and, once released, those pages leave this
    process (MADV_DONTNEED), so a stream over N ingredients still holds about one tensor,
    not N files (touched mapped pages count in RSS)."""

    def __init__(self, maps: bool = True):
        # maps=False: local files are read into the buffer too (where mapping the page cache
        # costs more than copying it: raysoup.reduce.route)
        self.maps = maps
        self.buf = torch.empty(0, dtype=torch.uint8)
        self._held: tuple[mmap.mmap, int, int] | None = None

    def take(self, nbytes: int) -> torch.Tensor:
        self.release()
        if self.buf.numel() < nbytes:
            self.buf = torch.empty(nbytes, dtype=torch.uint8)
        return self.buf[:nbytes]

    def hold(self, mm: mmap.mmap, begin: int, end: int) -> None:
        self.release()
        self._held = (mm, begin, end)

    def release(self) -> None:
        if self._held is None:
            return
        mm, begin, end = self._held
        self._held = None
        start = begin - begin % mmap.PAGESIZE
        if hasattr(mmap, "MADV_DONTNEED") and not mm.closed:
            mm.madvise(mmap.MADV_DONTNEED, start, end - start)


def numpy_view(a: np.ndarray) -> torch.Tensor:
    """A torch view of a possibly read-only array; callers must not write to it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.asarray(a))
