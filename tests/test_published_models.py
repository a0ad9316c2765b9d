"""Soups that leave raysoup, on the session's served run (tests/conftest.py: a small
`raysoup run` logging to a real `mlflow server`): MLflow Models, the Model Registry with its
`champion` alias, dataset lineage, and `raysoup export` read back by plain open_clip.
(Registration once per soup across kills and resumes: test_kill_and_resume.py.)"""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

pytestmark = pytest.mark.slow

EXPERIMENT = "server-e2e"


def _runs(client):
    exp = client.get_experiment_by_name(EXPERIMENT)
    return {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}


def _test_split(workdir):
    """uint8 images [N, 32, 32, 3] and labels of the run's test split."""
    from raysoup.data.parquet import read_parquet_split

    test = read_parquet_split(str(workdir / "data" / "world" / "test"), None)
    images = np.stack([np.asarray(test.decode(i).convert("RGB")) for i in range(len(test))])
    return images, test.labels


def _reported(workdir, model, split="test"):
    table = pq.read_table(workdir / "results.parquet").to_pylist()
    [row] = [r for r in table if r["model"] == model and r["split"] == split]
    return row["correct"], row["n"]


def test_soups_are_registered_with_lineage_and_a_champion(served_run):
    from mlflow.tracking import MlflowClient

    assert served_run["rc"] == 0, served_run["stderr"][-3000:]
    client = MlflowClient(tracking_uri=served_run["url"])
    runs = _runs(client)
    versions = client.search_model_versions(f"name = '{EXPERIMENT}'")
    by_recipe = {v.tags["raysoup.recipe"]: v for v in versions}
    assert sorted(by_recipe) == ["greedy", "uniform"] and len(versions) == 2
    for recipe, version in by_recipe.items():
        soup = runs[f"soup-{recipe}"]
        assert version.run_id == soup.info.run_id
        logged = client.get_logged_model(soup.data.tags["raysoup.model_id"])
        assert version.source == logged.artifact_location
        # Lineage: the trial runs whose ingredients the soup averages.
        ingredients = soup.data.params["ingredients"].split(",")
        assert version.tags["raysoup.ingredient_runs"].split(",") == [
            runs[name].info.run_id for name in ingredients]
        for split in ("heldout", "test", "mean_shift"):
            assert float(version.tags[split]) == pytest.approx(
                soup.data.metrics[f"acc/{split}"], abs=1e-6)
        # The version's page says what it is; its logged model links back to it and carries
        # the run's metrics.
        described = client.get_model_version(EXPERIMENT, version.version).description
        assert f"recipe `{recipe}`" in described and "mean shift" in described
        assert all(name in described for name in ingredients)
        linked = json.loads(logged.tags["mlflow.modelVersions"])
        assert [str(v["version"]) for v in linked] == [str(version.version)]
        on_model = {m.key: m.value for m in logged.metrics}
        assert on_model["acc/test"] == soup.data.metrics["acc/test"]
    # The champion is the best soup by held-out accuracy (ties: the earlier version).
    champion = client.get_model_version_by_alias(EXPERIMENT, "champion")
    best = max(versions, key=lambda v: (float(v.tags["heldout"]), -int(v.version)))
    assert champion.version == best.version


def test_champion_pyfunc_predicts_the_reported_test_accuracy(served_run):
    import mlflow

    workdir = served_run["workdir"]
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(served_run["url"])
    try:
        champion = mlflow.tracking.MlflowClient().get_model_version_by_alias(EXPERIMENT,
                                                                             "champion")
        model = mlflow.pyfunc.load_model(f"models:/{EXPERIMENT}@champion")
    finally:
        mlflow.set_tracking_uri(previous)
    images, labels = _test_split(workdir)
    logits = model.predict(images)
    assert logits.shape == (len(images), 4) and logits.dtype == np.float32
    correct, n = _reported(workdir, f"{champion.tags['raysoup.recipe']}_soup")
    assert (int((logits.argmax(1) == labels).sum()), len(labels)) == (correct, n)
    # Signature and metadata: uint8 images in, the class names with the model.
    [spec] = model.metadata.get_input_schema().inputs
    assert spec.shape == (-1, -1, -1, 3) and spec.type == np.dtype(np.uint8)
    assert len(model.metadata.metadata["classnames"]) == 4
    # Images of another size are resized and centre-cropped, as raysoup evaluates.
    big = np.repeat(np.repeat(images[:3], 2, axis=1), 2, axis=2)
    assert model.predict(big).shape == (3, 4)


def test_best_single_model_is_logged_on_its_trial_run(served_run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=served_run["url"])
    runs = _runs(client)
    table = pq.read_table(served_run["workdir"] / "results.parquet").to_pylist()
    heldout = {r["model"]: r["accuracy"] for r in table
               if r["split"] == "heldout" and r["kind"] == "ingredient"}
    best = max(sorted(heldout), key=lambda m: heldout[m])
    model_id = runs[best].data.tags["raysoup.model_id"]
    logged = client.get_logged_model(model_id)
    assert logged.source_run_id == runs[best].info.run_id
    assert str(logged.status).endswith("READY")
    others = [n for n in heldout if n != best]
    assert all("raysoup.model_id" not in runs[n].data.tags for n in others)


