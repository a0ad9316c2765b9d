"""The synthetic world: a deterministic image-classification benchmark with captions and shifts.

Classes are shapes drawn with random colour, size, position and rotation on textured
backgrounds; every image has a caption naming its shape (for the tiny contrastive
pre-training). Besides train and test, five shift sets each move one factor out of the
training range (see SHIFTS). Every sample draws from its own PCG64 stream seeded by
(world seed, split, index), so any sample can be regenerated alone. Pixels depend only on
numpy's PCG64 and Pillow's integer polygon/box code; the PNG bytes additionally on zlib
(render.encode_png writes them directly, ~3x faster than Image.save for 32x32 images).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageFilter

from raysoup.atomic import atomic_dir
from raysoup.config import WorldCfg
from raysoup.data.images import LabeledImages
from raysoup.data.parquet import write_parquet_parts
from raysoup.data.render import (
    COLORS,
    SHAPES,
    SHIFT_TEXTURES,
    TRAIN_TEXTURES,
    Scene,
    encode_png,
    render,
)

CLASSNAMES: list[str] = list(SHAPES)

# Zero-shot prompts; their wording also occurs in the training captions.
TEMPLATES: list[str] = [
    "a photo of a {}.",
    "a picture of a {}.",
    "a drawing of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
]

_CAPTIONS = [
    "a photo of a {size} {color} {shape} on a {texture} background.",
    "a photo of a {shape} on a {texture} background.",
    "a picture of a {color} {shape}.",
    "a {size} {color} {shape}.",
    "a photo of a {size} {shape}.",
    "a photo of a {shape}.",
    "a drawing of a {color} {shape}.",
]
_SKETCH_CAPTIONS = ["a sketch of a {size} {shape}.", "a drawing of a {shape}."]
_STYLED_CAPTIONS = ["a {style} photo of a {size} {shape}."]  # inverted / greyscale images
_STYLES = ["inverted", "greyscale"]
_BLURRY_CAPTIONS = ["a blurry photo of a {size} {shape}.", "a noisy photo of a {color} {shape}."]
SIZES = ("small", "large")

SPLITS = ("train", "test")
SHIFTS = ("background", "inverted", "blur_noise", "geometric", "sketch")
# The pre-training corpus ("web"), never a split of the fine-tuning task. CLIP's web data holds
# far more than ImageNet-like photos (sketches, renditions, odd backgrounds, blur), and that
# breadth is where its robustness under shift comes from (Fang et al., ICML 2022). The web
# split mixes photos of the train kind with every shift's style, in samples of its own seed
# stream (never an image of a shift set), so the zero-shot model has that breadth and
# fine-tuning on photos alone can erode it, as fine-tuning CLIP on ImageNet does.
WEB = "web"


def web_mix(photo_share: float = 0.5) -> dict[str, float]:
    """The web corpus's kinds and their shares: photos of the train kind, the rest split evenly
    over the shift styles."""
    other = (1.0 - photo_share) / len(SHIFTS)
    return {"train": photo_share, **{kind: other for kind in SHIFTS}}


# Part of every sample's seed; new kinds are appended so existing splits keep their pixels.
_SPLIT_CODE = {name: i for i, name in enumerate(SPLITS + SHIFTS + (WEB,))}
COMPLETE = "_COMPLETE"  # a split's completion marker: cfg, and rows per shard

# Training ranges, in units of the image size; "geometric" samples outside them.
_RADIUS = (0.22, 0.40)
_SMALL_BELOW = 0.31
_ROTATION = 15.0


def normalize_words(text: str) -> list[str]:
    """Lower-case words, '.' and ',' treated as spaces; the world tokenizer uses this too."""
    return text.lower().replace(".", " ").replace(",", " ").split()


def vocabulary(cfg: WorldCfg) -> list[str]:
    """Every word that can occur in this world's captions, classnames and templates, sorted."""
    fills = {
        "size": list(SIZES), "color": list(COLORS), "shape": CLASSNAMES[: cfg.num_classes],
        "texture": list(TRAIN_TEXTURES) + list(SHIFT_TEXTURES), "style": _STYLES,
    }
    words = {"a", "an"}
    for form in _CAPTIONS + _SKETCH_CAPTIONS + _STYLED_CAPTIONS + _BLURRY_CAPTIONS + TEMPLATES:
        words.update(w for w in normalize_words(form.replace("{}", " ")) if "{" not in w)
    for values in fills.values():
        for v in values:
            words.update(normalize_words(v))
    return sorted(words)


