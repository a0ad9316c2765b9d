"""S: the streaming data plane — memory that does not grow with the data, input that keeps up.

- `train_rss_ratio`: peak PSS of one trial's process tree (the training process and its
  DataLoader workers) fine-tuning one epoch on 8x the train images ÷ on 1x, same batch size,
  both streamed (budget 0). PSS, not RSS: forked workers share pages with their parent.
- `eval_rss_ratio`: peak PSS of the driver and its Ray worker processes building the eval
  cache and scoring models on 8x the eval images ÷ 1x.
- `input_vs_step`: images/s of the input pipeline alone (read + decode + crop, the workers a
  1-CPU trial gets) ÷ images/s of the training step alone (forward, backward, AdamW on a batch
  already in memory), for the tiny 224-px CLIP on 224-px-class JPEGs; the same for the 32-px
  world, and a Ray Data pipeline (read_parquet → map_batches → iter_torch_batches) side by side.
- `decodes_per_image`: images decoded (counted in every process through RAYSOUP_DECODE_LOG)
  while `raysoup evaluate` and `raysoup soup` (greedy + uniform + soup evaluation) run on a
  finished sweep of >= 6 models ÷ images in the eval splits.

Each memory figure comes from a fresh subprocess, sampled every 20 ms from /proc.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import REPO, child_command, child_env, ratio

MODEL = "raysoup-tiny-vit224"
CLASSES = 10


# ---------------------------------------------------------------- memory of a process tree


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kids.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return kids


def _pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def tree_pss(root: int, workers: tuple[str, ...] | None = None) -> int:
    """PSS of `root` and its descendants. With `workers`, of `root` and those descendants
    whose command line starts with one of them (Ray names a worker by its task or actor, e.g.
    "ray::EvalWorker"): the processes doing the work, not Ray's daemons or idle workers,
    which do not depend on the data."""
    kids = _children()
    todo, seen = [root], set()
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo += kids.get(pid, [])
    if workers is not None:
        seen = {root} | {p for p in seen if _cmdline(p).startswith(workers)}
    return sum(_pss(p) for p in seen)


def peak_pss_of(cmd: list[str], workers: tuple[str, ...] | None = None,
                env: dict | None = None) -> tuple[int, str]:
    """Run `cmd`, sampling its tree's PSS; (peak bytes, stdout)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=child_env(env))
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_pss(proc.pid, workers))
        time.sleep(0.02)
    out, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return peak, out


# ---------------------------------------------------------------- data


