"""The soup stage keeps eval actors alive beside its reduction tasks. Their CPUs must never
leave the tasks without a node to run on: two 0.5-CPU actors on two 1-CPU nodes leave a 1-CPU
reduction task fitting on neither, and the soup stage waits forever."""

import json
import subprocess
import sys
import textwrap

import pytest

from raysoup.orchestration.reduce_tasks import soup_cpus


@pytest.mark.parametrize(("total", "actors", "per_actor", "shards", "expected"), [
    (2, 2, 1, 4, (1, 0.5)),       # this machine: one CPU reserved, two half-CPU scorers
    (1, 2, 1, 4, (1, 0.0)),       # a 1-CPU cluster: scorers hold no CPU (else no task runs)
    (3, 3, 1, 4, (1, 0.5)),       # 1/k CPUs fill whole CPUs wherever Ray puts them
    (64, 8, 8, 8, (1, 7)),        # shrink to whole CPUs, not to 1 thread
    (100, 8, 8, 8, (8, None)),    # room for every shard's task and the configured actors
    (20, 2, 4, 4, (4, None)),
])
def test_soup_cpus(total, actors, per_actor, shards, expected):
    reserve, cpus = soup_cpus(total, actors, per_actor, shards)
    assert (reserve, cpus) == expected
    used = reserve + actors * (per_actor if cpus is None else cpus)
    assert used <= total or cpus == 0.0


DRILL = textwrap.dedent('''
    import json, sys, time
    from pathlib import Path
    import ray, torch
    from ray.cluster_utils import Cluster
    from raysoup.checkpoints import write_ingredient
    from raysoup.orchestration import reduce_tasks

    work = Path(sys.argv[1])
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)

    @ray.remote
    class Scorer:  # stands in for an eval actor: only its CPU request and placement matter
        def node(self):
            return ray.get_runtime_context().get_node_id()

    def scorers():
        actors = [Scorer.options(num_cpus=0.5, scheduling_strategy="SPREAD").remote()
                  for _ in range(2)]
        return actors, len(set(ray.get([a.node.remote() for a in actors])))

    paths = []
    for i in range(2):
        state = {"w": torch.full((64, 8), float(i)), "b": torch.arange(8.0) * i}
        paths.append(work / f"ing-{i}")
        write_ingredient(paths[-1], state, {"name": f"ing-{i}"})
    plan = reduce_tasks.ingredient_shards(paths[0], 2)
    out = {}

    # Without a reservation: actors spread one per node leave half a CPU on each, and a
    # 1-CPU reduction task waits.
    actors, out["nodes_without"] = scorers()
    ref = reduce_tasks._reduce.remote([str(p) for p in paths], [0.5, 0.5], plan[0])
    out["pending_without"] = not ray.wait([ref], timeout=5)[0]
    ray.cancel(ref, force=True)
    for a in actors:
        ray.kill(a)

    # The soup stage's way: reserve first, then place the actors (the same SPREAD request).
    t = time.perf_counter()
    with reduce_tasks.reserved_cpus(1):
        actors, _ = scorers()
        reduce_tasks.write_soup(work / "soup", paths, [0.5, 0.5], plan, {"recipe": "uniform"})
    out["seconds_with"] = time.perf_counter() - t
    out["soup_files"] = sorted(p.name for p in (work / "soup").iterdir())
    print(json.dumps(out))
''')


@pytest.mark.slow
def test_reduction_runs_beside_spread_actors(tmp_path):
    proc = subprocess.run([sys.executable, "-c", DRILL, str(tmp_path)], capture_output=True,
                          text=True, timeout=300, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1])
    # The hazard is real on this cluster: spread actors, and the task cannot be placed.
    assert out["nodes_without"] == 2 and out["pending_without"], out
    # With the reservation the soup is written while the actors are alive.
    assert "recipe.json" in out["soup_files"] and "model.safetensors.index.json" in out[
        "soup_files"], out
    assert out["seconds_with"] < 120, out
