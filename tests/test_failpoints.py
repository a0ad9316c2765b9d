"""Failpoint semantics (raysoup/faults.py), in a child process since a failpoint may SIGKILL."""

import signal
import subprocess
import sys
import time

from raysoup.faults import ENV

PROBE = ("from raysoup.faults import failpoint\n"
         "for i in range(3):\n"
         "    failpoint('x.point'); print('passed', i + 1, flush=True)\n")


def probe(spec: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PROBE], env={ENV: spec}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_kill_on_nth_hit():
    out, err = probe("x.point=2").communicate(timeout=60)
    assert out.split("\n")[:-1] == ["passed 1"]
    assert "failpoint x.point hit 2x: SIGKILL" in err


def test_once_fires_only_for_the_first_process(tmp_path):
    marker = tmp_path / "fired"
    first = probe(f"x.point=1:once={marker}")
    first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL and marker.exists()
    out, _ = probe(f"x.point=1:once={marker}").communicate(timeout=60)
    assert out.split() == ["passed", "1", "passed", "2", "passed", "3"]


def test_wait_blocks_until_the_file_exists(tmp_path):
    gate = tmp_path / "gate"
    proc = probe(f"x.point=2:wait={gate}")
    deadline = time.time() + 60
    line = proc.stderr.readline()  # the failpoint announces itself, then waits
    assert f"failpoint x.point hit 2x: waiting for {gate}" in line
    time.sleep(1)
    assert proc.poll() is None and time.time() < deadline  # still held at the second hit
    gate.touch()
    out, _ = proc.communicate(timeout=60)
    assert out.split("\n")[:-1] == ["passed 1", "passed 2", "passed 3"]