def sketch_classes(cfg: WorldCfg) -> list[int]:
    """The sketch shift covers only the first half of the classes (an ImageNet-R-like subset)."""
    return list(range(max(2, cfg.num_classes // 2)))


def _caption(rng: np.random.Generator, forms: list[str], **fill: str) -> str:
    text = forms[rng.integers(len(forms))].format(**fill)
    # "a orange" -> "an orange"; the templates keep "a" so zero-shot prompts stay fixed.
    words = text.split(" ")
    for i in range(len(words) - 1):
        if words[i] == "a" and words[i + 1][0] in "aeiou":
            words[i] = "an"
    return " ".join(words)


Color = tuple[float, float, float]


def _clip255(v: float) -> float:
    return min(255.0, max(0.0, v))


def _contrasting_bg(u: list[float], fg: Color) -> tuple[Color, Color]:
    """Two texture colours, both far from the shape colour so the silhouette stays visible.

    u holds uniforms for candidate pairs (6 each); the first pair that contrasts wins.
    Plain Python: on 3-vectors numpy's per-call overhead dominated the world's generation.
    """
    for k in range(0, len(u) - 5, 6):
        c1 = tuple(255 * v for v in u[k:k + 3])
        c2 = tuple(_clip255(a + 140 * v - 70) for a, v in zip(c1, u[k + 3:k + 6]))
        if min(_dist2(c1, fg), _dist2(c2, fg)) > 150.0**2:
            return c1, c2
    c1 = tuple(255 - v for v in fg)
    return c1, tuple(_clip255(v + (30 if v < 127.5 else -30)) for v in c1)


def _dist2(a: Color, b: Color) -> float:
    return sum((x - y) ** 2 for x, y in zip(a, b))


_COLOR_NAMES = list(COLORS)
_TEXTURES = {"background": list(SHIFT_TEXTURES)}  # every other kind uses the train textures


def _scene(kind: str, label: int, size: int, rng: np.random.Generator) -> tuple[Scene, dict]:
    """Sample one scene of the given split kind; returns it with its caption words."""
    u = rng.random(10 + 16 * 6).tolist()  # one RNG call per sample: per-call overhead dominates
    textures = _TEXTURES.get(kind, list(TRAIN_TEXTURES))
    color = _COLOR_NAMES[int(u[0] * len(COLORS))]
    texture = textures[int(u[1] * len(textures))]
    radius = _RADIUS[0] + u[2] * (_RADIUS[1] - _RADIUS[0])
    angle = _ROTATION * (2 * u[3] - 1)
    fg = tuple(_clip255(c + 24 * v - 12) for c, v in zip(COLORS[color], u[4:7]))
    bg = _contrasting_bg(u[10:], fg)
    margin = radius
    if kind == "geometric":
        # Just outside the training ranges: tinier or bigger, more rotated, off-centre.
        radius = 0.17 + 0.04 * u[2] if u[7] < 0.5 else 0.41 + 0.04 * u[2]
        angle = (1 if angle >= 0 else -1) * (_ROTATION + 15 * abs(2 * u[3] - 1))
        margin = 0.8 * radius  # up to ~20% of the shape may leave the frame
    if kind == "sketch":  # dark pencil on light paper
        fg = (10 + 60 * u[4],) * 3
        paper = tuple(_clip255(215 + 35 * u[5] + 10 * v - 5) for v in u[4:7])
        bg, texture = (paper, paper), "plain"
    center = ((margin + (1 - 2 * margin) * u[8]) * size, (margin + (1 - 2 * margin) * u[9]) * size)
    scene = Scene(CLASSNAMES[label], fg, bg, texture, radius * size, center, angle,
                  sketch=kind == "sketch")
    words = {"size": "small" if radius < _SMALL_BELOW else "large", "color": color,
             "shape": CLASSNAMES[label], "texture": texture}
    return scene, words


def _postprocess(kind: str, img: np.ndarray, rng: np.random.Generator, words: dict) -> np.ndarray:
    if kind == "inverted":
        words["style"] = _STYLES[rng.integers(2)]
        if words["style"] == "inverted":
            return 255 - img
        rgb = img.astype(np.float32)  # explicit sum, not a BLAS call: same rounding everywhere
        grey = np.rint(rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114)
        return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)
    if kind == "blur_noise":
        blurred = Image.fromarray(img).filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 0.9)))
        noisy = np.asarray(blurred, np.float32) + rng.normal(0, rng.uniform(6, 16), img.shape)
        return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    return img


def render_sample(cfg: WorldCfg, split: str, index: int, mix: dict[str, float] | None = None
                  ) -> tuple[np.ndarray, int, str]:
    """(uint8 image [S,S,3], label, caption) of one sample; a pure function of its arguments
    (`mix`: the web corpus's shares of kinds, default `web_mix()`)."""
    rng = np.random.Generator(np.random.PCG64([cfg.seed, _SPLIT_CODE[split], index]))
    kind = split
    if split == WEB:  # a kind per sample, drawn from the mixture; every class in every kind
        kind = _web_kind(rng.random(), mix or web_mix())
        label = index % cfg.num_classes
    else:
        classes = sketch_classes(cfg) if split == "sketch" else range(cfg.num_classes)
        label = classes[index % len(classes)]
    scene, words = _scene(kind, label, cfg.image_size, rng)
    img = _postprocess(kind, render(scene, cfg.image_size, rng), rng, words)
    forms = {"sketch": _SKETCH_CAPTIONS, "inverted": _STYLED_CAPTIONS}.get(kind, _CAPTIONS)
    if split == WEB and kind == "blur_noise":  # the web names what it shows; test sets do not
        forms = _BLURRY_CAPTIONS
    return img, label, _caption(rng, forms, **words)


