"""raysoup.orchestration.cpu_time: the CPU seconds of the driver's process tree, including a
grandchild whose parent leaves no child totals behind (as Ray's raylet does for its workers)."""

import resource
import subprocess
import sys
import textwrap

import pytest

from raysoup.orchestration.cpu_time import PROC, TreeCpu

# A child that ignores SIGCHLD (its exited children are reaped by the kernel, their times
# added to nobody's child totals) and starts a grandchild that burns ~0.4 s of CPU.
CHILD = textwrap.dedent("""
    import signal, subprocess, sys, time
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    burn = "import time\\nt = time.process_time()\\nwhile time.process_time() - t < 0.4: pass"
    p = subprocess.Popen([sys.executable, "-c", burn])
    while p.poll() is None:
        time.sleep(0.02)
""")


@pytest.mark.skipif(not PROC.is_dir(), reason="samples /proc (Linux)")
def test_counts_a_grandchild_that_nobody_reaps():
    meter = TreeCpu(interval=0.02).start()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    before = meter.seconds()
    subprocess.run([sys.executable, "-c", CHILD], check=True)
    spent = meter.seconds() - before
    meter.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    reaped = (after.ru_utime + after.ru_stime) - (kids.ru_utime + kids.ru_stime)
    assert spent >= 0.3  # the grandchild's burn, sampled while it ran
    assert reaped < 0.3  # what getrusage sees: the child alone, not its grandchild
    # Samples only grow: a process seen once keeps its last value after it exits.
    assert meter.seconds() >= before + spent
