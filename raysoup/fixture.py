"""An ImageNet-shaped fixture, generated (never downloaded): the paper config's data layout.

`write_imagenet_fixture(root)` writes, deterministically for a seed:

    train/<wnid>/*.jpg          1000 wnid-named class folders (sorted order = class index)
    val/<wnid>/*.jpg            the same folders
    imagenetv2/<0..999>/*.jpg   ImageNetV2's layout: folders named by class index
    imagenet-r/<wnid>/*.jpg     a 200-class subset (renditions: posterised, inverted colours)
    imagenet-a/<wnid>/*.jpg     another 200-class subset (low contrast, heavy noise)
    sketch/<wnid>/*.jpg         every class, as grey line drawings
    objectnet/<name>/*.jpg      ObjectNet-style classes of their own names, some not mapped
    objectnet_class_map.json    {"<objectnet dir>": ["<wnid>", ...]}, some many-to-one
    tiny-vit224.safetensors     seeded random weights of raysoup-tiny-vit224 (model.pretrained)
    fixture.json                what was generated (written last: the fixture is complete)

JPEGs have varied sizes and aspect ratios (sides 40..200 px). Each class has its own colours,
stripe orientation and period, so a fine-tuned model has something to learn; every shift set
keeps the class's pattern and changes its rendering.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

TINY_MODEL = "raysoup-tiny-vit224"
WEIGHTS_FILE = "tiny-vit224.safetensors"
MARKER = "fixture.json"
SUBSET = 200  # ImageNet-R and -A cover 200 classes
OBJECTNET_DIRS = 60
OBJECTNET_UNMAPPED = 10  # like ObjectNet's classes outside ImageNet: the reader skips them
DIRS = ("train", "val", "imagenetv2", "imagenet-r", "imagenet-a", "sketch", "objectnet")


def wnid(i: int) -> str:
    """A wnid-shaped name, increasing with i so that sorted folder order = class index."""
    return f"n{1440764 + 9973 * i:08d}"


def _class_style(i: int) -> dict:
    # Golden-ratio hues: neighbouring class indices get clearly different colours.
    hue = (i * 0.6180339887) % 1.0
    return {"fg": _hsv(hue, 0.9, 0.95), "bg": _hsv((hue + 0.5) % 1.0, 0.5, 0.35),
            "angle": (i % 4) * np.pi / 4, "period": 6 + (i // 4) % 13}


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)


def _image(cls: int, style: str, rng: np.random.Generator) -> bytes:
    """One JPEG of class `cls` rendered in `style`, of a random size and aspect ratio."""
    c = _class_style(cls)
    w, h = (int(v) for v in rng.integers(40, 201, size=2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = c["angle"] + rng.normal(0, 0.1)
    phase = rng.uniform(0, c["period"])
    t = (xx * np.cos(angle) + yy * np.sin(angle) + phase) / c["period"]
    stripes = (np.sin(2 * np.pi * t) > 0).astype(np.float32)[..., None]
    # Per-image jitter of colours, phase and angle; no pixel noise (it would bloat the JPEGs).
    fg = (c["fg"] * rng.uniform(0.85, 1.0)).astype(np.float32)
    bg = (c["bg"] * rng.uniform(0.85, 1.15)).astype(np.float32)
    img = stripes * fg + (1 - stripes) * bg
    if style == "sketch":  # dark lines where the stripes change, on white paper
        edge = np.abs(np.diff(stripes[..., 0], axis=1, prepend=stripes[:, :1, 0])) \
            + np.abs(np.diff(stripes[..., 0], axis=0, prepend=stripes[:1, :, 0]))
        img = np.repeat(1 - np.clip(edge, 0, 1)[..., None] * 0.8, 3, axis=2)
    elif style == "rendition":  # posterised, inverted colours
        img = np.round((1 - img) * 3) / 3
    elif style == "adversarial":  # low contrast under heavy noise
        img = 0.5 + (img - 0.5) * 0.4 + rng.normal(0, 0.15, img.shape).astype(np.float32)
    elif style == "objectnet":  # the object on a cluttered, grey-ish background
        img = img * 0.7 + rng.uniform(0.1, 0.4, (1, 1, 3)).astype(np.float32)
    pixels = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _write_folder(root: Path, dirs: list[str], classes: list[int], per_class: int, style: str,
                  seed: int, split_id: int) -> int:
    for idx, (d, cls) in enumerate(zip(dirs, classes)):
        (root / d).mkdir(parents=True, exist_ok=True)
        # One generator per (split, folder): a folder's images do not depend on the others.
        rng = np.random.default_rng([seed, split_id, idx])
        for k in range(per_class):
            (root / d / f"{d}_{k:05d}.JPEG").write_bytes(_image(cls, style, rng))
    return len(dirs) * per_class


def _objectnet_map(classes: int, seed: int) -> dict[str, list[int]]:
    """ObjectNet dir -> train class indices: one-to-one, some many-to-one, a few unmapped."""
    rng = np.random.default_rng([seed, 99])
    n = min(OBJECTNET_DIRS, classes)
    picks = rng.permutation(classes)
    groups, j = {}, 0
    for k in range(n - min(OBJECTNET_UNMAPPED, n // 2)):
        size = 1 if k % 3 else 3  # every third ObjectNet class stands for 3 ImageNet classes
        group = picks[j:j + size] if j < classes else picks[k % classes:k % classes + 1]
        groups[f"object_{k:03d}"] = sorted(int(c) for c in group)
        j += size
    for k in range(len(groups), n):
        groups[f"object_{k:03d}"] = []  # not an ImageNet class: left out of the map
    return groups


def write_tiny_weights(path: Path, seed: int = 0) -> Path:
    """Seeded random-init weights of raysoup-tiny-vit224 (a full open_clip state dict, so
    `model.pretrained: <path>` loads it like any local weights file)."""
    import torch
    from safetensors.torch import save_file

    from raysoup.atomic import write_atomic
    from raysoup.models.factory import build_clip

    torch.manual_seed(seed)
    state = build_clip(TINY_MODEL).state_dict()
    path = Path(path)
    return write_atomic(path, lambda tmp: save_file({k: v.contiguous() for k, v in state.items()},
                                                    str(tmp)))


def write_imagenet_fixture(root: Path, *, classes: int = 1000, train_per_class: int = 2,
                           eval_per_class: int = 1, seed: int = 0,
                           weights: bool = True) -> dict[str, str]:
    """Write the fixture under root; paths by role (train, val, imagenet_v2, imagenet_r,
    imagenet_a, imagenet_sketch, objectnet, objectnet_class_map, weights).

    A root holding a complete fixture of the same parameters is reused as it is.
    """
    if classes < 2 or train_per_class < 1 or eval_per_class < 1:
        raise ValueError(f"write_imagenet_fixture: classes >= 2 and per-class counts >= 1, got "
                         f"classes={classes}, train_per_class={train_per_class}, "
                         f"eval_per_class={eval_per_class}")
    root = Path(root)
    params = _params(classes, train_per_class, eval_per_class, seed, weights)
    paths = _paths(root, weights)
    out = {k: str(v) for k, v in paths.items()}
    marker = root / MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("params") == params:
        return out
    start = time.perf_counter()
    marker.unlink(missing_ok=True)
    for d in DIRS:  # a partial or differently sized fixture: start clean
        shutil.rmtree(root / d, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    counts = _write_splits(paths, classes, train_per_class, eval_per_class, seed)
    if weights:
        write_tiny_weights(paths["weights"], seed)
    info = {"params": params, "images": counts, "paths": out,
            "seconds": round(time.perf_counter() - start, 2)}
    marker.write_text(json.dumps(info, indent=1))  # last: the fixture is complete
    return out


def _params(classes: int, train_per_class: int, eval_per_class: int, seed: int,
            weights: bool) -> dict:
    """What a fixture on disk must have been written with to be reused."""
    params = {"classes": classes, "train_per_class": train_per_class,
              "eval_per_class": eval_per_class, "seed": seed, "weights": weights}
    if weights:  # weights of another version of the tiny config would not load
        from raysoup.models.factory import CONFIG_DIR

        config = (CONFIG_DIR / f"{TINY_MODEL}.json").read_bytes()
        params["model_config"] = hashlib.sha256(config).hexdigest()[:16]
    return params


def _paths(root: Path, weights: bool) -> dict[str, Path]:
    paths = {"train": root / "train", "val": root / "val", "imagenet_v2": root / "imagenetv2",
             "imagenet_r": root / "imagenet-r", "imagenet_a": root / "imagenet-a",
             "imagenet_sketch": root / "sketch", "objectnet": root / "objectnet",
             "objectnet_class_map": root / "objectnet_class_map.json"}
    if weights:
        paths["weights"] = root / WEIGHTS_FILE
    return paths


def _write_splits(paths: dict[str, Path], classes: int, train_per_class: int,
                  eval_per_class: int, seed: int) -> dict[str, int]:
    """Every split's image folder (and ObjectNet's class map); images per split."""
    names = [wnid(i) for i in range(classes)]
    every = list(range(classes))
    n_sub = min(SUBSET, classes)
    rng = np.random.default_rng([seed, 7])
    r_classes = sorted(int(c) for c in rng.choice(classes, n_sub, replace=False))
    a_classes = sorted(int(c) for c in rng.choice(classes, n_sub, replace=False))
    counts = {
        "train": _write_folder(paths["train"], names, every, train_per_class, "photo", seed, 0),
        "val": _write_folder(paths["val"], names, every, eval_per_class, "photo", seed, 1),
        "imagenet_v2": _write_folder(paths["imagenet_v2"], [str(i) for i in every], every,
                                     eval_per_class, "photo", seed, 2),
        "imagenet_r": _write_folder(paths["imagenet_r"], [names[c] for c in r_classes],
                                    r_classes, eval_per_class, "rendition", seed, 3),
        "imagenet_a": _write_folder(paths["imagenet_a"], [names[c] for c in a_classes],
                                    a_classes, eval_per_class, "adversarial", seed, 4),
        "imagenet_sketch": _write_folder(paths["imagenet_sketch"], names, every, eval_per_class,
                                         "sketch", seed, 5),
    }
    groups = _objectnet_map(classes, seed)
    on_dirs = sorted(groups)
    # An unmapped ObjectNet class looks like some class too; it is skipped, never scored.
    on_classes = [groups[d][0] if groups[d] else (7 * k) % classes for k, d in enumerate(on_dirs)]
    counts["objectnet"] = _write_folder(paths["objectnet"], on_dirs, on_classes,
                                        2 * eval_per_class, "objectnet", seed, 6)
    class_map = {d: [names[c] for c in g] for d, g in groups.items() if g}
    paths["objectnet_class_map"].write_text(json.dumps(class_map, indent=1, sort_keys=True))
    return counts


def fixture_overrides(paths: dict[str, str], num_samples: int = 2) -> list[str]:
    """`--set` overrides that run experiments/clip_vit_b32_imagenet.yaml on the fixture on
    CPUs: the tiny 224-px model and the fixture's paths; classnames and templates stay."""
    sets = {
        "model.name": TINY_MODEL,
        "model.pretrained": paths["weights"],
        "data.train.path": paths["train"],
        "data.test.path": paths["val"],
        "data.shifts.imagenet_v2.path": paths["imagenet_v2"],
        "data.shifts.imagenet_r.path": paths["imagenet_r"],
        "data.shifts.imagenet_sketch.path": paths["imagenet_sketch"],
        "data.shifts.imagenet_a.path": paths["imagenet_a"],
        "data.shifts.objectnet.path": paths["objectnet"],
        "data.shifts.objectnet.class_map": paths["objectnet_class_map"],
        # Sized for a few CPU cores: 2 short trials, 1-CPU trials and actors, small batches.
        "sweep.num_samples": num_samples,
        "sweep.max_concurrent": 2,
        "sweep.resources_per_trial.cpu": 1,
        "sweep.resources_per_trial.gpu": 0,
        "sweep.base.batch_size": 64,
        "sweep.base.warmup_steps": 5,
        "sweep.space.epochs": 1,
        "eval.num_actors": 2,
        "eval.cpus_per_actor": 1,
        "eval.gpus_per_actor": 0,
        "eval.batch_size": 256,
        "soup.num_shards": 2,
    }
    return [f"{k}={v}" for k, v in sets.items()]
