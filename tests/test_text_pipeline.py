"""The hf_text family through the real pipeline at a small size: real Ray, Tune and MLflow
(SQLite), the shipped tiny BERT (raysoup:tiny-text, real transformers), the generated text
task. Checks that the stages need nothing image-specific: trials, eval actors, soups (bitwise
identical for 1 and 3 shards) and an `hf` export that plain transformers loads and that scores
exactly what raysoup reported."""

from __future__ import annotations

import json
import signal

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from raysoup.config import load_experiment

pytestmark = pytest.mark.slow

SMALL_TEXT = {
    "name": "text-e2e",
    "model": {"family": "hf_text", "name": "raysoup:tiny-text",
              "pretrained": "raysoup:tiny-text", "max_length": 32},
    "data": {"text_world": {"train_per_class": 150, "test_per_class": 25, "shift_per_class": 15},
             "heldout_fraction": 0.2},
    "sweep": {"num_samples": 2, "max_concurrent": 1, "anytime": {"enabled": False},
              "base": {"epochs": 3, "batch_size": 16, "warmup_steps": 5},
              "space": {"lr": {"loguniform": [2.5e-3, 3.5e-3]}, "seed": {"randint": [0, 100]}}},
    "eval": {"num_actors": 1, "batch_size": 64},
    "soup": {"recipes": ["uniform", "greedy", "task_arithmetic"], "num_shards": 1,
             "include_zeroshot": False, "task_arithmetic": {"lambdas": [0.5, 1.0]}},
    "tracking": {"log_models": True, "register": True},
}


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, ray_session):
    from raysoup.orchestration.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("text-e2e")
    (root / "cfg.yaml").write_text(yaml.safe_dump(SMALL_TEXT))
    cfg = load_experiment(root / "cfg.yaml")
    run_pipeline(cfg, root / "work")
    return cfg, root / "work"


def test_text_run_writes_ingredients_results_and_soups(text_run):
    _, workdir = text_run
    zeroshot = json.loads((workdir / "ingredients" / "zeroshot" / "manifest.json").read_text())
    assert zeroshot["family"] == "hf_text"
    assert zeroshot["preprocess"] == {"kind": "tokens", "tokenizer": "raysoup:tiny-text",
                                      "max_length": 32}
    rows = pq.read_table(workdir / "results.parquet").to_pylist()
    models = {r["model"] for r in rows}
    assert {"zeroshot", "trial-000", "trial-001", "uniform_soup", "greedy_soup",
            "task_arithmetic_soup"} <= models
    assert {r["split"] for r in rows} == {"heldout", "test", "synonym", "typo", "template"}
    test = {r["model"]: r["accuracy"] for r in rows if r["split"] == "test"}
    assert max(test["trial-000"], test["trial-001"]) > test["zeroshot"] + 0.1  # it learned
    assert "greedy_soup" in (workdir / "report" / "README.md").read_text()


def test_text_soups_are_bitwise_identical_for_1_and_3_shards(text_run):
    import ray

    from raysoup.evaluate import results as res
    from raysoup.orchestration.evaluation import EvalPool, EvalWorker, build_eval_cache
    from raysoup.orchestration.soup_stage import cook_soups
    from raysoup.prepare import prepare
    from raysoup.reduce import read_sharded, tensor_digest
    from raysoup.soup import Candidate

    cfg, workdir = text_run
    splits, zs = prepare(cfg, workdir)  # cached: reads what the run wrote
    heldout = build_eval_cache({"heldout": splits.heldout}, workdir, zs["preprocess"], 1024)
    acc = res.accuracy_of(res.read_results(workdir / "results.parquet"), "heldout")
    ing = workdir / "ingredients"
    cands = sorted((Candidate(n, acc[n], ing / n) for n in ("trial-000", "trial-001")),
                   key=lambda c: -c.heldout)
    actor = ray.remote(num_cpus=0.5)(EvalWorker)
    ref = ray.put(heldout)
    pool = EvalPool(lambda: actor.remote(zs["model_name"], zs["num_classes"], ref, 64, 1,
                                         "hf_text"), 1)
    try:
        three = cook_soups(cfg.soup.recipes, cands, workdir / "soups-3", 3, pool, cfg=cfg.soup,
                           anchor=Candidate("zeroshot", acc["zeroshot"], ing / "zeroshot"))
        check_greedy_scorer_by_mcc(pool, cands, workdir / "soups" / "uniform")
    finally:
        pool.stop()
    for recipe in cfg.soup.recipes:
        assert json.loads((three[recipe] / "recipe.json").read_text())["num_shards"] == 3
        assert tensor_digest(read_sharded(three[recipe])) == tensor_digest(
            read_sharded(workdir / "soups" / recipe)), recipe


def check_greedy_scorer_by_mcc(pool, cands, uniform_dir):
    """`soup.greedy.metric: mcc` through the Ray kitchen: the running soup of both trials
    (the uniform soup, bit for bit) scored by class-1 counts in an eval actor equals MCC
    computed here from that soup's predictions (class 1 against the rest: the task has four
    classes, the counts are of class 1)."""
    from raysoup.evaluate.evaluator import load_weights_
    from raysoup.evaluate.task_metrics import mcc
    from raysoup.orchestration.kitchen import RunningSumScorer
    from raysoup.orchestration.reduce_tasks import ingredient_shards
    from raysoup.reduce import read_sharded

    def predictions(worker, path):
        ev = worker.evaluator
        load_weights_(ev.model, read_sharded(path))
        return ev.logits("heldout").argmax(1).numpy(), ev.splits["heldout"].labels

    scorer = RunningSumScorer(pool, ingredient_shards(cands[0].path, 3), "mcc")
    scorer.start(cands[0])
    [got] = scorer.score([cands[1]])
    [(preds, labels)] = pool.run([lambda a: a.apply.remote(predictions, uniform_dir)])
    assert got == pytest.approx(mcc(labels == 1, preds == 1))


