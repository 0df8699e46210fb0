"""The Shapes dataset and the analytic checker that scores prompt following."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from PIL import Image

from labkit.shape_checker import judge, score
from labkit.shapes import BACKGROUNDS, COLOURS, SHAPES, ShapesDataset, ShapeSpec, image_grid, render


def test_same_seed_same_images_other_seed_other_images():
    a, b, c = ShapesDataset(50, seed=3), ShapesDataset(50, seed=3), ShapesDataset(50, seed=4)
    assert all(np.array_equal(np.asarray(a[i]["image"]), np.asarray(b[i]["image"])) for i in range(50))
    assert a[7]["caption_en"] == b[7]["caption_en"]
    assert [a[i]["caption_en"] for i in range(50)] != [c[i]["caption_en"] for i in range(50)]


def test_every_factor_appears_and_captions_name_it_in_both_languages():
    ds = ShapesDataset(600, seed=0)
    items = [ds[i] for i in range(600)]
    counts = collections.Counter((it["shape"], it["colour"]) for it in items)
    assert len(counts) == len(SHAPES) * len(COLOURS) == 24
    assert {it["background"] for it in items} == set(BACKGROUNDS)
    for it in items[:50]:
        assert it["colour"] in it["caption_en"] and it["shape"] in it["caption_en"]
        assert COLOURS[it["colour"]][1] in it["caption_zh"] and SHAPES[it["shape"]] in it["caption_zh"]
    assert ShapeSpec("circle", "red", "small", "centre", "white").caption("zh") == "白色背景上中间的小红色圆形"


def test_torch_view_and_bad_arguments():
    ds = ShapesDataset(4, seed=0, to_tensor=True)
    x = ds[0]["pixel_values"]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and -1 <= x.min() < x.max() <= 1
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    assert next(iter(loader))["pixel_values"].shape == (2, 3, 32, 32)
    with pytest.raises(IndexError):
        ds[4]
    with pytest.raises(ValueError, match="n must be positive"):
        ShapesDataset(0)
    with pytest.raises(ValueError, match="'en' or 'zh'"):
        ShapeSpec("circle", "red", "small", "centre", "white").caption("fr")


def test_checker_reads_the_ground_truth_correctly():
    ds = ShapesDataset(400, seed=11)
    items = [ds[i] for i in range(400)]
    result = score([it["image"] for it in items], [it["colour"] for it in items], [it["shape"] for it in items])
    assert result["colour_accuracy"] == 1.0
    assert result["shape_accuracy"] >= 0.98


def test_checker_is_not_fooled_by_wrong_content():
    spec = ShapeSpec("star", "blue", "large", "centre", "white")
    assert judge(render(spec)).shape == "star"
    wrong = score([render(spec)], ["red"], ["circle"])
    assert wrong["colour_accuracy"] == 0.0 and wrong["shape_accuracy"] == 0.0
    blank = judge(Image.new("RGB", (32, 32), (250, 250, 250)))
    assert blank.colour is None and blank.shape is None


def test_grid_and_score_inputs():
    grid = image_grid([render(ShapeSpec("circle", "red", "small", "centre", "white"))] * 5, cols=4, pad=2)
    assert grid.size == (4 * 34 + 2, 2 * 34 + 2)
    with pytest.raises(ValueError):
        image_grid([])
    with pytest.raises(ValueError):
        score([], [], [])


def test_ray_dataset_matches_the_torch_view(ray_cluster):
    from labkit.shapes import to_ray_dataset

    rows = sorted(to_ray_dataset(6, seed=2).take_all(), key=lambda r: r["index"])
    ds = ShapesDataset(6, seed=2)
    assert [r["caption_en"] for r in rows] == [ds[i]["caption_en"] for i in range(6)]
    assert np.array_equal(rows[0]["image"], np.asarray(ds[0]["image"]))
