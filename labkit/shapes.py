"""The Shapes dataset: seeded, captioned images of coloured shapes, in English and Chinese.

Every example is a pure function of ``(seed, index)``, so the dataset needs no files: any
process (a training loop, a Ray worker) regenerates exactly the same images. Factors: shape x
colour x size x position x background, each drawn uniformly.

Example:
    >>> from labkit.shapes import ShapesDataset
    >>> ds = ShapesDataset(n=1000, seed=0)
    >>> ex = ds[3]
    >>> ex["caption_en"]
    'a large orange triangle at the bottom on a black background'
    >>> ex["caption_zh"]
    '黑色背景上下方的大橙色三角形'
    >>> ex["image"].size
    (32, 32)
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

import labkit.ray_runtime  # noqa: F401  (sets Ray's auth mode before to_ray_dataset imports ray)

IMAGE_SIZE = 32

SHAPES = {"circle": "圆形", "square": "正方形", "triangle": "三角形", "star": "星形"}
COLOURS = {  # name: (RGB, Chinese)
    "red": ((220, 40, 40), "红色"),
    "green": ((40, 170, 60), "绿色"),
    "blue": ((40, 80, 220), "蓝色"),
    "yellow": ((240, 210, 40), "黄色"),
    "purple": ((140, 60, 190), "紫色"),
    "orange": ((245, 140, 30), "橙色"),
}
BACKGROUNDS = {"white": ((250, 250, 250), "白色"), "black": ((15, 15, 15), "黑色"), "gray": ((128, 128, 128), "灰色")}
SIZES = {"small": (0.36, "小"), "large": (0.56, "大")}  # side of the shape's box, as a fraction of the image
POSITIONS = {  # centre of the shape, as fractions of the image, with captions
    "centre": ((0.50, 0.50), "in the centre", "中间"),
    "left": ((0.33, 0.50), "on the left", "左边"),
    "right": ((0.67, 0.50), "on the right", "右边"),
    "top": ((0.50, 0.33), "at the top", "上方"),
    "bottom": ((0.50, 0.67), "at the bottom", "下方"),
}


@dataclass(frozen=True)
class ShapeSpec:
    """What one image shows. ``jitter`` nudges position and size a little so no two look the same."""

    shape: str
    colour: str
    size: str
    position: str
    background: str
    jitter: tuple[float, float, float] = (0.0, 0.0, 0.0)  # dx, dy, dscale (fractions of the image)

    def caption(self, lang: str = "en") -> str:
        """"a small red circle on the left on a white background" / "白色背景上左边的小红色圆形"."""
        if lang == "en":
            return (f"a {self.size} {self.colour} {self.shape} {POSITIONS[self.position][1]} "
                    f"on a {self.background} background")
        if lang == "zh":
            return (f"{BACKGROUNDS[self.background][1]}背景上{POSITIONS[self.position][2]}的"
                    f"{SIZES[self.size][1]}{COLOURS[self.colour][1]}{SHAPES[self.shape]}")
        raise ValueError(f"unknown language {lang!r}: use 'en' or 'zh'")


def sample_spec(rng: random.Random) -> ShapeSpec:
    """Draw every factor uniformly, then a small jitter."""
    return ShapeSpec(
        shape=rng.choice(list(SHAPES)), colour=rng.choice(list(COLOURS)), size=rng.choice(list(SIZES)),
        position=rng.choice(list(POSITIONS)), background=rng.choice(list(BACKGROUNDS)),
        jitter=(rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03), rng.uniform(-0.04, 0.04)),
    )


def shape_polygon(shape: str, box: tuple[float, float, float, float]) -> list[tuple[float, float]] | None:
    """Outline of ``shape`` filling ``box`` = (x0, y0, x1, y1); ``None`` for a circle (an ellipse)."""
    x0, y0, x1, y1 = box
    cx, w, h = (x0 + x1) / 2, x1 - x0, y1 - y0
    if shape == "circle":
        return None
    if shape == "square":
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if shape == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if shape == "star":
        # five outer and five inner points, starting at the top, then stretched to fill the box
        # exactly, so the star's box is the drawn box (the checker fits outlines to boxes)
        unit = [((0.5 if k % 2 == 0 else 0.2) * math.cos(-math.pi / 2 + k * math.pi / 5),
                 (0.5 if k % 2 == 0 else 0.2) * math.sin(-math.pi / 2 + k * math.pi / 5)) for k in range(10)]
        ux, uy = [p[0] for p in unit], [p[1] for p in unit]
        return [(x0 + (px - min(ux)) / (max(ux) - min(ux)) * w, y0 + (py - min(uy)) / (max(uy) - min(uy)) * h)
                for px, py in unit]
    raise ValueError(f"unknown shape {shape!r}: use one of {', '.join(SHAPES)}")


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], fill) -> None:
    polygon = shape_polygon(shape, box)
    if polygon is None:
        draw.ellipse(box, fill=fill)
    else:
        draw.polygon(polygon, fill=fill)


def render(spec: ShapeSpec, size: int = IMAGE_SIZE) -> Image.Image:
    """Draw ``spec`` as an RGB image, supersampled 4x then downscaled for smooth edges."""
    scale = 4
    big = size * scale
    img = Image.new("RGB", (big, big), BACKGROUNDS[spec.background][0])
    (fx, fy), side = POSITIONS[spec.position][0], SIZES[spec.size][0] + spec.jitter[2]
    cx, cy = (fx + spec.jitter[0]) * big, (fy + spec.jitter[1]) * big
    half = side * big / 2
    draw_shape(ImageDraw.Draw(img), spec.shape, (cx - half, cy - half, cx + half, cy + half),
               COLOURS[spec.colour][0])
    return img.resize((size, size), Image.Resampling.BOX)


class ShapesDataset:
    """``n`` examples from ``seed``; works as a torch map-style dataset (``len`` and ``[i]``).

    Each item is a dict: ``image`` (PIL), ``caption_en``, ``caption_zh`` and the factors.
    ``to_tensor=True`` gives ``pixel_values`` in [-1, 1] (C, H, W) instead of a PIL image.
    """

    def __init__(self, n: int = 10_000, *, seed: int = 0, size: int = IMAGE_SIZE, to_tensor: bool = False):
        if n <= 0:
            raise ValueError(f"n must be positive, got {n}")
        self.n, self.seed, self.size, self.to_tensor = n, seed, size, to_tensor

    def __len__(self) -> int:
        return self.n

    def spec(self, index: int) -> ShapeSpec:
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} examples")
        return sample_spec(random.Random(f"{self.seed}:{index}"))  # str seeds hash stably across runs

    def __getitem__(self, index: int) -> dict:
        spec = self.spec(index)
        image = render(spec, self.size)
        item = {"index": index, **{k: v for k, v in asdict(spec).items() if k != "jitter"},
                "caption_en": spec.caption("en"), "caption_zh": spec.caption("zh")}
        if self.to_tensor:
            import torch

            array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
            item["pixel_values"] = torch.from_numpy(array).permute(2, 0, 1)
        else:
            item["image"] = image
        return item


def to_ray_dataset(n: int = 10_000, *, seed: int = 0, size: int = IMAGE_SIZE):
    """The same examples as a Ray Dataset (images as uint8 arrays), generated in parallel by Ray.

    Example:
        >>> ds = to_ray_dataset(8)                      # doctest: +SKIP
        >>> ds.take(1)[0]["caption_en"]                 # doctest: +SKIP
    """
    import ray.data

    def make(batch: dict) -> dict:
        items = [ShapesDataset(n, seed=seed, size=size)[int(i)] for i in batch["id"]]
        out = {k: [it[k] for it in items] for k in items[0] if k != "image"}
        out["image"] = np.stack([np.asarray(it["image"]) for it in items])
        return out

    return ray.data.range(n).map_batches(make, batch_format="numpy")


def image_grid(images: list[Image.Image], cols: int = 8, pad: int = 2, scale: int = 1) -> Image.Image:
    """Tile images into one picture (for previews and sample grids)."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    w, h = images[0].size
    rows = math.ceil(len(images) / cols)
    grid = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + pad) + pad), (255, 255, 255))
    for i, img in enumerate(images):
        grid.paste(img, (pad + (i % cols) * (w + pad), pad + (i // cols) * (h + pad)))
    return grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST) if scale > 1 else grid