def test_hf_export_loads_in_plain_transformers_and_reproduces_the_test_accuracy(
        text_run, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from raysoup.evaluate import results as res
    from raysoup.export.command import export_model

    _, workdir = text_run
    out = export_model(workdir / "soups" / "uniform", "hf", tmp_path / "uniform")
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.id2label == {0: "sports", 1: "food", 2: "weather", 3: "music"}
    test = pq.read_table(workdir / "data" / "text_world" / "test.parquet").to_pydict()
    x = tok(test["sentence"], padding="max_length", truncation=True, max_length=32,
            return_tensors="pt")
    with torch.no_grad():
        preds = model(**x).logits.argmax(-1).numpy()
    labels = np.array([model.config.label2id[c] for c in test["label"]])
    reported = res.accuracies_of_model(res.read_results(workdir / "results.parquet"),
                                       "uniform_soup")["test"]
    assert float(np.mean(preds == labels)) == reported
    assert "uniform" in (out / "README.md").read_text()


def test_killed_text_run_resumes_to_the_same_result(text_run, tmp_path):
    """The fault drill for this family. `raysoup run` (a subprocess, its own local Ray) of the
    module's config: trial-000's worker SIGKILLed at its 40th step (in epoch 2; 30 steps an
    epoch: 480 train sentences, batch 16), which Tune retries from its epoch-1 checkpoint,
    then the driver SIGKILLed once trial-000 has completed (mid-sweep). A new driver, this
    process (`run_pipeline`, as `raysoup run` and the Python API call it, on the test
    session's Ray: no second process start), resumes the sweep — trial-000 is not trained
    again — and runs to the end, which must be the module's uninterrupted run's: the same
    results, soup bytes, MLflow runs and registry. (The driver killed mid-evaluate: the image
    drill, test_kill_and_resume.py; the evaluate stage is the same code for both families.)"""
    from driver import end_state, finish, start_run

    from raysoup.orchestration.pipeline import run_pipeline

    cfg, workdir = text_run
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(SMALL_TEXT))
    work, fired = tmp_path / "work", tmp_path / "worker-killed"
    rc, _, err = finish(start_run(config, work, f"train.step=40:once={fired},"
                                                "sweep.trial_complete=1"))
    assert rc == -signal.SIGKILL and "failpoint sweep.trial_complete" in err, err[-3000:]
    assert fired.exists() and "retrying from its last checkpoint" in err  # killed, retried
    # The retried worker went on from the checkpoint: epoch 1 was trained once.
    assert err.count("trial-000 epoch 1/3") == 1 and "trial-000 epoch 3/3" in err, err[-3000:]
    assert "trial-001 epoch" not in err and not (work / "results.parquet").exists()
    trained = (work / "ingredients" / "trial-000" / "model.safetensors").stat().st_mtime_ns

    run_pipeline(cfg, work)
    assert (work / "ingredients" / "trial-000" / "model.safetensors").stat().st_mtime_ns \
        == trained  # resumed: trial-000 kept, not trained again
    got, ref = end_state(work, "text-e2e"), end_state(workdir, "text-e2e")
    assert got["results"].equals(ref["results"])
    assert sorted(got["soups"]) == sorted(ref["soups"]) and got["soups"] == ref["soups"]
    assert got["runs"] == ref["runs"]  # one MLflow run per trial and soup, all FINISHED
    assert got["registry"] == ref["registry"]


def test_text_soups_are_registered_mlflow_models_that_predict_as_reported(text_run):
    """Each weight soup a registered version (the champion: best held-out), its MLflow Model
    a pyfunc that real MLflow loads: test sentences in, labels and probabilities out, each
    example right or wrong exactly as the results say."""
    import mlflow
    import pandas as pd

    from raysoup.evaluate.paired import unpack
    from raysoup.tracking import Tracker, default_uri

    _, workdir = text_run
    tracker = Tracker(default_uri(workdir), "text-e2e")
    client = tracker.client
    versions = client.search_model_versions("name = 'text-e2e'")
    assert sorted(v.tags["raysoup.recipe"] for v in versions) == [
        "greedy", "task_arithmetic", "uniform"]
    champion = client.get_model_version_by_alias("text-e2e", "champion")
    assert float(champion.tags["heldout"]) == max(float(v.tags["heldout"]) for v in versions)

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(default_uri(workdir))
    try:
        model = mlflow.pyfunc.load_model("models:/text-e2e@champion")
    finally:
        mlflow.set_tracking_uri(previous)
    test = pq.read_table(workdir / "data" / "text_world" / "test.parquet").to_pydict()
    out = model.predict(pd.DataFrame({"text": test["sentence"]}))
    classes = ["sports", "food", "weather", "music"]
    assert list(out.columns) == ["label", *(f"prob_{c}" for c in classes)]
    assert np.allclose(out[[f"prob_{c}" for c in classes]].sum(axis=1), 1.0)
    [row] = [r for r in pq.read_table(workdir / "results.parquet").to_pylist()
             if r["model"] == f"{champion.tags['raysoup.recipe']}_soup" and r["split"] == "test"]
    assert list(out["label"] == test["label"]) == list(unpack(row["correct_bits"], row["n"]))
    assert model.metadata.get_input_schema().input_names() == ["text"]  # one sentence each
    assert model.metadata.metadata["classnames"] == classes
