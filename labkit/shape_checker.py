"""An analytic judge of Shapes images: which colour and which shape does a picture show?

It never looks at a model: the background colour is read from the border, the shape is the
largest connected region that differs from it, its colour is the median inside that region
mapped to the nearest palette colour, and its shape is whichever ideal outline (drawn into the
region's bounding box) overlaps it best (intersection over union). Used to score prompt
following of text-to-image models.

Example:
    >>> from labkit.shapes import ShapeSpec, render
    >>> from labkit.shape_checker import judge
    >>> judge(render(ShapeSpec("star", "orange", "large", "centre", "gray")))
    Judgement(colour='orange', shape='star', shape_iou=..., area=...)
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from labkit.shapes import BACKGROUNDS, COLOURS, SHAPES, draw_shape


@dataclass(frozen=True)
class Judgement:
    colour: str | None  # None when no shape was found
    shape: str | None
    shape_iou: float
    area: int  # pixels in the shape's region
    background: str | None = None  # nearest of the dataset's backgrounds, read from the border

    def __repr__(self) -> str:  # short, and stable enough for doctests
        return f"Judgement(colour={self.colour!r}, shape={self.shape!r}, shape_iou=..., area=...)"


def judge(image: Image.Image, *, min_area: int = 12, threshold: float = 60.0) -> Judgement:
    """Judge one image. ``threshold`` is the RGB distance from the background that counts as shape."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    background = np.median(border, axis=0)
    foreground = np.linalg.norm(rgb - background, axis=-1) > threshold
    region = _largest_component(foreground)
    area = int(region.sum())
    named_background = _nearest(background, BACKGROUNDS)
    if area < min_area:
        return Judgement(None, None, 0.0, area, named_background)
    colour = _nearest(np.median(rgb[region], axis=0), COLOURS)
    shape, iou = _best_outline(region)
    return Judgement(colour, shape, iou, area, named_background)


def _nearest(rgb: np.ndarray, palette_table: dict) -> str:
    names = list(palette_table)
    palette = np.array([palette_table[n][0] for n in names], dtype=np.float32)
    return names[int(np.argmin(np.linalg.norm(palette - rgb, axis=1)))]


