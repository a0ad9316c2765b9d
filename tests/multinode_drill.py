"""Multi-node drill (run by tests/test_multinode.py in its own process): a simulated 3-node
Ray cluster on this machine (`ray.cluster_utils.Cluster`); `raysoup run --address` drives it
while this script removes a worker node mid-sweep, then kills an eval actor and removes its
node mid-evaluation, adding a fresh node each time (the autoscaler's job on a real cluster). Prints one JSON line of what happened.

usage: python tests/multinode_drill.py CONFIG WORKDIR
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from ray.cluster_utils import Cluster

FAST_HEALTH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
               "health_check_failure_threshold": 3}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond, what, timeout=600):
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def an_eval_actor(cluster, workers):
    """(worker node, pid) of a live EvalWorker: a process titled `ray::EvalWorker...` among
    the children of the node's raylet (Ray starts a node's workers itself), read from /proc so
    that the head needs no dashboard for Ray's state API (~10 processes and their CPU)."""
    from ray._private.ray_constants import PROCESS_TYPE_RAYLET

    seen = []
    for node in workers:
        if node not in cluster.worker_nodes:
            continue
        raylet = node.all_processes[PROCESS_TYPE_RAYLET][0].process.pid
        for pid, title in _children(raylet):
            if title.startswith("ray::EvalWorker"):
                return node, pid
            seen.append(title)
    raise RuntimeError(f"no worker node hosts a live eval actor: {seen}")


def _children(parent: int) -> list[tuple[int, str]]:
    """(pid, process title) of each live child of `parent`."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            title = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            continue  # gone meanwhile
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            out.append((int(entry), title))
    return out


def main(cfg: str, workdir: str) -> None:
    work = Path(workdir)
    # No dashboard (Ray's default starts it where its modules are installed): which actor runs
    # where is read from /proc (an_eval_actor).
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 0, "_system_config": FAST_HEALTH,
                                      "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    events = []
    # After the first evaluated model, the driver pauses until `resume` exists: a window in
    # which an actor's node is removed before the remaining models are handed out (a fixed
    # sleep could be outlasted by a loaded CI machine).
    resume = work.parent / f"{work.name}.resume"
    env = {**os.environ, "RAYSOUP_FAILPOINTS": f"evaluate.model=1:wait={resume}"}
    driver = subprocess.Popen(
        [sys.executable, "-m", "raysoup.cli", "run", cfg, "--workdir", workdir,
         "--address", cluster.address], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    err_lines: list[str] = []
    reader = threading.Thread(target=lambda: err_lines.extend(driver.stderr), daemon=True)
    reader.start()
    try:
        # 1. A node is lost while trials train on it (after their first epoch checkpoint).
        wait_for(lambda: list((work / "tune").glob("**/checkpoint_*")), "a trial checkpoint")
        cluster.remove_node(workers[0])
        events.append("removed a worker node mid-sweep")
        workers.append(cluster.add_node(num_cpus=1))
        # 2. An eval actor and its node are lost mid-evaluation.
        wait_for(lambda: any("failpoint evaluate.model" in ln for ln in err_lines),
                 "the first evaluated model")
        node, pid = an_eval_actor(cluster, workers)
        # The actor process first: a worker outlives its killed raylet for a while and would
        # go on answering direct actor calls.
        os.kill(pid, signal.SIGKILL)
        cluster.remove_node(node, allow_graceful=False)
        events.append("killed an eval actor and removed its node mid-evaluation")
        workers.append(cluster.add_node(num_cpus=1))
        resume.touch()
        driver.wait(timeout=900)
    except Exception as e:  # noqa: BLE001 - reported with the driver's output, not a bare traceback
        events.append(f"drill failed: {e!r}")
    finally:
        resume.touch()
        if driver.poll() is None:
            driver.kill()
        reader.join(timeout=10)
        cluster.shutdown()
    text = "".join(err_lines)
    print(json.dumps({"returncode": driver.returncode, "events": events,
                      "trial_retried": "retrying from its last checkpoint" in text,
                      "actor_replaced": "eval actor died" in text,
                      "stderr_tail": text[-4000:]}))


if __name__ == "__main__":
    main(*sys.argv[1:])
