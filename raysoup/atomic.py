"""Crash-safe local writes: a file or directory is complete under its final name or absent.

Everything is written under a hidden temp name next to its destination, fsynced, renamed into
place, and the parent directory is fsynced, so a host crash cannot leave an empty or torn file
under the final name (rename without fsync may be persisted before the data is). Temp names
start with `.tmp-` and directories moved aside with `.old-`: `is_temp_name` recognises both, so
listings skip them and `remove_temp` clears what a killed writer left.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"


def is_temp_name(name: str) -> bool:
    return name.startswith((TMP_PREFIX, OLD_PREFIX))


def temp_sibling(path: Path) -> Path:
    path = Path(path)
    return path.parent / f"{TMP_PREFIX}{path.name}-{uuid.uuid4().hex[:12]}"


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync persists its entries: renames)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes | str | Callable[[Path], None]) -> Path:
    """Write `data` (bytes, text, or a function that writes the file at the path it is given)
    to `path` atomically and durably; returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        if callable(data):
            data(tmp)
        elif isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@contextmanager
def atomic_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a hidden temp sibling of `out_dir` to fill; on success every file in it is
    fsynced and it replaces `out_dir`, on error it is removed. A directory already at
    `out_dir` is replaced as `swap_into_place` does: deleted once the new one is in place, so
    `out_dir` must be one raysoup wrote (a user's directory: `move_aside` it first). A crash
    at any point leaves the old or the new directory under the final name (plus temp names
    `remove_temp` clears)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out_dir)
    tmp.mkdir()
    try:
        yield tmp
        for p in tmp.rglob("*"):
            fsync_path(p)
        fsync_path(tmp)
        swap_into_place(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def swap_into_place(new: Path, dest: Path) -> None:
    """Rename the directory `new` to `dest`, replacing a directory already there: the old one
    is moved aside, then deleted once the new one is in place. Only for a `dest` raysoup
    wrote; what a user owns is `move_aside`d first, and so kept."""
    # rename() cannot replace a non-empty directory: the old one goes aside first. A reader
    # racing with this sees the old or the new directory, or briefly none.
    old = move_aside(dest) if dest.exists() else None
    os.rename(new, dest)
    fsync_path(dest.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def move_aside(path: Path) -> Path:
    """Rename `path` (a file or directory) to `.old-<name>-<id>` next to it and return the new
    path; nothing is deleted. `remove_temp` clears such names: a user's directory moved aside
    must be named to the user, who decides what becomes of it."""
    path = Path(path)
    old = path.parent / f"{OLD_PREFIX}{path.name}-{uuid.uuid4().hex[:12]}"
    os.rename(path, old)
    fsync_path(path.parent)
    return old


def remove_temp(root: Path, files: bool = True, dirs: bool = True) -> list[str]:
    """Delete the temp files/directories a killed writer left directly in `root`; returns
    their names. Only call this when no writer is active in `root`."""
    root = Path(root)
    if not root.is_dir():
        return []
    stale = [p for p in root.iterdir() if is_temp_name(p.name)
             and ((dirs and p.is_dir()) or (files and not p.is_dir()))]
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return sorted(p.name for p in stale)
