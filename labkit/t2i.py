"""Train a tiny text-to-image model on the Shapes dataset: a Stable Diffusion in miniature.

Same parts as Stable Diffusion, each small enough to train on a laptop CPU:

* captions: :mod:`labkit.shape_captions` describes each image a new way every time it is drawn
  (any subset of the attributes, any order, synonyms, typos, noise words), so the model follows
  what people type rather than one template;
* tokenizer: CLIP's byte-level BPE, with whole-word tokens for the English caption words and one
  token per Chinese character (learned from the caption word lists, offline);
* text encoder: a 2-layer CLIP text transformer;
* VAE: an ``AutoencoderKL`` that turns a 32x32 image into an 8x8x4 latent;
* UNet: a ``UNet2DConditionModel`` with cross-attention to the text, predicting v (noise and image mixed);
* scheduler: DDPM noise schedule for training, any diffusers scheduler for sampling.

The result is a plain ``StableDiffusionPipeline`` folder: ``DiffusionPipeline.from_pretrained``
loads it with no custom code. ``labkit train-t2i`` reproduces the shipped checkpoint from a seed.

Example:
    >>> from labkit.t2i import train_t2i
    >>> train_t2i("runs/my-shapes-model", seed=0, vae_steps=50, unet_steps=50)   # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from labkit.shape_captions import caption_vocabulary, varied_caption
from labkit.shapes import IMAGE_SIZE, ShapesDataset, ShapeSpec, render
from labkit.store import swap_into_place

MAX_TOKENS = 64  # room for filler words the tokenizer splits into bytes ("please draw", "帮我画")


@dataclass
class TrainConfig:
    """The defaults are the recipe of the checkpoint that ships with labkit."""

    seed: int = 0
    train_images: int = 10_000
    vae_steps: int = 1_500
    unet_steps: int = 4_000
    batch_size: int = 64
    vae_lr: float = 1e-3
    unet_lr: float = 1e-3
    uncond_prob: float = 0.1  # captions dropped so classifier-free guidance has an unconditional model
    zh_prob: float = 0.5  # share of Chinese captions
    template_prob: float = 0.2  # share of captions in the full template; the rest are varied_caption()
    init_from: str | None = None  # continue from a saved pipeline (its VAE is kept: vae_steps must be 0)
    # A warm restart: a second, shorter one-cycle from the first run's weights, on fresh images and
    # captions (seed + 1), at a lower rate. It lifted shape accuracy on template prompts from 85% to
    # 93% (docs/benchmarks.md); 0 turns it off (smoke runs, the notebook's short run).
    restart_steps: int = 2_000
    restart_lr: float = 3e-4


def build_tokenizer(captions_en: list[str], captions_zh: list[str]):
    """CLIP tokenizer whose vocabulary is made from the captions, offline and deterministically.

    Every English caption word becomes one token and every Chinese character one token, so new
    combinations of known words still tokenize sensibly; any other text falls back to bytes.
    Merges are written out in a fixed order (no trainer, whose tie-breaking can vary between
    runs), so the same captions always give the same token ids.
    """
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    to_bytes = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for piece in alphabet + [c + "</w>" for c in alphabet]:
        vocab.setdefault(piece, len(vocab))
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}

    def bpe(symbols: list[str]) -> list[str]:  # what the tokenizer will do with the merges so far
        while len(symbols) > 1:
            pairs = [(ranks.get(pair, len(ranks)), i) for i, pair in enumerate(itertools.pairwise(symbols))]
            rank, i = min(pairs)
            if rank == len(ranks):
                break
            symbols = symbols[:i] + [symbols[i] + symbols[i + 1]] + symbols[i + 2:]
        return symbols

    def learn(symbols: list[str]) -> None:  # add merges until ``symbols`` is a single token
        symbols = bpe(symbols)
        while len(symbols) > 1:
            pair = (symbols[0], symbols[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            vocab.setdefault(pair[0] + pair[1], len(vocab))
            symbols = [pair[0] + pair[1], *symbols[2:]]

    words = {w for caption in captions_en for w in caption.lower().split()}
    for word in sorted(words, key=lambda w: (-len(w), w)):
        chars = list(to_bytes.pre_tokenize_str(word)[0][0])
        learn(chars[:-1] + [chars[-1] + "</w>"])
    for char in sorted({ch for caption in captions_zh for ch in caption if ord(ch) > 127}):
        b = list(to_bytes.pre_tokenize_str(char)[0][0])  # a CJK character is 3 UTF-8 bytes
        learn(b)  # inside a caption
        learn(b[:-1] + [b[-1] + "</w>"])  # at its end
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)


def build_models(vocab_size: int):
    """Untrained text encoder, VAE and UNet with Stable Diffusion's structure, scaled down."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_TOKENS, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=IMAGE_SIZE,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 32, 64), layers_per_block=1, norm_num_groups=16,
    )
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 4, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(48, 96),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64, attention_head_dim=8, norm_num_groups=16,
    )
    return text_encoder, vae, unet


