"""Training the tiny text-to-image model: real (tiny) runs, reproducible from a seed."""

from __future__ import annotations

import pytest

from labkit.shapes import ShapesDataset
from labkit.t2i import build_tokenizer, train_t2i

TINY = dict(train_images=64, vae_steps=3, unet_steps=3, batch_size=8, restart_steps=0, progress=False)


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
    card = (tmp_path / "a" / "README.md").read_text(encoding="utf-8")
    assert "num_inference_steps: 20" in card and "train-t2i" in card
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"], "no temporary folders left behind"


def test_training_captions_mix_template_varied_and_empty():
    import random

    from labkit.t2i import TrainConfig, training_caption

    spec = ShapesDataset(1, seed=0).spec(0)
    rng = random.Random(0)
    captions = [training_caption(spec, rng, TrainConfig()) for _ in range(2_000)]
    templates = {spec.caption("en"), spec.caption("zh")}
    assert 0.06 < captions.count("") / len(captions) < 0.14  # uncond_prob 0.1
    assert 0.1 < sum(c in templates for c in captions) / len(captions) < 0.3  # template_prob 0.2 of the rest
    assert len(set(captions)) > 500
    only_template = TrainConfig(uncond_prob=0.0, template_prob=1.0)
    assert {training_caption(spec, rng, only_template) for _ in range(50)} == templates


def test_a_run_continues_from_a_saved_model_keeping_its_vae(tmp_path):
    import torch
    from diffusers import AutoencoderKL

    train_t2i(tmp_path / "base", seed=3, **TINY)
    record = train_t2i(tmp_path / "more", seed=4, init_from=str(tmp_path / "base"), **{**TINY, "vae_steps": 0})
    assert record["init_from_record"]["config"]["seed"] == 3 and "vae" not in record["final_loss"]
    base, more = (AutoencoderKL.from_pretrained(tmp_path / name / "vae") for name in ("base", "more"))
    assert all(torch.equal(a, b) for a, b in zip(base.state_dict().values(), more.state_dict().values(), strict=True))
    assert base.config.scaling_factor == more.config.scaling_factor
    with pytest.raises(ValueError, match="set vae_steps=0"):
        train_t2i("unused", init_from=str(tmp_path / "base"), vae_steps=5)


def test_the_recipe_restarts_from_its_first_run_in_one_call(tmp_path):
    record = train_t2i(tmp_path / "model", seed=3, **{**TINY, "restart_steps": 3})
    assert record["recipe"]["restart_steps"] == 3 and record["config"]["seed"] == 4
    assert record["init_from_record"]["config"]["vae_steps"] == 3
    assert record["train_seconds_total"] > record["train_seconds"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"], "the first run's folder is removed"
    assert "more UNet steps" in (tmp_path / "model" / "README.md").read_text(encoding="utf-8")


def test_bad_training_options():
    with pytest.raises(TypeError, match="unknown training option 'epochs'"):
        train_t2i("unused", epochs=3)
    with pytest.raises(ValueError, match="must be positive"):
        train_t2i("unused", vae_steps=0)
