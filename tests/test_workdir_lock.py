"""One driver per workdir (raysoup/workdir/lock.py): a second driver is refused naming the
holder, a dead holder's lock is taken over, and `raysoup soup` beside a sweep neither waits
for it nor deletes what a live soup stage is writing. The holders are real processes; the
pipeline is refused before Ray starts, so these tests start no Ray."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml
from small import small_config

from raysoup.api import load_config
from raysoup.orchestration.pipeline import run_pipeline
from raysoup.workdir.lock import SETTLE_ENV, SOUPS, SWEEP, WorkdirLocked, WorkdirLocks, lease_settle

ROOT = Path(__file__).parents[1]


def hold(workdir: Path, *names: str) -> subprocess.Popen:
    """A process that holds the workdir's `names` locks until killed (as a driver would)."""
    code = textwrap.dedent(f"""
        import sys, time
        from raysoup.workdir.lock import WorkdirLocks
        locks = WorkdirLocks({str(workdir)!r})
        for name in {list(names)!r}:
            locks.take(name)
        print("held", flush=True)
        time.sleep(600)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(small_config(name="locked")))
    return load_config(path)


def test_second_driver_refused_naming_holder_then_takes_over_dead_one(cfg, tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    holder = hold(workdir, SWEEP)
    try:
        with pytest.raises(WorkdirLocked) as err:
            run_pipeline(cfg, workdir)  # refused before Ray starts
        msg = str(err.value)
        assert f"pid {holder.pid} on {socket.gethostname()} since " in msg, msg
        assert "sweep lock" in msg
    finally:
        kill(holder)
    # The holder died (SIGKILL: no chance to clean up): its lock is free at once.
    with WorkdirLocks(workdir) as locks:
        locks.take(SWEEP)
        assert SWEEP in locks.held


def test_soup_beside_a_sweep_runs_and_never_deletes_a_live_soup_stage(cfg, tmp_path):
    workdir = tmp_path / "work"
    live = workdir / "soups" / ".tmp-uniform_soup-0a1b2c"  # a soup stage writing its soup
    live.mkdir(parents=True)
    (live / "shard-00000.safetensors").write_bytes(b"partial")
    sweeping = hold(workdir, SWEEP)
    try:
        # `raysoup soup` beside a running sweep (docs/merge-methods.md): it takes only the
        # soups lock, and gets it.
        with WorkdirLocks(workdir) as locks:
            locks.take(SOUPS)
    finally:
        kill(sweeping)
    cooking = hold(workdir, SWEEP, SOUPS)  # a run in its soup stage
    try:
        with pytest.raises(WorkdirLocked, match=f"soups lock is held by pid {cooking.pid}"):
            run_pipeline(cfg, workdir, ("soup",))
        assert (live / "shard-00000.safetensors").read_bytes() == b"partial"
    finally:
        kill(cooking)


def test_import_beside_a_driver_is_refused_naming_it(tmp_path, capsys):
    """`raysoup import` writes ingredients a sweep writes beside and the soup stages read:
    it takes both locks, and a holder of either refuses it, named, with nothing written."""
    import torch

    from raysoup.checkpoints import list_ingredients
    from raysoup.cli import main
    from raysoup.models.classifier import classifier_skeleton

    src = tmp_path / "ft.pt"
    torch.save(classifier_skeleton("raysoup-tiny-rn", 10).state_dict(), src)  # tiny.yaml's
    workdir = tmp_path / "work"
    args = ["import", str(src), "--config", str(ROOT / "experiments" / "tiny.yaml"),
            "--workdir", str(workdir)]
    for name in (SWEEP, SOUPS):
        holder = hold(workdir, name)
        try:
            assert main(args) == 1
            err = capsys.readouterr().err
            assert (f"{name} lock is held by pid {holder.pid} on {socket.gethostname()} "
                    "since ") in err, err
            assert list_ingredients(workdir / "ingredients") == []
        finally:
            kill(holder)
    # (An import with the locks free: test_import_bad_input's CLI imports.)


# ---------------------------------------------------------------- object storage: leases


def lease_at(s3, key: str, **record) -> None:
    s3.put(f"w/.raysoup-{key}.lock", json.dumps({"host": "node-7", "pid": 4242,
                                                 "since": "2026-12-07T20:00:00+00:00",
                                                 "renewed": time.time(), **record}))


def test_lease_on_object_storage(s3):
    from raysoup import storage

    workdir = storage.mirror_of(s3.uri("w"))
    # A live holder on another host: refused, naming it.
    lease_at(s3, SWEEP)
    with pytest.raises(WorkdirLocked, match="held by pid 4242 on node-7 since 2026-12-07T20"):
        WorkdirLocks(workdir, ttl=30, settle=0.1).take(SWEEP)
    # Its heartbeat stopped more than ttl ago: taken over.
    lease_at(s3, SWEEP, renewed=time.time() - 31)
    locks = WorkdirLocks(workdir, ttl=30, settle=0.1)
    locks.take(SWEEP)
    held = json.loads(storage.read_text(workdir / ".raysoup-sweep.lock"))
    assert (held["pid"], held["host"]) == (os.getpid(), socket.gethostname())
    locks.release()
    assert not storage.is_file(workdir / ".raysoup-sweep.lock")
    # A holder on this host whose pid is gone: taken over at once, however fresh its lease.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lease_at(s3, SOUPS, host=socket.gethostname(), pid=dead.pid)
    with WorkdirLocks(workdir, ttl=30, settle=0.1) as locks:
        locks.take(SOUPS)


def test_lease_contenders_one_wins_and_a_taken_lease_stops_its_holder(s3):
    from raysoup import storage

    workdir = storage.mirror_of(s3.uri("w"))
    contenders = [WorkdirLocks(workdir, ttl=30, settle=1.0) for _ in range(3)]
    outcome = {}

    def contend(i):
        try:
            contenders[i].take(SWEEP)
            outcome[i] = "held"
        except WorkdirLocked:
            outcome[i] = "refused"

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcome.values()) == ["held", "refused", "refused"], outcome
    winner = contenders[next(i for i, o in outcome.items() if o == "held")]
    # Another host took the lease over (ours stalled past its ttl): the next heartbeat sees
    # it, and the run stops at its next stage instead of writing beside the new holder.
    lease_at(s3, SWEEP, token="theirs")
    lease = winner.held[SWEEP]
    lease._stop.set()
    lease._thread.join()
    lease._stop.clear()
    lease.ttl = 0.2
    lease._thread = threading.Thread(target=lease._heartbeat, daemon=True)
    lease._thread.start()
    lease._thread.join(timeout=5)
    with pytest.raises(WorkdirLocked, match="lost its sweep lock"):
        winner.check()
    winner.release()  # leaves the other holder's lease alone
    assert "theirs" in storage.read_text(workdir / ".raysoup-sweep.lock")


def test_lease_settle_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(SETTLE_ENV, raising=False)
    assert lease_settle() == 2.0
    monkeypatch.setenv(SETTLE_ENV, "0.5")
    assert WorkdirLocks(tmp_path).settle == 0.5
    assert WorkdirLocks(tmp_path, settle=3.0).settle == 3.0  # an explicit value wins
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv(SETTLE_ENV, bad)
        with pytest.raises(ValueError, match=SETTLE_ENV):
            lease_settle()