def jpegs(n: int, seed: int = 0, lo: int = 180, hi: int = 320) -> list[bytes]:
    """Photos' stand-ins: JPEGs of ImageNet-like varied sizes, with class-coloured content."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = int(rng.integers(lo, hi)), int(rng.integers(lo, hi))
        base = np.array([(i % CLASSES) * 25, 128, 255 - (i % CLASSES) * 25], np.uint8)
        img = (rng.integers(0, 64, (h // 8 + 1, w // 8 + 1, 3)) + base).clip(0, 255).astype(np.uint8)
        img = np.kron(img, np.ones((8, 8, 1), np.uint8))[:h, :w]
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def write_split(directory: Path, images: list[bytes], prefix: str = "s") -> Path:
    from raysoup.data.images import LabeledImages
    from raysoup.data.parquet import write_parquet_split

    n = len(images)
    data = LabeledImages([f"{prefix}/{i:06d}" for i in range(n)], images,
                         np.arange(n) % CLASSES, [f"c{i}" for i in range(CLASSES)])
    write_parquet_split(directory, data, rows_per_shard=1024)
    return directory


# ---------------------------------------------------------------- child processes


def _child_train(split: str, batch_size: int) -> dict:
    """One streamed epoch of fine-tuning, as a 1-CPU trial runs it."""
    import torch

    from raysoup.config import TrainHParams
    from raysoup.data.parquet import read_parquet_split
    from raysoup.models.classifier import classifier_skeleton
    from raysoup.train.batches import LoaderCfg
    from raysoup.train.finetune import finetune

    torch.manual_seed(0)
    data = read_parquet_split(split)
    model = classifier_skeleton(MODEL, CLASSES)
    hp = TrainHParams(lr=1e-4, epochs=1, batch_size=batch_size, warmup_steps=1, seed=0)
    m = finetune(model, data, hp, image_size=224, mean=(0.48, 0.46, 0.41), std=(0.27, 0.26, 0.28),
                 device="cpu", threads=1,
                 loader=LoaderCfg(lanes=1, window=128, memory_budget_mb=0,
                                  crop="random_resized_crop"))
    return {"images": len(data), "images_per_s": m["images_per_s"]}


def _child_eval(splits: str, workdir: str, n_models: int) -> dict:
    """Build the eval cache and score `n_models` models with a 2-actor pool."""
    import ray
    import torch

    from raysoup.checkpoints import write_ingredient
    from raysoup.config import EvalCfg, ExperimentCfg
    from raysoup.data.parquet import read_parquet_split
    from raysoup.models.classifier import classifier_skeleton
    from raysoup.orchestration.evaluation import EvalPool, build_eval_cache
    from raysoup.workdir import Workdir

    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False,
             log_to_driver=False)
    pre = {"image_size": 224, "mean": [0.48, 0.46, 0.41], "std": [0.27, 0.26, 0.28]}
    named = {p.name: read_parquet_split(p) for p in sorted(Path(splits).iterdir())}
    evsplits = build_eval_cache(named, Path(workdir), pre, shard_images=64)
    paths = []
    for i in range(n_models):
        torch.manual_seed(i)
        state = {k: v.clone() for k, v in classifier_skeleton(MODEL, CLASSES).state_dict().items()}
        path = Workdir(workdir).ingredient(f"m{i}")
        write_ingredient(path, state, {"kind": "ingredient", "model_name": MODEL,
                                       "num_classes": CLASSES, "preprocess": pre})
        paths.append(path)
    cfg = ExperimentCfg.model_construct(eval=EvalCfg(num_actors=2, batch_size=64))
    pool = EvalPool.start(cfg, ray.put(evsplits), MODEL, CLASSES, 2)
    started = time.perf_counter()
    scores = pool.run([lambda a, p=str(p): a.evaluate_path.remote(p, list(named)) for p in paths])
    seconds = time.perf_counter() - started
    pool.stop()
    images = sum(len(s) for s in evsplits.values())
    return {"images": images, "eval_img_s": images * n_models / seconds,
            "n": {k: v[1] for k, v in scores[0].items()}}


def _child_input(split: str, model: str, image_size: int, batch_size: int, crop: str,
                 steps: int, lanes: int = 1, device: str = "cpu") -> dict:
    """Input pipeline alone (streamed, `lanes` workers) vs the training step alone (bf16
    autocast on CUDA), in one process."""
    import torch
    from torch import nn

    from raysoup.data.parquet import read_parquet_split
    from raysoup.models.classifier import classifier_skeleton
    from raysoup.train.batches import Augment, LoaderCfg, TrainInput

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    data = read_parquet_split(split)
    source = TrainInput(data, Augment(image_size, crop), LoaderCfg(lanes=lanes, memory_budget_mb=0,
                                                                   crop=crop), 0, batch_size)
    started, n = time.perf_counter(), 0
    for x, _ in source.epoch(1):
        n += len(x)
    input_s = n / (time.perf_counter() - started)
    net = classifier_skeleton(model, CLASSES).to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.randn(batch_size, 3, image_size, image_size, device=device)
    y = torch.randint(0, CLASSES, (batch_size,), device=device)
    for i in range(steps + 2):
        if i == 2:  # two warm-up steps
            if device == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = nn.functional.cross_entropy(net(x).float(), y)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    step_s = steps * batch_size / (time.perf_counter() - started)
    return {"input_img_s": input_s, "step_img_s": step_s, "images": n, "lanes": lanes,
            "model": model, "device": device}


def _child_raydata(split: str, image_size: int, batch_size: int) -> dict:
    """The Ray Data contender: read_parquet → map_batches(decode + crop) → iter_torch_batches."""
    import ray

    from raysoup.data.images import decode_pixels
    from raysoup.train.batches import random_resized_crop

    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False,
             log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False

    def decode(batch: dict) -> dict:
        # The per-image work of the DataLoader path (decode + resized crop), so the two
        # contenders differ only in how they move batches.
        out = np.empty((len(batch["image"]), image_size, image_size, 3), np.uint8)
        rng = np.random.default_rng(len(batch["image"]))
        for i, b in enumerate(batch["image"]):
            out[i] = random_resized_crop(decode_pixels(b, "raydata"), image_size, rng).permute(1, 2, 0)
        return {"image": out, "label": batch["label"]}

    started = time.perf_counter()
    ds = ray.data.read_parquet(split, columns=["image", "label"]).map_batches(
        decode, batch_size=batch_size, batch_format="numpy", num_cpus=1)
    n = sum(len(b["label"]) for b in ds.iter_torch_batches(batch_size=batch_size))
    return {"img_s": n / (time.perf_counter() - started), "images": n}


CHILDREN = {"train": _child_train, "eval": _child_eval, "input": _child_input,
            "raydata": _child_raydata}


def _child(name: str, **kwargs) -> list[str]:
    return child_command("bench.streaming", name, json.dumps(kwargs))


def _run(name: str, **kwargs) -> dict:
    return json.loads(subprocess.run(_child(name, **kwargs), check=True, capture_output=True,
                                     text=True, env=child_env()).stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the benchmark


def run(base: Path, quick: bool = False) -> dict:
    base.mkdir(parents=True, exist_ok=True)
    n = 96 if quick else 256
    photos = jpegs(8 * n)
    train1, train8 = write_split(base / "train1", photos[:n]), write_split(base / "train8", photos)
    out: dict = {"images_1x": n, "images_8x": 8 * n, "model": MODEL}

    batch = 32
    p1, r1 = peak_pss_of(_child("train", split=str(train1), batch_size=batch))
    p8, r8 = peak_pss_of(_child("train", split=str(train8), batch_size=batch))
    out["train"] = {"peak_pss_1x": p1, "peak_pss_8x": p8, "epoch_img_s_1x": json.loads(r1)[
        "images_per_s"], "epoch_img_s_8x": json.loads(r8)["images_per_s"]}
    out["train_rss_ratio"] = ratio(p8, p1)

    eval_n = n // 2
    for scale in (1, 8):
        d = base / f"eval{scale}"
        for s, name in enumerate(("heldout", "test", "shift")):
            write_split(d / "splits" / name, jpegs(eval_n * scale, seed=100 + s), prefix=name)
        peak, res = peak_pss_of(_child("eval", splits=str(d / "splits"), workdir=str(d / "work"),
                                       n_models=3),
                                 workers=("ray::EvalWorker", "ray::_build_shard"))
        out[f"eval_{scale}x"] = {"peak_pss": peak, **json.loads(res)}
    out["eval_rss_ratio"] = ratio(out["eval_8x"]["peak_pss"], out["eval_1x"]["peak_pss"])

    jpeg = _run("input", split=str(train8), model=MODEL, image_size=224, batch_size=batch,
                crop="random_resized_crop", steps=4 if quick else 10)
    out["input_224"] = jpeg
    out["input_vs_step"] = ratio(jpeg["input_img_s"], jpeg["step_img_s"])
    world = _world_split(base)
    tiny = _run("input", split=str(world), model="raysoup-tiny-rn", image_size=32, batch_size=128,
                crop="shift_flip", steps=10 if quick else 30)
    out["input_world"] = tiny
    out["input_vs_step_world"] = ratio(tiny["input_img_s"], tiny["step_img_s"])
    out["raydata_224"] = _run("raydata", split=str(train8), image_size=224, batch_size=batch)
    out["raydata_world"] = _run("raydata", split=str(world), image_size=32, batch_size=128)
    out["dataloader_vs_raydata_224"] = ratio(jpeg["input_img_s"], out["raydata_224"]["img_s"])
    out["dataloader_vs_raydata_world"] = ratio(tiny["input_img_s"], out["raydata_world"]["img_s"])
    out["decodes"] = decodes(base / "decodes", quick)
    out["decodes_per_image"] = out["decodes"]["per_image"]
    out["per_image_500px"] = per_image_ms(40 if quick else 100)
    return out


def per_image_ms(n: int) -> dict:
    """ms per image, one thread, decode + open_clip's resized crop to 224 px of 500x375 JPEGs
    with photo-like entropy (~60 KiB): PIL (decode, bicubic resize of the crop box) vs
    raysoup's training input (`decode_pixels` + `random_resized_crop`). Best of 3 passes each."""
    import torch
    import torchvision.io  # noqa: F401  (its import is not a per-image cost)
    from PIL import Image, ImageFilter

    from raysoup.data.images import decode_image, decode_pixels
    from raysoup.train.batches import random_resized_crop, random_resized_crop_box

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    photos = []
    for _ in range(n):
        noise = Image.fromarray(rng.integers(0, 255, (375, 500, 3), np.uint8))
        buf = io.BytesIO()
        noise.filter(ImageFilter.GaussianBlur(1.2)).save(buf, "JPEG", quality=90)
        photos.append(buf.getvalue())

    def pil() -> None:
        for b in photos:
            img = decode_image(b, "bench")
            np.asarray(img.resize((224, 224), Image.Resampling.BICUBIC,
                                  box=random_resized_crop_box(*img.size, rng)))

    def ours() -> None:
        for b in photos:
            random_resized_crop(decode_pixels(b, "bench"), 224, rng)

    def best(fn) -> float:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return 1e3 * min(times) / n

    return {"pil_ms": best(pil), "raysoup_ms": best(ours),
            "jpeg_kib": float(np.mean([len(b) for b in photos]) / 1024)}


