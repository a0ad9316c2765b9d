"""The Python API (docs/python-api.md): its examples run as written, and `soup_checkpoints`
makes the tensors the CLI path makes (`raysoup import`, then the soup stage's reduction)."""

import os
import re
import runpy
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_import_checkpoints import paper_checkpoint, tiny_name  # noqa: F401 - a fixture

import raysoup
from raysoup.api import SoupCheckpointsError, soup_checkpoints
from raysoup.checkpoints import Target, import_checkpoints
from raysoup.checkpoints.ingredient import read_manifest
from raysoup.reduce import Blend, plan_shards, reduce_shard, tensor_nbytes
from raysoup.soup import Candidate, get_recipe

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "python-api.md"
NUM_CLASSES = 5
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def doc_blocks(pipeline: bool) -> list[str]:
    """The page's Python examples: those that start Ray (a run, an analysis of it), or the
    others."""
    def starts_ray(block: str) -> bool:
        return "raysoup.run(" in block or "raysoup.analyze(" in block

    return [b for b in BLOCK.findall(DOC.read_text()) if starts_ray(b) == pipeline]


def run_examples(blocks: list[str], where: Path, model: str | None = None) -> dict:
    """The blocks as one script (the order of the page), run in `where`; its globals.
    `model`: the open_clip model the page's held-out example names (the paper's ViT-B/32)
    becomes this one, the test checkpoints' tiny ViT."""
    script = where / "examples.py"
    text = "import raysoup\n\n" + "\n".join(blocks)
    script.write_text(text.replace('"ViT-B-32-quickgelu"', repr(model)) if model else text)
    return runpy.run_path(str(script))


@pytest.fixture
def checkpoints(tmp_path, tiny_name):  # noqa: F811 - the imported fixture
    """finetunes/model_{0,1,2}.pt and zeroshot.pt in the model-soups paper's layout."""
    (tmp_path / "finetunes").mkdir()
    files = []
    for i in range(3):
        state, *_ = paper_checkpoint(tiny_name, NUM_CLASSES, seed=i)
        files.append(tmp_path / "finetunes" / f"model_{i}.pt")
        torch.save(state, files[-1])
    torch.save(paper_checkpoint(tiny_name, NUM_CLASSES, seed=10)[0], tmp_path / "zeroshot.pt")
    return {"files": files, "base": tmp_path / "zeroshot.pt", "root": tmp_path,
            "model": tiny_name}


@pytest.fixture
def imported(checkpoints, tmp_path):
    """The CLI path's first half: `raysoup import` of the same files (zero-shot included)."""
    root = tmp_path / "work" / "ingredients"
    done = import_checkpoints(checkpoints["files"], root, Target(checkpoints["model"]),
                              zeroshot=checkpoints["base"])
    return {d.name: d.path for d in done}


def test_import_raysoup_is_light_and_has_a_version():
    code = ("import sys, raysoup; v = raysoup.__version__; "
            "assert not {'torch', 'ray', 'pydantic', 'raysoup.api'} & set(sys.modules), "
            "sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray')); print(v)")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == raysoup.__version__ and raysoup.__version__[0].isdigit()
    assert {"run", "soup_checkpoints", "load_config", "__version__"} <= set(dir(raysoup))


