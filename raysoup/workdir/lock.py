"""One driver per workdir: the workdir's locks, on a local disk or on object storage.

Two locks, named for what they guard (`WORKDIR/.raysoup-<name>.lock`):

- `sweep`: Tune's state, the ingredients being trained (their `.tmp-*` directories), the
  anytime journal. Held by an invocation that runs the sweep stage (`raysoup run`, `resume`,
  `sweep`), for its whole life.
- `soups`: `results.parquet`, `soups/` (a soup stage's `.tmp-<recipe>-*` directories, the
  greedy journals), `report/`. Held for the evaluate, soup and report stages. `raysoup soup`
  (or `evaluate`, `report`) takes only this one, so it runs beside a sweep in progress, as
  documented; a `raysoup run` that reaches its evaluate stage while another invocation holds
  it waits for it.

`raysoup import` takes both for its short life: it adds ingredients, which a sweep writes
beside and the evaluate and soup stages read.

How a lock is held, and when a dead holder's lock is taken over:

- **local path** (also a shared file system that supports it): `fcntl.flock` on the lock
  file, which the kernel releases when the holding process ends, killed or not. A dead
  holder's lock is therefore free at once; pid reuse cannot fake a live holder. The file
  holds the holder's record (host, pid, since, command), for the error only.
- **object storage**, or a file system without flock: a *lease*, the holder's record as an
  object, renewed every `ttl/4` seconds by a heartbeat thread. It is taken over when its
  holder is dead: on the same host, its pid no longer exists; on another host, its last
  renewal is more than `ttl` seconds old (by the holders' clocks: they must agree to well
  within `ttl`). Taking a lease writes the record, waits `settle` seconds and reads it back;
  whoever's record is there holds it. Object stores with read-after-write consistency (S3,
  GCS) make that exclusive as long as a contender's read-to-write gap is shorter than
  `settle`; pyarrow offers no conditional write (If-None-Match), so this is the guarantee,
  not an atomic create. A holder that finds its lease taken (it stalled for longer than
  `ttl`) stops at its next stage (`WorkdirLocks.check`).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Self

from raysoup import storage

log = logging.getLogger(__name__)

SWEEP, SOUPS = "sweep", "soups"
LEASE_TTL = 60.0  # seconds without a renewal after which another host may take a lease
LEASE_SETTLE = 2.0  # seconds between writing a lease and reading it back
SETTLE_ENV = "RAYSOUP_LEASE_SETTLE_S"  # overrides LEASE_SETTLE (a store with slower writes: more)
WAIT_POLL = 2.0
NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class WorkdirLocked(RuntimeError):
    """Another live invocation holds a lock of this workdir (or this one lost its lease)."""


def lock_path(workdir: Path, name: str) -> Path:
    return Path(workdir) / f".raysoup-{name}.lock"


def _record() -> dict:
    now = time.time()
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "since": datetime.datetime.fromtimestamp(now, datetime.UTC)
            .isoformat(timespec="seconds"),
            "renewed": now, "token": uuid.uuid4().hex, "command": " ".join(sys.argv)[:200]}


def _parse(text: bytes | str) -> dict | None:
    try:
        held = json.loads(text)
    except ValueError:
        return None
    return held if isinstance(held, dict) and held.get("pid") else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def holder_dead(held: dict, ttl: float, now: float | None = None) -> bool:
    """The takeover rule for a lease: same host, pid gone; any host, no renewal for `ttl` s."""
    if held.get("host") == socket.gethostname() and not _pid_alive(int(held["pid"])):
        return True
    return (now or time.time()) - float(held.get("renewed", 0)) > ttl


def describe(workdir: Path, name: str, held: dict) -> str:
    who = (f"pid {held.get('pid')} on {held.get('host')} since {held.get('since')}"
           if held else "another process (its record is not written yet)")
    command = f" (`{held['command']}`)" if held.get("command") else ""
    return (f"{storage.display(workdir)} is in use: its {name} lock is held by {who}"
            f"{command}. One driver per workdir: wait for it to finish or stop it; a lock "
            "whose holder has died is taken over (docs/resuming.md, Guarantees).")


class _FileLock:
    """flock on a local lock file: released by the kernel when the holder ends."""

    def __init__(self, path: Path):
        self.path, self.fd = path, None

    def try_acquire(self) -> dict | None:
        """None once held; else the holder's record ({} if it has not written it yet).
        OSError(ENOLCK, EOPNOTSUPP, ENOSYS) where the file system has no flock."""
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held = _parse(os.pread(fd, 1 << 16, 0)) or {}
            os.close(fd)
            return held
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_record()).encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return None

    def lost(self) -> dict | None:
        return None  # the kernel holds it for us until we close it

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # no holder to name once released
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None


class _Lease:
    """A lease object: written, read back after `settle`, renewed by a heartbeat thread."""

    def __init__(self, path: Path, ttl: float, settle: float):
        self.path, self.ttl, self.settle = path, ttl, settle
        self.mine: dict | None = None
        self.taken_by: dict | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read(self) -> dict | None:
        try:
            return _parse(storage.read_bytes(self.path))
        except FileNotFoundError:
            return None

    def try_acquire(self) -> dict | None:
        held = self.read()
        if held is not None and not holder_dead(held, self.ttl):
            return held
        if held is not None:
            log.warning("taking over the %s of pid %s on %s (since %s): its holder is dead",
                        self.path.name, held.get("pid"), held.get("host"), held.get("since"))
        mine = _record()
        storage.write_file(self.path, json.dumps(mine))
        time.sleep(self.settle)  # a contender that read before our write has written by now
        back = self.read() or {}
        if back.get("token") != mine["token"]:
            return back
        self.mine = mine
        self._thread = threading.Thread(target=self._heartbeat, daemon=True,
                                        name=f"raysoup-{self.path.name}")
        self._thread.start()
        return None

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            with contextlib.suppress(OSError):  # a store hiccup: the next beat retries
                now = self.read() or {}
                if now.get("token") != self.mine["token"]:
                    self.taken_by = now
                    name = self.path.name.removeprefix(".raysoup-").removesuffix(".lock")
                    log.error("lost the lease: %s", describe(self.path.parent, name, now))
                    return
                self.mine["renewed"] = time.time()
                storage.write_file(self.path, json.dumps(self.mine))

    def lost(self) -> dict | None:
        return self.taken_by

    def release(self) -> None:
        if self.mine is None:
            return
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(OSError):
            if (self.read() or {}).get("token") == self.mine["token"]:
                storage.delete(self.path)
                self.path.unlink(missing_ok=True)  # the mirror's copy, or the local file
        self.mine = None


def _has_flock(path: Path) -> bool:
    """The file system of `path` supports flock (some network and FUSE mounts do not)."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True  # it works: another process holds it
    except OSError as e:
        if e.errno in NO_FLOCK:
            return False
        raise
    finally:
        os.close(fd)  # releases the probe's shared lock
    return True


