"""B3: evaluation throughput — the Ray eval-actor pool vs a bare torch loop.

Same models (ingredients on disk, each loaded from its safetensors file), same cached
preprocessed tensors, same batch size, same total CPU threads: A actors x 1 thread against one
bare loop with A threads (`pool_vs_bare`), and 1 actor x 1 thread against a 1-thread loop
(`pool1_vs_bare1`, the pool's pure overhead). On CUDA: 1 actor on the GPU vs a bare loop on
the GPU, both with bf16 autocast. Each side evaluates one model first to warm up.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from bench.common import ratio
from raysoup.checkpoints import load_state_dict, write_ingredient
from raysoup.config import EvalCfg
from raysoup.evaluate.evaluator import EvalSplit, count_correct, load_weights_

log = logging.getLogger(__name__)


def _models(root: Path, model_name: str, classes: int, n: int) -> list[Path]:
    from raysoup.models.classifier import classifier_skeleton

    torch.manual_seed(0)
    base = classifier_skeleton(model_name, classes).state_dict()
    out = []
    for i in range(n):
        state = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
                 for k, v in base.items()}
        out.append(root / f"model-{i}")
        write_ingredient(out[-1], state, {"kind": "ingredient", "model_name": model_name,
                                          "num_classes": classes})
    return out


def _bare(paths: list[Path], split: EvalSplit, model_name: str, classes: int, batch_size: int,
          threads: int, device: str) -> float:
    """Images/s of a plain loop: load weights, forward the cached tensors, count."""
    from raysoup.models.classifier import classifier_skeleton

    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = classifier_skeleton(model_name, classes).to(device).eval()
        labels = torch.from_numpy(split.labels)

        def one(path: Path) -> int:
            load_weights_(model, load_state_dict(path))
            correct = 0
            with torch.no_grad():
                for s in range(0, len(split), batch_size):
                    x = torch.from_numpy(split.images.take(np.arange(s, min(len(split), s + batch_size)))).to(device)
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
                        logits = model(x).float().cpu()
                    correct += count_correct(logits, labels[s:s + batch_size], None)
            return correct

        one(paths[0])  # warm-up
        start = time.perf_counter()
        for p in paths:
            one(p)
        return len(paths) * len(split) / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(prev)


def _pool(paths: list[Path], splits_ref, n_images: int, model_name: str, classes: int,
          batch_size: int, actors: int, gpus: float) -> float:
    import ray

    from raysoup.orchestration.evaluation import EvalPool, evaluate_models

    cfg = SimpleNamespace(eval=EvalCfg(num_actors=actors, batch_size=batch_size,
                                       cpus_per_actor=1, gpus_per_actor=gpus))
    pool = EvalPool.start(cfg, splits_ref, model_name, classes, actors)
    try:
        ray.get([a.__ray_ready__.remote() for a in pool.actors])
        evaluate_models(pool, [(f"w{i}", "ingredient", paths[0], ["eval"])
                               for i in range(actors)])  # warm-up: one model per actor
        jobs = [(p.name, "ingredient", p, ["eval"]) for p in paths]
        start = time.perf_counter()
        evaluate_models(pool, jobs)
        return len(paths) * n_images / (time.perf_counter() - start)
    finally:
        pool.stop()


def run(root: Path, model_name: str, classes: int, n_models: int, n_images: int,
        image_size: int, batch_size: int, threads: int, device: str = "cpu",
        one_thread_layout: bool = True) -> dict:
    import ray

    root.mkdir(parents=True, exist_ok=True)
    try:
        paths = _models(root, model_name, classes, n_models)
        rng = np.random.default_rng(0)
        split = EvalSplit(rng.standard_normal((n_images, 3, image_size, image_size),
                                              dtype=np.float32),
                          rng.integers(0, classes, n_images))
        splits_ref = ray.put({"eval": split})
        out = {"model": model_name, "models": n_models, "images": n_images,
               "image_size": image_size, "batch_size": batch_size, "device": device}
        if device == "cuda":
            pool = _pool(paths, splits_ref, n_images, model_name, classes, batch_size, 1, 1.0)
            bare = _bare(paths, split, model_name, classes, batch_size, threads, device)
            out.update(pool_img_s=pool, bare_img_s=bare, pool_vs_bare=ratio(pool, bare),
                       layout="1 GPU actor vs bare loop on the GPU, bf16 autocast")
        else:
            pool = _pool(paths, splits_ref, n_images, model_name, classes, batch_size, threads, 0)
            bare = _bare(paths, split, model_name, classes, batch_size, threads, device)
            out.update(pool_img_s=pool, bare_img_s=bare, pool_vs_bare=ratio(pool, bare),
                       layout=f"{threads} actors x 1 thread vs a {threads}-thread bare loop")
            if one_thread_layout:
                pool1 = _pool(paths, splits_ref, n_images, model_name, classes, batch_size, 1, 0)
                bare1 = _bare(paths, split, model_name, classes, batch_size, 1, device)
                out.update(pool1_img_s=pool1, bare1_img_s=bare1,
                           pool1_vs_bare1=ratio(pool1, bare1))
        log.info("B3: pool %.0f img/s, bare %.0f img/s (%s)", out["pool_img_s"],
                 out["bare_img_s"], out["layout"])
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)
