"""The paper-shaped drill: a sweep of the paper's size (72 trials) on a simulated 8-node cluster
(`ray.cluster_utils.Cluster`), disturbed the way a spot cluster is, against an undisturbed run
of the same seed. The paper's size is run by hand (docs/cluster.md); CI runs it reduced
(tests/test_drill72.py: the test session's 3-trial `drill_run` experiment disturbed on 2 nodes,
`--config ... --no-reference`, compared with `drill_run` itself):

    python tests/drill72.py --trials 72 --nodes 8 --out /tmp/drill72     # the paper's size
    python tests/drill72.py --trials 4 --nodes 2 --local-reference --out /tmp/drill4  # small

Each worker node declares 1 CPU and 1 GPU: the GPU is a placeholder resource (Ray schedules by
the declared count; torch finds no CUDA device and trains on the CPU), so every trial asks for
a whole "GPU" (`sweep.resources_per_trial.gpu: 1`) and the cluster runs one trial per node, as
the paper's 8-GPU sweep does. Trials are tiny (4 classes, 2 epochs).

The undisturbed (reference) run: the same config on a cluster of the same shape, or with
`--local-reference` on a local Ray of this machine, one trial and one eval actor at a time (no
"GPU": `resources_per_trial.gpu: 0`): cheaper, and a stronger claim (the results do not depend
on the layout), but with no overhead figure for the cluster.

The disturbed run, in order (each lost node's busy actor process is killed with it, and a
fresh node added: the autoscaler's job on a real cluster):
  1. a worker node removed once a quarter of the trials have ended and a trial is in flight on
     it (Tune retries that trial from its last checkpoint),
  2. another once half have ended,
  3. the driver SIGKILLed once three quarters have ended; `raysoup resume --address` goes on,
  4. an eval actor's node removed mid-evaluation (the evaluation paused after its first model:
     `RAYSOUP_FAILPOINTS=evaluate.model=1:wait=...`); the pool replaces the actor,
  5. a worker node removed during the soup stage, one running an eval actor (the greedy soup
     paused after its first decision: `greedy.decision=1:wait=...`).

Checks (printed as one JSON line, exit 1 if any fails): every trial ended exactly once (one
ingredient each, one MLflow run each, none RUNNING, no other runs than the reference's), a
trial lost with its node was retried and an eval actor lost with its node replaced, the
anytime journal offers each trial once, in order, and equals the reference's, the results
table has every (model, split) row once and equals the reference's, every soup file is
byte-identical to the undisturbed run's, and the registry (each version's recipe, the
champion's) is the reference's. It reports the sweep's per-trial orchestration
overhead: trial-slot seconds per trial not spent in a trial's own training, `(sweep wall time x
concurrent slots - sum of train_seconds) / trials`, and where it goes (`overhead`), and each
run's CPU seconds by process role (`RoleCpu`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from driver import end_state
from small import small_config

# Fast health checks: a removed node is declared dead (and its trial retried) within seconds.
FAST_HEALTH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
               "health_check_failure_threshold": 3}
# The undisturbed run on a local Ray: one trial, one eval actor, no placeholder GPU.
LOCAL_LAYOUT = ["sweep.max_concurrent=1", "sweep.resources_per_trial.gpu=0",
                "eval.num_actors=1"]
EVENTS = ("removed a worker node at 1/4 of the sweep", "removed a worker node at 1/2 of the sweep",
          "SIGKILLed the driver at 3/4 of the sweep",
          "removed an eval actor's node mid-evaluation",
          "removed a worker node during the soup stage")


def drill_config(trials: int, nodes: int) -> dict:
    return small_config(
        name="drill72",
        model={"pretrain": {"threads": 1}},
        data={"world": {"num_classes": 4, "train_per_class": 40, "test_per_class": 10,
                        "shift_per_class": 5}},
        sweep={"num_samples": trials, "max_concurrent": nodes, "max_failures": 3, "seed": 7,
               "resources_per_trial": {"cpu": 0.5, "gpu": 1},
               # 2 epochs: a trial checkpoints mid-way, so a lost node's trial resumes
               "base": {"epochs": 2, "batch_size": 32, "warmup_steps": 2},
               "anytime": {"enabled": True}},
        eval={"num_actors": 2, "cpus_per_actor": 0.5},
        soup={"recipes": ["uniform", "greedy"], "greedy": {"speculation": 1}},
    )


class Driver:
    """`raysoup run|resume ... --address` as a subprocess, its stderr collected."""

    def __init__(self, args: list[str], env: dict | None = None):
        self.proc = subprocess.Popen([sys.executable, "-m", "raysoup.cli", *args],
                                     env={**os.environ, **(env or {})}, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)
        self.err: list[str] = []
        self.out: list[str] = []
        for stream, sink in ((self.proc.stderr, self.err), (self.proc.stdout, self.out)):
            threading.Thread(target=lambda s=stream, k=sink: k.extend(s), daemon=True).start()

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)  # the driver alone: the cluster lives on
        self.proc.wait()

    @property
    def stderr(self) -> str:
        return "".join(self.err)


def wait_for(cond, what: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def ended(work: Path) -> int:
    return sum(1 for _ in (work / "ingredients").glob("trial-*/manifest.json"))


def start_cluster(nodes: int):
    from ray.cluster_utils import Cluster

    # No dashboard (~10 processes and their CPU): which node runs what is read from /proc.
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 0, "_system_config": FAST_HEALTH,
                                      "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(nodes)]
    cluster.wait_for_nodes()
    return cluster, workers


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


def busy_node(cluster, workers: list, class_name: str):
    """(worker node, pid) of a live actor of `class_name` (Tune's trial: ImplicitFunc), or
    None: a process titled `ray::<class_name>...` among the children of a node's raylet (Ray
    starts a node's workers itself), read from /proc so that the head needs no dashboard."""
    from ray._private.ray_constants import PROCESS_TYPE_RAYLET

    for node in workers:
        if node not in cluster.worker_nodes:
            continue
        raylet = node.all_processes[PROCESS_TYPE_RAYLET][0].process.pid
        for pid, title in _children(raylet):
            if title.startswith(f"ray::{class_name}"):
                return node, pid
    return None


def replace_node(cluster, workers: list, events: list[str], what: str,
                 busy: str | None = None) -> None:
    """Remove a worker node without warning (one hosting a live `busy` actor if there is
    one, else the oldest), add a fresh one. The busy actor's process is killed first, as the
    node's loss would: a worker outlives its killed raylet for a while and would go on
    answering direct actor calls."""
    found = busy_node(cluster, workers, busy) if busy else None
    if found:
        node, pid = found
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # ended meanwhile: the node's loss is the disturbance
    else:
        node = next(n for n in workers if n in cluster.worker_nodes)
    cluster.remove_node(node, allow_graceful=False)
    workers.remove(node)
    workers.append(cluster.add_node(num_cpus=1, num_gpus=1))
    events.append(what)


def run_undisturbed(cfg: Path, work: Path, nodes: int, timeout: float,
                    local: bool) -> tuple[int, str]:
    if local:  # a local Ray of this machine (raysoup starts it), one trial at a time
        driver = Driver(["run", str(cfg), "--workdir", str(work),
                         *[a for o in LOCAL_LAYOUT for a in ("--set", o)]],
                        env={"RAY_ADDRESS": ""})
        return driver.wait(timeout), driver.stderr
    cluster, _ = start_cluster(nodes)
    try:
        driver = Driver(["run", str(cfg), "--workdir", str(work), "--address", cluster.address])
        rc = driver.wait(timeout)
        return rc, driver.stderr
    finally:
        cluster.shutdown()


def run_disturbed(cfg: Path, work: Path, trials: int, nodes: int,
                  timeout: float) -> tuple[int, list[str], str]:
    cluster, workers = start_cluster(nodes)
    events: list[str] = []
    evaluation = work.parent / f"{work.name}.evaluate-gate"
    soup = work.parent / f"{work.name}.soup-gate"
    try:
        first = Driver(["run", str(cfg), "--workdir", str(work), "--address", cluster.address])
        for share, what in ((4, EVENTS[0]), (2, EVENTS[1])):
            wait_for(lambda s=share: ended(work) >= trials // s, what, timeout)
            if share == 4:  # a trial in flight (its actor inside train()), to be retried
                wait_for(lambda: busy_node(cluster, workers, "ImplicitFunc.train"),
                         "a trial in flight", timeout)
            replace_node(cluster, workers, events, what, busy="ImplicitFunc")
        wait_for(lambda: ended(work) >= 3 * trials // 4, "3/4 of the trials", timeout)
        first.kill()
        events.append(EVENTS[2])
        second = Driver(["resume", str(work), "--address", cluster.address],
                        env={"RAYSOUP_FAILPOINTS": f"evaluate.model=1:wait={evaluation},"
                                                   f"greedy.decision=1:wait={soup}"})
        for point, gate, what in (("evaluate.model", evaluation, EVENTS[3]),
                                  ("greedy.decision", soup, EVENTS[4])):
            wait_for(lambda p=point: f"failpoint {p}" in second.stderr or
                     second.proc.poll() is not None, what, timeout)
            replace_node(cluster, workers, events, what, busy="EvalWorker")
            gate.touch()
        rc = second.wait(timeout)
        return rc, events, first.stderr + second.stderr
    finally:
        evaluation.touch()
        soup.touch()
        cluster.shutdown()


# Process roles, by the title a process last had (a Ray worker renames itself for what it
# runs): the trials' actors, the drivers, the anytime soup and its reduction tasks, the eval
# and soup actors, and Ray's own processes (one raylet and agents per simulated node).
ROLES = ("ImplicitFunc", "raysoup.cli", "AnytimeSoup", "_build_shard", "EvalWorker",
         "SoupActor", "raylet", "gcs_server", "dashboard", "DashboardAgent", "RuntimeEnvAgent",
         "log_monitor", "monitor.py")


class RoleCpu:
    """CPU seconds (user + system) of this script's process tree (the cluster's processes,
    the drivers and the Ray workers), by role, from /proc sampled every `interval` s: each
    process's last value counts (a process living less than an interval is missed, and the
    last interval of each that exits)."""

    def __init__(self, interval: float = 0.5):
        self.interval, self.seen = interval, {}  # (pid, start) -> [ticks, title]
        self._lock, self._stop = threading.Lock(), threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    @staticmethod
    def _read(pid: str) -> tuple[int, str, int, str] | None:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            title = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip()
        except OSError:
            return None
        fields = stat[stat.rindex(")") + 2:].split()
        return int(fields[1]), fields[19], int(fields[11]) + int(fields[12]), title

    def sample(self) -> None:
        stats = {int(p.name): s for p in Path("/proc").iterdir() if p.name.isdigit()
                 if (s := self._read(p.name)) is not None}
        children: dict[int, list[int]] = {}
        for pid, (ppid, *_) in stats.items():
            children.setdefault(ppid, []).append(pid)
        todo = list(children.get(os.getpid(), ()))
        with self._lock:
            self._walk(todo, stats, children)

    def _walk(self, todo: list[int], stats: dict, children: dict) -> None:
        while todo:
            pid = todo.pop()
            _, start, ticks, title = stats[pid]
            entry = self.seen.setdefault((pid, start), [0, title])
            entry[0] = ticks
            if title and "ray::IDLE" not in title:  # keep the name of what it ran
                entry[1] = title
            todo.extend(children.get(pid, ()))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def by_role(self) -> dict[str, float]:
        self.sample()
        tick = os.sysconf("SC_CLK_TCK")
        roles: dict[str, float] = {}
        with self._lock:
            seen = list(self.seen.values())
        for ticks, title in seen:
            role = next((r for r in ROLES if r in title), "other")
            roles[role] = roles.get(role, 0.0) + ticks / tick
        return roles

    def stop(self) -> None:
        self._stop.set()


def minus(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: round(v - before.get(k, 0.0), 1) for k, v in
            sorted(after.items(), key=lambda kv: -kv[1]) if v - before.get(k, 0.0) >= 0.05}


def stage_times(stderr: str) -> dict[str, list[float]]:
    """{stage: [wall s, CPU s]} from the driver's `── STAGE done in W s (CPU C s)` lines (a
    resumed run: the last of each). The CPU is the driver's tree: with --address, the driver
    alone (the cluster's processes are this script's)."""
    return {m[0]: [float(m[1]), float(m[2])] for m in
            re.findall(r"── (\w+) done in ([\d.]+) s \(CPU ([\d.]+) s\)", stderr)}


def trial_spans(work: Path) -> list[dict]:
    """Each trial's span in Tune, from its result.json: the actor process (pid) that ran it,
    start (its first result's time minus that iteration's duration), end (its last result).
    Tune's timestamps are whole seconds: each span is good to about a second."""
    spans = []
    for d in sorted((work / "tune").glob("*/train_trial_*")):
        rows = [json.loads(line) for line in (d / "result.json").read_text().splitlines()
                if line.strip()]
        if rows:
            spans.append({"pid": rows[0]["pid"], "end": rows[-1]["timestamp"],
                          "start": rows[0]["timestamp"] - rows[0]["time_this_iter_s"]})
    return spans


def overhead(work: Path, stderr: str, trials: int, slots: int) -> dict:
    """Trial-slot seconds per trial not spent in a trial's own training, and where they went:
    `slots x sweep wall = training + in_trial + between_trials + idle`, per trial:
    - in_trial: inside a trial's span in Tune but not in train_seconds (the trial function's
      imports, on an actor's first trial; the last epoch's checkpoint and report),
    - between_trials: from a trial's end to the next one's start on the same actor process
      (Tune's turnaround: the driver's callbacks, MLflow, the actor's reset),
    - idle: slots running no trial: the sweep's start (Tune, actor processes starting and
      importing torch) and end (the last trials' tail, closing the MLflow runs), and trials
      retried after a node's loss."""
    sweep_s = float(re.findall(r"── sweep done in ([\d.]+) s", stderr)[-1])
    train = [json.loads(p.read_text()).get("train_seconds", 0.0)
             for p in sorted((work / "ingredients").glob("trial-*/manifest.json"))]
    spans = trial_spans(work)
    by_actor: dict[int, list[dict]] = {}
    for span in sorted(spans, key=lambda t: t["start"]):
        by_actor.setdefault(span["pid"], []).append(span)
    in_tune = sum(t["end"] - t["start"] for t in spans)
    between = sum(b["start"] - a["end"] for run in by_actor.values()
                  for a, b in itertools.pairwise(run))
    first = [run[0]["end"] - run[0]["start"] for run in by_actor.values()]
    later = [t["end"] - t["start"] for run in by_actor.values() for t in run[1:]]
    per = {"training": sum(train), "in_trial": in_tune - sum(train), "between_trials": between,
           "idle": sweep_s * slots - in_tune - between}
    return {"sweep_seconds": sweep_s, "mean_train_seconds": round(sum(train) / len(train), 2),
            "overhead_per_trial_s": round((sweep_s * slots - sum(train)) / trials, 2),
            "per_trial_s": {k: round(v / trials, 2) for k, v in per.items()},
            "actor_processes": len(by_actor),
            "mean_trial_span_s": {"first_on_its_actor": round(sum(first) / len(first), 1),
                                  "on_a_reused_actor": round(sum(later) / max(1, len(later)), 1)},
            "stages_wall_cpu_s": stage_times(stderr)}


def every_row_once(work: Path, table) -> bool:
    """results.parquet has one row per (model, split): every ingredient (the zero-shot model
    included) and every soup, on every split."""
    models = {d.name for d in (work / "ingredients").iterdir()} \
        | {f"{d.name}_soup" for d in (work / "soups").iterdir()}
    rows = list(zip(table["model"].to_pylist(), table["split"].to_pylist(), strict=True))
    splits = {split for _, split in rows}
    return {m for m, _ in rows} == models and len(set(rows)) == len(rows) \
        == len(models) * len(splits)


def checks(ref: dict, got: dict, work: Path, trials: int, stderr: str) -> dict[str, bool]:
    """The drill's checks of the disturbed run in `work` (`got`: its `driver.end_state`, its
    drivers' `stderr`) against the undisturbed run's end state `ref`."""
    names = [f"trial-{i:03d}" for i in range(trials)]
    offers = [json.loads(line)["trial"] for line in
              (work / "anytime.jsonl").read_text().splitlines() if line.strip()]
    runs = [name for name, _ in got["runs"]]
    return {
        "every trial ended once": sorted(p.parent.name for p in
                                         (work / "ingredients").glob("trial-*/manifest.json"))
        == names,
        "one MLflow run per trial, none RUNNING": all(runs.count(n) == 1 for n in names)
        and all(status != "RUNNING" for _, status in got["runs"]),
        "the reference's MLflow runs": got["runs"] == ref["runs"],
        # the node losses hit work in flight: a trial (Tune retried it from its checkpoint),
        # an eval actor (the pool started a replacement and resubmitted its model)
        "a trial lost with its node was retried": "retrying from its last checkpoint" in stderr,
        "an eval actor lost with its node was replaced": "eval actor died" in stderr,
        "anytime journal: each trial once, in order": offers == names,
        "anytime journal = the reference's": got["anytime"] == ref["anytime"],
        "results: every (model, split) row once": every_row_once(work, got["results"]),
        "results = the reference's": got["results"].equals(ref["results"]),
        "soups byte-identical to the reference's": got["soups"] == ref["soups"],
        "the reference's registered models and champion": got["registry"] == ref["registry"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=72)
    p.add_argument("--nodes", type=int, default=8)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--config", type=Path,
                   help="an experiment to disturb instead of the drill's own (its "
                        "sweep.num_samples replaces --trials)")
    p.add_argument("--local-reference", action="store_true",
                   help="the undisturbed run on a local Ray, one trial at a time (cheaper)")
    p.add_argument("--no-reference", action="store_true",
                   help="no undisturbed run: the caller compares the disturbed workdir with "
                        "its own (`checks`)")
    p.add_argument("--timeout", type=float, default=7200)
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    experiment = (yaml.safe_load(a.config.read_text()) if a.config
                  else drill_config(a.trials, a.nodes))
    a.trials, name = experiment["sweep"]["num_samples"], experiment["name"]
    cfg = a.out / "drill.yaml"
    cfg.write_text(yaml.safe_dump(experiment))
    cpu = RoleCpu()
    started = time.time()
    rc_ref, err_ref = (0, "") if a.no_reference else run_undisturbed(
        cfg, a.out / "reference", a.nodes, a.timeout, a.local_reference)
    if rc_ref != 0:
        print(json.dumps({"reference_failed": rc_ref, "stderr_tail": err_ref[-4000:]}))
        return 1
    ref_s, ref_cpu = time.time() - started, cpu.by_role()
    rc, events, err = run_disturbed(cfg, a.out / "disturbed", a.trials, a.nodes, a.timeout)
    all_cpu = cpu.by_role()
    cpu.stop()
    for role, text in (("reference", err_ref), ("disturbed", err)):
        (a.out / f"{role}.stderr.log").write_text(text)  # the drivers' logs, for a look
    report = {"trials": a.trials, "nodes": a.nodes, "events": events, "returncode": rc,
              "local_reference": a.local_reference,
              "reference_wall_s": round(ref_s, 1),
              "disturbed_wall_s": round(time.time() - started - ref_s, 1),
              "reference_cpu_s": round(sum(ref_cpu.values()), 1),
              "disturbed_cpu_s": round(sum(all_cpu.values()) - sum(ref_cpu.values()), 1),
              "reference_cpu_by_role_s": minus(ref_cpu, {}),
              "disturbed_cpu_by_role_s": minus(all_cpu, ref_cpu)}
    if not a.no_reference:
        report["reference"] = overhead(a.out / "reference", err_ref, a.trials,
                                       1 if a.local_reference else a.nodes)
    if rc == 0 and not a.no_reference:
        report["checks"] = checks(end_state(a.out / "reference", name),
                                  end_state(a.out / "disturbed", name),
                                  a.out / "disturbed", a.trials, err)
    elif rc != 0:
        report["stderr_tail"] = err[-4000:]
    print(json.dumps(report))
    return 0 if rc == 0 and all(report.get("checks", {}).values()) \
        and tuple(events) == EVENTS else 1


if __name__ == "__main__":
    sys.exit(main())
