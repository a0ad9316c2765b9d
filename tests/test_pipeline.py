"""The whole pipeline end to end at a small size: real Ray, real Tune, real MLflow (SQLite).
The first run is the session's `drill_run` (`raysoup run` of tests/small.py's DRILL); this test
checks it, then re-runs it in this process with `run_pipeline`."""

import hashlib
import json
import re

import pyarrow.parquet as pq
import pytest

from raysoup.config import load_experiment

pytestmark = pytest.mark.slow


def test_pipeline_end_to_end_and_rerun(drill_run, ray_session):
    from raysoup.orchestration.pipeline import run_pipeline
    from raysoup.tracking import Tracker, default_uri

    cfg = load_experiment(drill_run["config"])
    workdir = drill_run["workdir"]

    ingredients = sorted(p.name for p in (workdir / "ingredients").iterdir())
    assert ingredients == ["trial-000", "trial-001", "trial-002", "zeroshot"]
    for name in ingredients:
        manifest = json.loads((workdir / "ingredients" / name / "manifest.json").read_text())
        assert manifest["sha256"] and manifest["tensors"]

    table = pq.read_table(workdir / "results.parquet")
    assert {"model", "kind", "split", "accuracy", "n"} <= set(table.column_names)
    splits = set(table["split"].to_pylist())
    assert {"heldout", "test"} <= splits and len(splits - {"heldout", "test"}) >= 3
    models = set(table["model"].to_pylist())
    assert {"uniform_soup", "greedy_soup", "zeroshot", *ingredients} <= models
    rows = table.to_pylist()
    n_splits = len(splits)
    assert len(rows) == len(models) * n_splits  # every (model, split) exactly once
    heldout = {r["model"]: r["accuracy"] for r in rows if r["split"] == "heldout"}
    candidates = ["zeroshot", "trial-000", "trial-001", "trial-002"]  # soup.include_zeroshot
    assert heldout["greedy_soup"] >= max(heldout[c] for c in candidates)

    recipe = json.loads((workdir / "soups" / "greedy" / "recipe.json").read_text())
    assert heldout[recipe["ingredients"][0]] == max(heldout[c] for c in candidates)
    assert (workdir / "report" / "figure.png").stat().st_size > 10_000
    assert "greedy_soup" in (workdir / "report" / "README.md").read_text()
    assert re.search(r"^\| greedy.soup \|", drill_run["stdout"], re.MULTILINE)  # the summary

    tracker = Tracker(default_uri(workdir), "drill")
    runs = tracker.runs()
    names = sorted(r.info.run_name for r in runs)
    assert names == ["soup-greedy", "soup-ties", "soup-uniform", "sweep", "trial-000",
                     "trial-001", "trial-002", "zeroshot"]
    assert all(r.info.status == "FINISHED" for r in runs)
    trial = next(r for r in runs if r.info.run_name == "trial-001")
    assert "lr" in trial.data.params and "train_loss" in trial.data.metrics

    # The anytime soup took every trial in order, scored on the same eval cache as the
    # evaluate stage (the same held-out accuracies), and its curve is in MLflow and the report.
    from raysoup.soup.anytime import read_offers

    offers = read_offers(workdir)
    assert [o.trial for o in offers] == ["trial-000", "trial-001", "trial-002"]
    assert offers[0].outcome == "restarted"
    assert all(o.heldout == heldout[o.trial] for o in offers)
    assert offers[-1].soup_heldout >= max(heldout[o.trial] for o in offers)
    sweep_run = next(r for r in runs if r.info.run_name == "sweep")
    curve = tracker.client.get_metric_history(sweep_run.info.run_id, "soup/heldout")
    assert [(m.step, m.value) for m in curve] == [(i + 1, o.soup_heldout)
                                                  for i, o in enumerate(offers)]
    assert "## Anytime soup" in (workdir / "report" / "README.md").read_text()
    assert (workdir / "report" / "anytime.png").stat().st_size > 10_000

    # Re-running the finished run redoes nothing: same results, no new MLflow runs. (A driver
    # that died after the last trial, before its anytime offers: the re-run catches up.)
    journal = workdir / "anytime.jsonl"
    journal.write_text(journal.read_text().splitlines(keepends=True)[0])
    before = (workdir / "results.parquet").read_bytes()
    run2 = run_pipeline(cfg, workdir)
    assert (workdir / "results.parquet").read_bytes() == before
    assert read_offers(workdir) == offers
    assert len(Tracker(default_uri(workdir), "drill").runs()) == len(runs)
    first_sweep = float(re.search(r"── sweep done in ([\d.]+) s", drill_run["stderr"]).group(1))
    assert run2.timings["sweep"] < first_sweep
    assert "greedy_soup" in run2.summary()

    # The sweep grown in place to 4 trials (issue 30, item 10), then the soup stage alone, as
    # `raysoup soup` at any moment: trial-003 continues the soup-aware search exactly as a
    # fresh 4-trial sweep proposes it (from the offers of trials 0-2), the earlier trials are
    # not touched, and the soup stage scores trial-003's held-out first, then cooks every soup
    # again (a new candidate set) and crowns the champion among the new soups.
    from raysoup.search.proposer import propose

    earlier = {p: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
               for p in (workdir / "ingredients").glob("trial-00[012]/*")}
    cooked_from = json.loads((workdir / "soups" / "uniform" / "recipe.json").read_text())
    grown = cfg.model_copy(update={"sweep": cfg.sweep.model_copy(update={"num_samples": 4})})
    run3 = run_pipeline(grown, workdir, stages=("sweep", "soup"))
    assert "held-out evaluation" in run3.timings
    manifest = json.loads((workdir / "ingredients" / "trial-003" / "manifest.json").read_text())
    s = cfg.sweep  # need = index - max_concurrent + 1 offers (SoupSearcher.suggest)
    fresh = propose(s.space, s.seed, 3, offers[: 3 - s.max_concurrent + 1], s.soup_search)
    assert {k: manifest["hparams"][k] for k in fresh} == fresh
    assert {p: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in earlier} == earlier
    assert [o.trial for o in read_offers(workdir)] == [*(o.trial for o in offers), "trial-003"]
    uniform = json.loads((workdir / "soups" / "uniform" / "recipe.json").read_text())
    assert uniform["ingredients"] == ["trial-000", "trial-001", "trial-002", "trial-003",
                                      "zeroshot"]  # soup.include_zeroshot
    assert uniform["soup_id"] != cooked_from["soup_id"]
    tracker = Tracker(default_uri(workdir), "drill")
    champion = next(tracker.client.get_model_version_by_alias(m.name, "champion")
                    for m in tracker.client.search_registered_models())
    assert champion.tags["raysoup.soup_id"] == uniform["soup_id"]