def heldout_folder(root: Path, classes: int, size: int = 32) -> Path:
    """An ImageFolder of random PNGs, 3 per class: a held-out split the soups can score on."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True)
        for j in range(3):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class_{c}" / f"{j}.png")
    return root


def test_soup_examples_run(checkpoints, monkeypatch):
    (checkpoints["root"] / "experiments").symlink_to(ROOT / "experiments")
    heldout_folder(checkpoints["root"] / "heldout", NUM_CLASSES)
    monkeypatch.chdir(checkpoints["root"])
    namespace = run_examples(doc_blocks(pipeline=False), checkpoints["root"],
                             model=checkpoints["model"])
    for name in ("uniform", "weighted", "model_stock", "ties", "greedy", "wiseft",
                 "task_arithmetic"):
        assert (checkpoints["root"] / "soups" / f"{name}.safetensors").is_file()
    assert namespace["weights"]["head.weight"].shape[0] == NUM_CLASSES


def _cli_soup(recipe: str, imported: dict, **settings) -> dict[str, torch.Tensor]:
    """The soup stage's tensors for `recipe` over the imported ingredients: its method cooked
    over candidates with the zero-shot anchor, reduced shard by shard (2 shards) by Blend."""
    anchor = Candidate("zeroshot", 0.0, imported["zeroshot"])
    tuned = [Candidate(n, 0.0, p) for n, p in imported.items() if n != "zeroshot"]
    plan = plan_shards(tensor_nbytes(read_manifest(imported["zeroshot"])["tensors"]), 2)

    class Kitchen:  # the RayKitchen's per-tensor statistics, shard by shard, in-process
        def __init__(self):
            self.anchor = anchor

        def per_tensor(self, fn, paths):
            return {k: v for names in plan for k, v in fn(paths, names).items()}

        def score_merge(self, base, paths, merge, scales):
            return [0.0] * len(scales)

    cls = get_recipe(recipe)
    result = cls.__class__(**{**cls.Settings().model_dump(), **settings}).cook(tuned, Kitchen())
    paths = [imported[n] for n in result.ingredients]
    blend = Blend(tuple(result.weights), result.tensor_weights, result.merge, result.scale,
                  1 if "zeroshot" in result.ingredients else None)
    torch.set_flush_denormal(True)  # as the shard tasks (orchestration.reduce_tasks)
    try:
        out = {k: v for names in plan for k, v in blend.for_shard(names).shard(paths, names)
               .items()}
    finally:
        torch.set_flush_denormal(False)
    return {k: torch.from_numpy(v) for k, v in out.items()}


def _same(soup: Path, expected: dict[str, torch.Tensor]) -> None:
    got = load_file(str(soup))
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor.to(got[name].dtype)), name


@pytest.mark.parametrize(("recipe", "settings"), [
    ("uniform", {}), ("model_stock", {}), ("task_arithmetic", {"lambdas": [0.4]}),
    ("ties", {"lambdas": [1.0]}), ("dare", {"lambdas": [0.5]}),
])
def test_paper_checkpoints_soup_like_the_cli_path(checkpoints, imported, tmp_path, recipe,
                                                  settings):
    base = checkpoints["base"] if recipe != "uniform" else None
    soup = soup_checkpoints(checkpoints["files"], recipe, out=tmp_path / "soup.safetensors",
                            base=base, **settings)
    _same(soup, _cli_soup(recipe, imported, **settings))


def test_ingredients_soup_like_the_cli_path(imported, tmp_path):
    tuned = [p for n, p in sorted(imported.items()) if n != "zeroshot"]
    soup = soup_checkpoints(tuned, out=tmp_path / "u.safetensors")
    _same(soup, _cli_soup("uniform", imported))
    # Explicit weights: the reduction of the same weights, in the order given.
    names = list(read_manifest(tuned[0])["tensors"])
    weighted = soup_checkpoints(tuned, weights=[0.5, 0.3, 0.2], out=tmp_path / "w.safetensors")
    expected = reduce_shard(tuned, [0.5, 0.3, 0.2], names)
    _same(weighted, {k: torch.from_numpy(v) for k, v in expected.items()})


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"method": "greedy"}, "needs held-out scoring"),
    ({"method": "learned"}, "pass heldout=raysoup.HeldOut"),
    ({"method": "model_stock"}, "pass base="),
    ({"method": "ties", "base": "B"}, "or give one λ"),
    ({"method": "uniform", "weights": [1.0]}, "1 given for 3 checkpoints"),
    ({"method": "bogus"}, "unknown method 'bogus'"),
    ({"method": "ties", "base": "B", "lambdas": [1.0], "densty": 0.3}, "densty"),
    ({"method": "uniform", "out": "soup.pt"}, ".safetensors"),
    ({"method": "greedy", "heldout": "no model"}, "heldout.model: name the open_clip model"),
    ({"method": "greedy", "heldout": "ViT-B-32"}, "use the '-quickgelu' variant"),
])
def test_soup_checkpoints_says_what_it_needs(checkpoints, kwargs, words):
    kwargs = {"out": checkpoints["root"] / "x.safetensors", **kwargs}
    if kwargs.get("base") == "B":
        kwargs["base"] = checkpoints["base"]
    if isinstance(kwargs.get("heldout"), str):  # the paper's layout: no manifest names a model
        model = kwargs["heldout"] if kwargs["heldout"] != "no model" else None
        kwargs["heldout"] = raysoup.HeldOut(checkpoints["root"], model=model)
    with pytest.raises(SoupCheckpointsError, match=re.escape(words)):
        soup_checkpoints(checkpoints["files"], **kwargs)


def test_soup_checkpoints_starts_no_ray(checkpoints, tmp_path):
    """In a fresh interpreter: this test process may hold a Ray connection another test of
    the module made (`raysoup.run` in-process leaves it to the caller)."""
    import subprocess

    code = ("import sys, raysoup; files = sys.argv[2:]; "
            "raysoup.soup_checkpoints(files, out=sys.argv[1]); "
            "ray = sys.modules.get('ray'); "
            "assert ray is None or not ray.is_initialized(), 'Ray was started'")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "s.safetensors"),
                    *map(str, checkpoints["files"])], check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (tmp_path / "s.safetensors").is_file()


def test_run_rejects_unknown_stages():
    from raysoup.api.experiment import _stages

    assert _stages(["report", "sweep"]) == ("sweep", "report")
    assert _stages(None) == ("sweep", "evaluate", "soup", "report")
    with pytest.raises(ValueError, match="choose from"):
        _stages(["cook"])


@pytest.mark.slow
def test_run_examples_run(tmp_path, monkeypatch):
    """The pipeline examples, as written: a small run, then its soups again with a recipe
    more (real Ray, Tune, MLflow)."""
    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
    monkeypatch.chdir(tmp_path)
    namespace = run_examples(doc_blocks(pipeline=True), tmp_path)
    table = namespace["table"]
    models = set(table["model"].to_pylist())
    assert {"uniform_soup", "greedy_soup", "model_stock_soup", "zeroshot"} <= models
    assert {"heldout", "test"} <= set(table["split"].to_pylist())
    files, _ = namespace["found"]["angles"]
    assert files and all(Path(f).is_file() for f in files)


def test_errors_name_the_users_files_not_temporary_ones(checkpoints, tmp_path):
    odd = tmp_path / "odd.pt"
    state = torch.load(checkpoints["files"][0], weights_only=True)
    torch.save({k: v[..., :1] if k == "classification_head.weight" else v
                for k, v in state.items()}, odd)
    with pytest.raises(SoupCheckpointsError, match=r"odd\.pt: tensor head\.weight has shape"):
        soup_checkpoints([checkpoints["files"][0], odd], out=tmp_path / "s.safetensors")
    with pytest.raises(SoupCheckpointsError) as err:
        soup_checkpoints(checkpoints["files"][:2], "model_stock", base=odd,
                         out=tmp_path / "s.safetensors")
    assert str(odd) in str(err.value) and "raysoup-soup-" not in str(err.value)


def test_weights_follow_the_order_of_paths(imported, tmp_path):
    tuned = [imported["model_2"], imported["model_0"]]
    soup = soup_checkpoints(tuned, weights=[0.9, 0.1], out=tmp_path / "w.safetensors")
    names = list(read_manifest(tuned[0])["tensors"])
    expected = reduce_shard(tuned, [0.9, 0.1], names)
    _same(soup, {k: torch.from_numpy(v) for k, v in expected.items()})
