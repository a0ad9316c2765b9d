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


def start_run(cfg, workdir, failpoints=None):
    """`raysoup run CFG --workdir WORKDIR` in its own session, output to pipes (read them with
    `finish`), with RAYSOUP_FAILPOINTS set to `failpoints` (or unset)."""
    import subprocess
    import sys

    from raysoup.faults import ENV

    env = {k: v for k, v in os.environ.items() if k != ENV}
    if failpoints:
        env[ENV] = failpoints
    return subprocess.Popen([sys.executable, "-m", "raysoup.cli", "run", str(cfg), "--workdir",
                             str(workdir)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def end_state(workdir, experiment: str) -> dict:
    """What an interrupted and resumed run must reproduce exactly: results.parquet's table,
    every soup file, the anytime journal, the MLflow runs (name, status) and the registry
    (each version's recipe, the champion's)."""
    import pyarrow.parquet as pq

    from raysoup.tracking import CHAMPION, Tracker, default_uri

    soups = {f"{d.name}/{f.name}": f.read_bytes()
             for d in sorted((workdir / "soups").iterdir()) for f in sorted(d.iterdir())}
    tracker = Tracker(default_uri(workdir), experiment)
    runs = tracker.runs()
    client = tracker.client
    versions = client.search_model_versions(f"name = '{experiment}'")
    champion = client.get_model_version_by_alias(experiment, CHAMPION)
    anytime = workdir / "anytime.jsonl"
    return {
        "results": pq.read_table(workdir / "results.parquet"),
        "soups": soups,
        "anytime": anytime.read_text() if anytime.exists() else None,
        "runs": sorted((r.info.run_name, r.info.status) for r in runs),
        "registry": (sorted(v.tags["raysoup.recipe"] for v in versions),
                     champion.tags["raysoup.recipe"]),
    }
