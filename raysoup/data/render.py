"""Drawing primitives of the synthetic world: shape outlines, background textures, compositing.

Everything is drawn at twice the output size and box-downsampled (Image.reduce), which
antialiases edges with integer arithmetic only, so pixels are exact across machines.
Shapes are unit polygons (y up, radius ~1); a shape is a list of (polygon, fill) operations so
holes (ring, crescent) are drawn by filling a second polygon with 0.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter


def _ngon(k: int, radius: float = 1.0, phase_deg: float = 90.0, center=(0.0, 0.0)) -> np.ndarray:
    a = np.deg2rad(phase_deg) + 2 * np.pi * np.arange(k) / k
    return np.stack([center[0] + radius * np.cos(a), center[1] + radius * np.sin(a)], axis=1)


def _star(points: int, inner: float) -> np.ndarray:
    outer = _ngon(points)
    inner_pts = _ngon(points, inner, 90.0 + 180.0 / points)
    return np.stack([outer, inner_pts], axis=1).reshape(-1, 2)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return np.stack([x, y + 2.5], axis=1) / 16.0


def _poly(*pts) -> np.ndarray:
    return np.asarray(pts, dtype=np.float64)


# Order matters: a world with num_classes=n uses the first n shapes, and the "sketch" shift
# covers the first half of those.
SHAPES: dict[str, list[tuple[np.ndarray, int]]] = {
    "circle": [(_ngon(40), 255)],
    "square": [(_poly((-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)), 255)],
    "triangle": [(_ngon(3, 1.1, center=(0, -0.15)), 255)],
    "cross": [(_poly((-0.3, 1), (0.3, 1), (0.3, 0.3), (1, 0.3), (1, -0.3), (0.3, -0.3), (0.3, -1),
                     (-0.3, -1), (-0.3, -0.3), (-1, -0.3), (-1, 0.3), (-0.3, 0.3)), 255)],
    "star": [(_star(5, 0.42), 255)],
    "ring": [(_ngon(40), 255), (_ngon(40, 0.55), 0)],
    "diamond": [(_poly((0, 1), (0.62, 0), (0, -1), (-0.62, 0)), 255)],
    "hexagon": [(_ngon(6, phase_deg=0.0), 255)],
    "heart": [(_heart(), 255)],
    "crescent": [(_ngon(40), 255), (_ngon(40, 0.85, center=(0.5, 0.15)), 0)],
    "arrow": [(_poly((-1, -0.25), (0.2, -0.25), (0.2, -0.65), (1, 0), (0.2, 0.65), (0.2, 0.25),
                     (-1, 0.25)), 255)],
    "pentagon": [(_ngon(5), 255)],
    "chevron": [(_poly((-0.7, 1), (-0.1, 1), (0.8, 0), (-0.1, -1), (-0.7, -1), (0.2, 0)), 255)],
    "trapezoid": [(_poly((-1, -0.6), (1, -0.6), (0.45, 0.6), (-0.45, 0.6)), 255)],
    "semicircle": [(np.vstack([_ngon(40, phase_deg=0.0)[:21], [[-1.0, 0.0]]]) - [0, 0.4], 255)],
    "hourglass": [(_poly((-0.8, 1), (0.8, 1), (0.12, 0), (0.8, -1), (-0.8, -1), (-0.12, 0)), 255)],
}

# Named foreground colours (captions use the names); backgrounds are random but contrasting.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220),
    "yellow": (240, 220, 40), "orange": (245, 140, 30), "purple": (140, 50, 190),
    "pink": (245, 120, 190), "cyan": (40, 200, 220), "white": (245, 245, 245),
    "black": (20, 20, 20),
}


@lru_cache(maxsize=8)
def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:n, 0:n].astype(np.float32)
    return x, y


# Texture patterns in [0, 1] over pixel grids x, y; `unit` = canvas pixels per 1/64 of the image.
def _direction(rng, x, y):
    a = rng.uniform(0, np.pi)
    return x * np.cos(a) + y * np.sin(a)


def _striped(rng, x, y, unit):
    p = rng.uniform(6, 12) * unit
    return np.sin(2 * np.pi * _direction(rng, x, y) / p) > 0


def _checkered(rng, x, y, unit):
    p = rng.uniform(7, 13) * unit
    return (np.floor(x / p) + np.floor(y / p)) % 2


def _dotted(rng, x, y, unit):
    p = rng.uniform(10, 16) * unit
    dx, dy = x % p - p / 2, y % p - p / 2
    return dx * dx + dy * dy < (0.3 * p) ** 2


def _gradient(rng, x, y, unit):
    d = _direction(rng, x, y)
    return (d - d.min()) / max(float(d.max() - d.min()), 1.0)


# Textures never seen in training: the "background" shift set.
def _wavy(rng, x, y, unit):
    p, q = rng.uniform(8, 12) * unit, rng.uniform(14, 24) * unit
    return np.sin(2 * np.pi * (y + 0.5 * p * np.sin(2 * np.pi * x / q)) / p) > 0


def _grid_lines(rng, x, y, unit):
    p = rng.uniform(9, 14) * unit
    return ((x % p) < 0.22 * p) | ((y % p) < 0.22 * p)


def _marbled(rng, x, y, unit):
    f1, f2 = rng.uniform(0.08, 0.16, 2) / unit
    return 0.5 + 0.5 * np.sin(x * f1 + 3 * np.sin(y * f2) + rng.uniform(0, 6.3))


# "plain" and "noisy" are drawn per sample; the others are cropped from pre-drawn tiles.
TRAIN_TEXTURES = {"plain": None, "striped": _striped, "checkered": _checkered,
                  "dotted": _dotted, "gradient": _gradient, "noisy": None}
SHIFT_TEXTURES = {"wavy": _wavy, "grid": _grid_lines, "marbled": _marbled}
TEXTURES = {**TRAIN_TEXTURES, **SHIFT_TEXTURES}
_VARIANTS = 16


@lru_cache(maxsize=64)
def _tiles(name: str, canvas: int) -> list[Image.Image]:
    """16 random variants of a texture, each twice the canvas; a pure function of its inputs.

    Cropping a tile at a random offset costs microseconds where drawing the pattern per
    sample dominated the world's generation time.
    """
    rng = np.random.Generator(np.random.PCG64([list(TEXTURES).index(name), canvas]))
    x, y = _grid(2 * canvas)
    return [Image.fromarray(np.rint(255 * np.asarray(TEXTURES[name](rng, x, y, canvas / 64),
                                                     np.float32)).astype(np.uint8))
            for _ in range(_VARIANTS)]


def texture(name: str, rng: np.random.Generator, canvas: int) -> Image.Image:
    """'L' pattern (0 = first background colour, 255 = second) on a canvas x canvas square."""
    if name == "plain":
        return Image.new("L", (canvas, canvas), 0)
    if name == "noisy":
        b = max(canvas // 16, 1)
        blocks = (rng.random((canvas // b, canvas // b)) * 255).astype(np.uint8)
        return Image.fromarray(blocks.repeat(b, 0).repeat(b, 1))
    k, ox, oy = (rng.random(3) * [_VARIANTS, canvas, canvas]).astype(int).tolist()
    return _tiles(name, canvas)[k].crop((ox, oy, ox + canvas, oy + canvas))


@dataclass(frozen=True)
class Scene:
    """Everything needed to draw one image (all sizes in output pixels)."""

    shape: str
    fg: tuple[float, float, float]
    bg: tuple[tuple[float, ...], tuple[float, ...]]  # the texture's two colours
    texture: str
    radius: float
    center: tuple[float, float]
    angle_deg: float
    sketch: bool = False  # outline + pencil hatching instead of a filled shape


def shape_mask(scene: Scene, size: int) -> Image.Image:
    """'L' mask of the shape on the 2x canvas (2*size square)."""
    n, s = 2 * size, 2.0
    a = np.deg2rad(scene.angle_deg)
    cos, sin = np.cos(a) * scene.radius, np.sin(a) * scene.radius
    mask = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(mask)
    for poly, fill in SHAPES[scene.shape]:
        # Rotate + scale by hand: a tiny matmul would wake BLAS threads on every sample.
        xs = (scene.center[0] + cos * poly[:, 0] - sin * poly[:, 1]) * s
        ys = (scene.center[1] - sin * poly[:, 0] - cos * poly[:, 1]) * s  # image y points down
        draw.polygon(list(zip(xs.tolist(), ys.tolist())), fill=fill)
    return mask


@lru_cache(maxsize=8)
def _hatch(n: int) -> Image.Image:
    x, y = _grid(n)
    return Image.fromarray((((x + y) % 6 < 1.5) * 90).astype(np.uint8))


def _rgb(color) -> tuple[int, int, int]:
    return tuple(round(float(v)) for v in color)


def render(scene: Scene, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [size, size, 3]."""
    n = 2 * size
    img = Image.new("RGB", (n, n), _rgb(scene.bg[0]))
    if scene.texture != "plain":
        img.paste(_rgb(scene.bg[1]), None, texture(scene.texture, rng, n))  # paste = blend by mask
    mask = shape_mask(scene, size)
    if scene.sketch:
        # Pencil look: a ~1.5 px outline plus faint diagonal hatching inside the shape.
        outline = ImageChops.subtract(mask.filter(ImageFilter.MaxFilter(5)),
                                      mask.filter(ImageFilter.MinFilter(3)))
        mask = ImageChops.lighter(outline, ImageChops.multiply(_hatch(n), mask))
    img.paste(_rgb(scene.fg), None, mask)
    return np.asarray(img.reduce(2))


def encode_png(img: np.ndarray) -> bytes:
    """Minimal RGB PNG (no filters, zlib level 6): the bytes depend on zlib only, not on Pillow."""
    h, w, _ = img.shape
    rows = np.zeros((h, 1 + 3 * w), np.uint8)  # each row starts with filter type 0
    rows[:, 1:] = img.reshape(h, 3 * w)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b""))