def scene_words(cfg: WorldCfg, split: str, index: int) -> dict[str, str]:
    """The words that describe one sample of a task split (shape, color, size, texture),
    drawn exactly as `render_sample` draws them, without rendering: another labelling of the
    same images (e.g. colour as the class, `raysoup analyze transfer`)."""
    if split == WEB:
        raise ValueError("scene_words: the web corpus draws its kind first; ask a task split")
    rng = np.random.Generator(np.random.PCG64([cfg.seed, _SPLIT_CODE[split], index]))
    classes = sketch_classes(cfg) if split == "sketch" else range(cfg.num_classes)
    _, words = _scene(split, classes[index % len(classes)], cfg.image_size, rng)
    return words


def _web_kind(u: float, mix: dict[str, float]) -> str:
    total = 0.0
    for kind, weight in mix.items():
        total += weight
        if u < total:
            return kind
    return kind


def split_size(cfg: WorldCfg, split: str) -> int:
    per_class = {"train": cfg.train_per_class, "test": cfg.test_per_class}
    classes = len(sketch_classes(cfg)) if split == "sketch" else cfg.num_classes
    return classes * per_class.get(split, cfg.shift_per_class)


def build_split(cfg: WorldCfg, split: str) -> LabeledImages:
    return _build(cfg, split, split_size(cfg, split))


def web_corpus(cfg: WorldCfg, per_class: int, photo_share: float = 0.5) -> LabeledImages:
    """The web corpus of `per_class` image-caption pairs per class (see WEB): what a base is
    pre-trained on with `model.pretrain.corpus: web`. Its samples depend on the world's seed,
    classes and image size only, not on the sizes of the task's splits."""
    return _build(cfg, WEB, cfg.num_classes * per_class, web_mix(photo_share))


def _build(cfg: WorldCfg, split: str, n: int, mix: dict[str, float] | None = None
           ) -> LabeledImages:
    keys, images, labels, captions = [], [], np.empty(n, np.int64), []
    for i in range(n):
        img, labels[i], caption = render_sample(cfg, split, i, mix)
        keys.append(f"{split}/{i:06d}")
        images.append(encode_png(img))
        captions.append(caption)
    subset = sketch_classes(cfg) if split == "sketch" else None
    return LabeledImages(keys, images, labels, CLASSNAMES[: cfg.num_classes], captions, subset)


def generate_world(cfg: WorldCfg, root: Path, progress: bool = True) -> dict[str, Path]:
    """Write every split as Parquet under root/<split>/ and return {split: dir}.

    A split is complete when root/<split>/_COMPLETE records the same cfg and every shard it
    lists holds the rows it records (`split_complete`); it is built in a temp dir next to it
    and renamed into place, so a crash never leaves a partial split that looks complete. A
    split written for a different cfg, or missing rows (a copy cut short), is rebuilt.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = cfg.model_dump(mode="json")
    out: dict[str, Path] = {}
    for split in SPLITS + SHIFTS:
        final = root / split
        out[split] = final
        if split_complete(final, stamp):
            continue
        t0 = time.perf_counter()
        data = build_split(cfg, split)
        # Replaces a stale split (other config, interrupted); a split another process finished
        # meanwhile is replaced by the same bytes.
        with atomic_dir(final) as tmp:
            files = write_parquet_parts(tmp, data)
            rows = {f.name: pq.read_metadata(f).num_rows for f in files}
            marker = {"cfg": stamp, "rows": sum(rows.values()), "files": rows}
            (tmp / COMPLETE).write_text(json.dumps(marker, sort_keys=True))
        if progress:
            print(f"world: {split:<10} {len(data):>6} images in {time.perf_counter() - t0:.1f}s"
                  f" -> {final}", file=sys.stderr)
    return out


def split_complete(split_dir: Path, stamp: dict) -> bool:
    """True when split_dir/_COMPLETE records `stamp` (the cfg) and each shard it lists is
    there with the number of rows it records (read from the Parquet footer). A marker that
    outlived some of its shards (an upload or download cut short) is not complete."""
    try:
        marker = json.loads((Path(split_dir) / COMPLETE).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    if not isinstance(marker, dict) or marker.get("cfg") != stamp:
        return False
    files = marker.get("files")
    if not isinstance(files, dict) or not files or sum(files.values()) != marker.get("rows"):
        return False
    for name, rows in files.items():
        try:
            if pq.read_metadata(Path(split_dir) / name).num_rows != rows:
                return False
        except (OSError, pa.ArrowInvalid):  # missing, or cut short (no footer)
            return False
    return True