def _world_split(base: Path) -> Path:
    from raysoup.config import WorldCfg
    from raysoup.data.world import generate_world

    return generate_world(WorldCfg(num_classes=10, train_per_class=400), base / "world",
                          progress=False)["train"]


def decodes(base: Path, quick: bool) -> dict:
    """Decodes during `raysoup evaluate` + `raysoup soup` over a finished sweep of 6+ models."""
    from raysoup.config import WorldCfg
    from raysoup.data import world
    from raysoup.workdir import Workdir

    overrides = ["data.world.num_classes=4", "data.world.train_per_class=100",
                 "data.world.test_per_class=25", "data.world.shift_per_class=15",
                 "data.heldout_fraction=0.2", "sweep.num_samples=5", "sweep.base.epochs=1",
                 "sweep.base.batch_size=32", "sweep.base.warmup_steps=2",
                 "soup.recipes=[uniform,greedy]"]
    cli = [sys.executable, "-m", "raysoup.cli"]
    common = ["--workdir", str(base / "work")] + [a for o in overrides for a in ("--set", o)]
    config = str(REPO / "experiments" / "tiny.yaml")
    subprocess.run(cli + ["sweep", config] + common, check=True, capture_output=True)
    log = base / "decode.log"
    env = {**os.environ, "RAYSOUP_DECODE_LOG": str(log)}
    for stage in ("evaluate", "soup"):
        subprocess.run(cli + [stage, config] + common, check=True, capture_output=True, env=env)
    cfg = WorldCfg(num_classes=4, train_per_class=100, test_per_class=25, shift_per_class=15)
    heldout = sum(1 for _ in _heldout_keys(base / "work", cfg))
    eval_images = heldout + sum(world.split_size(cfg, s) for s in ("test", *world.SHIFTS))
    decoded = len(log.read_text().splitlines()) if log.exists() else 0
    models = len(list(Workdir(base / "work").ingredients.iterdir()))
    return {"decoded": decoded, "eval_images": eval_images, "models": models,
            "per_image": decoded / eval_images}


def _heldout_keys(workdir: Path, cfg) -> list[str]:
    from raysoup.data.parquet import read_parquet_split
    from raysoup.data.split import heldout_mask
    from raysoup.workdir import Workdir

    train = read_parquet_split(Workdir(workdir).world / "train")
    return [k for k, m in zip(train.keys, heldout_mask(train.keys, 0.2), strict=True) if m]


def feed(out: Path, model: str, lanes: int, images: int, device: str, steps: int = 20) -> dict:
    """The input pipeline feeding `model` with `lanes` workers, on ImageNet-sized JPEGs
    (bench/gpu.sh: ViT-B-32 on the GPU, the machine's cores)."""
    split = write_split(out / "feed", jpegs(images, seed=7, lo=300, hi=500))
    result = _child_input(str(split), model, 224, 256, "random_resized_crop", steps, lanes,
                          device)
    result["input_vs_step"] = ratio(result["input_img_s"], result["step_img_s"])
    return result


CHILDREN["feed"] = feed

if __name__ == "__main__":
    kwargs = json.loads(sys.argv[2])
    if sys.argv[1] == "feed":
        kwargs["out"] = Path(kwargs["out"])
    result = CHILDREN[sys.argv[1]](**kwargs)
    print(json.dumps(result))