def test_trial_and_soup_runs_record_their_datasets(served_run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=served_run["url"])
    runs = _runs(client)
    seen = {}
    for name in ("trial-000", "trial-001", "soup-uniform", "soup-greedy"):
        inputs = runs[name].inputs.dataset_inputs
        records = {d.dataset.name: (d.dataset.digest, json.loads(d.dataset.profile)["num_rows"],
                                    {t.key: t.value for t in d.tags}["mlflow.data.context"],
                                    json.loads(d.dataset.source)["uri"]) for d in inputs}
        seen[name] = records
    first = seen["trial-000"]
    assert all(records == first for records in seen.values())  # same splits, same digests
    contexts = {name.split("/", 1)[1]: rec[2] for name, rec in first.items()}
    assert contexts == {"train": "train", "heldout": "heldout", "test": "test",
                        "background": "shift", "blur_noise": "shift", "geometric": "shift",
                        "inverted": "shift", "sketch": "shift"}
    rows = {name.split("/", 1)[1]: rec[1] for name, rec in first.items()}
    assert rows["train"] + rows["heldout"] == 4 * 150 and rows["test"] == 4 * 25
    world = served_run["workdir"] / "data" / "world"
    assert first[f"{EXPERIMENT}/test"][3] == (world / "test").absolute().as_uri()
    assert first[f"{EXPERIMENT}/heldout"][3] == first[f"{EXPERIMENT}/train"][3]


def _raysoup(*args):
    return subprocess.run([sys.executable, "-m", "raysoup.cli", *map(str, args)],
                          capture_output=True, text=True, check=False)


# Runs with raysoup unimportable: the export must load with open_clip alone.
PLAIN_OPEN_CLIP = textwrap.dedent("""
    import sys
    sys.modules["raysoup"] = None  # any `import raysoup` now fails
    import json, numpy as np, open_clip, torch
    from PIL import Image
    from safetensors.torch import load_file
    out, data = sys.argv[1], np.load(sys.argv[2])
    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + out)
    model.eval()
    head = load_file(out + "/head.safetensors")
    with torch.no_grad():
        x = torch.stack([preprocess(Image.fromarray(im)) for im in data["images"]])
        logits = torch.nn.functional.linear(model.encode_image(x, normalize=True),
                                            head["weight"], head["bias"])
    print(json.dumps({"correct": int((logits.argmax(1).numpy() == data["labels"]).sum()),
                      "classnames": json.load(open(out + "/open_clip_config.json"))["classnames"]}))
""")


def test_export_loads_in_plain_open_clip(served_run, tmp_path):
    from safetensors.torch import load_file

    from raysoup.reduce.writer import read_sharded

    workdir = served_run["workdir"]
    out = tmp_path / "greedy-open_clip"
    done = _raysoup("export", workdir / "soups" / "greedy", "--out", out)
    assert done.returncode == 0, done.stderr
    assert {p.name for p in out.iterdir()} == {"open_clip_config.json", "README.md",
                                               "open_clip_model.safetensors", "head.safetensors"}
    images, labels = _test_split(workdir)
    np.savez(tmp_path / "test.npz", images=images, labels=labels)
    plain = subprocess.run([sys.executable, "-c", PLAIN_OPEN_CLIP, str(out),
                            str(tmp_path / "test.npz")], capture_output=True, text=True, check=False)
    assert plain.returncode == 0, plain.stderr[-3000:]
    result = json.loads(plain.stdout.strip().splitlines()[-1])
    assert result["correct"] == _reported(workdir, "greedy_soup")[0]
    assert len(result["classnames"]) == 4
    card = (out / "README.md").read_text()
    assert "Recipe: **greedy**" in card and "| test |" in card

    # The image tower is the soup's, every other CLIP tensor the base model's.
    soup = read_sharded(workdir / "soups" / "greedy")
    clip = load_file(str(out / "open_clip_model.safetensors"))
    for name, tensor in soup.items():
        if name.startswith("visual."):
            assert torch.equal(clip[name], tensor), name
    assert any(k.startswith("transformer.") for k in clip)  # the text tower came along

    # The other format and a bad path, in-process (the CLI wiring is checked above).
    from raysoup.export import ExportError
    from raysoup.export.command import export_model

    flat = export_model(workdir / "soups" / "greedy", "safetensors",
                        tmp_path / "greedy-safetensors")
    state = load_file(str(flat / "model.safetensors"))
    assert state.keys() == soup.keys()
    assert all(torch.equal(state[k], soup[k]) for k in soup)
    # Not a model of a workdir: a clear error naming the path, nothing written.
    with pytest.raises(ExportError, match="not a soup or ingredient"):
        export_model(workdir / "report", "open_clip", tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