def lease_settle() -> float:
    """The lease's settle time: LEASE_SETTLE, or RAYSOUP_LEASE_SETTLE_S where it is set."""
    raw = os.environ.get(SETTLE_ENV, "").strip()
    if not raw:
        return LEASE_SETTLE
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ValueError(f"{SETTLE_ENV}={raw!r}: expected a number of seconds >= 0")
    return value


class WorkdirLocks:
    """The locks one invocation holds on a workdir; `release()` (or `with`) frees them all."""

    def __init__(self, workdir: Path, ttl: float = LEASE_TTL, settle: float | None = None):
        self.workdir, self.ttl = Path(workdir), ttl
        self.settle = lease_settle() if settle is None else settle
        self.held: dict[str, _FileLock | _Lease] = {}

    def take(self, name: str, wait: bool = False) -> None:
        """Hold lock `name`; WorkdirLocked naming its holder if another live process holds it
        (`wait`: poll until it is free instead)."""
        if name in self.held:
            return
        path = lock_path(self.workdir, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = (_FileLock(path) if not storage.is_remote(path) and _has_flock(path)
                else _Lease(path, self.ttl, self.settle))
        said = False
        while (held := lock.try_acquire()) is not None:
            if not wait:
                raise WorkdirLocked(describe(self.workdir, name, held))
            if not said:
                log.info("waiting: %s", describe(self.workdir, name, held))
                said = True
            time.sleep(WAIT_POLL)
        self.held[name] = lock

    def check(self) -> None:
        """Raise WorkdirLocked if a lease this invocation held was taken over meanwhile."""
        for name, lock in self.held.items():
            if (by := lock.lost()) is not None:
                raise WorkdirLocked(f"this run lost its {name} lock of "
                                    f"{storage.display(self.workdir)} (it stalled for over "
                                    f"{self.ttl:.0f} s); "
                                    + describe(self.workdir, name, by))

    def release(self) -> None:
        for lock in self.held.values():
            lock.release()
        self.held.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
