"""CPU seconds of a command's whole process tree, Ray's workers included: runs the command as
a child subreaper (orphans, such as a killed raylet's workers, stay in the tree) and samples
the tree from /proc every 0.2 s (`raysoup.orchestration.cpu_time.TreeCpu`: the last value per
process). Prints one JSON line to stderr; `/usr/bin/time` counts only what was reaped into its
children's totals, which misses most of Ray's workers. Linux only.

usage: python tests/cpu_tree.py pytest -q -p no:cacheprovider -n 0 tests/test_drill72.py
"""

import ctypes
import json
import os
import resource
import subprocess
import sys
import time

from raysoup.orchestration.cpu_time import TreeCpu

PR_SET_CHILD_SUBREAPER = 36


def main(cmd: list[str]) -> int:
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    meter = TreeCpu(interval=0.2).start()
    started = time.time()
    rc = subprocess.Popen(cmd).wait()
    wall = time.time() - started
    deadline = time.time() + 60  # reap what the command left behind (it is ours now)
    while time.time() < deadline:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                time.sleep(0.2)
        except ChildProcessError:
            break
    own = resource.getrusage(resource.RUSAGE_SELF)
    tree = meter.seconds() - own.ru_utime - own.ru_stime  # the command's, not this sampler's
    print(json.dumps({"rc": rc, "wall_s": round(wall, 1), "tree_cpu_s": round(tree, 1)}),
          file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