def _best_outline(region: np.ndarray) -> tuple[str, float]:
    ys, xs = np.nonzero(region)
    box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    scale = 4  # draw the ideal outlines supersampled, then threshold at half coverage
    h, w = region.shape
    best = ("", -1.0)
    for shape in SHAPES:
        canvas = Image.new("L", (w * scale, h * scale), 0)
        draw_shape(ImageDraw.Draw(canvas), shape, tuple(v * scale for v in box), 255)
        ideal = np.asarray(canvas.resize((w, h), Image.Resampling.BOX)) >= 128
        iou = (ideal & region).sum() / max((ideal | region).sum(), 1)
        if iou > best[1]:
            best = (shape, float(iou))
    return best


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 4-connected True region (breadth-first search; images are small)."""
    seen = np.zeros_like(mask, dtype=bool)
    best: list[tuple[int, int]] = []
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        queue, pixels = deque([(y0, x0)]), []
        while queue:
            y, x = queue.popleft()
            pixels.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        if len(pixels) > len(best):
            best = pixels
    out = np.zeros_like(mask, dtype=bool)
    if best:
        ys, xs = zip(*best, strict=True)
        out[list(ys), list(xs)] = True
    return out


def score(images: list[Image.Image], colours: list[str | None], shapes: list[str | None]) -> dict:
    """Colour and shape accuracy of images against what their prompts asked for.

    A prompt that does not name a colour (``None``) is left out of the colour accuracy, and
    likewise for shape, so "a red circle" and "something red" score what they ask for.
    """
    if not (len(images) == len(colours) == len(shapes)) or not images:
        raise ValueError("score needs equally long, non-empty lists of images, colours and shapes")
    verdicts = [judge(img) for img in images]
    colour_ok = [v.colour == c for v, c in zip(verdicts, colours, strict=True) if c is not None]
    shape_ok = [v.shape == s for v, s in zip(verdicts, shapes, strict=True) if s is not None]
    return {"n": len(images), "colour_accuracy": float(np.mean(colour_ok)) if colour_ok else float("nan"),
            "shape_accuracy": float(np.mean(shape_ok)) if shape_ok else float("nan"), "verdicts": verdicts}


def prompt_set(n: int = 200, *, seed: int = 1234) -> list[dict]:
    """``n`` prompts in the training template that cycle through every (colour, shape) pair, half
    English and half Chinese.

    Size, position and background vary with a seeded generator; the seed differs from the
    training data's so the exact captions are not simply memorised ones. For phrasings the model
    never saw, use :func:`heldout_prompts`.
    """
    import random

    from labkit.shapes import BACKGROUNDS, POSITIONS, SIZES, ShapeSpec

    rng = random.Random(seed)
    colours, shapes = list(COLOURS), list(SHAPES)
    pairs = len(colours) * len(shapes)
    rows = []
    for i in range(n):
        spec = ShapeSpec(shapes[(i // len(colours)) % len(shapes)], colours[i % len(colours)],
                         rng.choice(list(SIZES)), rng.choice(list(POSITIONS)), rng.choice(list(BACKGROUNDS)))
        lang = "en" if (i // pairs) % 2 == 0 else "zh"
        rows.append({"prompt": spec.caption(lang), "colour": spec.colour, "shape": spec.shape, "lang": lang,
                     "kind": "template", "background": spec.background})
    return rows


def heldout_prompts() -> list[dict]:
    """The hand-written prompts of ``datasets/shapes_prompts``: partial, reordered, synonyms,
    filler words, typos, in English and Chinese, each with the attributes it asks for (``None``
    where it leaves one out). Written apart from the caption generator; see its datasheet."""
    from labkit.data import read_prompts

    return read_prompts("shapes_prompts")


def evaluate_prompt_following(pipe, n: int = 200, *, rows: list[dict] | None = None, images_per_prompt: int = 1,
                              steps: int = 20, guidance: float = 4.0, batch_size: int = 16,
                              progress: bool = True) -> dict:
    """Generate images for ``rows`` (default: ``prompt_set(n)``) and score them.

    Returns overall accuracies, the same per language and per ``kind`` of prompt, and
    ``backgrounds_unasked``: how often each background was drawn for prompts that name none
    (a model that follows only what it is told should spread these across all three).
    """
    from collections import Counter

    from labkit.diffusion import generate

    rows = prompt_set(n) if rows is None else rows
    jobs = [(row, seed) for seed in range(images_per_prompt) for row in rows]
    images = []
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]  # one batch; its prompts share the starting noise
        images += generate(pipe, [row["prompt"] for row, _ in chunk], seed=start, steps=steps, guidance=guidance,
                           batch_size=batch_size, progress=False)
        if progress:
            print(f"  scored images: {min(start + batch_size, len(jobs))}/{len(jobs)}", end="\r", flush=True)

    def part(keep) -> dict:
        idx = [i for i, (row, _) in enumerate(jobs) if keep(row)]
        return score([images[i] for i in idx], [jobs[i][0].get("colour") for i in idx],
                     [jobs[i][0].get("shape") for i in idx])

    result = part(lambda row: True)
    for key in ("lang", "kind"):
        for value in sorted({row.get(key) for row in rows if row.get(key)}):
            p = part(lambda row, key=key, value=value: row.get(key) == value)
            result.setdefault(f"by_{key}", {})[value] = {k: p[k] for k in ("n", "colour_accuracy", "shape_accuracy")}
    unasked = Counter(v.background for (row, _), v in zip(jobs, result["verdicts"], strict=True)
                      if row.get("background") is None and v.background)
    result["backgrounds_unasked"] = dict(unasked)
    result["images"] = images
    result["rows"] = [row for row, _ in jobs]
    return result
