"""Training the tiny text-to-image model: real (tiny) runs, reproducible from a seed."""

from __future__ import annotations

import pytest

from labkit.shapes import ShapesDataset
from labkit.t2i import build_tokenizer, train_t2i

TINY = dict(train_images=64, vae_steps=3, unet_steps=3, batch_size=8, progress=False)


def test_tokenizer_learns_whole_words_and_chinese_characters():
    ds = ShapesDataset(300, seed=0)
    tok = build_tokenizer([ds[i]["caption_en"] for i in range(300)], [ds[i]["caption_zh"] for i in range(300)])
    assert tok.tokenize("a red circle") == ["a</w>", "red</w>", "circle</w>"]
    ids = tok("白色背景上的红色圆形")["input_ids"]
    assert len(ids) == 2 + 10, "one token per Chinese character, plus start and end"
    assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == "白色背景上的红色圆形"


def test_a_tiny_run_saves_a_loadable_pipeline_and_repeats_exactly(tmp_path):
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    first = train_t2i(tmp_path / "a", seed=3, **TINY)
    second = train_t2i(tmp_path / "b", seed=3, **TINY)
    assert first["losses"] == second["losses"], "same seed, same training"
    assert set(first["final_loss"]) == {"vae", "unet"} and first["train_seconds"] > 0
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "a")
    assert isinstance(pipe, StableDiffusionPipeline)
    assert (tmp_path / "a" / "training.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"], "no temporary folders left behind"


def test_bad_training_options():
    with pytest.raises(TypeError, match="unknown training option 'epochs'"):
        train_t2i("unused", epochs=3)
    with pytest.raises(ValueError, match="must be positive"):
        train_t2i("unused", vae_steps=0)
