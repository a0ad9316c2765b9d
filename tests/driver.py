"""Running `raysoup` as a subprocess in end-to-end tests, as a user (or a preempted machine)
would."""

import os
import signal


def finish(proc, timeout=600):
    """Wait for a `raysoup` subprocess started with `start_new_session=True`; returns
    (returncode, stdout, stderr)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        # Whatever the driver started in its session (a local Ray head) goes with it, as when
        # the whole machine is preempted.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return proc.returncode, out, err