def build_scheduler():
    from diffusers import DDPMScheduler

    # v-prediction: a target with the same scale at every noise level, which tiny models learn faster
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                         steps_offset=1)


def _training_set(cfg: TrainConfig, progress: bool) -> tuple[torch.Tensor, list[ShapeSpec]]:
    ds = ShapesDataset(cfg.train_images, seed=cfg.seed)
    images = np.empty((cfg.train_images, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    specs = []
    for i in tqdm(range(cfg.train_images), desc="render shapes", disable=not progress):
        specs.append(ds.spec(i))
        images[i] = np.asarray(render(specs[-1], IMAGE_SIZE))
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return pixels, specs


def _one_cycle(opt, lr: float, steps: int):
    """Warm up over 5% of the run (at least 2 steps), then anneal; constant for smoke runs."""
    if steps >= 10:
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=max(0.05, 2 / steps))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def training_caption(spec: ShapeSpec, rng: random.Random, cfg: TrainConfig) -> str:
    """What one training step calls this image: empty, the full template, or a varied caption."""
    if rng.random() < cfg.uncond_prob:
        return ""
    lang = "zh" if rng.random() < cfg.zh_prob else "en"
    return spec.caption(lang) if rng.random() < cfg.template_prob else varied_caption(spec, rng, lang)


SAMPLING = {"num_inference_steps": 20, "guidance_scale": 4.0}  # what the model is measured with


def model_card(record: dict) -> str:
    """A Hugging Face style model card: what the model is, how to call it, how it was made."""
    cfg = record["config"]
    stages = f"VAE {cfg['vae_steps']:,} steps, then text encoder + UNet {cfg['unet_steps']:,} steps"
    base = record.get("init_from_record")
    if base:  # a continued run: say what it continued
        stages = (f"VAE {base['config']['vae_steps']:,} steps, text encoder + UNet "
                  f"{base['config']['unet_steps']:,} steps, then "
                  f"{cfg['unet_steps']:,} more UNet steps at learning rate {cfg['unet_lr']:g}")
    seconds = record["train_seconds"] + (base["train_seconds"] if base else 0)
    seeds = f"seed {base['config']['seed']} then {cfg['seed']}" if base else f"seed {cfg['seed']}"
    return f"""---
license: apache-2.0
library_name: diffusers
pipeline_tag: text-to-image
language: [en, zh]
inference:
  parameters:
    num_inference_steps: {SAMPLING["num_inference_steps"]}
    guidance_scale: {SAMPLING["guidance_scale"]}
---
# shapes-t2i-tiny

A Stable Diffusion in miniature (UNet, VAE, CLIP text encoder, {IMAGE_SIZE}x{IMAGE_SIZE} images),
trained by `labkit train-t2i` on labkit's Shapes dataset: one coloured shape on a plain
background. It follows English and Chinese prompts that name any of colour, shape, size,
position and background ("a red circle", "白色背景上的蓝色正方形", "please draw a tiny violet
star on the left"); what a prompt leaves out varies from seed to seed.

```python
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained("path/to/shapes-t2i-tiny")
image = pipe("a red circle", num_inference_steps={SAMPLING["num_inference_steps"]},
             guidance_scale={SAMPLING["guidance_scale"]}).images[0]
```

Made for {SAMPLING["num_inference_steps"]} DPM-Solver++ steps (the saved scheduler) at guidance
{SAMPLING["guidance_scale"]}; diffusers' own defaults (50 steps, guidance 7.5) also work.
Prompt-following figures, on prompts written apart from the training captions, are in labkit's
`docs/benchmarks.md`.

Training: {seeds}, {cfg["train_images"]:,} images, {stages}, batch {cfg["batch_size"]}; captions from
`labkit.shape_captions` ({cfg["template_prob"]:.0%} in the full template, {cfg["uncond_prob"]:.0%}
dropped for classifier-free guidance, {cfg["zh_prob"]:.0%} Chinese). {seconds:.0f} s in all on
the machine that made it (torch {record["torch"]}).
"""


def _train_with_restart(output: Path, cfg: TrainConfig, **kwargs) -> dict:
    """The first run to a temporary folder, then the restart from it into ``output``."""
    import dataclasses
    import tempfile

    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.first-") as tmp:
        first = train_t2i(Path(tmp) / "model", config=dataclasses.replace(cfg, restart_steps=0), **kwargs)
        second = dataclasses.replace(cfg, seed=cfg.seed + 1, vae_steps=0, unet_steps=cfg.restart_steps,
                                     unet_lr=cfg.restart_lr, init_from=str(Path(tmp) / "model"), restart_steps=0)
        record = train_t2i(output, config=second, **kwargs)
    record["recipe"] = asdict(cfg)  # what was asked for; "config" is the restart's own
    record["config"]["init_from"] = "(the first run of this recipe)"
    record["train_seconds_total"] = round(first["train_seconds"] + record["train_seconds"], 1)
    (output / "training.json").write_text(json.dumps(record, indent=1))
    return record


def train_t2i(output: str | Path, *, config: TrainConfig | None = None, progress: bool = True,
              on_step: Callable[[str, int, float], None] | None = None, **overrides) -> dict:
    """Train the tokenizer, VAE, text encoder and UNet, then save a StableDiffusionPipeline.

    ``on_step(stage, step, loss)`` is called every 10 steps (live loss plots). The pipeline is
    written to a temporary folder next to ``output`` and renamed into place when complete, so an
    interrupted run never leaves a half model. Returns the training record (also saved as
    ``training.json`` in the output).
    """
    from diffusers import StableDiffusionPipeline

    cfg = config or TrainConfig()
    for key, value in overrides.items():
        if not hasattr(cfg, key):
            raise TypeError(f"unknown training option {key!r}; options: {', '.join(asdict(cfg))}")
        setattr(cfg, key, value)
    if cfg.unet_steps < 1 or cfg.batch_size < 1 or cfg.vae_steps < (0 if cfg.init_from else 1):
        raise ValueError("vae_steps, unet_steps and batch_size must be positive")
    if cfg.init_from and cfg.vae_steps:
        raise ValueError("init_from keeps the saved VAE (the UNet's latent space); set vae_steps=0")
    output = Path(output)
    if cfg.restart_steps and not cfg.init_from:
        return _train_with_restart(output, cfg, progress=progress, on_step=on_step)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    t_start = time.perf_counter()

    pixels, specs = _training_set(cfg, progress)
    captions_rng = random.Random(cfg.seed)
    record: dict = {"config": asdict(cfg), "losses": {}}
    if cfg.init_from:
        base = StableDiffusionPipeline.from_pretrained(cfg.init_from)
        tokenizer, text_encoder, vae, unet = base.tokenizer, base.text_encoder, base.vae, base.unet
        base_record = Path(cfg.init_from) / "training.json"
        if base_record.is_file():  # the whole history, so the result says how it was made
            record["init_from_record"] = {k: v for k, v in json.loads(base_record.read_text()).items()
                                          if k != "losses"}
    else:
        tokenizer = build_tokenizer(*caption_vocabulary())
        text_encoder, vae, unet = build_models(len(tokenizer))
    scheduler = build_scheduler()

    def report(stage: str, step: int, loss: float, bar) -> None:
        record["losses"].setdefault(stage, []).append([step, loss])
        bar.set_postfix(loss=f"{loss:.4f}")
        if on_step:
            on_step(stage, step, loss)

    # 1. VAE: reconstruct images through an 8x8x4 latent (small KL term keeps latents well-behaved).
    # It needs to be trained long enough to keep a small star's points: after 500 steps the VAE
    # alone turned every small star into a blob, which capped shape accuracy at about 82%.
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
    lr_sched = _one_cycle(opt, cfg.vae_lr, cfg.vae_steps)
    vae.train()
    bar = tqdm(range(cfg.vae_steps), desc="train VAE", disable=not progress)
    for step in bar:
        x = pixels[torch.randint(len(pixels), (cfg.batch_size,), generator=gen)]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        loss = F.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        lr_sched.step()
        if step % 10 == 0 or step == cfg.vae_steps - 1:
            report("vae", step, loss.item(), bar)
    vae.eval().requires_grad_(False)

    # Encode every image once (the VAE is frozen from here on), and scale latents to unit
    # variance, as Stable Diffusion does with its 0.18215 (a continued run keeps its base's).
    with torch.no_grad():
        posteriors = [vae.encode(chunk).latent_dist for chunk in pixels.split(500)]
        latent_mean = torch.cat([p.mean for p in posteriors])
        latent_std = torch.cat([p.std for p in posteriors])
    if not cfg.init_from:
        vae.register_to_config(scaling_factor=float(1.0 / latent_mean[:1024].std()))
    record["vae_scaling_factor"] = vae.config.scaling_factor

    # 2. Text encoder + UNet: from a noised latent and the caption, predict v = a*noise - b*latent
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr)
    lr_sched = _one_cycle(opt, cfg.unet_lr, cfg.unet_steps)
    unet.train()
    text_encoder.train()
    bar = tqdm(range(cfg.unet_steps), desc="train UNet + text encoder", disable=not progress)
    for step in bar:
        idx = torch.randint(len(pixels), (cfg.batch_size,), generator=gen)
        captions = [training_caption(specs[i], captions_rng, cfg) for i in idx.tolist()]
        eps = torch.randn(latent_mean[idx].shape, generator=gen)
        latents = (latent_mean[idx] + latent_std[idx] * eps) * vae.config.scaling_factor
        tokens = tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                           return_tensors="pt").input_ids
        cond = text_encoder(tokens)[0]
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.batch_size,), generator=gen)
        pred = unet(scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred, scheduler.get_velocity(latents, noise, t))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lr_sched.step()
        if step % 10 == 0 or step == cfg.unet_steps - 1:
            report("unet", step, loss.item(), bar)
    unet.eval()
    text_encoder.eval()

    record["train_seconds"] = round(time.perf_counter() - t_start, 1)
    record["final_loss"] = {k: float(np.mean([v for _, v in vals[-10:]])) for k, vals in record["losses"].items()}
    record["torch"] = torch.__version__

    from diffusers import DPMSolverMultistepScheduler

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        # sampling uses a fast multistep solver configured from the training schedule
        scheduler=DPMSolverMultistepScheduler.from_config(scheduler.config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        pipe.save_pretrained(tmp)
        (tmp / "training.json").write_text(json.dumps(record, indent=1))
        (tmp / "README.md").write_text(model_card(record), encoding="utf-8")
        swap_into_place(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record
