"""B2: greedy soup — raysoup (`cook_soups(["greedy"])` on a Ray eval actor that holds the
preprocessed held-out split) vs a seed-style sequential greedy loop.

The seed-style loop does what the paper's released code does per candidate: `torch.load` every
accepted ingredient plus the candidate from its .pt file, average them, and evaluate after
re-reading, re-decoding and re-preprocessing the held-out images from their source (Parquet
with PNG bytes). Its average uses raysoup's float32 operation order (sum in accepted order,
then one float32 multiply by 1/k) so both contenders score bit-identical candidate soups:
`same_selection` then checks the orchestration, not rounding luck. Both use the same ranking
(held-out accuracy, ties by name), acceptance rule (>=), batch size and torch threads.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from bench.common import ratio, timed
from raysoup.checkpoints import list_ingredients, read_manifest, write_ingredient
from raysoup.config import EvalCfg, SoupCfg
from raysoup.data.images import LabeledImages
from raysoup.data.parquet import read_parquet_split, write_parquet_split
from raysoup.data.render import encode_png
from raysoup.data.transforms import preprocess_eval
from raysoup.evaluate.evaluator import EvalSplit, count_correct, load_weights_
from raysoup.soup import Candidate
from raysoup.workdir import Workdir

log = logging.getLogger(__name__)

MODEL = "raysoup-tiny-rn"
CLASSES = 10


# ---------------------------------------------------------------- synthetic ingredients


def _heldout_images(n: int, size: int, seed: int) -> list[bytes]:
    # Smooth random images (upsampled 4x4 noise + grain), PNG-encoded like the world's shards.
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (n, 4, 4, 3)).astype(np.float32)
    up = np.repeat(np.repeat(low, size // 4, axis=1), size // 4, axis=2)
    img = np.clip(up + rng.normal(0, 20, up.shape), 0, 255).astype(np.uint8)
    return [encode_png(im) for im in img]


def make_ingredients(root: Path, n: int, n_images: int, seed: int = 0) -> tuple[list[Path], Path]:
    """n ingredients = one random tiny-rn classifier + seeded noise of growing scale; held-out
    labels are the base model's own predictions, so less noise means more accurate and
    averaging the noise away (the soup effect) helps. Returns (ingredient dirs, held-out dir)."""
    from raysoup.models.classifier import classifier_skeleton

    torch.manual_seed(seed)
    model = classifier_skeleton(MODEL, CLASSES)
    size, mean, std = 32, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    pngs = _heldout_images(n_images, size, seed)
    keys = [f"heldout/{i:05d}" for i in range(n_images)]
    data = LabeledImages(keys, pngs, np.zeros(n_images, np.int64), [f"c{i}" for i in range(CLASSES)])
    x = torch.from_numpy(preprocess_eval(data, size, mean, std))
    with torch.no_grad():
        # A random head predicts one class for everything; prototypes (centred features of C
        # images) spread the base model's predictions over the classes.
        f = model.features(x)
        proto = f[:CLASSES] - f.mean(0)
        model.head.weight.copy_(100 * proto / proto.norm(dim=1, keepdim=True))
        model.head.bias.zero_()
        data.labels = model(x).argmax(1).numpy().astype(np.int64)
    heldout_dir = root / "heldout"
    write_parquet_split(heldout_dir, data)
    base = model.state_dict()
    paths = []
    for i in range(n):
        g = torch.Generator().manual_seed(seed + 100 + i)
        scale = 0.005 + 0.015 * i / max(1, n - 1)
        state = {k: v + scale * v.abs().mean() * torch.randn(v.shape, generator=g)
                 if v.is_floating_point() else v.clone() for k, v in base.items()}
        path = Workdir(root).ingredient(f"trial-{i:03d}")
        write_ingredient(path, state, {"kind": "ingredient", "model_name": MODEL,
                                       "num_classes": CLASSES,
                                       "preprocess": {"image_size": size, "mean": list(mean),
                                                      "std": list(std)}})
        paths.append(path)
    return paths, heldout_dir


def _save_pt_copies(paths: list[Path], root: Path) -> dict[str, Path]:
    from raysoup.checkpoints import load_state_dict

    out = {}
    for p in paths:
        f = root / "pt" / f"{p.name}.pt"
        f.parent.mkdir(parents=True, exist_ok=True)
        torch.save(load_state_dict(p), f)
        out[p.name] = f
    return out


# ---------------------------------------------------------------- seed-style contender


def _seed_average(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    w = np.float32(1.0 / len(states))
    out = {}
    for k, v in states[0].items():
        if not v.is_floating_point():
            out[k] = v
            continue
        acc = v.to(torch.float32, copy=True)
        for s in states[1:]:
            acc.add_(s[k])
        out[k] = torch.from_numpy(np.multiply(acc.numpy(), w, dtype=np.float32))
    return out


def _seed_heldout_accuracy(model, weights, source: Path, pre: dict, batch_size: int) -> float:
    data = read_parquet_split(source)  # re-read and re-decode the source every time
    images = preprocess_eval(data, pre["image_size"], pre["mean"], pre["std"])
    load_weights_(model, weights)
    correct = 0
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            logits = model(torch.from_numpy(images[start:start + batch_size]))
            correct += count_correct(logits, torch.from_numpy(data.labels[start:start + batch_size]),
                                     None)
    return correct / len(data)


def seed_greedy(candidates: list[Candidate], pt_files: dict[str, Path], source: Path, pre: dict,
                model_name: str, num_classes: int, batch_size: int) -> tuple[list[str], list[bool]]:
    from raysoup.models.classifier import classifier_skeleton

    model = classifier_skeleton(model_name, num_classes)
    ranked = sorted(candidates, key=lambda c: (-c.heldout, c.name))
    soup, best, accepted = [ranked[0].name], ranked[0].heldout, []
    for cand in ranked[1:]:
        states = [torch.load(pt_files[name], weights_only=True) for name in [*soup, cand.name]]
        acc = _seed_heldout_accuracy(model, _seed_average(states), source, pre, batch_size)
        del states
        accepted.append(acc >= best)
        if acc >= best:
            soup.append(cand.name)
            best = acc
    return soup, accepted


# ---------------------------------------------------------------- raysoup contender


def _raysoup_greedy(candidates, heldout: LabeledImages, pre: dict, model_name: str,
                    num_classes: int, batch_size: int, gpus: float, num_shards: int,
                    soups_dir: Path, actors: int = 1, speculation: int = 1) -> dict:
    import ray

    from raysoup.orchestration import soup_stage
    from raysoup.orchestration.evaluation import EvalPool
    from raysoup.orchestration.reduce_tasks import add_ingredient, ingredient_shards
    from raysoup.workdir import SoupRecord

    t0 = time.perf_counter()
    split = EvalSplit(preprocess_eval(heldout, pre["image_size"], pre["mean"], pre["std"]),
                      heldout.labels)
    splits_ref = ray.put({"heldout": split})
    t_pre = time.perf_counter() - t0
    cfg = SimpleNamespace(eval=EvalCfg(num_actors=1, batch_size=batch_size, cpus_per_actor=1,
                                       gpus_per_actor=gpus))
    # Several actors share the CPUs (as the pipeline's soup stage does), leaving room for the
    # reduction tasks.
    pool = EvalPool.start(cfg, splits_ref, model_name, num_classes, actors,
                          None if actors == 1 else 1 / actors)
    try:
        ray.get([a.__ray_ready__.remote() for a in pool.actors])
        # Start the reduction task workers too (process start + imports, once per Ray session).
        ray.get(add_ingredient(None, candidates[0].path, ingredient_shards(candidates[0].path,
                                                                    num_shards)))
        t_start = time.perf_counter() - t0 - t_pre
        secs, dirs = timed(soup_stage.cook_soups, ["greedy"], candidates, soups_dir, num_shards, pool,
                           cfg=SoupCfg(greedy={"speculation": speculation}))
    finally:
        pool.stop()
    recipe = SoupRecord.read(dirs["greedy"]).as_dict()
    trace = recipe.get("trace", [])
    return {"seconds": t_pre + secs, "preprocess_s": t_pre, "actor_start_s": t_start,
            "cook_s": secs, "ingredients": recipe["ingredients"],
            "accepted": [bool(t["accepted"]) for t in trace[1:]]}


# ---------------------------------------------------------------- driver


def _candidates_from_pool(paths: list[Path], heldout: LabeledImages, pre: dict, model_name: str,
                          num_classes: int, batch_size: int) -> list[Candidate]:
    """Held-out accuracy of every ingredient (the evaluate stage's job; shared by both)."""
    from raysoup.evaluate.evaluator import Evaluator
    from raysoup.models.classifier import classifier_skeleton

    split = EvalSplit(preprocess_eval(heldout, pre["image_size"], pre["mean"], pre["std"]),
                      heldout.labels)
    ev = Evaluator(classifier_skeleton(model_name, num_classes), {"heldout": split},
                   batch_size=batch_size)
    from raysoup.checkpoints import load_state_dict

    out = []
    for p in paths:
        correct, n = ev.score(load_state_dict(p))["heldout"]
        out.append(Candidate(p.name, correct / n, p))
    return out


def _from_workdir(workdir: Path, root: Path) -> tuple[list[Path], Path]:
    """A finished run's ingredients and its held-out split, written as Parquet under root."""
    from raysoup.config import load_experiment
    from raysoup.data.sources import load_splits
    cfg = load_experiment(Workdir(workdir).snapshot)
    splits = load_splits(cfg.data, workdir, progress=False)
    heldout_dir = root / "heldout"
    write_parquet_split(heldout_dir, splits.heldout)
    paths = [p for p in list_ingredients(Workdir(workdir).ingredients)
             if read_manifest(p).get("kind") == "ingredient"]
    return paths, heldout_dir


def run(root: Path, n: int, n_images: int, batch_size: int = 500, num_shards: int = 2,
        workdir: Path | None = None, gpus: float = 0.0, measure_m2: bool = True) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    torch.set_flush_denormal(True)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the eval actor's thread count (cpus_per_actor=1)
    try:
        if workdir is not None:
            paths, source = _from_workdir(Path(workdir), root)
        else:
            paths, source = make_ingredients(root, n, n_images)
        meta = read_manifest(paths[0])
        pre, model_name, num_classes = meta["preprocess"], meta["model_name"], meta["num_classes"]
        heldout = read_parquet_split(source)
        candidates = _candidates_from_pool(paths, heldout, pre, model_name, num_classes,
                                           batch_size)
        pt_files = _save_pt_copies(paths, root)
        ours = _raysoup_greedy(candidates, heldout, pre, model_name, num_classes, batch_size,
                               gpus, num_shards, Workdir(root).soups)
        # B6's measured part: the same greedy with 2 actors scoring 2 candidates per round.
        spec = _raysoup_greedy(candidates, heldout, pre, model_name, num_classes, batch_size,
                               gpus, num_shards, root / "soups-m2", actors=2,
                               speculation=2) if measure_m2 else None
        seed_s, (seed_soup, seed_accepted) = timed(
            seed_greedy, candidates, pt_files, source, pre, model_name, num_classes, batch_size)
        out = {
            "ingredients": len(paths), "heldout_images": len(heldout), "model": model_name,
            "source": str(workdir) if workdir else "synthetic (tiny-rn + seeded noise)",
            "seed_s": seed_s, "raysoup_s": ours["seconds"],
            "raysoup_preprocess_s": ours["preprocess_s"], "raysoup_cook_s": ours["cook_s"],
            "raysoup_actor_start_s": ours["actor_start_s"],
            "seed_speedup": ratio(seed_s, ours["seconds"]),
            "seed_speedup_incl_actor_start": ratio(seed_s, ours["seconds"] + ours["actor_start_s"]),
            "same_selection": ours["ingredients"] == seed_soup,
            "raysoup_selection": ours["ingredients"], "seed_selection": seed_soup,
            "accepted": seed_accepted,
            "same_decisions": ours["accepted"] == seed_accepted,
        }
        if spec is not None:
            out["speculative_m2"] = {
                "cook_s": spec["cook_s"], "sequential_cook_s": ours["cook_s"],
                "speedup": ratio(ours["cook_s"], spec["cook_s"]),
                "same_selection": spec["ingredients"] == ours["ingredients"]}
        log.info("B2: seed-style %.2fs, raysoup %.2fs (+%.2fs actor start); selections %s / %s",
                 seed_s, ours["seconds"], ours["actor_start_s"], seed_soup, ours["ingredients"])
        return out
    finally:
        torch.set_num_threads(prev_threads)
        shutil.rmtree(root, ignore_errors=True)
